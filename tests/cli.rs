//! The real binary: exit codes (SPEC §10), help texts, the README's sample run, and the
//! errors an operator sees before anything is sent.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::license_batch;

/// The binary pointed at a sandbox server, in `dir`.
fn against(server: &common::SandboxServer, dir: &Path, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_license-batch"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(server.env())
        .output()
        .expect("binary runs")
}

/// The README's sample run (`-q`, a fast ceiling), plus `extra`, against a sandbox server.
fn sample_against(server: &common::SandboxServer, dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "samples/onboarding.csv",
        "-q",
        "--requests-per-minute",
        "6000",
    ];
    args.extend_from_slice(extra);
    let args: Vec<&std::ffi::OsStr> = args.into_iter().map(std::ffi::OsStr::new).collect();
    against(server, dir, &args)
}

/// The license updates a sandbox server has received so far (its `/sandbox/record`).
fn received_by(server: &common::SandboxServer) -> Vec<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(server.record())["requests"]
        .as_array()
        .unwrap()
        .clone()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `run samples/onboarding.csv --sandbox` at a fast ceiling, plus `extra`.
fn run_sample(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "samples/onboarding.csv",
        "--sandbox",
        "--requests-per-minute",
        "6000",
    ];
    args.extend_from_slice(extra);
    license_batch(dir, &args)
}

fn copy_samples(dir: &Path) {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    std::fs::create_dir_all(dir.join("samples")).unwrap();
    for name in ["onboarding.csv", "sandbox-scenario.toml"] {
        std::fs::copy(samples.join(name), dir.join("samples").join(name)).unwrap();
    }
}

/// The process ends right after its summary, whatever is still open (idle connections, the
/// in-process sandbox, a task nobody awaits): issue 20 saw the README's sample stay alive for
/// five minutes once. The exit is awaited as an event, with a deadline.
#[test]
fn the_process_ends_right_after_its_summary() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_license-batch"))
        .args(["run", "samples/onboarding.csv", "--sandbox", "-q"])
        .args(["--requests-per-minute", "6000"])
        .current_dir(dir.path())
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let id = child.id();
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || exited.send(child.wait().unwrap()));
    let mut lines = stdout.lines().map_while(Result::ok);
    assert!(
        lines.any(|line| line.trim_start().starts_with("report:")),
        "the summary was printed"
    );
    match exit.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(status) => assert_eq!(status.code(), Some(1), "the sample has invalid rows"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .arg(id.to_string())
                .status();
            panic!("still running 10 s after printing its summary");
        }
    }
}

#[test]
fn the_readme_sample_runs_on_the_sandbox_and_accounts_for_every_row() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let out = run_sample(dir.path(), &[]);
    let stdout = text(&out.stdout);
    // The sample has deliberately bad rows: exit 1, never 0.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("finished in"), "{stdout}");
    assert!(
        stdout.contains("report:      samples/onboarding.report.csv"),
        "{stdout}"
    );

    let input_rows = csv::Reader::from_path(dir.path().join("samples/onboarding.csv"))
        .unwrap()
        .records()
        .count();
    let mut report =
        csv::Reader::from_path(dir.path().join("samples/onboarding.report.csv")).unwrap();
    let headers = report.headers().unwrap().clone();
    assert_eq!(&headers[0], "customer_id");
    assert_eq!(&headers[headers.len() - 12], "result_row");
    let rows: Vec<_> = report.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), input_rows);
    let status_column = headers.iter().position(|h| h == "result_status").unwrap();
    assert!(
        rows.iter()
            .all(|r| ["succeeded", "invalid"].contains(&&r[status_column]))
    );
}

