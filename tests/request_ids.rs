//! Request IDs follow the operation across runs (SPEC §8): a request that got no definitive
//! answer — applied, then the answer lost; retries run out; the client killed while it was in
//! flight — is sent again under the same MS-RequestId by whichever run asks for its licenses
//! next, also a new run of a grown or changed sheet. Asserted from the sandbox's ground truth:
//! which request IDs it received, which it replayed, and that no license change it had applied
//! was asked for again under another ID.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use license_batch::outcome::RowStatus;
use license_batch::sandbox::{RecordedRequest, Sandbox, scenario::Faults};
use license_batch::{Completion, RunOptions};
use uuid::Uuid;

const HEADER: &str = "customer_id,user_id,sku,action,excluded_plans,name";
const SPB: &str = "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46";

/// Every call is applied and then answered 503: with a single attempt, each request ends
/// without a definitive answer although the tenant changed.
fn answers_lost() -> Faults {
    Faults {
        apply_then_503_rate: 1.0,
        ..Faults::default()
    }
}

fn row(user: &str, sku: &str, action: &str, excluded: &str, name: &str) -> String {
    format!("{CONTOSO},{user},{sku},{action},{excluded},{name}")
}

/// A run of `rows` (a file of its own, so a new run) with one attempt per request.
async fn night(
    sandbox: &Sandbox,
    dir: &std::path::Path,
    name: &str,
    rows: &[String],
) -> RunOptions {
    let input = write_csv(dir, name, HEADER, rows);
    let mut opts = options(sandbox, &input);
    opts.settings.run.state_file = dir.join("state.sqlite");
    opts.settings.retry.max_attempts = 1;
    opts
}

fn requests_of<'a>(requests: &'a [RecordedRequest], user: &str) -> Vec<&'a RecordedRequest> {
    requests
        .iter()
        .filter(|r| r.user.eq_ignore_ascii_case(user))
        .collect()
}

fn ids(requests: &[&RecordedRequest]) -> BTreeSet<String> {
    requests
        .iter()
        .map(|r| r.request_id.clone().expect("every request has an ID"))
        .collect()
}

