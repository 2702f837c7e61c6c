//! The command line: clap's raw arguments, resolved with the config file and environment into
//! [`RunOptions`]; signal handling; printing the summary. The only module that knows of flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::io::Write as _;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::PreflightMode;
use crate::config::{self, EnvSecrets, FileConfig, Overrides, Settings};
use crate::error::{self, Error, exit_code};
use crate::journal::Journal;
use crate::outcome::RowStatus;
use crate::progress::{self, LogFormat};
use crate::report;
use crate::run::{Connection, RunOptions, Target, deployment_insights, run};
use crate::sandbox::{self, Sandbox, Scenario};
use crate::summary::InsightsTable;
use crate::verify::verify;

#[derive(Debug, Parser)]
#[command(
    name = "license-batch",
    version,
    about = "Bulk-assign Microsoft 365 licenses through the Partner Center API from a CSV sheet",
    after_help = "Examples:\n  license-batch run samples/onboarding.csv --sandbox\n  license-batch run onboarding.csv --config /etc/license-batch/config.toml\n  license-batch sandbox --listen 127.0.0.1:8080 --scenario samples/sandbox-scenario.toml"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Assign or remove the licenses a CSV asks for, and write a per-row report.
    #[command(
        after_help = "Examples:\n  license-batch run samples/onboarding.csv --sandbox\n  license-batch run samples/onboarding.csv --sandbox --sandbox-scenario samples/sandbox-scenario.toml\n  LICENSE_BATCH_REFRESH_TOKEN=… LICENSE_BATCH_CLIENT_SECRET=… license-batch run onboarding.csv --config config.toml\n\nExit codes: 0 all rows succeeded; 1 some failed, invalid or skipped; 2 nothing sent (usage, config, input, credentials); 3 aborted, re-run to resume; 130 interrupted."
    )]
    Run(RunArgs),
    /// Validate, resolve against the tenants, group and preflight a sheet; send nothing.
    #[command(
        after_help = "Examples:\n  license-batch plan samples/onboarding.csv --sandbox --sandbox-scenario samples/sandbox-scenario.toml\n  license-batch plan onboarding.csv --config config.toml --preflight strict\n\nWithout credentials the plan is made offline: names come from the built-in catalog, seats are not checked.\nExit codes: 0 everything would be sent; 1 rows are invalid, refused, skipped or short of seats; 2 bad usage or input."
    )]
    Plan(RunArgs),
    /// Licenses deployed vs sold per product of some customers (deployment insights).
    #[command(
        after_help = "Examples:\n  license-batch insights 7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90 --config config.toml\n  license-batch insights 7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90 --output insights.csv --config config.toml"
    )]
    Insights(InsightsArgs),
    /// Check a report against the licenses users hold now; lists every row that disagrees.
    #[command(
        after_help = "Example:\n  license-batch verify onboarding.report.csv --config config.toml\n\nExit codes: 0 every checked row agrees; 1 some rows disagree or could not be checked; 2 bad usage or input."
    )]
    Verify(VerifyArgs),
    /// Show the recent runs recorded in the journal and their row counts.
    #[command(
        after_help = "Example:\n  license-batch status --state /var/lib/license-batch/state.sqlite"
    )]
    Status(StatusArgs),
    /// Rewrite a run's report from the journal.
    #[command(
        after_help = "Examples:\n  license-batch report            # the latest run, to its report path\n  license-batch report --run 12 --output run12.csv"
    )]
    Report(ReportArgs),
    /// Run the built-in Partner Center simulator as a server.
    #[command(
        after_help = "Examples:\n  license-batch sandbox --listen 127.0.0.1:8080 --scenario samples/sandbox-scenario.toml\n  license-batch sandbox --seed 7 --transient-rate 0.15 --reset-rate 0.05 --apply-then-503-rate 0.05 --dump truth.json"
    )]
    Sandbox(SandboxArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The onboarding sheet (CSV, UTF-8; `,` or `;` separated).
    pub input: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Journal file (SQLite). Default: license-batch.state.sqlite in the working directory.
    #[arg(long, env = "LICENSE_BATCH_STATE_FILE", value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Where to write the report. Default: <input stem>.report.csv next to the input.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Validate and plan, print the plan, send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Start a new run even if an unfinished run of this input exists in the journal.
    #[arg(long)]
    pub fresh: bool,
    /// Send every row again, also those already done in earlier runs (starts a new run).
    #[arg(long)]
    pub resend: bool,
    /// On a seat shortage: `warn` sends anyway (the API decides), `strict` skips the excess rows.
    #[arg(long, value_enum, value_name = "MODE")]
    pub preflight: Option<PreflightMode>,
    /// Do not fetch deployment insights for the summary.
    #[arg(long)]
    pub no_insights: bool,
    /// Client-side ceiling of requests per minute across the pool.
    #[arg(long, env = "LICENSE_BATCH_REQUESTS_PER_MINUTE", value_name = "N")]
    pub requests_per_minute: Option<u32>,
    /// Requests in flight at once (1–256). Not set: starts at 8 and grows with the measured
    /// latency to what the ceiling (at most 3,000/min) needs.
    #[arg(long, env = "LICENSE_BATCH_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<usize>,
    /// Force the CSV delimiter (`,` or `;`) instead of detecting it.
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Which API to talk to: the config file's (and environment's), or the built-in sandbox.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Config file (TOML); see config.example.toml.
    #[arg(long, env = "LICENSE_BATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the built-in simulator in this process; no credentials needed.
    #[arg(long)]
    pub sandbox: bool,
    /// Scenario for --sandbox (JSON or TOML): customers, users, seats, faults.
    #[arg(long, value_name = "FILE", requires = "sandbox")]
    pub sandbox_scenario: Option<PathBuf>,
}

