//! `run(opts)`: the pipeline end to end — read and validate the CSV, plan, record the run in
//! the journal (or resume it), drive the engine, and write the report from the journal.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::api::auth::{Credentials, RefreshGrant, TokenProvider};
use crate::api::{ApiClient, http_client};
use crate::config::{EnvSecrets, Settings};
use crate::engine::{
    self, EngineSettings, GroupWork, Observer, OperationOutcome, OperationStatus, Pass,
};
use crate::error::Error;
use crate::input::{self, InputFile};
use crate::journal::writer::JournalWriter;
use crate::journal::{self, Journal, LoadedRun, NewRun};
use crate::plan::{self, Plan, catalog::BuiltinCatalog};
use crate::progress::ProgressBar;
use crate::report::{self, InputColumns};
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
    /// Start a new run even when an unfinished run of the same input exists.
    pub fresh: bool,
    /// Send operations already done in earlier runs too (implies `fresh`).
    pub resend: bool,
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
            fresh: false,
            resend: false,
            delimiter: None,
            progress: false,
            stop: CancellationToken::new(),
        }
    }
}

pub async fn run(opts: RunOptions) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let bytes = input::read_bytes(&opts.input)?;
    let input = input::parse(&opts.input, &bytes, opts.delimiter)?;
    let plan = plan::build(&input, &BuiltinCatalog);

    if opts.dry_run {
        print!("{}", describe_plan(&input, &plan, &opts.settings));
        let outcomes = pending_outcomes(&plan, "dry run: would be sent");
        let mut summary = RunSummary::new(report::build(&plan, &outcomes), Completion::Planned);
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

    // Credentials and target before the journal: a run that cannot send records nothing.
    let mut settings = opts.settings.clone();
    let mut _sandbox = None;
    let (credentials, target) = match &opts.target {
        Target::Configured => (
            credentials(&settings, &opts.secrets)?,
            target_key(&settings),
        ),
        Target::Sandbox(scenario) => {
            let sandbox =
                Sandbox::start(scenario.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                    .await
                    .map_err(Error::Sandbox)?;
            tracing::info!("sandbox listening on {}", sandbox.url);
            settings.api.base_url = sandbox.url.clone();
            let grant = sandbox.credentials();
            _sandbox = Some(sandbox);
            // Its own target, so a rehearsal never marks anything done for a real API.
            let target = format!("sandbox (built-in, scenario {})", scenario.fingerprint());
            (Credentials::RefreshToken(grant), target)
        }
    };

    let mut journal = Journal::open_for_run(&settings.run.state_file)?;
    let input_hash = journal::content_hash(&bytes);
    let resumable = if opts.fresh || opts.resend {
        None
    } else {
        journal.resumable_run(&input_hash, &target)?
    };
    let run_id = match resumable {
        Some(id) => {
            tracing::info!("resuming run {id} of this input (--fresh starts a new one)");
            id
        }
        None => journal.create_run(NewRun {
            input: &input,
            input_hash: &input_hash,
            plan: &plan,
            target: &target,
            report_path: &report_path,
            settings_json: settings_json(&settings),
            presettled: &if opts.resend {
                HashMap::new()
            } else {
                done_before(&journal, &plan, &target)?
            },
        })?,
    };
    let blank_lines = input.blank_lines.len();
    drop(input);
    let loaded = journal.load_run(run_id)?;
    let work = open_work(&loaded);
    let groups = Arc::new(loaded.plan.groups.clone());

    let http = http_client(settings.api.timeout);
    let tokens = Arc::new(TokenProvider::new(http.clone(), credentials));
    let client = Arc::new(ApiClient::new(http, &settings.api, tokens));
    let total_rows = loaded.plan.rows.len() as u64;
    let observer: Arc<dyn Observer> = if opts.progress {
        Arc::new(ProgressBar::start(
            total_rows,
            total_rows - open_rows(&loaded),
        ))
    } else {
        Arc::new(engine::Silent)
    };
    tracing::info!(
        run = run_id,
        rows = total_rows,
        requests = work.len(),
        "sending {} license updates",
        work.len()
    );

    let writer = Arc::new(
        JournalWriter::start(journal.path(), run_id, &target, Arc::clone(&groups)).map_err(
            |message| {
                Error::Journal(journal::JournalError::Io {
                    path: journal.path().display().to_string(),
                    message,
                })
            },
        )?,
    );
    let result = engine::execute(
        groups,
        work,
        client,
        EngineSettings::from(&settings),
        observer,
        writer.clone(),
        opts.stop.clone(),
    )
    .await;
    let mut completion = result.completion;
    if let Err(error) = writer.finish() {
        completion = Completion::Aborted(format!("cannot write the journal: {error}"));
    }

    // The report first: a run is marked finished only once its report exists, so a crash while
    // writing it resumes this run (which then only writes the report).
    let mut summary = match write_report_from_journal(&journal, run_id, &report_path) {
        Ok(rows) => RunSummary::new(rows, completion),
        Err(error) => RunSummary::new(Vec::new(), Completion::Aborted(error)),
    };
    let (outcome, message) = match &summary.completion {
        Completion::Finished | Completion::Planned => ("finished", None),
        Completion::Aborted(reason) => ("aborted", Some(reason.as_str())),
        Completion::Interrupted => ("interrupted", None),
    };
    if let Err(error) = journal.finish_run(run_id, outcome, message) {
        tracing::error!("{error}");
    }
    summary.stats = result.stats;
    summary.elapsed = started.elapsed();
    summary.report_path = Some(report_path);
    summary.blank_lines = blank_lines;
    summary.run_id = Some(run_id);
    Ok(summary)
}

/// Rewrites a run's report from the journal (also `license-batch report`).
pub fn write_report_from_journal(
    journal: &Journal,
    run_id: i64,
    path: &Path,
) -> Result<Vec<report::ReportRow>, String> {
    let loaded = journal.load_run(run_id).map_err(|e| e.to_string())?;
    let rows = report::build(&loaded.plan, &loaded.outcomes_for_report());
    let columns = InputColumns {
        delimiter: loaded.delimiter,
        headers: &loaded.headers,
        cells: &loaded.cells,
    };
    report::write(path, &columns, &rows)
        .map_err(|e| format!("cannot write the report {}: {e}", path.display()))?;
    Ok(rows)
}

/// Operations that already succeeded on this target in an earlier run: not sent again.
fn done_before(
    journal: &Journal,
    plan: &Plan,
    target: &str,
) -> Result<HashMap<(usize, usize), OperationOutcome>, Error> {
    let mut settled = HashMap::new();
    for (g, group) in plan.groups.iter().enumerate() {
        for (o, op) in group.operations.iter().enumerate() {
            if let Some(done) =
                journal.done_before(target, group.customer_id, &group.user, op.sku_id, op.action)?
            {
                let mut outcome = OperationOutcome::pending(format!(
                    "already done in run {} on {}; not sent again (--resend sends it)",
                    done.run_id, done.finished_at
                ));
                outcome.status = OperationStatus::Succeeded;
                outcome.finished_at = humantime::parse_rfc3339(&done.finished_at).ok();
                settled.insert((g, o), outcome);
            }
        }
    }
    Ok(settled)
}

/// The groups of a loaded run that still have open operations, as the passes (operations
/// sharing a recorded request ID) they were being sent in.
fn open_work(run: &LoadedRun) -> Vec<GroupWork> {
    run.outcomes
        .iter()
        .enumerate()
        .filter_map(|(group, ops)| {
            let mut passes: Vec<Pass> = Vec::new();
            let mut previous_attempts = 0;
            for (op, outcome) in ops.iter().enumerate() {
                if outcome
                    .as_ref()
                    .is_some_and(|o| o.status != OperationStatus::Pending)
                {
                    continue;
                }
                previous_attempts =
                    previous_attempts.max(outcome.as_ref().map_or(0, |o| o.attempts));
                let request_id = run.send_ids[group][op];
                match passes.iter_mut().find(|p| p.request_id == request_id) {
                    Some(pass) => pass.operations.push(op),
                    None => passes.push(Pass {
                        request_id,
                        operations: vec![op],
                    }),
                }
            }
            (!passes.is_empty()).then_some(GroupWork {
                group,
                passes,
                previous_attempts,
            })
        })
        .collect()
}

/// Rows whose operation is still open.
fn open_rows(run: &LoadedRun) -> u64 {
    run.plan
        .groups
        .iter()
        .zip(&run.outcomes)
        .flat_map(|(g, ops)| g.operations.iter().zip(ops))
        .filter(|(_, o)| {
            o.as_ref()
                .is_none_or(|o| o.status == OperationStatus::Pending)
        })
        .map(|(op, _)| op.rows.len() as u64)
        .sum()
}

/// "Done" is keyed by the API target: base URL and partner tenant.
fn target_key(settings: &Settings) -> String {
    format!(
        "{} tenant={}",
        settings.api.base_url,
        settings
            .auth
            .tenant_id
            .as_deref()
            .unwrap_or("(from access token)")
    )
}

fn settings_json(settings: &Settings) -> String {
    serde_json::json!({
        "base_url": settings.api.base_url.as_str(),
        "requests_per_minute": settings.limits.requests_per_minute,
        "concurrency": settings.limits.concurrency,
        "max_attempts": settings.retry.max_attempts,
        "max_elapsed_secs": settings.retry.max_elapsed.as_secs(),
    })
    .to_string()
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
    for row in &plan.rows {
        if let plan::RowPlan::Invalid { message, .. } = &row.plan {
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