fn skus_of(body: &serde_json::Value, list: &str) -> BTreeSet<String> {
    body[list]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| i.get("SkuId").unwrap_or(i).as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn statuses(path: &std::path::Path) -> Vec<(String, String)> {
    read_report(path)
        .into_iter()
        .map(|r| (r["name"].clone(), r["result_status"].clone()))
        .collect()
}

/// A sandbox after a first night of `rows` whose requests were all applied and their answers
/// lost, and the folder of the nights (its state file).
async fn after_a_lost_night(rows: &[String]) -> (Sandbox, tempfile::TempDir) {
    let sandbox = start("").await;
    sandbox.set_faults(answers_lost());
    let dir = tempfile::tempdir().unwrap();
    run(night(&sandbox, dir.path(), "night1.csv", rows).await).await;
    (sandbox, dir)
}

fn assert_all_succeeded(report: &std::path::Path) {
    let statuses = statuses(report);
    assert!(
        statuses.iter().all(|(_, status)| status == "succeeded"),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_grown_sheet_sends_an_unanswered_request_again_under_its_id() {
    let sandbox = start("").await;
    sandbox.set_faults(answers_lost());
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..3).map(user_guid).collect();
    let first: Vec<String> = users
        .iter()
        .map(|u| row(u, "SPB", "assign", "", "Émilie"))
        .collect();
    let night1 = run(night(&sandbox, dir.path(), "night1.csv", &first).await).await;
    assert_eq!(night1.count(RowStatus::Failed), 3, "{night1}");
    let applied_night1 = sandbox.requests().iter().filter(|r| r.applied).count();
    assert_eq!(applied_night1, 3, "the sandbox applied all three");

    sandbox.set_faults(Faults::default());
    let mut grown = first.clone();
    grown.push(row(&user_guid(9), "SPB", "assign", "", "Łukasz"));
    let opts = night(&sandbox, dir.path(), "night2.csv", &grown).await;
    let report = report_path(&opts.input);
    let night2 = run(opts).await;
    assert_eq!(night2.completion, Completion::Finished);
    assert_eq!(night2.count(RowStatus::Succeeded), 4, "{night2}");

    let requests = sandbox.requests();
    for user in &users {
        let sent = requests_of(&requests, user);
        assert_eq!(sent.len(), 2, "one request each night for {user}");
        assert_eq!(
            ids(&sent).len(),
            1,
            "{user}: one request ID across both nights"
        );
        assert!(
            sent[1].replay,
            "{user}: answered from the idempotency store"
        );
        assert!(!sent[1].applied, "{user}: nothing applied twice");
    }
    assert_eq!(sandbox.violations(), Default::default());
    for user in users.iter().chain([&user_guid(9)]) {
        assert!(
            sandbox
                .licenses(CONTOSO.parse().unwrap(), user)
                .contains(&SPB.parse::<Uuid>().unwrap())
        );
    }
    assert_all_succeeded(&report);
}

#[tokio::test]
async fn a_group_that_grew_sends_the_earlier_request_first_then_the_new_license() {
    let user = user_guid(1);
    let night1 = [row(&user, "SPB", "assign", "", "Ödön")];
    let (sandbox, dir) = after_a_lost_night(&night1).await;
    let earlier_id = sandbox.requests()[0].request_id.clone().unwrap();

    sandbox.set_faults(Faults::default());
    let night2 = [
        row(&user, "Power BI Pro", "assign", "", "日本語"),
        row(&user, "SPB", "assign", "", "Ödön"),
    ];
    let opts = night(&sandbox, dir.path(), "night2.csv", &night2).await;
    let report = report_path(&opts.input);
    let summary = run(opts).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 2, "{summary}");

    let requests = sandbox.requests();
    let sent = &requests[1..];
    assert_eq!(sent.len(), 2, "the earlier request, then the new license");
    assert_eq!(sent[0].request_id.as_deref(), Some(earlier_id.as_str()));
    assert_eq!(
        skus_of(&sent[0].body, "LicensesToAssign"),
        BTreeSet::from([SPB.to_string()])
    );
    assert!(sent[0].replay);
    assert_ne!(sent[1].request_id.as_deref(), Some(earlier_id.as_str()));
    assert_eq!(
        skus_of(&sent[1].body, "LicensesToAssign"),
        BTreeSet::from([POWER_BI.to_string()])
    );
    assert_eq!(sandbox.violations(), Default::default());
    let held = sandbox.licenses(CONTOSO.parse().unwrap(), &user);
    assert_eq!(
        held,
        BTreeSet::from([SPB.parse().unwrap(), POWER_BI.parse().unwrap()])
    );
    assert_eq!(
        statuses(&report),
        [
            ("日本語".into(), "succeeded".into()),
            ("Ödön".into(), "succeeded".into())
        ]
    );
}

#[tokio::test]
async fn a_license_the_new_sheet_dropped_is_sent_with_the_earlier_request_as_it_was() {
    let user = user_guid(2);
    let night1 = [
        row(&user, "SPB", "assign", "", "a"),
        row(&user, "Power BI Pro", "assign", "", "b"),
        row(&user, "VISIOCLIENT", "assign", "", "c"),
    ];
    let (sandbox, dir) = after_a_lost_night(&night1).await;
    let earlier = sandbox.requests()[0].clone();

    sandbox.set_faults(Faults::default());
    let night2 = [row(&user, "SPB", "assign", "", "a")];
    let opts = night(&sandbox, dir.path(), "night2.csv", &night2).await;
    let report = report_path(&opts.input);
    run(opts).await;

    let requests = sandbox.requests();
    assert_eq!(requests.len(), 2, "only the earlier request, once more");
    assert_eq!(requests[1].request_id, earlier.request_id);
    assert_eq!(
        skus_of(&requests[1].body, "LicensesToAssign"),
        skus_of(&earlier.body, "LicensesToAssign"),
        "the body of the earlier request, with the two licenses the sheet no longer has"
    );
    assert!(requests[1].replay);
    assert_eq!(sandbox.violations(), Default::default());
    assert_eq!(statuses(&report), [("a".into(), "succeeded".into())]);
}

#[tokio::test]
async fn a_remove_whose_answer_was_lost_is_not_sent_again_under_a_new_id() {
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let user = user_guid(3);
    run(night(
        &sandbox,
        dir.path(),
        "night0.csv",
        &[row(&user, "SPB", "assign", "", "x")],
    )
    .await)
    .await;
    sandbox.set_faults(answers_lost());
    let removal = row(&user, "SPB", "remove", "", "x");
    let night1 = run(night(
        &sandbox,
        dir.path(),
        "night1.csv",
        std::slice::from_ref(&removal),
    )
    .await)
    .await;
    assert_eq!(night1.count(RowStatus::Failed), 1);
    assert!(
        sandbox.licenses(CONTOSO.parse().unwrap(), &user).is_empty(),
        "applied all the same"
    );

    sandbox.set_faults(Faults::default());
    let grown = [removal, row(&user_guid(4), "SPB", "assign", "", "y")];
    let summary = run(night(&sandbox, dir.path(), "night2.csv", &grown).await).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 2, "{summary}");
    let requests = sandbox.requests();
    let removes: Vec<&RecordedRequest> = requests_of(&requests, &user)
        .into_iter()
        .filter(|r| !skus_of(&r.body, "LicensesToRemove").is_empty())
        .collect();
    assert_eq!(removes.len(), 2);
    assert_eq!(ids(&removes).len(), 1, "the remove kept its request ID");
    assert!(removes[1].replay);
    assert_eq!(sandbox.violations(), Default::default());
}

