//! `run(opts)`: the pipeline end to end — read and validate the CSV, read the tenants, plan and
//! preflight, record the run in the journal (or resume it), drive the engine, write the report
//! from the journal, and summarise with deployment insights.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::auth::{Credentials, RefreshGrant, TokenProvider};
use crate::api::models;
use crate::api::{ApiClient, http_client};
use crate::config::{EnvSecrets, Settings};
use crate::engine::{
    self, Dispatcher, EngineSettings, GroupWork, Observer, OperationOutcome, OperationStatus, Pass,
    ReadFailure, ReadFailureKind,
};
use crate::error::Error;
use crate::input::{self, InputFile};
use crate::journal::writer::JournalWriter;
use crate::journal::{self, Journal, LoadedRun, NewRun};
use crate::plan::{self, Plan, RowPlan};
use crate::progress::ProgressBar;
use crate::report::{self, InputColumns};
use crate::sandbox::{Sandbox, Scenario};
use crate::secret::Secret;
use crate::summary::{Completion, CustomerInsights, RunSummary};
use crate::tenant::preflight::{self, SeatCheck};
use crate::tenant::{CustomerCatalog, TenantCatalog};

/// Which API the run talks to.
#[derive(Debug, Clone)]
pub enum Target {
    /// The API and authority of the settings, with credentials from the environment.
    Configured,
    /// The built-in simulator, started in this process on a free loopback port.
    Sandbox(Box<Scenario>),
}

/// Everything a run needs; the CLI builds it, tests build it directly.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub input: PathBuf,
    pub report: Option<PathBuf>,
    pub settings: Settings,
    pub secrets: EnvSecrets,
    pub target: Target,
    /// Plan only: read the tenants, print the plan, send nothing, write nothing.
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

/// A live connection to an API target: the dispatcher every call goes through, and the key
/// under which "done" is remembered.
pub struct Connection {
    pub calls: Arc<Dispatcher>,
    pub target: String,
    /// Keeps the in-process sandbox alive while connected.
    _sandbox: Option<Sandbox>,
}

/// Resolves credentials (or starts the in-process sandbox) and builds the dispatcher.
pub async fn connect(
    settings: &Settings,
    secrets: &EnvSecrets,
    target: &Target,
    stop: CancellationToken,
) -> Result<Connection, Error> {
    let mut settings = settings.clone();
    let (credentials, target, sandbox) = match target {
        Target::Configured => (
            credentials(&settings, secrets)?,
            target_key(&settings),
            None,
        ),
        Target::Sandbox(scenario) => {
            let sandbox = Sandbox::start(
                scenario.as_ref().clone(),
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            )
            .await
            .map_err(Error::Sandbox)?;
            tracing::info!("sandbox listening on {}", sandbox.url);
            settings.api.base_url = sandbox.url.clone();
            // Each sandbox world is its own target: a rehearsal never marks anything done for
            // a real API, nor for another scenario.
            let target = format!("sandbox (built-in, scenario {})", scenario.fingerprint());
            (
                Credentials::RefreshToken(sandbox.credentials()),
                target,
                Some(sandbox),
            )
        }
    };
    let http = http_client(settings.api.timeout);
    let tokens = Arc::new(TokenProvider::new(http.clone(), credentials));
    let client = Arc::new(ApiClient::new(http, &settings.api, tokens));
    // A child token: a signal (the caller's token) stops the calls; an abort of this run stops
    // them too but leaves the caller's token alone.
    Ok(Connection {
        calls: Arc::new(Dispatcher::new(
            client,
            EngineSettings::from(&settings),
            stop.child_token(),
        )),
        target,
        _sandbox: sandbox,
    })
}

