//! Credentials: nothing secret in any output even at TRACE, renewal of short-lived tokens during
//! a longer run, refresh-token rotation persisted, the v2 endpoint, and redacting `Debug`.

mod common;

use std::process::Command;

use common::*;
use license_batch::config::{Concurrency, TokenEndpoint};
use license_batch::outcome::RowStatus;
use license_batch::sandbox;

const HEADER: &str = "customer_id,user_id,sku";

fn sheet(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{CONTOSO},{},SPB", user_guid(i)))
        .collect()
}

/// A night of `rows` rows against a sandbox of `scenario`, `in_flight` calls at once; `adjust`
/// sets anything else. The sandbox is returned for its record.
async fn night_of(
    scenario: &str,
    rows: usize,
    in_flight: usize,
    adjust: impl FnOnce(&mut license_batch::RunOptions),
) -> (sandbox::Sandbox, license_batch::RunSummary) {
    let sandbox = start(scenario).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &sheet(rows));
    let mut opts = options(&sandbox, &input);
    opts.settings.limits.concurrency = Concurrency::fixed(in_flight);
    adjust(&mut opts);
    let summary = run(opts).await;
    assert_eq!(
        summary.count(RowStatus::Succeeded),
        rows as u64,
        "{summary}"
    );
    (sandbox, summary)
}

/// Every secret the sandbox knows or hands out has one of these forms.
fn secret_markers() -> [&'static str; 5] {
    [
        sandbox::CLIENT_SECRET,
        sandbox::REFRESH_TOKEN,
        "sandbox-access-",
        "sandbox-refresh-",
        WEBHOOK_SIGNATURE,
    ]
}

/// The signature a Teams or Slack webhook URL carries: whoever has it posts to the channel.
const WEBHOOK_SIGNATURE: &str = "sig=Wébhook-Signatur-9f8e7d";

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_any_output_even_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    // Two-second tokens: the run renews, so rotated refresh tokens pass through too.
    let server = SandboxServer::start(
        dir.path(),
        "[auth]\ntoken_lifetime_secs = 2\n[faults]\nlatency_ms = 20\nthrottle_every = 25\n",
    );
    write_csv(dir.path(), "sheet.csv", HEADER, &sheet(60));
    // Every run notifies, and writes the summary and the metrics: they are outputs too.
    std::fs::write(
        dir.path().join("config.toml"),
        "[notify]\non = \"always\"\nformat = \"teams\"\n[run]\nsummary_file = \"summary.json\"\nmetrics_file = \"metrics.prom\"\n",
    )
    .unwrap();
    let webhook = format!("{}sandbox/webhook?{WEBHOOK_SIGNATURE}", server.url);
    for format in ["text", "json"] {
        let output = Command::new(env!("CARGO_BIN_EXE_license-batch"))
            .args([
                "run",
                "sheet.csv",
                "--resend",
                "-vv",
                "--log-format",
                format,
                "--concurrency",
                "2",
            ])
            .args(["--requests-per-minute", "60000"])
            .current_dir(dir.path())
            .env_clear()
            .env("RUST_LOG", "trace")
            .env("LICENSE_BATCH_API_BASE_URL", &server.url)
            .env("LICENSE_BATCH_AUTH_AUTHORITY", &server.url)
            .env("LICENSE_BATCH_TENANT_ID", sandbox::TENANT_ID)
            .env("LICENSE_BATCH_CLIENT_ID", sandbox::CLIENT_ID)
            .env("LICENSE_BATCH_CLIENT_SECRET", sandbox::CLIENT_SECRET)
            .env("LICENSE_BATCH_REFRESH_TOKEN", sandbox::REFRESH_TOKEN)
            .env("LICENSE_BATCH_WEBHOOK_URL", &webhook)
            .env("LICENSE_BATCH_CONFIG", "config.toml")
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The lines where a leak would show up were really logged: every request, every renewal.
        let logs = String::from_utf8_lossy(&output.stderr);
        assert!(logs.contains("access token renewed"), "{logs}");
        assert!(
            logs.matches("request_id").count() >= 60,
            "per-request lines logged"
        );
        let mut outputs = vec![
            ("stdout".to_string(), output.stdout),
            ("stderr".to_string(), output.stderr),
        ];
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("sheet.report")
                || name.starts_with("license-batch.state")
                || name == "summary.json"
                || name == "metrics.prom"
            {
                outputs.push((name, std::fs::read(&path).unwrap()));
            }
        }
        for written in ["summary.json", "metrics.prom", "sheet.report.csv"] {
            assert!(
                outputs.iter().any(|(name, _)| name == written),
                "{written} was written and is checked"
            );
        }
        // The notification was really posted (with the URL in hand, so through the secret).
        let posted = server.record().await["webhooks"].as_array().unwrap().len();
        assert_eq!(posted, if format == "text" { 1 } else { 2 });
        for (name, bytes) in &outputs {
            let text = String::from_utf8_lossy(bytes);
            for marker in secret_markers() {
                assert!(
                    !text.contains(marker),
                    "{marker} leaked into {name} ({format} logs)"
                );
            }
        }
    }
}