#[tokio::test]
async fn a_changed_license_waits_while_the_earlier_request_still_gets_no_answer() {
    let sandbox = start("").await;
    sandbox.set_faults(answers_lost());
    let dir = tempfile::tempdir().unwrap();
    let user = user_guid(5);
    run(night(
        &sandbox,
        dir.path(),
        "night1.csv",
        &[row(&user, "SPB", "assign", "SWAY", "x")],
    )
    .await)
    .await;
    let earlier_id = sandbox.requests()[0].request_id.clone().unwrap();

    // Night 2 asks for the same license with other excluded plans while the service answers
    // 503 to everything: the earlier request is tried again, the new one is held back.
    sandbox.set_faults(Faults {
        transient_rate: 1.0,
        ..Faults::default()
    });
    let changed = [row(&user, "SPB", "assign", "TEAMS1", "x")];
    let opts = night(&sandbox, dir.path(), "night2.csv", &changed).await;
    let report = report_path(&opts.input);
    run(opts).await;
    let night2: Vec<RecordedRequest> = sandbox.requests()[1..].to_vec();
    assert_eq!(night2.len(), 1, "the changed license was not sent");
    assert_eq!(night2[0].request_id.as_deref(), Some(earlier_id.as_str()));
    let rows = read_report(&report);
    assert_eq!(rows[0]["result_status"], "failed");
    assert!(
        rows[0]["result_message"].contains("an earlier request for this license got no answer"),
        "{}",
        rows[0]["result_message"]
    );

    // Night 3, the same sheet, with the service back: the earlier request first, then the
    // change of excluded plans under a new ID.
    sandbox.set_faults(Faults::default());
    let opts = night(&sandbox, dir.path(), "night2.csv", &changed).await;
    let summary = run(opts).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 1, "{summary}");
    let night3: Vec<RecordedRequest> = sandbox.requests()[2..].to_vec();
    assert_eq!(night3.len(), 2);
    assert_eq!(night3[0].request_id.as_deref(), Some(earlier_id.as_str()));
    assert!(night3[0].replay);
    assert_ne!(night3[1].request_id.as_deref(), Some(earlier_id.as_str()));
    assert!(
        night3[1]
            .body
            .to_string()
            .contains("57ff2da0-773e-42df-b2af-ffb7a2317929")
    );
    assert_eq!(sandbox.violations(), Default::default());
}

#[tokio::test]
async fn an_answered_request_is_not_carried_again() {
    let user = user_guid(6);
    let sheet = [row(&user, "SPB", "assign", "", "x")];
    let (sandbox, dir) = after_a_lost_night(&sheet).await;
    sandbox.set_faults(Faults::default());
    run(night(&sandbox, dir.path(), "night2.csv", &sheet).await).await;
    // Night 3 of a third file: already done (night 2's answer settled night 1's request).
    let summary = run(night(&sandbox, dir.path(), "night3.csv", &sheet).await).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 1);
    assert_eq!(sandbox.requests().len(), 2, "nothing sent on night 3");
    let journal =
        license_batch::journal::Journal::open_to_read(&dir.path().join("state.sqlite")).unwrap();
    let runs: HashMap<i64, Vec<(String, u64)>> = journal
        .recent_runs(10)
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.counts))
        .collect();
    assert_eq!(
        runs[&1],
        [("succeeded".to_string(), 1)],
        "night 1's row got the answer night 2 received for its request"
    );
}

