//! Chaos proofs: the sandbox turns hostile (seeded faults) and the report must still be exactly
//! the truth, every retry must reuse its request ID, and bad nights must end in a clear,
//! resumable state. Every assertion is checked against the sandbox's own record.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use license_batch::Completion;
use license_batch::config::Concurrency;
use license_batch::outcome::RowStatus;
use license_batch::sandbox::Sandbox;
use uuid::Uuid;

const HEADER: &str = "customer_id,user_id,sku";

/// Every report row agrees with what the sandbox holds now.
fn assert_report_is_the_truth(sandbox: &Sandbox, input: &std::path::Path) {
    for row in read_report(&report_path(input)) {
        let customer: Uuid = row["customer_id"].parse().unwrap();
        let sku: Uuid = row["result_sku_id"].parse().unwrap();
        let held = sandbox.licenses(customer, &row["user_id"]).contains(&sku);
        assert_eq!(
            held,
            row["result_status"] == "succeeded",
            "line {}: report says {} but the tenant holds it: {held}",
            row["result_row"],
            row["result_status"]
        );
    }
}

fn faults_seen(sandbox: &Sandbox) -> HashMap<&'static str, usize> {
    let mut seen = HashMap::new();
    for r in sandbox.requests() {
        if let Some(fault) = r.fault {
            *seen.entry(fault).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_resets_5xx_lost_and_late_answers_the_report_is_exactly_the_truth() {
    let sandbox = start(
        "[faults]\nseed = 7\ntransient_rate = 0.15\nreset_rate = 0.05\napply_then_503_rate = 0.05\n\
         apply_then_timeout_rate = 0.02\nhold_secs = 2\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<String> = (0..300)
        .map(|i| format!("{CONTOSO},{},SPB", user_guid(i)))
        .collect();
    rows.extend((0..100).map(|i| format!("{CONTOSO},{},Power BI Pro", user_guid(i))));
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows);
    let mut opts = options(&sandbox, &input);
    opts.settings.limits.concurrency = Concurrency::fixed(8);
    opts.settings.api.timeout = Duration::from_secs(1);
    let summary = run(opts).await;

    assert_eq!(summary.completion, Completion::Finished);
    assert_eq!(summary.count(RowStatus::Succeeded), 400, "{summary}");
    assert_eq!(license_batch::exit_code_for(&Ok(summary)), 0);
    assert_report_is_the_truth(&sandbox, &input);
    assert_eq!(
        sandbox.violations(),
        Default::default(),
        "no request-ID violation"
    );

    let seen = faults_seen(&sandbox);
    for fault in ["transient", "reset", "apply-then-503", "apply-then-timeout"] {
        assert!(
            seen.get(fault).copied().unwrap_or(0) > 0,
            "{fault} was injected: {seen:?}"
        );
    }
    // One request ID per group across all its retries; each group applied exactly once, and
    // the lost answers were replayed, not applied again.
    let requests = sandbox.requests();
    let mut by_user: HashMap<String, (HashSet<Option<String>>, usize)> = HashMap::new();
    for r in &requests {
        let entry = by_user.entry(r.user.clone()).or_default();
        entry.0.insert(r.request_id.clone());
        entry.1 += usize::from(r.applied);
    }
    assert_eq!(by_user.len(), 300);
    assert!(
        by_user
            .values()
            .all(|(ids, applied)| ids.len() == 1 && *applied == 1)
    );
    assert!(
        requests.iter().any(|r| r.replay),
        "answers lost after applying were replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_living_three_seconds_never_fail_a_row() {
    let sandbox = start(
        "[auth]\ntoken_lifetime_secs = 3\n[faults]\nlatency_ms = 60\nlatency_jitter_ms = 20\n",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = (0..300)
        .map(|i| format!("{CONTOSO},{},SPB", user_guid(i)))
        .collect();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows);
    let mut opts = options(&sandbox, &input);
    opts.settings.limits.concurrency = Concurrency::fixed(2);
    let summary = run(opts).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 300);
    assert_tokens_renewed_ahead_of_expiry(&sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_slows_the_pool_and_every_row_succeeds() {
    let sandbox =
        start("[faults]\nstorm_after = 20\nstorm_length = 30\nretry_after_secs = 1\n").await;
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = (0..120)
        .map(|i| format!("{CONTOSO},{},SPB", user_guid(i)))
        .collect();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows);
    let summary = run(options(&sandbox, &input)).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 120);
    let requests = sandbox.requests();
    assert_eq!(requests.iter().filter(|r| r.status == 429).count(), 30);
    // Never sooner than told: each throttled call comes again a second later at the soonest.
    for (i, throttled) in requests.iter().enumerate().filter(|(_, r)| r.status == 429) {
        if let Some(retry) = requests[i + 1..]
            .iter()
            .find(|r| r.request_id == throttled.request_id)
        {
            let gap = retry.at.duration_since(throttled.at).unwrap();
            assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
        }
    }
    // While nothing passed, the whole pool waited: the 30 throttled calls took more than
    // the storm's 29 waits of a second between events would allow for at full speed.
    let storm: Vec<_> = requests.iter().filter(|r| r.status == 429).collect();
    let (first, last) = (storm[0].at, storm[storm.len() - 1].at);
    assert!(
        last.duration_since(first).unwrap() >= Duration::from_secs(2),
        "the pool kept sending into the storm"
    );
    assert_report_is_the_truth(&sandbox, &input);
}

#[tokio::test]
async fn a_customer_blocked_mid_run_gets_nothing_more_and_the_others_finish() {
    let sandbox = start(&format!(
        "[[customers]]\nid = \"{CONTOSO}\"\nblocked_after_requests = 3\n[[customers]]\nid = \"{FABRIKAM}\"\n"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<String> = (0..10)
        .map(|i| format!("{CONTOSO},{},SPB", user_guid(i)))
        .collect();
    rows.extend((0..10).map(|i| format!("{FABRIKAM},{},SPB", user_guid(i))));
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows);
    let mut opts = options(&sandbox, &input);
    opts.settings.limits.concurrency = Concurrency::fixed(1);
    let summary = run(opts).await;
    let to_contoso: Vec<u16> = sandbox
        .requests()
        .iter()
        .filter(|r| r.customer == CONTOSO)
        .map(|r| r.status)
        .collect();
    assert_eq!(
        to_contoso,
        [201, 201, 201, 403],
        "after the 900309 nothing more"
    );
    let report = read_report(&report_path(&input));
    assert!(
        report[3..10]
            .iter()
            .all(|r| r["result_status"] == "failed" && r["result_error_code"] == "900309")
    );
    assert!(
        report[10..]
            .iter()
            .all(|r| r["result_status"] == "succeeded")
    );
    assert_eq!(summary.count(RowStatus::Succeeded), 13);
    assert_report_is_the_truth(&sandbox, &input);
}

#[tokio::test]
async fn a_tripped_failure_threshold_stops_the_run_and_a_rerun_finishes_the_pending_rows() {
    let sandbox = start(&format!("[[customers]]\nid = \"{CONTOSO}\"\nusers = []\n")).await;
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = (0..40)
        .map(|i| format!("{CONTOSO},{},SPB", user_guid(i)))
        .collect();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows);
    let mut opts = options(&sandbox, &input);
    opts.settings.limits.concurrency = Concurrency::fixed(2);
    opts.settings.run.failure_ratio_min_groups = 6;
    let first = run(opts.clone()).await;
    let Completion::Aborted(reason) = &first.completion else {
        panic!("{:?}", first.completion)
    };
    assert!(
        reason.contains("failure threshold") && reason.contains("60002"),
        "{reason}"
    );
    let failed = first.count(RowStatus::Failed);
    assert!(first.count(RowStatus::Pending) >= 30, "{first}");
    assert_eq!(license_batch::exit_code_for(&Ok(first.clone())), 3);

    // The users are created; the same command finishes what was pending.
    sandbox.set_users(CONTOSO.parse().unwrap(), None);
    let second = run(opts).await;
    assert_eq!(second.run_id, first.run_id, "the same run resumed");
    assert_eq!(second.completion, Completion::Finished);
    assert_eq!(second.count(RowStatus::Pending), 0);
    assert_eq!(
        second.count(RowStatus::Succeeded) as usize,
        40 - failed as usize
    );
    assert_report_is_the_truth(&sandbox, &input);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_set_by_sandbox_flags_and_the_dumped_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("truth.json");
    let server = SandboxServer::start_with(
        dir.path(),
        "",
        &[
            "--seed",
            "3",
            "--reset-rate",
            "0.2",
            "--apply-then-503-rate",
            "0.1",
            "--dump",
            dump.to_str().unwrap(),
        ],
    );
    std::fs::write(dir.path().join("fast.toml"), "[retry]\nmin_delay_ms = 20\n").unwrap();
    write_csv(
        dir.path(),
        "sheet.csv",
        HEADER,
        &(0..50)
            .map(|i| format!("{CONTOSO},{},SPB", user_guid(i)))
            .collect::<Vec<_>>(),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_license-batch"))
        .args([
            "run",
            "sheet.csv",
            "-q",
            "--requests-per-minute",
            "60000",
            "--config",
            "fast.toml",
        ])
        .current_dir(dir.path())
        .env_clear()
        .envs(server.env())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(server.terminate().success());

    let truth: serde_json::Value = serde_json::from_slice(&std::fs::read(&dump).unwrap()).unwrap();
    let requests = truth["requests"].as_array().unwrap();
    let faults: HashSet<&str> = requests
        .iter()
        .filter_map(|r| r["fault"].as_str())
        .collect();
    assert!(
        faults.contains("reset") && faults.contains("apply-then-503"),
        "{faults:?}"
    );
    assert_eq!(
        truth["licenses"].as_array().unwrap().len(),
        50,
        "every user holds the license once"
    );
    assert!(
        truth["violations"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v == 0)
    );
}