/// Short-lived tokens are renewed ahead of expiry, from either endpoint: v1 tells the
/// lifetime as a string, v2 as a number.
#[tokio::test]
async fn two_second_tokens_are_renewed_during_a_longer_run() {
    for endpoint in [TokenEndpoint::V1, TokenEndpoint::V2] {
        let scenario = "[auth]\ntoken_lifetime_secs = 2\n[faults]\nlatency_ms = 50\n";
        let (sandbox, _) = night_of(scenario, 120, 2, |opts| {
            opts.settings.auth.token_endpoint = endpoint;
        })
        .await;
        assert_tokens_renewed_ahead_of_expiry(&sandbox);
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_rotated_refresh_token_is_saved_for_the_next_night() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("refresh-token");
    std::fs::write(&token_file, format!("{}\n", sandbox::REFRESH_TOKEN)).unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &sheet(2));
    let mut opts = options(&sandbox, &input);
    opts.secrets.refresh_token = None;
    opts.settings.auth.refresh_token_file = Some(token_file.clone());
    assert_eq!(run(opts.clone()).await.count(RowStatus::Succeeded), 2);

    let saved = std::fs::read_to_string(&token_file).unwrap();
    assert!(
        saved.starts_with("sandbox-refresh-"),
        "rotated token saved: {saved:?}"
    );
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // The next night starts from the saved token, even with a stale one in the environment.
    opts.secrets.refresh_token = Some(license_batch::secret::Secret::new("stale-from-env"));
    opts.resend = true;
    assert_eq!(run(opts).await.count(RowStatus::Succeeded), 2);
    assert_ne!(
        std::fs::read_to_string(&token_file).unwrap(),
        saved,
        "rotated again"
    );
}

#[tokio::test]
async fn the_v2_token_endpoint_works() {
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &sheet(2));
    let mut opts = options(&sandbox, &input);
    opts.settings.auth.token_endpoint = TokenEndpoint::V2;
    assert_eq!(run(opts).await.count(RowStatus::Succeeded), 2);
    // The sandbox serves both endpoints: only its record shows which one was asked.
    let grants = sandbox.token_grants();
    assert!(!grants.is_empty());
    assert!(grants.iter().all(|g| g.endpoint == "v2"), "{grants:?}");
    // And the default is v1 (SPEC §6).
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &sheet(2));
    assert_eq!(
        run(options(&sandbox, &input))
            .await
            .count(RowStatus::Succeeded),
        2
    );
    let grants = sandbox.token_grants();
    assert!(grants.iter().all(|g| g.endpoint == "v1"), "{grants:?}");
}

#[test]
fn debug_of_options_redacts_every_secret() {
    let settings = license_batch::config::Settings::resolve(
        Default::default(),
        &|_| None,
        &Default::default(),
    )
    .unwrap();
    let mut opts = license_batch::RunOptions::new("x.csv", settings);
    opts.secrets = license_batch::config::EnvSecrets::from_env(&|name| {
        Some(format!("secret-value-of-{name}"))
    });
    let text = format!(
        "{opts:?} {:?}",
        license_batch::run::credentials(&opts.settings, &opts.secrets)
    );
    assert!(!text.contains("secret-value-of"), "{text}");
    assert!(text.contains("<redacted>"));
}

/// A token refused at the first read (revoked, say) is renewed once and the run goes on.
#[tokio::test]
async fn a_token_refused_at_the_first_read_is_renewed_once() {
    let (sandbox, _) = night_of("[auth]\nrevoke_first_tokens = 1\n", 3, 8, |_| {}).await;
    assert_eq!(sandbox.token_grants().len(), 2, "one renewal");
}