#[test]
fn the_sample_scenario_yields_the_realistic_mix() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let out = run_sample(
        dir.path(),
        &[
            "--sandbox-scenario",
            "samples/sandbox-scenario.toml",
            "--log-format",
            "json",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for code in ["900309", "60012", "60002"] {
        assert!(
            stdout.contains(code),
            "{code} missing in summary:\n{stdout}"
        );
    }
    // JSON logs: every stderr line is a JSON object, and there are some (the scenario's
    // refusals are logged).
    let stderr = text(&out.stderr);
    assert!(stderr.lines().count() > 0, "no logs at all");
    for line in stderr.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
}

#[test]
fn a_missing_required_column_exits_2_with_the_line_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.csv"), "customer_id,sku\nx,y\n").unwrap();
    let out = license_batch(dir.path(), &["run", "bad.csv", "--sandbox"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad.csv, line 1") && stderr.contains("user_id"),
        "{stderr}"
    );
    assert!(!dir.path().join("bad.report.csv").exists());
}

#[test]
fn missing_credentials_exit_2_naming_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.csv"),
        "customer_id,user_id,sku\n0c39d6d5-c70d-4c55-bc02-f620844f3fd1,a@b.com,SPB\n",
    )
    .unwrap();
    let out = license_batch(dir.path(), &["run", "in.csv"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    for needed in [
        "LICENSE_BATCH_REFRESH_TOKEN",
        "LICENSE_BATCH_CLIENT_SECRET",
        "auth.tenant_id",
        "--sandbox",
    ] {
        assert!(stderr.contains(needed), "{needed} in {stderr}");
    }
}

#[test]
fn bad_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.csv"), "customer_id,user_id,sku\n").unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[api]\nbase_url = \"http://api.example.com\"\n",
    )
    .unwrap();
    let out = license_batch(dir.path(), &["run", "in.csv", "--config", "c.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("plain http:// is refused"),
        "{}",
        text(&out.stderr)
    );
    // With credentials (the sandbox), so that only the setting can be what is refused.
    let out = license_batch(
        dir.path(),
        &["run", "in.csv", "--sandbox", "--concurrency", "0"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("concurrency"),
        "{}",
        text(&out.stderr)
    );
    let out = license_batch(
        dir.path(),
        &["run", "in.csv", "--sandbox", "--concurrency", "1"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn usage_errors_exit_2_and_help_has_examples() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(license_batch(dir.path(), &["run"]).status.code(), Some(2));
    assert_eq!(
        license_batch(dir.path(), &["run", "x.csv", "--bogus"])
            .status
            .code(),
        Some(2)
    );
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["plan", "--help"],
        &["insights", "--help"],
        &["verify", "--help"],
        &["status", "--help"],
        &["report", "--help"],
        &["sandbox", "--help"],
    ] {
        let out = license_batch(dir.path(), args);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("Example"), "{args:?}");
    }
}

#[test]
fn dry_run_prints_the_plan_sends_nothing_and_exits_1_on_invalid_rows() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let out = license_batch(dir.path(), &["run", "samples/onboarding.csv", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("license updates to send") && stdout.contains("invalid rows: "),
        "{stdout}"
    );
    assert!(!dir.path().join("samples/onboarding.report.csv").exists());
}

#[test]
fn an_all_good_sheet_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("good.csv"),
        "customer;user;product\n0c39d6d5-c70d-4c55-bc02-f620844f3fd1;a@b.com;Microsoft 365 E5\n",
    )
    .unwrap();
    let out = license_batch(dir.path(), &["run", "good.csv", "--sandbox", "-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stderr).is_empty(), "quiet: {}", text(&out.stderr));
    // The report keeps the input's delimiter and is itself valid input.
    let report = std::fs::read_to_string(dir.path().join("good.report.csv")).unwrap();
    assert!(
        report.starts_with("customer;user;product;result_row;result_status"),
        "{report}"
    );
    let again = license_batch(
        dir.path(),
        &[
            "run",
            "good.report.csv",
            "--sandbox",
            "--report",
            "again.csv",
        ],
    );
    assert_eq!(again.status.code(), Some(0));
}

#[test]
fn status_and_report_work_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let run: &[&str] = &["-q"];
    assert_eq!(run_sample(dir.path(), run).status.code(), Some(1));
    let report = dir.path().join("samples/onboarding.report.csv");
    let original = std::fs::read_to_string(&report).unwrap();

    let status = license_batch(dir.path(), &["status"]);
    assert_eq!(status.status.code(), Some(0));
    let status = text(&status.stdout);
    let line = status.lines().nth(1).unwrap_or_default();
    assert!(
        line.contains("finished") && line.contains("samples/onboarding.csv"),
        "{status}"
    );
    assert!(
        line.split_whitespace().any(|w| w == "57"),
        "57 succeeded: {status}"
    );

    std::fs::remove_file(&report).unwrap();
    let rewritten = license_batch(dir.path(), &["report"]);
    assert_eq!(
        rewritten.status.code(),
        Some(0),
        "{}",
        text(&rewritten.stderr)
    );
    assert_eq!(std::fs::read_to_string(&report).unwrap(), original);

    let missing = license_batch(dir.path(), &["status", "--state", "nope.sqlite"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn the_readme_flow_quick_start_then_scenario_shows_the_mix_then_nothing_is_resent() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let quick: &[&str] = &["-q"];
    assert_eq!(run_sample(dir.path(), quick).status.code(), Some(1));
    // A different sandbox world is a different target: the scenario run sends everything.
    let scenario: &[&str] = &["--sandbox-scenario", "samples/sandbox-scenario.toml", "-q"];
    let out = run_sample(dir.path(), scenario);
    assert!(
        text(&out.stdout).contains("900309"),
        "{}",
        text(&out.stdout)
    );
    // The quick start again: the summary says all was done already (that nothing reached the
    // API is shown from a server's record in the next test).
    let again = run_sample(dir.path(), quick);
    let stdout = text(&again.stdout);
    assert!(
        stdout.contains("requests:    0 license updates"),
        "{stdout}"
    );
    assert!(stdout.contains("57 succeeded"), "{stdout}");
}

/// The same sheet the next night, against a sandbox server that keeps its record across both
/// runs: the second run sends nothing, and reports every row as the first did.
#[test]
fn the_same_sheet_again_sends_nothing_the_server_can_see() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let server = common::SandboxServer::start(dir.path(), "");
    let received = || received_by(&server).len();
    let night = || sample_against(&server, dir.path(), &[]);
    let report = dir.path().join("samples/onboarding.report.csv");
    assert_eq!(night().status.code(), Some(1));
    let first = received();
    assert!(first > 0);
    let first_statuses = common::report_statuses(&report);
    assert_eq!(night().status.code(), Some(1));
    assert_eq!(received(), first, "the second night sent something");
    assert_eq!(common::report_statuses(&report), first_statuses);
}

/// `--summary-json` and `--metrics-file` (SPEC §13) hold what the server received and what the
/// report says, and a config file can ask for them too.
#[test]
fn the_summary_json_and_the_metrics_file_say_what_the_server_and_the_report_say() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let server = common::SandboxServer::start(dir.path(), "");
    std::fs::write(
        dir.path().join("config.toml"),
        "[run]\nmetrics_file = \"nächte/license-batch.prom\"\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("nächte")).unwrap();
    let extra = [
        "--config",
        "config.toml",
        "--summary-json",
        "nächte/summary.json",
    ];
    let out = sample_against(&server, dir.path(), &extra);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let received = received_by(&server).len() as u64;
    let statuses = common::report_statuses(&dir.path().join("samples/onboarding.report.csv"));
    let of = |status: &str| statuses.iter().filter(|s| *s == status).count() as u64;

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("nächte/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["version"], 1);
    assert_eq!(summary["outcome"], "finished");
    assert_eq!(summary["exit_code"], 1);
    assert_eq!(summary["input"], "samples/onboarding.csv");
    assert_eq!(summary["requests"]["license_updates"], received);
    assert_eq!(summary["rows"]["total"], statuses.len() as u64);
    for status in ["succeeded", "failed", "invalid", "skipped", "pending"] {
        assert_eq!(summary["rows"][status], of(status), "{status}");
    }
    let per_customer: u64 = summary["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(per_customer, statuses.len() as u64);

    let metrics = std::fs::read_to_string(dir.path().join("nächte/license-batch.prom")).unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("license_batch_last_run_exit_code"), 1.0);
    assert_eq!(
        value("license_batch_requests{kind=\"license_update\"}"),
        received as f64
    );
    assert_eq!(
        value("license_batch_rows{status=\"invalid\"}"),
        of("invalid") as f64
    );
    assert_eq!(value("license_batch_rows{status=\"pending\"}"), 0.0);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("nächte/license-batch.prom"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o444, 0o444, "node_exporter, another user, reads it");
    }
    // Written atomically: nothing but the two files is left in their folder.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("nächte"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn plan_reads_the_tenants_shows_seats_and_what_is_not_sent_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let out = license_batch(
        dir.path(),
        &[
            "plan",
            "samples/onboarding.csv",
            "--sandbox",
            "--sandbox-scenario",
            "samples/sandbox-scenario.toml",
            "-q",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a shortage, a refused customer and invalid rows"
    );
    let stdout = text(&out.stdout);
    let power_bi = stdout
        .lines()
        .find(|l| l.contains("2b6d9e41-8a7c-4f3e-b1d2-3c4e5f6a7b81") && l.contains("Power BI Pro"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(
        power_bi
            .split_whitespace()
            .rev()
            .take(3)
            .collect::<Vec<_>>(),
        ["2", "4", "2"],
        "{power_bi}"
    );
    assert!(stdout.contains("not sent (lines 55, 56, 57)"), "{stdout}");
    assert!(stdout.contains("dry run, nothing sent"), "{stdout}");
    assert!(
        !dir.path().join("license-batch.state.sqlite").exists(),
        "a plan writes no journal"
    );
    assert!(!dir.path().join("samples/onboarding.report.csv").exists());
}

/// `plan` says what the guard would say of a run, and the limit flags change it.
#[test]
fn plan_shows_what_the_guard_would_do() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = (0..51)
        .map(|i| format!("{},łukasz.{i}@contoso.example,SPB,remove", common::CONTOSO))
        .collect();
    common::write_csv(
        dir.path(),
        "sheet.csv",
        "customer_id,user_id,sku,action",
        &rows,
    );
    let stops = text(&license_batch(dir.path(), &["plan", "sheet.csv", "-q"]).stdout);
    assert!(
        stops.contains(
            "guard: 51 license changes (no limit), 51 removals (limit 50): a run would stop"
        ),
        "{stops}"
    );
    let raised = license_batch(
        dir.path(),
        &["plan", "sheet.csv", "-q", "--max-removals", "51"],
    );
    assert!(
        text(&raised.stdout).contains("51 removals (limit 51): a run would send them"),
        "{}",
        text(&raised.stdout)
    );
}

/// A plan made after a night shows what that night did: nothing of it is to be sent again.
#[test]
fn plan_after_a_run_sends_nothing_already_done() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let run = license_batch(
        dir.path(),
        &["run", "samples/onboarding.csv", "--sandbox", "-q"],
    );
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    let out = license_batch(
        dir.path(),
        &["plan", "samples/onboarding.csv", "--sandbox", "-q"],
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains(", 0 license updates to send,"), "{stdout}");
    assert!(stdout.contains("already done in run 1"), "{stdout}");
}

#[test]
fn plan_without_credentials_works_offline() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let out = license_batch(dir.path(), &["plan", "samples/onboarding.csv", "-q"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("offline (no credentials)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn insights_are_written_as_csv() {
    let dir = tempfile::tempdir().unwrap();
    copy_samples(dir.path());
    let out = license_batch(
        dir.path(),
        &[
            "insights",
            "2b6d9e41-8a7c-4f3e-b1d2-3c4e5f6a7b81",
            "--output",
            "insights.csv",
            "--sandbox",
            "--sandbox-scenario",
            "samples/sandbox-scenario.toml",
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let csv = std::fs::read_to_string(dir.path().join("insights.csv")).unwrap();
    assert!(
        csv.starts_with("customer_id,customer_name,product_name,licenses_deployed,licenses_sold"),
        "{csv}"
    );
    assert!(
        csv.contains("Fabrikam Inc,MICROSOFT 365 E3,30,50,60"),
        "{csv}"
    );
}

/// `license-batch check` against the sandbox as a server: one line per customer of the sheet
/// and of `--customer` — reachable, blocked by Conditional Access, without a GDAP role,
/// unknown — with what to do; exit 1; the token described (MFA shown) and never printed; and
/// the server's record shows that nothing was written.
#[test]
fn check_names_every_customer_it_cannot_reach_and_writes_nothing() {
    let (blocked, no_role, unknown) = (
        "e8d7c6b5-a4f3-4e2d-9c1b-0a9f8e7d6c24",
        "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c52",
        "11111111-2222-4333-8444-555555555555",
    );
    let dir = tempfile::tempdir().unwrap();
    let server = common::SandboxServer::start(
        dir.path(),
        &format!(
            "[[customers]]\nid = \"{}\"\n[[customers]]\nid = \"{blocked}\"\nconditional_access_blocked = true\n\
             [[customers]]\nid = \"{no_role}\"\nmissing_gdap_role = true\n",
            common::CONTOSO
        ),
    );
    let sheet = common::write_csv(
        dir.path(),
        "tonight.csv",
        "customer_id,user_id,sku,name",
        &[
            format!("{},émilie@contoso.example,SPB,Émilie", common::CONTOSO),
            format!("{blocked},łukasz@fabrikam.example,SPB,Łukasz"),
            format!("{no_role},日本語@tailspin.example,SPB,日本語"),
            "not-a-tenant,someone@example.com,SPB,invalid".to_string(),
        ],
    );
    let out = against(
        &server,
        dir.path(),
        &[
            "check".as_ref(),
            sheet.as_os_str(),
            "--customer".as_ref(),
            unknown.as_ref(),
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    let line = |customer: &str| {
        stdout
            .lines()
            .find(|l| l.contains(customer))
            .unwrap_or_else(|| panic!("no line for {customer}: {stdout}"))
            .to_string()
    };
    assert!(line(common::CONTOSO).contains("reachable ("), "{stdout}");
    let blocked_line = line(blocked);
    assert!(
        blocked_line.contains("900309") && blocked_line.contains("What to do"),
        "{stdout}"
    );
    assert!(line(no_role).contains("GDAP"), "{stdout}");
    assert!(line(unknown).contains("60003"), "{stdout}");
    assert!(stdout.contains("customers: 1 of 4 reachable"), "{stdout}");
    assert!(stdout.contains("MFA:      yes"), "{stdout}");
    // Where the token came from, with the endpoint and the token URL of the settings.
    let source = format!(
        "token: obtained from the refresh-token grant, v1 endpoint ({}{}/oauth2/token)",
        server.url,
        license_batch::sandbox::TENANT_ID
    );
    assert!(stdout.contains(&source), "{stdout}");
    for secret in [
        "sandbox-access-",
        "sandbox-refresh-",
        license_batch::sandbox::CLIENT_SECRET,
    ] {
        assert!(!stdout.contains(secret) && !text(&out.stderr).contains(secret));
    }
    assert!(received_by(&server).is_empty(), "nothing written");
}

/// A token without an MFA claim: `check` says so from the token itself and from the API's
/// 900421, and exits 2 (the credentials are unusable tonight).
#[test]
fn check_shows_a_token_without_mfa_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::SandboxServer::start(dir.path(), "[auth]\nmfa_required = true\n");
    let out = against(
        &server,
        dir.path(),
        &[
            "check".as_ref(),
            "--customer".as_ref(),
            common::CONTOSO.as_ref(),
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("MFA:      NO"), "{stdout}");
    assert!(
        stdout.contains("900421") && stdout.contains("consent again"),
        "{stdout}"
    );
}
