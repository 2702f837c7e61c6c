//! `run(opts)`: the pipeline end to end — read and validate the CSV, read the tenants, plan and
//! preflight, record the run in the journal (or resume it), drive the engine, write the report
//! from the journal, and summarise with deployment insights.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::auth::{Credentials, RefreshGrant, TokenProvider};
use crate::api::models;
use crate::api::{ApiClient, http_client};
use crate::config::PreflightMode;
use crate::config::{EnvSecrets, Settings};
use crate::engine::{
    self, Dispatcher, EngineSettings, Observer, ReadFailure, ReadFailureKind, Work,
};
use crate::error::Error;
use crate::input::{self, Record};
use crate::journal::read::WorkPages;
use crate::journal::writer::JournalWriter;
use crate::journal::{self, Draft, Journal, NewRun};
use crate::outcome::Tally;
use crate::outcome::{Completion, OperationOutcome, OperationStatus, RowStatus};
use crate::paths;
use crate::plan;
use crate::progress::ProgressBar;
use crate::report;
use crate::sandbox::{Sandbox, Scenario};
use crate::secret::Secret;
use crate::summary::{CustomerInsights, RunSummary};
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
    /// Watches the engine instead of the progress bar (a library caller, a test).
    pub observer: ObserverSlot,
}

/// An [`Observer`] a caller hands to a run; `None`: the progress bar or nothing.
#[derive(Clone, Default)]
pub struct ObserverSlot(pub Option<Arc<dyn Observer>>);

impl std::fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(observer)"
        } else {
            "None"
        })
    }
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
            observer: ObserverSlot::default(),
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
    let report_path = opts
        .report
        .clone()
        .unwrap_or_else(|| report::default_path(&opts.input));
    check_paths(&opts, &report_path)?;
    let scan = input::scan_file(&opts.input, opts.delimiter)?;
    let customers = customers_of(&opts.input, &scan)?;
    tracing::debug!("input scanned and read in {:?}", started.elapsed());
    if opts.dry_run {
        return plan_only(&opts, &scan, customers, started).await;
    }

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
        journal.resumable_run(&scan.hash, &connection.target)?
    };
    let (run_id, seats) = match resumable {
        Some(id) => {
            tracing::info!("resuming run {id} of this input (--fresh starts a new one)");
            journal.resume_run(id)?;
            (id, SeatCheck::default())
        }
        None => {
            let tenants = TenantCatalog::fetch(&connection.calls, customers.iter().copied())
                .await
                .map_err(read_failure_error)?;
            let rows = input::read_file(&opts.input, &scan)?;
            let header = rows.header.clone();
            let mut draft = journal.draft(NewRun {
                input_path: &opts.input,
                input_hash: &scan.hash,
                delimiter: header.delimiter,
                headers: header.carried_names(),
                target: &connection.target,
                report_path: &report_path,
                settings_json: settings_json(&opts.settings),
            })?;
            let seats = plan_into(
                &mut draft,
                rows,
                &tenants,
                &customers,
                (!opts.resend).then_some(connection.target.as_str()),
                opts.settings.run.preflight,
            )?;
            // Also with --resend: an operation whose last request is in doubt keeps its ID.
            draft.carry_unanswered(&connection.target)?;
            (draft.commit()?, seats)
        }
    };
    drop(customers);
    let record = journal.run_record(run_id)?;
    let (open_groups, total_rows, open_rows) = journal.open_counts(run_id)?;
    let touched = journal.open_customers(run_id)?;

    let observer: Arc<dyn Observer> = match &opts.observer.0 {
        Some(observer) => Arc::clone(observer),
        None if opts.progress => Arc::new(ProgressBar::start(total_rows, total_rows - open_rows)),
        None => Arc::new(engine::Silent),
    };
    tracing::info!(
        run = run_id,
        rows = total_rows,
        requests = open_groups,
        "sending {open_groups} license updates"
    );

    let journal_error = |message: String| {
        Error::Journal(journal::JournalError::Io {
            path: journal.path().display().to_string(),
            message,
        })
    };
    let writer = Arc::new(
        JournalWriter::start(journal.path(), run_id, &connection.target).map_err(journal_error)?,
    );
    let work = Work {
        customers: touched.clone(),
        groups: open_groups,
        source: Box::new(WorkPages::open(journal.path(), run_id)?),
    };
    // In a task of its own: a panic anywhere in the engine ends as an abort of this run, and
    // the report below is written all the same.
    let engine = tokio::spawn(engine::execute(
        Arc::clone(&calls),
        work,
        observer,
        writer.clone(),
    ));
    let (mut completion, advice) = match engine.await {
        Ok(result) => (result.completion, result.advice),
        Err(error) => {
            // Workers still running stop taking groups; what they had in flight stays open.
            calls.stop.cancel();
            let reason = match error.try_into_panic() {
                Ok(payload) => crate::panic::abort_reason("the engine", payload.as_ref()),
                Err(error) => format!("the engine stopped: {error}"),
            };
            tracing::error!("aborting the run: {reason}");
            (Completion::Aborted(reason), None)
        }
    };
    if let Err(error) = writer.finish() {
        completion = Completion::Aborted(format!("cannot write the journal: {error}"));
    }

    // The report first: a run is marked finished only once its report exists, so a crash while
    // writing it resumes this run (which then only writes the report).
    let mut summary = match report_despite_panics(&journal, run_id, &report_path) {
        Ok(tally) => RunSummary::new(tally, completion),
        Err(error) => RunSummary::new(Tally::default(), Completion::Aborted(error)),
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
    summary.advice = advice;
    summary.seat_shortages = seats.shortages().cloned().collect();
    summary.elapsed = started.elapsed();
    summary.report_path = Some(report_path);
    summary.blank_lines = record.blank_lines;
    summary.run_id = Some(run_id);
    Ok(summary)
}