/// A renewed token refused again means the credential does not work: the reads stop at once
/// (no loop of renewals), nothing is written, exit 2.
#[tokio::test]
async fn a_renewed_token_refused_again_stops_before_anything_is_sent() {
    let sandbox = start("[auth]\nreject_all_tokens = true\n").await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &sheet(3));
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        license_batch::run(options(&sandbox, &input)),
    )
    .await
    .expect("the run stops instead of renewing for ever");
    assert_eq!(license_batch::exit_code_for(&result), 2, "{result:?}");
    assert!(sandbox.requests().is_empty(), "nothing written");
    assert!(
        sandbox.token_grants().len() <= 3,
        "{:?}",
        sandbox.token_grants()
    );
}

/// Tokens the service stops accepting early (after a second, while they say an hour): the
/// calls in flight all get a 401, and the burst costs one renewal, not one per call.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_401s_costs_one_renewal() {
    let scenario = "[auth]\nrevoke_tokens_after_secs = 1\n[faults]\nlatency_ms = 50\n";
    let (sandbox, _) = night_of(scenario, 150, 8, |opts| {
        opts.settings.limits.requests_per_minute = 6000;
    })
    .await;
    let grants = sandbox.token_grants();
    let span = grants
        .last()
        .unwrap()
        .at
        .duration_since(grants[0].at)
        .unwrap()
        .as_secs_f64();
    // A token lives a second: about one renewal a second, however many calls were refused.
    let bound = 2 * (span.ceil() as usize + 1);
    assert!(
        grants.len() <= bound,
        "{} tokens in {span:.1} s",
        grants.len()
    );
}

/// A night is not lost to a blip at the token endpoint (issue 20): a 502, a dropped connection or
/// a 429 on the first token calls is tried again, and the run does its work; the token endpoint
/// saw exactly the failed calls plus the one that worked.
#[tokio::test]
async fn a_token_endpoint_blip_is_tried_again_and_the_night_runs() {
    for (failure, failed_calls) in [(502, 2), (0, 1), (503, 1), (429, 1)] {
        let scenario =
            format!("[auth]\nfail_first_tokens = {failed_calls}\ntoken_failure = {failure}\n");
        let started = std::time::Instant::now();
        let (sandbox, _) = night_of(&scenario, 3, 2, |_| {}).await;
        let progress = sandbox.wait_for(0, 0).await;
        assert_eq!(
            progress.token_requests,
            failed_calls + 1,
            "{failure}: the blips and the grant"
        );
        assert_eq!(sandbox.token_grants().len(), 1, "{failure}");
        assert_eq!(
            sandbox.requests().len(),
            3,
            "{failure}: the night's work was sent"
        );
        if failure == 429 {
            // Its Retry-After (1 s) was waited, not the test settings' 20 ms backoff.
            assert!(started.elapsed() >= std::time::Duration::from_secs(1));
        }
    }
}

/// A token endpoint that keeps failing is tried a bounded number of times, then the run stops
/// before anything is sent (exit 2), saying what it met; an answer that refuses is not retried.
#[tokio::test]
async fn a_token_endpoint_that_stays_down_stops_after_the_bounded_tries() {
    let sandbox = start("[auth]\nfail_first_tokens = 1000\n").await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &sheet(3));
    let mut opts = options(&sandbox, &input);
    opts.settings.retry.max_attempts = 3;
    let result = license_batch::run(opts).await;
    assert_eq!(license_batch::exit_code_for(&result), 2, "{result:?}");
    let message = result.unwrap_err().to_string();
    assert!(message.contains("HTTP 502"), "{message}");
    assert_eq!(
        sandbox.wait_for(0, 0).await.token_requests,
        3,
        "max_attempts"
    );
    assert!(sandbox.requests().is_empty());

    // A wrong client secret is an answer: one call, no retry.
    let sandbox = start("").await;
    let mut opts = options(&sandbox, &input);
    opts.secrets.client_secret = Some(license_batch::secret::Secret::new("wrong"));
    let result = license_batch::run(opts).await;
    assert_eq!(license_batch::exit_code_for(&result), 2);
    assert!(result.unwrap_err().to_string().contains("AADSTS7000215"));
    assert_eq!(
        sandbox.wait_for(0, 0).await.token_requests,
        1,
        "not retried"
    );
}