/// What goes to stderr.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Only errors on stderr.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail on stderr (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl OutputArgs {
    fn init_logging(&self) {
        let verbosity = if self.quiet { -1 } else { self.verbose as i8 };
        progress::init_logging(self.log_format, verbosity);
    }
}

#[derive(Debug, Args)]
pub struct InsightsArgs {
    /// Customer tenant IDs.
    #[arg(required = true, value_name = "CUSTOMER_ID")]
    pub customers: Vec<uuid::Uuid>,
    /// Write CSV here instead of printing a table.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub log: OutputArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A report written by `run`.
    pub report: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub log: OutputArgs,
}

/// The journal that `status` and `report` read.
#[derive(Debug, Args)]
pub struct JournalArg {
    /// Journal file. Default: license-batch.state.sqlite in the working directory.
    #[arg(
        long,
        env = "LICENSE_BATCH_STATE_FILE",
        value_name = "FILE",
        default_value = "license-batch.state.sqlite"
    )]
    pub state: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub journal: JournalArg,
    /// How many runs to list.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub journal: JournalArg,
    /// The run (see `status`). Default: the latest.
    #[arg(long)]
    pub run: Option<i64>,
    /// Where to write it. Default: the run's own report path.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on (loopback recommended).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Scenario file (JSON or TOML).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// When stopped (Ctrl-C, SIGTERM), write the ground truth (every request, what was
    /// applied, protocol violations) here as JSON.
    #[arg(long, value_name = "FILE")]
    pub dump: Option<PathBuf>,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Faults set on the command line; each overrides the scenario's value (docs/SANDBOX.md).
#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Seed of the random faults, so a night repeats.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share of calls answered 500/502/503 before applying (0–1).
    #[arg(long, value_name = "RATE")]
    pub transient_rate: Option<f64>,
    /// Share of calls whose connection is dropped before applying.
    #[arg(long, value_name = "RATE")]
    pub reset_rate: Option<f64>,
    /// Share of calls applied, then answered 503.
    #[arg(long, value_name = "RATE")]
    pub apply_then_503_rate: Option<f64>,
    /// Share of calls applied, then answered after --hold-secs.
    #[arg(long, value_name = "RATE")]
    pub apply_then_timeout_rate: Option<f64>,
    /// How long an apply-then-timeout answer is held.
    #[arg(long, value_name = "SECS")]
    pub hold_secs: Option<u64>,
    /// Latency added to every license update.
    #[arg(long, value_name = "MS")]
    pub latency_ms: Option<u64>,
    /// Lifetime of the access tokens the sandbox issues.
    #[arg(long, value_name = "SECS")]
    pub token_lifetime_secs: Option<u64>,
}