/// The journal must not be the input, nor the report either of them (or a file SQLite keeps
/// beside the journal): refused before anything is read or sent.
fn check_paths(opts: &RunOptions, report_path: &Path) -> Result<(), Error> {
    let state = opts.settings.run.state_file.as_path();
    paths::check_outputs(
        Some(&opts.input),
        None,
        &[paths::Output {
            what: "the journal (--state)",
            path: state,
        }],
    )
    .and_then(|()| {
        paths::check_outputs(
            Some(&opts.input),
            Some(state),
            &[paths::Output {
                what: "the report (--report)",
                path: report_path,
            }],
        )
    })
    .map_err(Error::Usage)
}

/// The customers of the valid rows: whose subscriptions are read before planning. A pass of
/// its own over the file, so that planning can resolve each row as it is read.
fn customers_of(path: &Path, scan: &input::Scan) -> Result<BTreeSet<Uuid>, Error> {
    let mut customers = BTreeSet::new();
    for record in input::read_file(path, scan)? {
        if let Record::Row(row) = record?
            && let Ok(request) = row.request
        {
            customers.insert(request.customer_id);
        }
    }
    Ok(customers)
}

fn read_failure_error(failure: ReadFailure) -> Error {
    match failure.kind {
        ReadFailureKind::Stopped => Error::Interrupted,
        _ => Error::Auth(failure.message),
    }
}

/// Plans the file's rows into `draft` as they are read, then decides what is not sent: done
/// before on `done_target` (none with `--resend`), refused customers, and the strict
/// preflight's excess. Returns the seat check.
fn plan_into<R: std::io::Read>(
    draft: &mut Draft<'_>,
    rows: input::Rows<R>,
    tenants: &TenantCatalog,
    customers: &BTreeSet<Uuid>,
    done_target: Option<&str>,
    mode: PreflightMode,
) -> Result<SeatCheck, Error> {
    let header = rows.header.clone();
    let clock = Instant::now();
    for record in rows {
        match record? {
            Record::Row(row) => {
                draft.add_row(&row, &header, &plan::resolve_row(&header, &row, tenants))?
            }
            Record::Blank(_) => draft.add_blank_line(),
        }
    }
    tracing::debug!(
        "planning: rows read, resolved and recorded in {:?}",
        clock.elapsed()
    );
    draft.group()?;
    if let Some(target) = done_target {
        draft.settle_done_before(target)?;
    }
    for &customer in customers {
        if let Some(CustomerCatalog::Refused(failure)) = tenants.customer(customer) {
            let outcome = OperationOutcome {
                http_status: failure.http_status,
                error_code: failure.error_code.clone(),
                ..OperationOutcome::unsent(
                    OperationStatus::Failed,
                    format!(
                        "not sent: reading the customer's subscriptions was refused: {}",
                        failure.message
                    ),
                )
            };
            draft.settle_customer(customer, &outcome)?;
        }
    }
    let seats = preflight::check(&draft.seat_needs()?, tenants, mode);
    for line in seats.shortages() {
        tracing::warn!(
            customer = %line.customer,
            "seat shortage: {} has {} free seats, this sheet needs {}",
            line.label,
            line.available.unwrap_or(0),
            line.needed
        );
    }
    for excess in &seats.excess {
        draft.settle_excess(excess.customer, excess.sku, excess.keep, &excess.outcome)?;
    }
    Ok(seats)
}