pub async fn run(opts: RunOptions) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let bytes = input::read_bytes(&opts.input)?;
    let input = input::parse(&opts.input, &bytes, opts.delimiter)?;
    if opts.dry_run {
        drop(bytes);
        return plan_only(&opts, &input, started).await;
    }
    // The parsed rows are all the run needs of the file from here on.
    let input_hash = journal::content_hash(&bytes);
    drop(bytes);

    let report_path = opts
        .report
        .clone()
        .unwrap_or_else(|| report::default_path(&opts.input));
    report::check_writable(&report_path).map_err(|source| Error::Write {
        path: report_path.clone(),
        source,
    })?;
    let connection = connect(
        &opts.settings,
        &opts.secrets,
        &opts.target,
        opts.stop.clone(),
    )
    .await?;
    let calls = Arc::clone(&connection.calls);

    let mut journal = Journal::open_for_run(&opts.settings.run.state_file)?;
    let resumable = if opts.fresh || opts.resend {
        None
    } else {
        journal.resumable_run(&input_hash, &connection.target)?
    };
    let (run_id, seats) = match resumable {
        Some(id) => {
            tracing::info!("resuming run {id} of this input (--fresh starts a new one)");
            (id, SeatCheck::default())
        }
        None => {
            let tenants = TenantCatalog::fetch(&connection.calls, customers_of(&input))
                .await
                .map_err(read_failure_error)?;
            let prepared = prepare(tenants, &connection.target, &input, Some(&journal), &opts)?;
            let id = journal.create_run(NewRun {
                input: &input,
                input_hash: &input_hash,
                plan: &prepared.plan,
                target: &connection.target,
                report_path: &report_path,
                settings_json: settings_json(&opts.settings),
                presettled: &prepared.presettled,
            })?;
            (id, prepared.seats)
        }
    };
    let blank_lines = input.blank_lines.len();
    drop(input);
    let loaded = journal.load_run(run_id)?;
    let work = open_work(&loaded);
    let groups = Arc::new(loaded.plan.groups.clone());
    let touched: BTreeSet<Uuid> = work.iter().map(|w| groups[w.group].customer_id).collect();

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
        JournalWriter::start(
            journal.path(),
            run_id,
            &connection.target,
            Arc::clone(&groups),
        )
        .map_err(|message| {
            Error::Journal(journal::JournalError::Io {
                path: journal.path().display().to_string(),
                message,
            })
        })?,
    );
    let result = engine::execute(Arc::clone(&calls), groups, work, observer, writer.clone()).await;
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
    if opts.settings.run.insights && summary.completion == Completion::Finished {
        summary.insights = deployment_insights(&calls, touched).await;
    }
    summary.stats = calls.stats();
    summary.advice = result.advice;
    summary.seat_shortages = seats.shortages().cloned().collect();
    summary.elapsed = started.elapsed();
    summary.report_path = Some(report_path);
    summary.blank_lines = blank_lines;
    summary.run_id = Some(run_id);
    Ok(summary)
}

/// A plan ready to be recorded: resolved against the tenants, with the outcomes decided before
/// anything is sent.
struct Prepared {
    plan: Plan,
    presettled: HashMap<(usize, usize), OperationOutcome>,
    seats: SeatCheck,
}

fn customers_of(input: &InputFile) -> BTreeSet<Uuid> {
    input
        .rows
        .iter()
        .filter_map(|r| r.request.as_ref().ok().map(|r| r.customer_id))
        .collect()
}

fn read_failure_error(failure: ReadFailure) -> Error {
    match failure.kind {
        ReadFailureKind::Stopped => Error::Interrupted,
        _ => Error::Auth(failure.message),
    }
}

