//! `run(opts)`: the pipeline end to end — read and validate the CSV, plan, resolve
//! credentials, drive the engine, write the report, summarise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::api::auth::{Credentials, RefreshGrant, TokenProvider};
use crate::api::{ApiClient, http_client};
use crate::config::{EnvSecrets, Settings};
use crate::engine::{self, EngineSettings, Observer, OperationOutcome};
use crate::error::Error;
use crate::input::{self, InputFile};
use crate::plan::{self, Plan, catalog::BuiltinCatalog};
use crate::progress::ProgressBar;
use crate::report;
use crate::sandbox::{Sandbox, Scenario};
use crate::secret::Secret;
use crate::summary::{Completion, RunSummary};

/// Which API the run talks to.
#[derive(Debug, Clone)]
pub enum Target {
    /// The API and authority of the settings, with credentials from the environment.
    Configured,
    /// The built-in simulator, started in this process on a free loopback port.
    Sandbox(Scenario),
}

/// Everything a run needs; the CLI builds it, tests build it directly.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub input: PathBuf,
    pub report: Option<PathBuf>,
    pub settings: Settings,
    pub secrets: EnvSecrets,
    pub target: Target,
    pub dry_run: bool,
    pub delimiter: Option<u8>,
    /// Show the progress bar (the CLI does on a terminal).
    pub progress: bool,
    /// Cancelled by SIGINT/SIGTERM: stop taking new groups, finish in-flight ones.
    pub stop: CancellationToken,
}

impl RunOptions {
    pub fn new(input: impl Into<PathBuf>, settings: Settings) -> Self {
        RunOptions {
            input: input.into(),
            report: None,
            settings,
            secrets: EnvSecrets::default(),
            target: Target::Configured,
            dry_run: false,
            delimiter: None,
            progress: false,
            stop: CancellationToken::new(),
        }
    }
}

pub async fn run(opts: RunOptions) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let input = input::read(&opts.input, opts.delimiter)?;
    let plan = plan::build(&input, &BuiltinCatalog);

    if opts.dry_run {
        print!("{}", describe_plan(&input, &plan, &opts.settings));
        let pending = pending_outcomes(&plan, "dry run: would be sent");
        let mut summary =
            RunSummary::new(report::build(&input, &plan, &pending), Completion::Planned);
        summary.blank_lines = input.blank_lines.len();
        summary.elapsed = started.elapsed();
        return Ok(summary);
    }

    let report_path = opts
        .report
        .clone()
        .unwrap_or_else(|| report::default_path(&opts.input));
    report::check_writable(&report_path).map_err(|source| Error::Write {
        path: report_path.clone(),
        source,
    })?;

    let mut settings = opts.settings.clone();
    let mut _sandbox = None;
    let credentials = match &opts.target {
        Target::Configured => credentials(&settings, &opts.secrets)?,
        Target::Sandbox(scenario) => {
            let sandbox =
                Sandbox::start(scenario.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                    .await
                    .map_err(Error::Sandbox)?;
            tracing::info!("sandbox listening on {}", sandbox.url);
            settings.api.base_url = sandbox.url.clone();
            let grant = sandbox.credentials();
            _sandbox = Some(sandbox);
            Credentials::RefreshToken(grant)
        }
    };

    let http = http_client(settings.api.timeout);
    let tokens = Arc::new(TokenProvider::new(http.clone(), credentials));
    let client = Arc::new(ApiClient::new(http, &settings.api, tokens));
    let total_rows = input.rows.len() as u64;
    let invalid_rows = plan.invalid_rows() as u64;
    let observer: Arc<dyn Observer> = if opts.progress {
        Arc::new(ProgressBar::start(total_rows, invalid_rows))
    } else {
        Arc::new(engine::Silent)
    };
    tracing::info!(
        rows = total_rows,
        invalid = invalid_rows,
        requests = plan.groups.len(),
        "sending {} license updates",
        plan.groups.len()
    );

    let result = engine::execute(
        Arc::new(plan.groups.clone()),
        client,
        EngineSettings::from(&settings),
        observer,
        opts.stop.clone(),
    )
    .await;

    let rows = report::build(&input, &plan, &result.outcomes);
    let mut completion = result.completion;
    if let Err(error) = report::write(&report_path, &input, &rows) {
        completion = Completion::Aborted(format!(
            "cannot write the report {}: {error}",
            report_path.display()
        ));
    }
    let mut summary = RunSummary::new(rows, completion);
    summary.stats = result.stats;
    summary.elapsed = started.elapsed();
    summary.report_path = Some(report_path);
    summary.blank_lines = input.blank_lines.len();
    Ok(summary)
}

