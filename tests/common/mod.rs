//! Shared helpers for the integration tests: a sandbox per test, settings pointing at it, CSV
//! files in a temp dir, and the report read back as maps.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use license_batch::config::{EnvSecrets, FileConfig, Overrides, Settings};
use license_batch::sandbox::{self, Sandbox, Scenario};
use license_batch::secret::Secret;
use license_batch::{RunOptions, RunSummary};

pub const CONTOSO: &str = "7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90";
pub const FABRIKAM: &str = "2b6d9e41-8a7c-4f3e-b1d2-3c4e5f6a7b81";
pub const E3: &str = "05e9a617-0261-4cee-bb44-138d3ef5d965";
pub const POWER_BI: &str = "f8a1db68-be16-40ed-86d5-cb42ce701560";
pub const MEE_STUDENT: &str = "533b8f26-f74b-4e9c-9c59-50fc4b393b63";

pub async fn start(scenario_toml: &str) -> Sandbox {
    let scenario: Scenario = toml::from_str(scenario_toml).expect("test scenario parses");
    Sandbox::start(scenario, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("sandbox starts")
}

/// Settings aimed at `sandbox`: a high ceiling and short backoffs so tests stay quick.
pub fn settings_for(sandbox: &Sandbox) -> Settings {
    let env = |name: &str| match name {
        "LICENSE_BATCH_API_BASE_URL" | "LICENSE_BATCH_AUTH_AUTHORITY" => {
            Some(sandbox.url.to_string())
        }
        "LICENSE_BATCH_TENANT_ID" => Some(sandbox::TENANT_ID.to_string()),
        "LICENSE_BATCH_CLIENT_ID" => Some(sandbox::CLIENT_ID.to_string()),
        _ => None,
    };
    let overrides = Overrides {
        requests_per_minute: Some(60_000),
        concurrency: Some(4),
        ..Default::default()
    };
    let mut settings = Settings::resolve(FileConfig::default(), &env, &overrides).unwrap();
    settings.retry.min_delay = Duration::from_millis(20);
    settings.api.timeout = Duration::from_secs(10);
    settings
}

pub fn sandbox_secrets() -> EnvSecrets {
    EnvSecrets {
        client_secret: Some(Secret::new(sandbox::CLIENT_SECRET)),
        refresh_token: Some(Secret::new(sandbox::REFRESH_TOKEN)),
        access_token: None,
    }
}

pub fn write_csv(dir: &Path, name: &str, header: &str, rows: &[String]) -> PathBuf {
    let path = dir.join(name);
    let mut text = format!("{header}\n");
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Options for a run of `input` against `sandbox`, journal beside the input.
pub fn options(sandbox: &Sandbox, input: &Path) -> RunOptions {
    let mut settings = settings_for(sandbox);
    settings.run.state_file = input.with_file_name("state.sqlite");
    let mut opts = RunOptions::new(input, settings);
    opts.secrets = sandbox_secrets();
    opts
}

/// The binary in `dir` with `args` and an empty environment.
pub fn license_batch(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_license-batch"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .output()
        .expect("binary runs")
}

/// A connection to `sandbox` for the read-only functions (`verify`, insights).
pub async fn connect_to(sandbox: &Sandbox) -> license_batch::run::Connection {
    license_batch::run::connect(
        &settings_for(sandbox),
        &sandbox_secrets(),
        &license_batch::run::Target::Configured,
        Default::default(),
    )
    .await
    .unwrap()
}

pub async fn run(opts: RunOptions) -> RunSummary {
    license_batch::run(opts).await.expect("run starts")
}

pub fn read_report(path: &Path) -> Vec<HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).expect("report exists");
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .map(String::from)
                .zip(r.iter().map(String::from))
                .collect()
        })
        .collect()
}

/// The `result_status` of every row of the CSV report at `path`, in order.
pub fn report_statuses(path: &Path) -> Vec<String> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let column = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "result_status")
        .unwrap();
    reader
        .records()
        .map(|r| r.unwrap()[column].to_string())
        .collect()
}

pub fn report_path(input: &Path) -> PathBuf {
    license_batch::report::default_path(input)
}

/// A valid random-looking user object ID for index `i`.
pub fn user_guid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// Runs `opts`; once the sandbox has answered the first license update, `flip` changes it
/// mid-run. The scenario's `latency_ms` holds the next request back meanwhile.
pub async fn run_and_flip_after_first_update(
    sandbox: &Sandbox,
    opts: RunOptions,
    flip: impl FnOnce(&Sandbox),
) -> RunSummary {
    let running = tokio::spawn(license_batch::run(opts));
    sandbox.wait_for(1, 0).await;
    flip(sandbox);
    running.await.unwrap().unwrap()
}