impl FaultArgs {
    fn apply(&self, scenario: &mut Scenario) {
        let faults = &mut scenario.faults;
        faults.seed = self.seed.or(faults.seed);
        faults.transient_rate = self.transient_rate.unwrap_or(faults.transient_rate);
        faults.reset_rate = self.reset_rate.unwrap_or(faults.reset_rate);
        faults.apply_then_503_rate = self
            .apply_then_503_rate
            .unwrap_or(faults.apply_then_503_rate);
        faults.apply_then_timeout_rate = self
            .apply_then_timeout_rate
            .unwrap_or(faults.apply_then_timeout_rate);
        faults.hold_secs = self.hold_secs.or(faults.hold_secs);
        faults.latency_ms = self.latency_ms.or(faults.latency_ms);
        scenario.auth.token_lifetime_secs = self
            .token_lifetime_secs
            .or(scenario.auth.token_lifetime_secs);
    }
}

fn parse_delimiter(text: &str) -> Result<u8, String> {
    match text {
        "," | "comma" => Ok(b','),
        ";" | "semicolon" => Ok(b';'),
        "\\t" | "tab" => Ok(b'\t'),
        other => Err(format!("{other:?}: use ',' or ';' (or tab)")),
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Settings and target from the connection arguments: file < env < `overrides`.
fn resolve_connection(
    connect: &ConnectArgs,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<(Settings, Target), Error> {
    let file = match &connect.config {
        Some(path) => config::load_file(path)?,
        None => FileConfig::default(),
    };
    let settings = Settings::resolve(file, env, overrides)?;
    let target = if connect.sandbox {
        let scenario = match &connect.sandbox_scenario {
            Some(path) => Scenario::load(path).map_err(Error::Sandbox)?,
            None => Scenario::default(),
        };
        Target::Sandbox(Box::new(scenario))
    } else {
        Target::Configured
    };
    Ok((settings, target))
}

/// Resolves raw `run` arguments: file < env < flags.
pub fn resolve_run(
    args: &RunArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunOptions, Error> {
    let overrides = Overrides {
        requests_per_minute: args.requests_per_minute,
        concurrency: args.concurrency,
        state_file: args.state.clone(),
        preflight: args.preflight,
        insights: args.no_insights.then_some(false),
    };
    let (settings, target) = resolve_connection(&args.connect, env, &overrides)?;
    let mut opts = RunOptions::new(&args.input, settings);
    opts.report = args.report.clone();
    opts.secrets = EnvSecrets::from_env(env);
    opts.target = target;
    opts.dry_run = args.dry_run;
    opts.fresh = args.fresh;
    opts.resend = args.resend;
    opts.delimiter = args.delimiter;
    opts.progress =
        args.output.log_format == LogFormat::Text && !args.output.quiet && !args.dry_run;
    Ok(opts)
}

/// Connects for a read-only command (`insights`, `verify`).
async fn connect_for(connect: &ConnectArgs) -> Result<Connection, Error> {
    let (settings, target) = resolve_connection(connect, &process_env, &Overrides::default())?;
    crate::run::connect(
        &settings,
        &EnvSecrets::from_env(&process_env),
        &target,
        CancellationToken::new(),
    )
    .await
}

async fn show_insights(args: &InsightsArgs) -> Result<u8, Error> {
    let connection = connect_for(&args.connect).await?;
    let all = deployment_insights(&connection.calls, args.customers.iter().copied()).await;
    let failed = all.iter().filter(|c| c.products.is_err()).count();
    match &args.output {
        Some(path) => {
            let mut writer = csv::Writer::from_path(path).map_err(|e| Error::Write {
                path: path.clone(),
                source: e.into(),
            })?;
            let write_error = |e: csv::Error| Error::Write {
                path: path.clone(),
                source: e.into(),
            };
            writer
                .write_record([
                    "customer_id",
                    "customer_name",
                    "product_name",
                    "licenses_deployed",
                    "licenses_sold",
                    "deployment_percent",
                    "processed_at",
                    "error",
                ])
                .map_err(write_error)?;
            for customer in &all {
                let id = customer.customer.to_string();
                match &customer.products {
                    Ok(products) => {
                        for p in products {
                            writer
                                .write_record([
                                    id.as_str(),
                                    &report::neutralise(&p.customer_name),
                                    &report::neutralise(&p.product_name),
                                    &p.licenses_deployed.to_string(),
                                    &p.licenses_sold.to_string(),
                                    &p.deployment_percent.to_string(),
                                    &p.processed_at,
                                    "",
                                ])
                                .map_err(write_error)?;
                        }
                    }
                    Err(error) => writer
                        .write_record([
                            id.as_str(),
                            "",
                            "",
                            "",
                            "",
                            "",
                            "",
                            &report::neutralise(error),
                        ])
                        .map_err(write_error)?,
                }
            }
            writer.flush().map_err(|e| Error::Write {
                path: path.clone(),
                source: e,
            })?;
            println!(
                "insights of {} customers written to {}",
                all.len(),
                path.display()
            );
        }
        None => print!("{}", InsightsTable(&all)),
    }
    Ok(if failed == 0 {
        exit_code::ALL_SUCCEEDED
    } else {
        exit_code::SOME_NOT_SUCCEEDED
    })
}

async fn run_verify(args: &VerifyArgs) -> Result<u8, Error> {
    let connection = connect_for(&args.connect).await?;
    let result = verify(&args.report, &connection.calls).await?;
    for finding in &result.findings {
        println!(
            "line {}: {} {} SKU {}: {}",
            finding.line, finding.customer, finding.user, finding.sku, finding.message
        );
    }
    println!(
        "verify: {} rows checked against the tenants, {} disagree, {} not comparable (invalid, pending, failed removes)",
        result.checked,
        result.findings.len(),
        result.not_comparable
    );
    Ok(if result.all_agree() {
        exit_code::ALL_SUCCEEDED
    } else {
        exit_code::SOME_NOT_SUCCEEDED
    })
}

/// First SIGINT/SIGTERM: stop taking new groups and finish; the second: exit at once.
fn install_signal_handler(stop: CancellationToken) {
    tokio::spawn(async move {
        let mut signals = 0;
        loop {
            wait_for_signal().await;
            signals += 1;
            if signals == 1 {
                tracing::warn!(
                    "signal received: finishing requests in flight, then writing the report (signal again to exit now)"
                );
                stop.cancel();
            } else {
                eprintln!("license-batch: second signal, exiting now");
                std::process::exit(exit_code::INTERRUPTED as i32);
            }
        }
    });
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Parses the command line, runs it, and returns the documented exit code.
pub fn main() -> u8 {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Command::Run(args) => run_command(&runtime, args),
        Command::Plan(mut args) => {
            args.dry_run = true;
            run_command(&runtime, args)
        }
        Command::Sandbox(args) => {
            progress::init_logging(LogFormat::Text, 0);
            runtime.block_on(serve_sandbox(args))
        }
        Command::Status(args) => finish(show_status(&args)),
        Command::Report(args) => finish(rewrite_report(&args)),
        Command::Insights(args) => {
            args.log.init_logging();
            exit_with(runtime.block_on(show_insights(&args)))
        }
        Command::Verify(args) => {
            args.log.init_logging();
            exit_with(runtime.block_on(run_verify(&args)))
        }
    }
}

/// `run` and `plan`: the summary on stdout, the exit code of SPEC §10.
fn run_command(runtime: &tokio::runtime::Runtime, args: RunArgs) -> u8 {
    args.output.init_logging();
    runtime.block_on(async {
        let result = match resolve_run(&args, &process_env) {
            Ok(opts) => {
                install_signal_handler(opts.stop.clone());
                run(opts).await
            }
            Err(error) => Err(error),
        };
        match &result {
            Ok(summary) => print!("{summary}"),
            Err(error) => eprintln!("license-batch: error: {error}"),
        }
        error::exit_code_for(&result)
    })
}

/// The exit code of a read-only command; errors are printed.
fn exit_with(result: Result<u8, Error>) -> u8 {
    result.unwrap_or_else(|error| {
        eprintln!("license-batch: error: {error}");
        exit_code::NOTHING_SENT
    })
}

fn finish(result: Result<(), String>) -> u8 {
    match result {
        Ok(()) => exit_code::ALL_SUCCEEDED,
        Err(error) => {
            eprintln!("license-batch: error: {error}");
            exit_code::NOTHING_SENT
        }
    }
}

fn show_status(args: &StatusArgs) -> Result<(), String> {
    let journal = Journal::open_to_read(&args.journal.state).map_err(|e| e.to_string())?;
    let runs = journal.recent_runs(args.limit).map_err(|e| e.to_string())?;
    if runs.is_empty() {
        println!("no runs in {}", args.journal.state.display());
        return Ok(());
    }
    println!(
        "{:>5}  {:<20}  {:<11}  {:>6} {}  input",
        "run",
        "started",
        "outcome",
        "rows",
        RowStatus::columns(|status| status.as_str().to_string())
    );
    for run in runs {
        let n = |status: RowStatus| {
            run.counts
                .iter()
                .find(|(s, _)| s == status.as_str())
                .map_or(0, |(_, n)| *n)
        };
        let total: u64 = run.counts.iter().map(|(_, n)| n).sum();
        println!(
            "{:>5}  {:<20}  {:<11}  {:>6} {}  {}",
            run.id,
            run.started_at,
            run.outcome,
            total,
            RowStatus::columns(|status| n(status).to_string()),
            run.input_path
        );
        if let Some(message) = &run.message {
            println!("       {message}");
        }
    }
    Ok(())
}

fn rewrite_report(args: &ReportArgs) -> Result<(), String> {
    let journal = Journal::open_to_read(&args.journal.state).map_err(|e| e.to_string())?;
    let run_id = match args.run {
        Some(id) => id,
        None => journal
            .latest_run()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no runs in {}", args.journal.state.display()))?,
    };
    let record = journal.run_record(run_id).map_err(|e| e.to_string())?;
    let path = args.output.clone().unwrap_or(record.report_path);
    crate::paths::check_outputs(
        Some(&record.input_path),
        Some(&args.journal.state),
        &[crate::paths::Output {
            what: "the report (--output)",
            path: &path,
        }],
    )?;
    let tally = report::write_from_journal(&journal, run_id, &path)?;
    println!(
        "report of run {run_id}: {} rows written to {}",
        tally.rows(),
        path.display()
    );
    Ok(())
}

async fn serve_sandbox(args: SandboxArgs) -> u8 {
    let mut scenario = match &args.scenario {
        Some(path) => match Scenario::load(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("license-batch: error: {e}");
                return exit_code::NOTHING_SENT;
            }
        },
        None => Scenario::default(),
    };
    args.faults.apply(&mut scenario);
    let server = match Sandbox::start(scenario, args.listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("license-batch: error: {e}");
            return exit_code::NOTHING_SENT;
        }
    };
    let url = &server.url;
    // A closed stdout (e.g. `| head -1`) must not take the server down with it.
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "sandbox listening on {url}\n\
         point license-batch at it with (sandbox credentials are not secret):\n  \
         export LICENSE_BATCH_API_BASE_URL={url} LICENSE_BATCH_AUTH_AUTHORITY={url}\n  \
         export LICENSE_BATCH_TENANT_ID={} LICENSE_BATCH_CLIENT_ID={}\n  \
         export LICENSE_BATCH_CLIENT_SECRET={} LICENSE_BATCH_REFRESH_TOKEN={}\n\
         ground truth: GET {url}sandbox/record\n\
         stop with Ctrl-C",
        sandbox::TENANT_ID,
        sandbox::CLIENT_ID,
        sandbox::CLIENT_SECRET,
        sandbox::REFRESH_TOKEN
    );
    wait_for_signal().await;
    if let Some(path) = &args.dump {
        let json = serde_json::to_string_pretty(&server.dump()).expect("JSON serialises");
        if let Err(error) = std::fs::write(path, json) {
            eprintln!(
                "license-batch: error: cannot write {}: {error}",
                path.display()
            );
            return exit_code::NOTHING_SENT;
        }
        eprintln!("ground truth written to {}", path.display());
    }
    exit_code::ALL_SUCCEEDED
}