/// The binary is killed (SIGKILL) while four requests are in flight — applied, their answers
/// held back — and six were never sent; the next night runs a grown sheet (a new file, so a new
/// run). Every operation keeps the one request ID of the killed run.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_a_grown_sheet_keeps_the_request_ids_of_the_killed_run() {
    let sandbox = start("").await;
    sandbox.set_faults(Faults {
        apply_then_timeout_rate: 1.0,
        hold_secs: Some(120),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let first: Vec<String> = (0..10)
        .map(|i| row(&user_guid(i), "SPB", "assign", "", "Zoë"))
        .collect();
    write_csv(dir.path(), "night1.csv", HEADER, &first);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_license-batch"))
        .args([
            "run",
            "night1.csv",
            "--state",
            "state.sqlite",
            "--concurrency",
            "4",
        ])
        .args(["--requests-per-minute", "60000", "-q"])
        .current_dir(dir.path())
        .env_clear()
        .env("LICENSE_BATCH_API_BASE_URL", sandbox.url.to_string())
        .env("LICENSE_BATCH_AUTH_AUTHORITY", sandbox.url.to_string())
        .env("LICENSE_BATCH_TENANT_ID", license_batch::sandbox::TENANT_ID)
        .env("LICENSE_BATCH_CLIENT_ID", license_batch::sandbox::CLIENT_ID)
        .env(
            "LICENSE_BATCH_CLIENT_SECRET",
            license_batch::sandbox::CLIENT_SECRET,
        )
        .env(
            "LICENSE_BATCH_REFRESH_TOKEN",
            license_batch::sandbox::REFRESH_TOKEN,
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The kill follows the sandbox's own count: four requests received (and applied).
    sandbox.wait_for(4, 0).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let killed: Vec<RecordedRequest> = sandbox.requests();
    assert_eq!(killed.iter().filter(|r| r.applied).count(), killed.len());

    sandbox.set_faults(Faults::default());
    let mut grown = first.clone();
    grown.extend((10..15).map(|i| row(&user_guid(i), "SPB", "assign", "", "Ångström")));
    let summary = run(night(&sandbox, dir.path(), "night2.csv", &grown).await).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 15, "{summary}");

    let requests = sandbox.requests();
    for r in &killed {
        let sent = requests_of(&requests, &r.user);
        assert_eq!(
            ids(&sent).len(),
            1,
            "{}: one request ID across the kill",
            r.user
        );
        assert!(
            sent[1..].iter().all(|s| s.replay),
            "{}: applied once",
            r.user
        );
    }
    assert_eq!(sandbox.violations(), Default::default());
    let applied_per_user: HashMap<String, usize> =
        requests
            .iter()
            .filter(|r| r.applied)
            .fold(HashMap::new(), |mut m, r| {
                *m.entry(r.user.to_lowercase()).or_default() += 1;
                m
            });
    assert_eq!(applied_per_user.len(), 15);
    assert!(
        applied_per_user.values().all(|&n| n == 1),
        "{applied_per_user:?}"
    );
}

/// A request that may have been applied before a resume, then throttled in the resumed run
/// past `retry.max_elapsed_secs`: the 429 says only that *this* attempt was not processed, so
/// the request still has no definitive answer and the next run sends it under its ID again.
#[tokio::test]
async fn a_request_throttled_out_after_a_lost_answer_keeps_its_id_for_the_next_run() {
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let user = user_guid(6);
    let assign = row(&user, "SPB", "assign", "", "Zoë");
    run(night(&sandbox, dir.path(), "night0.csv", &[assign]).await).await;

    // Night 1: the remove is applied, its answer lost.
    sandbox.set_faults(answers_lost());
    let removal = [row(&user, "SPB", "remove", "", "Zoë")];
    run(night(&sandbox, dir.path(), "night1.csv", &removal).await).await;
    assert!(sandbox.licenses(CONTOSO.parse().unwrap(), &user).is_empty());
    let earlier_id = sandbox.requests()[1].request_id.clone().unwrap();

    // Night 2: every license update is answered 429 with a wait longer than the run may
    // spend on one group, so it gives up after one throttled attempt.
    sandbox.set_faults(Faults {
        throttle_every: Some(1),
        retry_after_secs: Some(120),
        ..Faults::default()
    });
    let mut opts = night(&sandbox, dir.path(), "night1.csv", &removal).await;
    opts.settings.retry.max_elapsed = std::time::Duration::from_secs(60);
    let report = report_path(&opts.input);
    run(opts).await;
    let night2: Vec<RecordedRequest> = sandbox.requests()[2..].to_vec();
    assert_eq!(night2.len(), 1, "{night2:?}");
    assert_eq!(night2[0].status, 429);
    assert_eq!(night2[0].request_id.as_deref(), Some(earlier_id.as_str()));
    assert_eq!(statuses(&report), [("Zoë".into(), "failed".into())]);

    // Night 3, the service back: the remove goes out under the ID it had, and is answered
    // from the idempotency store, not applied a second time under a new one.
    sandbox.set_faults(Faults::default());
    let opts = night(&sandbox, dir.path(), "night1.csv", &removal).await;
    let report = report_path(&opts.input);
    run(opts).await;
    let night3: Vec<RecordedRequest> = sandbox.requests()[3..].to_vec();
    assert_eq!(night3.len(), 1, "{night3:?}");
    assert_eq!(night3[0].request_id.as_deref(), Some(earlier_id.as_str()));
    assert!(night3[0].replay);
    assert_eq!(sandbox.violations(), Default::default());
    assert_eq!(statuses(&report), [("Zoë".into(), "succeeded".into())]);
}

/// A group that ended a night with two requests in doubt (the earlier night's, carried, and its
/// own) carries both into the next night, each under its own ID with its own licenses: they
/// are two requests the API may have applied, not one.
#[tokio::test]
async fn two_unanswered_requests_of_one_group_are_carried_as_two() {
    let sandbox = start("").await;
    sandbox.set_faults(answers_lost());
    let dir = tempfile::tempdir().unwrap();
    let user = user_guid(7);
    let spb = row(&user, "SPB", "assign", "", "Ångström");
    run(night(
        &sandbox,
        dir.path(),
        "night1.csv",
        std::slice::from_ref(&spb),
    )
    .await)
    .await;
    // Night 2: the service answers 503 to everything, so the earlier request (carried) and
    // the group's own one (the new license) both end without an answer.
    sandbox.set_faults(Faults {
        transient_rate: 1.0,
        ..Faults::default()
    });
    let both = [
        spb.clone(),
        row(&user, "Power BI Pro", "assign", "", "Łukasz"),
    ];
    run(night(&sandbox, dir.path(), "night2.csv", &both).await).await;
    let night2: Vec<RecordedRequest> = sandbox.requests()[1..].to_vec();
    assert_eq!(
        night2.len(),
        2,
        "the carried request, then the group's own: {night2:?}"
    );
    let sent: HashMap<String, BTreeSet<String>> = night2
        .iter()
        .map(|r| {
            (
                r.request_id.clone().unwrap(),
                skus_of(&r.body, "LicensesToAssign"),
            )
        })
        .collect();

    sandbox.set_faults(Faults::default());
    let grown = [
        both[0].clone(),
        both[1].clone(),
        row(&user_guid(8), "SPB", "assign", "", "日本語"),
    ];
    let opts = night(&sandbox, dir.path(), "night3.csv", &grown).await;
    let report = report_path(&opts.input);
    run(opts).await;
    let night3: Vec<RecordedRequest> = sandbox.requests()[3..]
        .iter()
        .filter(|r| r.user.eq_ignore_ascii_case(&user))
        .cloned()
        .collect();
    let again: HashMap<String, BTreeSet<String>> = night3
        .iter()
        .map(|r| {
            (
                r.request_id.clone().unwrap(),
                skus_of(&r.body, "LicensesToAssign"),
            )
        })
        .collect();
    assert_eq!(
        again, sent,
        "the same two requests, each with its own licenses"
    );
    // The earlier one was applied on night 1 (answered from the store), the group's own one
    // never reached the service: applied now, once.
    let replayed: Vec<bool> = night3.iter().map(|r| r.replay).collect();
    assert_eq!(replayed, [true, false], "{night3:?}");
    assert_eq!(sandbox.violations(), Default::default());
    assert_all_succeeded(&report);
}

/// An earlier request still in doubt is sent again only by a run that asks for one of its
/// licenses (same SKU and action): a night that asks for another SKU for the same user sends
/// only that.
#[tokio::test]
async fn an_unanswered_request_waits_for_a_run_that_asks_for_its_license() {
    let user = user_guid(11);
    let night1 = [row(&user, "SPB", "assign", "", "Søren")];
    let (sandbox, dir) = after_a_lost_night(&night1).await;
    let earlier = sandbox.requests()[0].request_id.clone();

    sandbox.set_faults(Faults::default());
    let night2 = [row(&user, "Power BI Pro", "assign", "", "Søren")];
    run(night(&sandbox, dir.path(), "night2.csv", &night2).await).await;
    let sent: Vec<RecordedRequest> = sandbox.requests()[1..].to_vec();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_ne!(sent[0].request_id, earlier);
    assert_eq!(
        skus_of(&sent[0].body, "LicensesToAssign"),
        BTreeSet::from([POWER_BI.to_string()])
    );
}

/// An earlier request one of whose licenses a newer run changed is not sent again: its answer
/// from the idempotency store would describe a tenant that no longer is. The license asked for
/// again goes out in a request of its own.
#[tokio::test]
async fn an_unanswered_request_a_newer_run_changed_is_not_replayed() {
    let user = user_guid(13);
    let night1 = [
        row(&user, "SPB", "assign", "", "Zoë"),
        row(&user, "Power BI Pro", "assign", "", "Zoë"),
    ];
    let (sandbox, dir) = after_a_lost_night(&night1).await;
    let earlier = sandbox.requests()[0].request_id.clone();

    // Night 2 removes Power BI: another action, so the earlier request is not carried.
    sandbox.set_faults(Faults::default());
    let night2 = [row(&user, "Power BI Pro", "remove", "", "Zoë")];
    run(night(&sandbox, dir.path(), "night2.csv", &night2).await).await;
    assert_eq!(sandbox.requests().len(), 2);
    assert_ne!(sandbox.requests()[1].request_id, earlier);

    let night3 = [row(&user, "SPB", "assign", "", "Zoë")];
    run(night(&sandbox, dir.path(), "night3.csv", &night3).await).await;
    let sent: Vec<RecordedRequest> = sandbox.requests()[2..].to_vec();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_ne!(
        sent[0].request_id, earlier,
        "not the earlier request, replayed"
    );
    assert_eq!(
        skus_of(&sent[0].body, "LicensesToAssign"),
        BTreeSet::from([SPB.to_string()])
    );
    assert_eq!(
        sandbox.licenses(CONTOSO.parse().unwrap(), &user),
        BTreeSet::from([SPB.parse().unwrap()])
    );
}

/// A request applied and its answer lost, waiting to be retried, when another call finds the
/// customer blocked (403 900309): it is not sent again in this run, and it stays without a
/// definitive answer, so the next run (the customer unblocked) sends it again under its own
/// ID — a replay, not the same change under a new ID.
#[tokio::test]
async fn a_request_in_doubt_when_its_customer_is_blocked_keeps_its_id() {
    let sandbox = start(&format!(
        "[[customers]]\nid = \"{CONTOSO}\"\nblocked_after_requests = 1\n"
    ))
    .await;
    sandbox.set_faults(answers_lost());
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        row(&user_guid(1), "SPB", "assign", "", "Émilie"),
        row(&user_guid(2), "SPB", "assign", "", "日本語"),
    ];
    let mut opts = night(&sandbox, dir.path(), "night1.csv", &rows).await;
    // Both in flight at once; the one applied (its answer lost) waits 2 s before its retry,
    // long after the other's 403 blocked the customer.
    opts.settings.retry.max_attempts = 3;
    opts.settings.retry.min_delay = std::time::Duration::from_secs(2);
    opts.settings.limits.concurrency = license_batch::config::Concurrency::fixed(2);
    run(opts).await;
    let first = sandbox.requests();
    let statuses: BTreeSet<u16> = first.iter().map(|r| r.status).collect();
    assert_eq!(statuses, BTreeSet::from([503, 403]), "{first:?}");
    assert_eq!(
        first.len(),
        2,
        "the one in doubt was not sent again to a blocked customer"
    );
    let in_doubt = first.iter().find(|r| r.applied).unwrap().clone();

    // The next night asks for that license again (the customer unblocked; its rule would
    // block it again at the next call, so the sheet holds only this user).
    sandbox.set_faults(Faults::default());
    sandbox.set_conditional_access_blocked(CONTOSO.parse().unwrap(), false);
    let again_rows: Vec<String> = rows
        .iter()
        .filter(|r| r.to_lowercase().contains(&in_doubt.user.to_lowercase()))
        .cloned()
        .collect();
    assert_eq!(again_rows.len(), 1);
    let night2 = night(&sandbox, dir.path(), "night2.csv", &again_rows).await;
    let report = report_path(&night2.input);
    run(night2).await;
    assert_all_succeeded(&report);
    let again = requests_of(&sandbox.requests()[2..], &in_doubt.user)
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        again[0].request_id, in_doubt.request_id,
        "sent again under its own ID"
    );
    assert!(again[0].replay, "answered from the idempotency store");
    assert_eq!(sandbox.violations(), Default::default());
}