/// `license-batch sandbox` as a separate process on a free loopback port.
pub struct SandboxServer {
    child: std::process::Child,
    /// Kept open: the server's stdout stays a live pipe.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
    pub url: String,
    http: reqwest::Client,
}

impl SandboxServer {
    pub fn start(dir: &Path, scenario: &str) -> SandboxServer {
        Self::start_with(dir, scenario, &[])
    }

    /// Starts the server with extra command-line flags (faults, `--dump`).
    pub fn start_with(dir: &Path, scenario: &str, extra: &[&str]) -> SandboxServer {
        let scenario_path = dir.join("scenario.toml");
        std::fs::write(&scenario_path, scenario).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_license-batch"))
            .args(["sandbox", "--listen", "127.0.0.1:0", "--scenario"])
            .arg(&scenario_path)
            .args(extra)
            .env_clear()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut first_line = String::new();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut stdout, &mut first_line).unwrap();
        let url = first_line
            .trim()
            .strip_prefix("sandbox listening on ")
            .unwrap_or_else(|| panic!("unexpected sandbox banner: {first_line:?}"))
            .to_string();
        SandboxServer {
            child,
            _stdout: stdout,
            url,
            http: reqwest::Client::new(),
        }
    }

    /// Waits (server-side long poll) until the counts are reached; returns the counts.
    pub async fn wait(&self, requests: u64, tokens: u64) -> (u64, u64) {
        let answer = self
            .http
            .get(format!(
                "{}sandbox/wait?requests={requests}&tokens={tokens}",
                self.url
            ))
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "sandbox never reached {requests} requests / {tokens} tokens"
        );
        let progress: serde_json::Value = answer.json().await.unwrap();
        (
            progress["requests"].as_u64().unwrap(),
            progress["token_requests"].as_u64().unwrap(),
        )
    }

    /// Waits until the server has received at least `patches` user PATCHes.
    pub async fn wait_for_patches(&self, patches: u64) {
        let answer = self
            .http
            .get(format!("{}sandbox/wait?patches={patches}", self.url))
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "sandbox never reached {patches} PATCHes"
        );
    }

    pub async fn record(&self) -> serde_json::Value {
        self.http
            .get(format!("{}sandbox/record", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl SandboxServer {
    /// Stops the server the way an operator does (SIGTERM) and waits for it.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }

    /// The environment that points `license-batch run` at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LICENSE_BATCH_API_BASE_URL", self.url.clone()),
            ("LICENSE_BATCH_AUTH_AUTHORITY", self.url.clone()),
            ("LICENSE_BATCH_TENANT_ID", sandbox::TENANT_ID.to_string()),
            ("LICENSE_BATCH_CLIENT_ID", sandbox::CLIENT_ID.to_string()),
            (
                "LICENSE_BATCH_CLIENT_SECRET",
                sandbox::CLIENT_SECRET.to_string(),
            ),
            (
                "LICENSE_BATCH_REFRESH_TOKEN",
                sandbox::REFRESH_TOKEN.to_string(),
            ),
        ]
    }
}

impl Drop for SandboxServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// From the sandbox's record: the run outlived its first token (a license update arrived after
/// it expired), every token after the first was issued before the one it replaced expired,
/// and no license update was answered 401. A tool that renews only after a 401 fails all but
/// the first.
pub fn assert_tokens_renewed_ahead_of_expiry(sandbox: &Sandbox) {
    let grants = sandbox.token_grants();
    let requests = sandbox.requests();
    let first = grants.first().expect("a token was issued");
    let expired_at = first.at + Duration::from_secs(first.lifetime_secs);
    let last = requests.iter().map(|r| r.at).max().expect("updates sent");
    assert!(
        last > expired_at,
        "the run did not outlive its first token: {grants:?}"
    );
    for pair in grants.windows(2) {
        let expiry = pair[0].at + Duration::from_secs(pair[0].lifetime_secs);
        assert!(
            pair[1].at < expiry,
            "renewed only after the token expired: {pair:?}"
        );
    }
    let refused = requests.iter().filter(|r| r.status == 401).count();
    assert_eq!(refused, 0, "license updates answered 401");
}
