//! The record of a night is never lost: a panic after planning still writes the report and
//! aborts the run resumably (exit 3); a report or journal path that would overwrite the input,
//! the journal or one another is refused before anything is sent (exit 2); a sheet full of
//! `Émilie`, `Łukasz` and `日本語` runs to its report.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use license_batch::engine::Observer;
use license_batch::journal::Journal;
use license_batch::outcome::RowStatus;
use license_batch::run::ObserverSlot;
use license_batch::{Completion, exit_code_for};

const BIN: &str = env!("CARGO_BIN_EXE_license-batch");
const HEADER: &str = "customer_id,user_id,sku,name";

/// Panics on the `nth` finished group (in the engine's collecting loop), or in a worker on its
/// first retry.
struct Panics {
    nth_group: Option<u64>,
    on_retry: bool,
    finished: AtomicU64,
}

impl Observer for Panics {
    fn group_finished(&self, _rows: u64) {
        let n = self.finished.fetch_add(1, Ordering::SeqCst) + 1;
        if self.nth_group == Some(n) {
            panic!("injected into the engine after {n} groups: Émilie");
        }
    }

    fn retrying(&self) {
        if self.on_retry {
            panic!("injected into a worker: 日本語");
        }
    }
}

fn sheet(dir: &Path, users: usize) -> std::path::PathBuf {
    let rows: Vec<String> = (0..users)
        .map(|i| format!("{CONTOSO},{},SPB,Łukasz {i}", user_guid(i)))
        .collect();
    write_csv(dir, "sheet.csv", HEADER, &rows)
}

/// After the panic: exit 3 with its message, every row in the report (pending where not
/// finished), the run recorded as aborted; the same command then finishes it, and the
/// sandbox applied every group once.
async fn assert_panic_loses_nothing(scenario: &str, observer: Panics, message: &str) {
    let sandbox = start(scenario).await;
    let dir = tempfile::tempdir().unwrap();
    let input = sheet(dir.path(), 8);
    let mut opts = options(&sandbox, &input);
    opts.settings.limits.concurrency = license_batch::config::Concurrency::fixed(1);
    opts.observer = ObserverSlot(Some(Arc::new(observer)));
    let result = license_batch::run(opts).await;
    assert_eq!(exit_code_for(&result), 3);
    let summary = result.unwrap();
    let Completion::Aborted(reason) = &summary.completion else {
        panic!("not aborted: {:?}", summary.completion);
    };
    assert!(
        reason.contains("panicked") && reason.contains(message),
        "{reason}"
    );
    assert!(summary.to_string().contains(message), "{summary}");

    let report = read_report(&report_path(&input));
    assert_eq!(report.len(), 8, "every row is in the report");
    let pending = report
        .iter()
        .filter(|r| r["result_status"] == "pending")
        .count();
    assert!(pending > 0, "unfinished rows are pending");
    assert!(
        report
            .iter()
            .all(|r| matches!(r["result_status"].as_str(), "pending" | "succeeded"))
    );
    let journal = Journal::open_to_read(&input.with_file_name("state.sqlite")).unwrap();
    assert_eq!(journal.recent_runs(1).unwrap()[0].outcome, "aborted");
    drop(journal);

    let resumed = run(options(&sandbox, &input)).await;
    assert_eq!(resumed.completion, Completion::Finished, "{resumed}");
    assert_eq!(resumed.run_id, summary.run_id, "the same run, resumed");
    assert_eq!(resumed.count(RowStatus::Succeeded), 8);
    let mut applied: HashMap<String, usize> = HashMap::new();
    for r in sandbox.requests().iter().filter(|r| r.applied) {
        *applied.entry(r.user.clone()).or_default() += 1;
    }
    assert_eq!(applied.len(), 8);
    assert!(applied.values().all(|&n| n == 1), "{applied:?}");
    assert_eq!(sandbox.violations(), Default::default());
}

#[tokio::test]
async fn a_panic_in_the_engine_still_writes_the_report_and_the_run_resumes() {
    let observer = Panics {
        nth_group: Some(3),
        on_retry: false,
        finished: AtomicU64::new(0),
    };
    assert_panic_loses_nothing(
        "",
        observer,
        "injected into the engine after 3 groups: Émilie",
    )
    .await;
}

#[tokio::test]
async fn a_panic_in_a_worker_still_writes_the_report_and_the_run_resumes() {
    let observer = Panics {
        nth_group: None,
        on_retry: true,
        finished: AtomicU64::new(0),
    };
    // The third call answers 503: its worker retries, and panics.
    assert_panic_loses_nothing(
        "[faults]\ntransient_every = 3\n",
        observer,
        "injected into a worker: 日本語",
    )
    .await;
}

