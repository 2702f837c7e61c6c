//! What the benchmarks share: their sheet (one SKU per user, customers in turn), the sandbox,
//! and the options of a run against it with the journal on.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use license_batch::RunOptions;
use license_batch::config::{EnvSecrets, FileConfig, Overrides, Settings};
use license_batch::sandbox::{self, Sandbox, Scenario};
use license_batch::secret::Secret;

/// The `n`th customer of a benchmark sheet; the first is Contoso of the sandbox's docs.
pub fn customer(n: usize) -> String {
    match n {
        0 => "7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90".into(),
        n => format!("7f3c2a10-4b8e-4d21-9c3a-{n:012}"),
    }
}

/// The user of group `i`.
pub fn user(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// A sheet of `groups` users with SPB each, their customers taken in turn from `customers`.
pub fn write_sheet(path: &Path, groups: usize, customers: usize) {
    let mut text = String::from("customer_id,user_id,sku\n");
    for i in 0..groups {
        text.push_str(&format!("{},{},SPB\n", customer(i % customers), user(i)));
    }
    std::fs::write(path, text).unwrap();
}

/// The built-in sandbox on a free loopback port, with the scenario `toml`.
pub async fn start_sandbox(toml: &str) -> Sandbox {
    let scenario: Scenario = toml::from_str(toml).unwrap();
    Sandbox::start(scenario, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
}

/// A run of `input` against `sandbox` with its credentials, the journal at `state`, no
/// deployment insights, and `overrides` for the rest.
pub fn run_options(
    sandbox: &Sandbox,
    input: &Path,
    state: &Path,
    overrides: Overrides,
) -> RunOptions {
    let url = sandbox.url.to_string();
    let env = |name: &str| match name {
        "LICENSE_BATCH_API_BASE_URL" | "LICENSE_BATCH_AUTH_AUTHORITY" => Some(url.clone()),
        "LICENSE_BATCH_TENANT_ID" => Some(sandbox::TENANT_ID.to_string()),
        "LICENSE_BATCH_CLIENT_ID" => Some(sandbox::CLIENT_ID.to_string()),
        _ => None,
    };
    let overrides = Overrides {
        state_file: Some(state.to_path_buf()),
        insights: Some(false),
        ..overrides
    };
    let settings = Settings::resolve(FileConfig::default(), &env, &overrides).unwrap();
    let mut opts = RunOptions::new(input, settings);
    opts.secrets = EnvSecrets {
        client_secret: Some(Secret::new(sandbox::CLIENT_SECRET)),
        refresh_token: Some(Secret::new(sandbox::REFRESH_TOKEN)),
        access_token: None,
    };
    opts
}
