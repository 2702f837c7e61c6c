//! The real binary killed (SIGKILL) at many moments of a run, and stopped by SIGTERM, against a
//! sandbox *server process* that outlives it; the same command is re-run each time. The
//! sandbox's ground truth must show every group applied exactly once, under one request ID.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::SandboxServer;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_license-batch");
const CONTOSO: &str = "7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90";

/// The operator's command, always the same.
fn run_command(dir: &Path, url: &str) -> Command {
    let mut command = logging_command(dir, url);
    command.arg("-q");
    command
}

/// The operator's command with its warnings on stderr.
fn logging_command(dir: &Path, url: &str) -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "run",
            "sheet.csv",
            "--state",
            "state.sqlite",
            "--requests-per-minute",
            "60000",
            "--concurrency",
            "4",
        ])
        .current_dir(dir)
        .env_clear()
        .env("LICENSE_BATCH_API_BASE_URL", url)
        .env("LICENSE_BATCH_AUTH_AUTHORITY", url)
        .env("LICENSE_BATCH_TENANT_ID", "sandbox-partner.onmicrosoft.com")
        .env(
            "LICENSE_BATCH_CLIENT_ID",
            "00000000-5a4d-4b0c-8000-000000000001",
        )
        .env("LICENSE_BATCH_CLIENT_SECRET", "sandbox-client-secret")
        .env("LICENSE_BATCH_REFRESH_TOKEN", "sandbox-refresh-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn write_sheet(dir: &Path, users: usize, note_bytes: usize) -> PathBuf {
    let note = "n".repeat(note_bytes);
    let mut text = String::from("customer_id,user_id,sku,notes\n");
    for i in 0..users {
        text.push_str(&format!("{CONTOSO},user{i:04}@contoso.com,SPB,{note}\n"));
    }
    let path = dir.join("sheet.csv");
    std::fs::write(&path, text).unwrap();
    path
}