/// `license-batch ARGS` in `dir` against a sandbox server; the server's record afterwards.
async fn cli(dir: &Path, server: &SandboxServer, args: &[&str]) -> (Output, serde_json::Value) {
    let output = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(server.env())
        .output()
        .unwrap();
    (output, server.record().await)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn output_paths_that_would_destroy_the_input_or_the_journal_are_refused_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = SandboxServer::start(dir.path(), "");
    let input = sheet(dir.path(), 2);
    let original = std::fs::read(&input).unwrap();
    let run = ["run", "sheet.csv", "--state", "state.sqlite", "-q"];
    for (extra, collides_with) in [
        (vec!["--report", "sheet.csv"], "the input file"),
        (vec!["--report", "./sheet.csv"], "the input file"),
        (vec!["--report", "state.sqlite"], "the journal (--state)"),
        (vec!["--report", "./state.sqlite-wal"], "companion file"),
        (vec!["--report", "state.sqlite-shm"], "companion file"),
        (vec!["--report", "state.sqlite.lock"], "companion file"),
        (vec!["--summary-json", "./sheet.csv"], "the input file"),
        (
            vec!["--metrics-file", "state.sqlite"],
            "the journal (--state)",
        ),
        (
            vec!["--summary-json", "sheet.report.csv"],
            "the report (--report) as well",
        ),
        (
            vec!["--summary-json", "n.json", "--metrics-file", "./n.json"],
            "the summary JSON (--summary-json) as well",
        ),
    ] {
        let args: Vec<&str> = run.iter().copied().chain(extra.iter().copied()).collect();
        let (output, record) = cli(dir.path(), &server, &args).await;
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {message}");
        assert!(message.contains(collides_with), "{extra:?}: {message}");
        assert_eq!(std::fs::read(&input).unwrap(), original, "{extra:?}");
        assert_eq!(record["requests"].as_array().unwrap().len(), 0, "{extra:?}");
        assert_eq!(record["token_requests"], 0, "{extra:?}: not even a token");
    }
    let (output, record) = cli(
        dir.path(),
        &server,
        &["run", "sheet.csv", "--state", "./sheet.csv"],
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("the journal (--state) ./sheet.csv is the input file"));
    assert_eq!(record["token_requests"], 0);
    assert_eq!(std::fs::read(&input).unwrap(), original);
    assert!(!dir.path().join("state.sqlite").exists(), "no journal made");

    // A real run, then the journal is guarded against the report command too.
    let (output, _) = cli(dir.path(), &server, &run).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let journal = std::fs::read(dir.path().join("state.sqlite")).unwrap();
    for target in ["state.sqlite", "sheet.csv"] {
        let (output, _) = cli(
            dir.path(),
            &server,
            &["report", "--state", "state.sqlite", "--output", target],
        )
        .await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{target}: {}",
            stderr(&output)
        );
    }
    assert_eq!(
        std::fs::read(dir.path().join("state.sqlite")).unwrap(),
        journal
    );
    assert_eq!(std::fs::read(&input).unwrap(), original);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("state.sqlite"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn the_emilie_sheet_runs_to_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("émilie.csv");
    std::fs::write(
        &input,
        "customer_id,user_id,sku,name\n7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90,x1@contoso.com,SPB,Émilie\n",
    )
    .unwrap();
    let command = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .env_clear()
            .output()
            .unwrap()
    };
    let output = command(&["run", "émilie.csv", "--sandbox", "-q"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"));
    let report_file = report_path(&input);
    let report = read_report(&report_file);
    assert_eq!(report[0]["name"], "Émilie");
    assert_eq!(report[0]["result_status"], "succeeded");

    let status = command(&["status"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("finished"));
    let rewritten = command(&["report", "--output", "again.csv"]);
    assert_eq!(rewritten.status.code(), Some(0), "{}", stderr(&rewritten));
    // The same rows; only the finish times may differ by the second they were written in.
    assert_eq!(read_report(&dir.path().join("again.csv")), report);
}

/// A report that cannot be written is found before anything is sent: a night's work with no
/// record of it is what this file is about.
#[tokio::test]
async fn a_report_folder_that_does_not_exist_stops_the_run_before_it_sends() {
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(
        dir.path(),
        "sheet.csv",
        HEADER,
        &[format!("{CONTOSO},{},SPB,Émilie", user_guid(1))],
    );
    let mut opts = options(&sandbox, &input);
    opts.report = Some(dir.path().join("no-such-folder/report.csv"));
    let result = license_batch::run(opts).await;
    assert!(
        matches!(result, Err(license_batch::Error::Write { .. })),
        "{result:?}"
    );
    assert_eq!(exit_code_for(&result), 2);
    assert!(sandbox.requests().is_empty(), "sent before the check");
}