/// `run --dry-run` / `plan`: everything up to the first write, then the plan on stdout. The
/// plan is made in a scratch journal, exactly as a run makes it.
async fn plan_only(
    opts: &RunOptions,
    scan: &input::Scan,
    customers: BTreeSet<Uuid>,
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
            TenantCatalog::fetch(&c.calls, customers.iter().copied())
                .await
                .map_err(read_failure_error)?,
            Some(c.target.as_str()),
            None,
        ),
        None => (
            TenantCatalog::offline("offline", customers.iter().copied()),
            None,
            Some(
                "offline (no credentials): names resolved from the built-in catalog, seats not checked",
            ),
        ),
    };
    let mut journal = Journal::scratch()?;
    let state_file = &opts.settings.run.state_file;
    let done_target = match target {
        Some(target) if !opts.resend && state_file.exists() => {
            journal.attach_prior(state_file)?;
            Some(target)
        }
        _ => None,
    };
    let rows = input::read_file(&opts.input, scan)?;
    let header = rows.header.clone();
    let mut draft = journal.draft(NewRun::scratch(&header))?;
    // When nothing can be settled before sending — no success on this target in an earlier
    // run, no refused customer, no strict seat check against known seats — every valid row's
    // operation stays open: `plan` counts those instead of recording them (it prints only
    // figures and the invalid rows), which spares most of the time a large plan takes.
    let refused = customers
        .iter()
        .any(|&c| matches!(tenants.customer(c), Some(CustomerCatalog::Refused(_))));
    let done_before = match done_target {
        Some(target) => draft.done_before_exists(target)?,
        None => false,
    };
    let strict_seats = connection.is_some() && opts.settings.run.preflight == PreflightMode::Strict;
    if !refused && !done_before && !strict_seats {
        draft.count_open_operations_only();
    }
    let seats = plan_into(
        &mut draft,
        rows,
        &tenants,
        &customers,
        done_target,
        opts.settings.run.preflight,
    )?;
    // Figures counted while planning; read from the tables when something was settled.
    let counts = draft.counts().cloned();
    let run_id = draft.commit()?;

    tracing::debug!("planning: done after {:?}", started.elapsed());
    let (tally, per_customer) = match counts {
        Some(counts) => (
            counts.tally,
            counts
                .per_customer
                .into_iter()
                .map(|(customer, (requests, rows))| (customer, requests, rows))
                .collect(),
        ),
        None => (
            journal.tally(run_id)?,
            journal.requests_per_customer(run_id)?,
        ),
    };
    tracing::debug!("planning: rows counted after {:?}", started.elapsed());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    describe_plan(
        &mut out,
        &journal,
        run_id,
        PlanFigures {
            tally: &tally,
            per_customer: &per_customer,
            seats: &seats,
        },
        &opts.settings,
        note,
    )
    .and_then(|()| out.flush())
    .map_err(|source| Error::Write {
        path: PathBuf::from("(standard output)"),
        source,
    })?;
    drop(out);
    tracing::debug!("planning: plan printed after {:?}", started.elapsed());
    let mut summary = RunSummary::new(tally, Completion::Planned);
    summary.seat_shortages = seats.shortages().cloned().collect();
    summary.blank_lines = journal.run_record(run_id)?.blank_lines;
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

