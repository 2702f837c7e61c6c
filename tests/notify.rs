//! The end-of-run notification (SPEC §13), proven by what the sandbox's webhook sink received:
//! each format, on `always` and on `problems`; a webhook that never answers delays the exit by
//! no more than its bound and leaves the exit code alone; the URL is never printed.

mod common;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const HEADER: &str = "customer_id,user_id,sku";

/// A sheet of `good` valid rows and, when `broken`, one invalid row (exit 1).
fn sheet(dir: &Path, good: usize, broken: bool) {
    let names = ["émilie", "łukasz", "日本語"];
    let mut rows: Vec<String> = (0..good)
        .map(|i| format!("{CONTOSO},{}.{i}@contoso.example,SPB", names[i % 3]))
        .collect();
    if broken {
        rows.push(format!("{CONTOSO},zoë@contoso.example,NO_SUCH_SKU"));
    }
    write_csv(dir, "sheet.csv", HEADER, &rows);
}

fn run_with(
    server: &SandboxServer,
    dir: &Path,
    config: &str,
    webhook: &str,
) -> std::process::Output {
    std::fs::write(dir.join("config.toml"), config).unwrap();
    Command::new(env!("CARGO_BIN_EXE_license-batch"))
        .args([
            "run",
            "sheet.csv",
            "-q",
            "--config",
            "config.toml",
            "--fresh",
        ])
        .current_dir(dir)
        .env_clear()
        .envs(server.env())
        .env("LICENSE_BATCH_WEBHOOK_URL", webhook)
        .output()
        .unwrap()
}

fn posted(server: &SandboxServer) -> Vec<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(server.record())["webhooks"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn each_format_is_posted_once_on_always_and_only_for_problems_on_problems() {
    let dir = tempfile::tempdir().unwrap();
    let server = SandboxServer::start(dir.path(), "");
    let webhook = format!("{}sandbox/webhook", server.url);
    for format in ["json", "teams", "slack"] {
        for (on, broken, expect_post) in [
            ("always", false, true),
            ("problems", false, false),
            ("problems", true, true),
        ] {
            sheet(dir.path(), 3, broken);
            let before = posted(&server).len();
            let config = format!("[notify]\nformat = \"{format}\"\non = \"{on}\"\n");
            let out = run_with(&server, dir.path(), &config, &webhook);
            let code = if broken { 1 } else { 0 };
            assert_eq!(
                out.status.code(),
                Some(code),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let after = posted(&server);
            let case = format!("{format}, on = {on}, exit {code}");
            if !expect_post {
                assert_eq!(after.len(), before, "{case}: nothing posted");
                continue;
            }
            assert_eq!(after.len(), before + 1, "{case}: one POST");
            let body = &after[before];
            match format {
                "json" => {
                    assert_eq!(body["version"], 1, "{case}");
                    assert_eq!(body["exit_code"], code, "{case}");
                    assert_eq!(body["rows"]["succeeded"], 3, "{case}");
                    assert_eq!(body["rows"]["invalid"], u64::from(broken), "{case}");
                    assert_eq!(body["report"], "sheet.report.csv", "{case}");
                }
                "teams" => {
                    assert_eq!(body["type"], "message", "{case}");
                    let attachment = &body["attachments"][0];
                    assert_eq!(
                        attachment["contentType"],
                        "application/vnd.microsoft.card.adaptive"
                    );
                    let card = &attachment["content"];
                    assert_eq!(card["type"], "AdaptiveCard");
                    let text = card.to_string();
                    assert!(text.contains(&format!("finished (exit {code})")), "{text}");
                    assert!(text.contains("3 succeeded"), "{text}");
                    assert!(text.contains("sheet.report.csv"), "{text}");
                }
                _ => {
                    let text = body["text"].as_str().unwrap();
                    assert!(
                        text.contains(&format!("sheet.csv finished (exit {code})")),
                        "{text}"
                    );
                    assert!(text.contains("3 succeeded"), "{text}");
                    assert!(text.contains("report: sheet.report.csv"), "{text}");
                }
            }
        }
    }
}

#[test]
fn a_run_stopped_by_the_guard_is_notified_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = SandboxServer::start(dir.path(), "");
    sheet(dir.path(), 3, false);
    let out = run_with(
        &server,
        dir.path(),
        "[run]\nmax_changes = 2\n[notify]\nformat = \"slack\"\n",
        &format!("{}sandbox/webhook", server.url),
    );
    assert_eq!(out.status.code(), Some(2));
    let posted = posted(&server);
    assert_eq!(posted.len(), 1, "{posted:?}");
    let text = posted[0]["text"].as_str().unwrap();
    assert!(text.contains("sheet.csv was not run (exit 2)"), "{text}");
    assert!(
        text.contains("3 license changes (max_changes = 2"),
        "{text}"
    );
}

#[test]
fn a_webhook_that_never_answers_delays_the_exit_by_its_bound_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = SandboxServer::start(dir.path(), "");
    sheet(dir.path(), 2, true);
    // Accepts every connection and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in silent.incoming() {
            held.push(connection);
        }
    });
    let webhook = format!("http://127.0.0.1:{port}/hooks/sig=never-print-me");
    std::fs::write(
        dir.path().join("config.toml"),
        "[notify]\non = \"always\"\ntimeout_secs = 2\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_license-batch"))
        .args(["run", "sheet.csv", "--config", "config.toml", "-v"])
        .current_dir(dir.path())
        .env_clear()
        .envs(server.env())
        .env("LICENSE_BATCH_WEBHOOK_URL", &webhook)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let (exited, exit) = std::sync::mpsc::channel();
    let id = child.id();
    std::thread::spawn(move || exited.send(child.wait().unwrap()));
    let mut lines = stdout.lines().map_while(Result::ok);
    assert!(
        lines.any(|line| line.trim_start().starts_with("report:")),
        "the summary was printed"
    );
    let summary_printed = Instant::now();
    // The bound (2 s) plus the shutdown bound (3 s) and room for a slow machine.
    match exit.recv_timeout(Duration::from_secs(20)) {
        Ok(status) => assert_eq!(status.code(), Some(1), "the run's own exit code"),
        Err(_) => {
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("still running 20 s after its summary");
        }
    }
    let waited = summary_printed.elapsed();
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut logs).unwrap();
    assert!(
        logs.contains("the notification was not delivered"),
        "{logs}"
    );
    assert!(
        !logs.contains("never-print-me"),
        "the URL is a secret: {logs}"
    );
    // It did try: the bound was spent waiting, not skipped.
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
}