/// The same command, left to finish: it must exit 0.
fn run_to_completion(dir: &Path, url: &str) {
    let output = run_command(dir, url).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

fn sigkill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Every user is one group here: applied exactly once, and only ever under one request ID.
fn assert_ground_truth(record: &Value, users: usize) -> u64 {
    let violations = &record["violations"];
    for key in [
        "missing_request_id",
        "malformed_request_id",
        "request_id_reused_with_other_body",
        "mixed_license_groups",
    ] {
        assert_eq!(violations[key], 0, "{key}: {violations}");
    }
    let mut per_user: HashMap<String, (u64, Vec<String>)> = HashMap::new();
    let mut replays = 0;
    for r in record["requests"].as_array().unwrap() {
        let entry = per_user
            .entry(r["user"].as_str().unwrap().to_lowercase())
            .or_default();
        entry.0 += u64::from(r["applied"].as_bool().unwrap());
        let id = r["request_id"].as_str().unwrap().to_string();
        if !entry.1.contains(&id) {
            entry.1.push(id);
        }
        replays += u64::from(r["replay"].as_bool().unwrap());
    }
    assert_eq!(per_user.len(), users);
    for (user, (applied, ids)) in &per_user {
        assert_eq!(*applied, 1, "{user} applied {applied} times");
        assert_eq!(
            ids.len(),
            1,
            "{user} was sent under several request IDs: {ids:?}"
        );
    }
    replays
}

fn report_statuses(path: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for status in common::report_statuses(path) {
        *counts.entry(status).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_any_moment_loses_nothing_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let users = 120;
    // Applied, then answered 15 ms later: kills land between "the tenant changed" and "the
    // client heard of it". The first token call is held (a minute), so the first kill lands
    // before the first send however late it comes; the later runs get theirs at once.
    let sandbox = SandboxServer::start(
        dir.path(),
        "[auth]\ntoken_delay_ms = 60000\ntoken_delay_calls = 1\n[faults]\nanswer_delay_ms = 15\n",
    );
    // Wide rows make the final report big enough that a kill can land while it is written.
    write_sheet(dir.path(), users, 20_000);
    let report = dir.path().join("sheet.report.csv");

    // 1. Before the first send: the run is journaled and waits for its token.
    let (requests, tokens) = sandbox.wait(0, 0).await;
    let child = run_command(dir.path(), &sandbox.url).spawn().unwrap();
    sandbox.wait(requests, tokens + 1).await;
    sigkill(child);
    assert_eq!(
        sandbox.wait(0, 0).await.0,
        0,
        "killed before anything was sent"
    );
    assert!(dir.path().join("state.sqlite").exists());

    // 2. Mid-run, three times.
    for step in [10, 30, 50] {
        let (requests, _) = sandbox.wait(0, 0).await;
        let child = run_command(dir.path(), &sandbox.url).spawn().unwrap();
        sandbox.wait(requests + step, 0).await;
        sigkill(child);
    }
    assert!(!report.exists(), "no run has finished yet");

    // 3. During the final report write: killed the moment its temporary file appears.
    let mut hit_the_write = false;
    for _ in 0..5 {
        let mut inotify = inotify::Inotify::init().unwrap();
        inotify
            .watches()
            .add(dir.path(), inotify::WatchMask::CREATE)
            .unwrap();
        let child = run_command(dir.path(), &sandbox.url).spawn().unwrap();
        tokio::task::spawn_blocking(move || {
            let mut buffer = [0u8; 4096];
            loop {
                let events = inotify.read_events_blocking(&mut buffer).unwrap();
                if events
                    .into_iter()
                    .any(|e| e.name.is_some_and(|n| n == ".sheet.report.csv.tmp"))
                {
                    return;
                }
            }
        })
        .await
        .unwrap();
        sigkill(child);
        if !report.exists() {
            hit_the_write = true;
            break;
        }
        std::fs::remove_file(&report).unwrap();
    }
    assert!(hit_the_write, "never killed inside the report write");

    // 4. The same command once more finishes the job.
    run_to_completion(dir.path(), &sandbox.url);
    assert_eq!(
        report_statuses(&report),
        HashMap::from([("succeeded".to_string(), users)])
    );
    assert!(
        !dir.path().join(".sheet.report.csv.tmp").exists(),
        "stale temporary report replaced"
    );

    let replays = assert_ground_truth(&sandbox.record().await, users);
    assert!(
        replays > 0,
        "some kills landed after a change was applied but before it was journaled"
    );

    let status = Command::new(BIN)
        .args(["status", "--state", "state.sqlite"])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("finished")),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_writes_the_report_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let users = 60;
    // Answers take 300 ms: 60 groups at 4 in flight are 4.5 s of work, so the signal after the
    // 10th arrival lands with most of it still to do, however loaded the machine.
    let sandbox = SandboxServer::start(dir.path(), "[faults]\nanswer_delay_ms = 300\n");
    write_sheet(dir.path(), users, 10);
    let report = dir.path().join("sheet.report.csv");

    let child = run_command(dir.path(), &sandbox.url).spawn().unwrap();
    sandbox.wait(10, 0).await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&output.stdout).contains("INTERRUPTED"));
    let statuses = report_statuses(&report);
    assert!(
        statuses.get("pending").copied().unwrap_or(0) > 0,
        "{statuses:?}"
    );
    assert_eq!(statuses.values().sum::<usize>(), users);

    run_to_completion(dir.path(), &sandbox.url);
    assert_eq!(
        report_statuses(&report),
        HashMap::from([("succeeded".to_string(), users)])
    );
    assert_ground_truth(&sandbox.record().await, users);
}

/// The second signal is sent once the first was taken (the run says so on stderr), so the two
/// cannot merge into one. Answers held 3 s keep the graceful stop from finishing first: it
/// would wait for them and write the report; exiting at once writes none.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once_and_the_journal_stays_consistent() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let users = 12;
    let sandbox = SandboxServer::start(dir.path(), "[faults]\nanswer_delay_ms = 3000\n");
    write_sheet(dir.path(), users, 10);
    let report = dir.path().join("sheet.report.csv");

    let mut child = logging_command(dir.path(), &sandbox.url).spawn().unwrap();
    sandbox.wait(2, 0).await;
    let term = |child: &Child| {
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    term(&child);
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let taken = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            seen.push_str(&line);
            if line.contains("signal received") {
                return (stderr, seen, true);
            }
            line.clear();
        }
        (stderr, seen, false)
    })
    .await
    .unwrap();
    let (mut stderr, mut seen, first_taken) = taken;
    assert!(first_taken, "the first signal was never taken: {seen}");
    term(&child);
    std::io::Read::read_to_string(&mut stderr, &mut seen).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("second signal, exiting now"), "{seen}");
    assert!(
        !report.exists(),
        "the report was written: the run stopped gracefully, not at once"
    );

    run_to_completion(dir.path(), &sandbox.url);
    let replays = assert_ground_truth(&sandbox.record().await, users);
    assert!(
        replays > 0,
        "the calls cut off by the exit were applied, and resent under their request IDs"
    );
}