/// Plans against the tenants and decides what is not sent: done before (unless `--resend`),
/// refused customers, and the strict preflight's excess.
fn prepare(
    tenants: TenantCatalog,
    target: &str,
    input: &InputFile,
    journal: Option<&Journal>,
    opts: &RunOptions,
) -> Result<Prepared, Error> {
    let plan = plan::build(input, &tenants);
    let mut presettled = match journal {
        Some(journal) if !opts.resend => done_before(journal, &plan, target)?,
        _ => HashMap::new(),
    };
    for (g, group) in plan.groups.iter().enumerate() {
        if let Some(CustomerCatalog::Refused(failure)) = tenants.customer(group.customer_id) {
            for o in 0..group.operations.len() {
                presettled
                    .entry((g, o))
                    .or_insert_with(|| OperationOutcome {
                        http_status: failure.http_status,
                        error_code: failure.error_code.clone(),
                        ..OperationOutcome::unsent(
                            OperationStatus::Failed,
                            format!(
                                "not sent: reading the customer's subscriptions was refused: {}",
                                failure.message
                            ),
                        )
                    });
            }
        }
    }
    let seats = preflight::check(&plan, &tenants, &presettled, opts.settings.run.preflight);
    for line in seats.shortages() {
        tracing::warn!(
            customer = %line.customer,
            "seat shortage: {} has {} free seats, this sheet needs {}",
            line.label,
            line.available.unwrap_or(0),
            line.needed
        );
    }
    presettled.extend(seats.skipped.clone());
    Ok(Prepared {
        plan,
        presettled,
        seats,
    })
}

/// `run --dry-run` / `plan`: everything up to the first write, then the plan on stdout.
async fn plan_only(
    opts: &RunOptions,
    input: &InputFile,
    started: Instant,
) -> Result<RunSummary, Error> {
    let connection = match connect(
        &opts.settings,
        &opts.secrets,
        &opts.target,
        opts.stop.clone(),
    )
    .await
    {
        Ok(connection) => Some(connection),
        Err(Error::Credentials(missing)) => {
            tracing::warn!("no credentials ({missing}): planning offline");
            None
        }
        Err(error) => return Err(error),
    };
    let (tenants, target, note) = match &connection {
        Some(c) => (
            TenantCatalog::fetch(&c.calls, customers_of(input))
                .await
                .map_err(read_failure_error)?,
            c.target.clone(),
            None,
        ),
        None => (
            TenantCatalog::offline("offline", customers_of(input)),
            String::new(),
            Some(
                "offline (no credentials): names resolved from the built-in catalog, seats not checked",
            ),
        ),
    };
    let journal = match &opts.settings.run.state_file {
        path if path.exists() => Some(Journal::open_to_read(path)?),
        _ => None,
    };
    let prepared = prepare(tenants, &target, input, journal.as_ref(), opts)?;
    print!("{}", describe_plan(input, &prepared, &opts.settings, note));
    let outcomes: Vec<Vec<OperationOutcome>> = prepared
        .plan
        .groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            (0..group.operations.len())
                .map(|o| {
                    prepared
                        .presettled
                        .get(&(g, o))
                        .cloned()
                        .unwrap_or_else(|| OperationOutcome::pending("would be sent"))
                })
                .collect()
        })
        .collect();
    let mut summary = RunSummary::new(
        report::build(&prepared.plan, &outcomes),
        Completion::Planned,
    );
    summary.seat_shortages = prepared.seats.shortages().cloned().collect();
    summary.blank_lines = input.blank_lines.len();
    summary.elapsed = started.elapsed();
    if let Some(c) = &connection {
        summary.stats = c.calls.stats();
    }
    Ok(summary)
}

/// Deployment insights (licenses deployed vs sold) of the given customers.
pub async fn deployment_insights(
    calls: &Arc<Dispatcher>,
    customers: impl IntoIterator<Item = Uuid>,
) -> Vec<CustomerInsights> {
    let reads = customers
        .into_iter()
        .map(|customer| (customer, calls.client.deployment_insights_url(customer)))
        .collect();
    calls
        .read_all(reads)
        .await
        .into_iter()
        .map(|(customer, result)| CustomerInsights {
            customer,
            products: result
                .map(|body| models::deployment_insights(&body))
                .map_err(|failure| failure.message),
        })
        .collect()
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
                let mut outcome = OperationOutcome::unsent(
                    OperationStatus::Succeeded,
                    format!(
                        "already done in run {} on {}; not sent again (--resend sends it)",
                        done.run_id, done.finished_at
                    ),
                );
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
    // A configured refresh-token file wins when it holds a token: it carries the latest
    // rotation, which the environment cannot.
    let from_file = match &settings.auth.refresh_token_file {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Credentials(format!(
                    "cannot read auth.refresh_token_file {}: {e}",
                    path.display()
                ))
            })?;
            let text = text.trim();
            (!text.is_empty()).then(|| Secret::new(text))
        }
        _ => None,
    };
    let refresh_token = from_file.or_else(|| secrets.refresh_token.clone());
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
                persist_to: settings.auth.refresh_token_file.clone(),
            }))
        }
        _ => Err(Error::Credentials(format!(
            "set {}; or give a ready token in LICENSE_BATCH_ACCESS_TOKEN; or rehearse with --sandbox \
             (README, section Credentials)",
            missing.join(", ")
        ))),
    }
}