/// Writes the report; a panic while writing it becomes an error (the run is then recorded as
/// aborted, and `license-batch report` can try again) instead of taking the process down.
fn report_despite_panics(journal: &Journal, run_id: i64, path: &Path) -> Result<Tally, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        report::write_from_journal(journal, run_id, path)
    }))
    .unwrap_or_else(|payload| {
        Err(crate::panic::abort_reason(
            "writing the report",
            payload.as_ref(),
        ))
    })
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
        "concurrency": match settings.limits.concurrency {
            fixed if fixed.is_fixed() => serde_json::json!(fixed.initial),
            growing => serde_json::json!({ "initial": growing.initial, "max": growing.max }),
        },
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

/// The figures `plan` prints: counted while planning, or read from the journal.
struct PlanFigures<'a> {
    tally: &'a Tally,
    /// Per customer: (requests to send, rows planned for sending).
    per_customer: &'a [(Uuid, u64, u64)],
    seats: &'a SeatCheck,
}

/// The plan as `plan` / `--dry-run` prints it: requests per customer, the seat table, what is
/// not sent and why, invalid rows, and the time at the configured ceiling. Written as it is
/// read from the journal: a sheet with a million invalid rows prints them without holding
/// them.
fn describe_plan(
    out: &mut impl Write,
    journal: &Journal,
    run_id: i64,
    figures: PlanFigures<'_>,
    settings: &Settings,
    note: Option<&str>,
) -> std::io::Result<()> {
    let PlanFigures {
        tally,
        per_customer,
        seats,
    } = figures;
    let io = |e: journal::JournalError| std::io::Error::other(e.to_string());
    let to_send: u64 = per_customer.iter().map(|(_, requests, _)| requests).sum();
    writeln!(
        out,
        "plan: {} rows, {} license updates to send, {} invalid rows",
        tally.rows(),
        to_send,
        tally.count(RowStatus::Invalid)
    )?;
    if let Some(note) = note {
        writeln!(out, "  {note}")?;
    }
    writeln!(out, "  {:<38} {:>8} {:>6}", "customer", "requests", "rows")?;
    for (customer, requests, rows) in per_customer {
        writeln!(out, "  {customer:<38} {requests:>8} {rows:>6}")?;
    }
    if !seats.lines.is_empty() {
        writeln!(out, "  seats:")?;
        writeln!(
            out,
            "  {:<38} {:<34} {:>9} {:>6} {:>8}",
            "customer", "product", "available", "needed", "shortage"
        )?;
        for line in &seats.lines {
            let available = line.available.map_or("?".to_string(), |a| a.to_string());
            let shortage = match line.shortage() {
                0 => String::new(),
                n => n.to_string(),
            };
            writeln!(
                out,
                "  {:<38} {:<34} {:>9} {:>6} {:>8}",
                line.customer, line.label, available, line.needed, shortage
            )?;
        }
    }
    // What is not sent, one line per reason with the input lines it covers. (Each list is a
    // pass over all rows: skipped when the counts say it is empty.)
    let mut reason: Option<String> = None;
    let mut failure = None;
    let unsent = [RowStatus::Succeeded, RowStatus::Failed, RowStatus::Skipped]
        .iter()
        .map(|&status| tally.count(status))
        .sum::<u64>();
    if unsent > 0 {
        journal
            .each_unsent_line(run_id, |message, line| {
                let text = message.strip_prefix("not sent: ").unwrap_or(message);
                let step = match &reason {
                    Some(current) if current == text => write!(out, ", {line}"),
                    Some(current) => write!(out, "): {current}\n  not sent (lines {line}"),
                    None => write!(out, "  not sent (lines {line}"),
                };
                if reason.as_deref() != Some(text) {
                    reason = Some(text.to_string());
                }
                failure = failure.take().or(step.err());
            })
            .map_err(io)?;
    }
    if let Some(error) = failure.take() {
        return Err(error);
    }
    if let Some(reason) = reason {
        writeln!(out, "): {reason}")?;
    }
    if tally.count(RowStatus::Invalid) > 0 {
        journal
            .each_invalid_row(run_id, |line, message| {
                let step = writeln!(out, "  invalid line {line}: {message}");
                failure = failure.take().or(step.err());
            })
            .map_err(io)?;
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let minutes = to_send as f64 / settings.limits.requests_per_minute as f64;
    writeln!(
        out,
        "  at {} requests/minute the run takes at least {}",
        settings.limits.requests_per_minute,
        humantime::format_duration(Duration::from_secs((minutes * 60.0).ceil() as u64))
    )
}