/// Credentials from the environment and settings; what is missing is named (exit 2).
pub fn credentials(settings: &Settings, secrets: &EnvSecrets) -> Result<Credentials, Error> {
    if let Some(token) = &secrets.access_token {
        return Ok(Credentials::AccessToken(token.clone()));
    }
    let refresh_token = match (&secrets.refresh_token, &settings.auth.refresh_token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Credentials(format!(
                    "cannot read auth.refresh_token_file {}: {e}",
                    path.display()
                ))
            })?;
            let text = text.trim();
            (!text.is_empty()).then(|| Secret::new(text))
        }
        (None, None) => None,
    };
    let mut missing = Vec::new();
    if refresh_token.is_none() {
        missing.push("LICENSE_BATCH_REFRESH_TOKEN (or auth.refresh_token_file)");
    }
    if secrets.client_secret.is_none() {
        missing.push("LICENSE_BATCH_CLIENT_SECRET");
    }
    if settings.auth.tenant_id.is_none() {
        missing.push("auth.tenant_id (or LICENSE_BATCH_TENANT_ID)");
    }
    if settings.auth.client_id.is_none() {
        missing.push("auth.client_id (or LICENSE_BATCH_CLIENT_ID)");
    }
    match (
        refresh_token,
        &settings.auth.tenant_id,
        &settings.auth.client_id,
    ) {
        (Some(refresh_token), Some(tenant_id), Some(client_id)) if missing.is_empty() => {
            Ok(Credentials::RefreshToken(RefreshGrant {
                authority: settings.auth.authority.clone(),
                tenant_id: tenant_id.clone(),
                endpoint: settings.auth.token_endpoint,
                client_id: client_id.clone(),
                client_secret: secrets.client_secret.clone(),
                refresh_token,
            }))
        }
        _ => Err(Error::Credentials(format!(
            "set {}; or give a ready token in LICENSE_BATCH_ACCESS_TOKEN; or rehearse with --sandbox \
             (README, section Credentials)",
            missing.join(", ")
        ))),
    }
}

fn pending_outcomes(plan: &Plan, message: &str) -> Vec<Vec<OperationOutcome>> {
    plan.groups
        .iter()
        .map(|g| vec![OperationOutcome::pending(message); g.operations.len()])
        .collect()
}

/// The `--dry-run` plan: requests per customer, invalid rows, and the time at the ceiling.
pub fn describe_plan(input: &InputFile, plan: &Plan, settings: &Settings) -> String {
    let mut out = String::new();
    let mut per_customer: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for group in &plan.groups {
        let entry = per_customer
            .entry(group.customer_id.to_string())
            .or_default();
        entry.0 += 1;
        entry.1 += group.operations.iter().map(|o| o.rows.len()).sum::<usize>();
    }
    let _ = writeln!(
        out,
        "plan: {} rows, {} license updates to send, {} invalid rows",
        input.rows.len(),
        plan.groups.len(),
        plan.invalid_rows()
    );
    let _ = writeln!(out, "  {:<38} {:>8} {:>6}", "customer", "requests", "rows");
    for (customer, (requests, rows)) in &per_customer {
        let _ = writeln!(out, "  {customer:<38} {requests:>8} {rows:>6}");
    }
    for (row, row_plan) in input.rows.iter().zip(&plan.rows) {
        if let plan::RowPlan::Invalid { message, .. } = row_plan {
            let _ = writeln!(out, "  invalid line {}: {message}", row.line);
        }
    }
    let minutes = plan.groups.len() as f64 / settings.limits.requests_per_minute as f64;
    let _ = writeln!(
        out,
        "  at {} requests/minute the run takes at least {}",
        settings.limits.requests_per_minute,
        humantime::format_duration(Duration::from_secs((minutes * 60.0).ceil() as u64))
    );
    out
}