/// The plan as `plan` / `--dry-run` prints it: requests per customer, the seat table, what is
/// not sent and why, invalid rows, and the time at the configured ceiling.
fn describe_plan(
    input: &InputFile,
    prepared: &Prepared,
    settings: &Settings,
    note: Option<&str>,
) -> String {
    let plan = &prepared.plan;
    let mut out = String::new();
    let mut per_customer: BTreeMap<Uuid, (usize, usize)> = BTreeMap::new();
    let mut to_send = 0;
    for (g, group) in plan.groups.iter().enumerate() {
        let open = (0..group.operations.len()).any(|o| !prepared.presettled.contains_key(&(g, o)));
        let entry = per_customer.entry(group.customer_id).or_default();
        if open {
            entry.0 += 1;
            to_send += 1;
        }
        entry.1 += group.operations.iter().map(|o| o.rows.len()).sum::<usize>();
    }
    let _ = writeln!(
        out,
        "plan: {} rows, {} license updates to send, {} invalid rows",
        input.rows.len(),
        to_send,
        plan.invalid_rows()
    );
    if let Some(note) = note {
        let _ = writeln!(out, "  {note}");
    }
    let _ = writeln!(out, "  {:<38} {:>8} {:>6}", "customer", "requests", "rows");
    for (customer, (requests, rows)) in &per_customer {
        let _ = writeln!(out, "  {customer:<38} {requests:>8} {rows:>6}");
    }
    if !prepared.seats.lines.is_empty() {
        let _ = writeln!(out, "  seats:");
        let _ = writeln!(
            out,
            "  {:<38} {:<34} {:>9} {:>6} {:>8}",
            "customer", "product", "available", "needed", "shortage"
        );
        for line in &prepared.seats.lines {
            let available = line.available.map_or("?".to_string(), |a| a.to_string());
            let shortage = match line.shortage() {
                0 => String::new(),
                n => n.to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<38} {:<34} {:>9} {:>6} {:>8}",
                line.customer, line.label, available, line.needed, shortage
            );
        }
    }
    // What is not sent, one line per reason with the input lines it covers.
    let mut not_sent: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for ((g, o), outcome) in &prepared.presettled {
        let reason = outcome
            .message
            .strip_prefix("not sent: ")
            .unwrap_or(&outcome.message);
        let lines = plan.groups[*g].operations[*o]
            .rows
            .iter()
            .map(|&r| plan.rows[r].line);
        not_sent.entry(reason).or_default().extend(lines);
    }
    for (reason, mut lines) in not_sent {
        lines.sort_unstable();
        let lines: Vec<String> = lines.iter().map(u64::to_string).collect();
        let _ = writeln!(out, "  not sent (lines {}): {reason}", lines.join(", "));
    }
    for row in &plan.rows {
        if let RowPlan::Invalid { message, .. } = &row.plan {
            let _ = writeln!(out, "  invalid line {}: {message}", row.line);
        }
    }
    let minutes = to_send as f64 / settings.limits.requests_per_minute as f64;
    let _ = writeln!(
        out,
        "  at {} requests/minute the run takes at least {}",
        settings.limits.requests_per_minute,
        humantime::format_duration(Duration::from_secs((minutes * 60.0).ceil() as u64))
    );
    out
}
