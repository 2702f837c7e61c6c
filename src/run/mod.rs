//! `run(opts)`: the pipeline end to end — the steps it shares with `plan` ([`prepare`]: the
//! file scanned, the tenants read, the rows planned and preflighted), then the run recorded in
//! the journal (or resumed), the engine driven, the report written from the journal, and the
//! summary with deployment insights. Connecting and credentials: [`connect`]; the plan view
//! of `plan` / `--dry-run`: [`plan_view`].

mod connect;
mod plan_view;
mod prepare;

pub use connect::{Connection, connect, credentials};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::models;
use crate::config::{EnvSecrets, Settings};
use crate::engine::{self, Dispatcher, Observer, Work};
use crate::error::Error;
use crate::input;
use crate::journal::read::WorkPages;
use crate::journal::writer::JournalWriter;
use crate::journal::{self, Journal, NewRun};
use crate::outcome::{Completion, Tally};
use crate::plan::guard::GuardCheck;
use crate::progress::ProgressBar;
use crate::report;
use crate::sandbox::Scenario;
use crate::summary::{CustomerInsights, RunSummary};
use crate::tenant::preflight::SeatCheck;

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
    /// `--yes`: a plan over the guard's limits (SPEC §13) is sent all the same.
    pub confirmed: bool,
    pub delimiter: Option<u8>,
    /// The worksheet of a spreadsheet input (`--sheet`); the first one when `None`.
    pub sheet: Option<String>,
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
            confirmed: false,
            delimiter: None,
            sheet: None,
            progress: false,
            stop: CancellationToken::new(),
            observer: ObserverSlot::default(),
        }
    }
}

pub async fn run(opts: RunOptions) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let prepare::Prepared {
        report_path,
        scan,
        customers,
    } = prepare::prepare(&opts)?;
    tracing::debug!("input scanned and read in {:?}", started.elapsed());
    if opts.dry_run {
        return plan_view::plan_only(&opts, &scan, customers, started).await;
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
            let tenants = prepare::read_tenants(&connection.calls, &customers).await?;
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
            let seats = prepare::plan_into(
                &mut draft,
                rows,
                &tenants,
                &customers,
                (!opts.resend).then_some(connection.target.as_str()),
                opts.settings.run.preflight,
            )?;
            let guard = GuardCheck::new(draft.license_changes()?, opts.settings.run.guard);
            if guard.stops() && !opts.confirmed {
                // Dropped uncommitted: the journal keeps no trace, the next run plans afresh.
                return Err(Error::Guard(Box::new(guard)));
            }
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
