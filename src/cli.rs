//! The command line: clap's raw arguments, resolved with the config file and environment into
//! [`RunOptions`]; signal handling; printing the summary. The only module that knows of flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::io::Write as _;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, EnvSecrets, FileConfig, Overrides, Settings};
use crate::error::{self, Error, exit_code};
use crate::journal::Journal;
use crate::progress::{self, LogFormat};
use crate::run::{RunOptions, Target, run, write_report_from_journal};
use crate::sandbox::{self, Sandbox, Scenario};
use crate::tenant::preflight::PreflightMode;

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
        after_help = "Example:\n  license-batch sandbox --listen 127.0.0.1:8080 --scenario samples/sandbox-scenario.toml"
    )]
    Sandbox(SandboxArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The onboarding sheet (CSV, UTF-8; `,` or `;` separated).
    pub input: PathBuf,
    /// Config file (TOML); see config.example.toml.
    #[arg(long, env = "LICENSE_BATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Journal file (SQLite). Default: license-batch.state.sqlite in the working directory.
    #[arg(long, env = "LICENSE_BATCH_STATE_FILE", value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Where to write the report. Default: <input stem>.report.csv next to the input.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Run against the built-in simulator in this process; no credentials needed.
    #[arg(long)]
    pub sandbox: bool,
    /// Scenario for --sandbox (JSON or TOML): customers, users, seats, faults.
    #[arg(long, value_name = "FILE", requires = "sandbox")]
    pub sandbox_scenario: Option<PathBuf>,
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
    /// Requests in flight at once.
    #[arg(long, env = "LICENSE_BATCH_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<usize>,
    /// Force the CSV delimiter (`,` or `;`) instead of detecting it.
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
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

/// Resolves raw `run` arguments: file < env < flags.
pub fn resolve_run(
    args: &RunArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunOptions, Error> {
    let file = match &args.config {
        Some(path) => config::load_file(path)?,
        None => FileConfig::default(),
    };
    let overrides = Overrides {
        requests_per_minute: args.requests_per_minute,
        concurrency: args.concurrency,
        state_file: args.state.clone(),
        preflight: args.preflight,
        insights: args.no_insights.then_some(false),
    };
    let settings = Settings::resolve(file, env, &overrides)?;
    let target = if args.sandbox {
        let scenario = match &args.sandbox_scenario {
            Some(path) => Scenario::load(path).map_err(Error::Sandbox)?,
            None => Scenario::default(),
        };
        Target::Sandbox(scenario)
    } else {
        Target::Configured
    };
    let mut opts = RunOptions::new(&args.input, settings);
    opts.report = args.report.clone();
    opts.secrets = EnvSecrets::from_env(env);
    opts.target = target;
    opts.dry_run = args.dry_run;
    opts.fresh = args.fresh;
    opts.resend = args.resend;
    opts.delimiter = args.delimiter;
    opts.progress = args.log_format == LogFormat::Text && !args.quiet;
    Ok(opts)
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
        Command::Run(args) => {
            let verbosity = if args.quiet { -1 } else { args.verbose as i8 };
            progress::init_logging(args.log_format, verbosity);
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
        Command::Sandbox(args) => {
            progress::init_logging(LogFormat::Text, 0);
            runtime.block_on(serve_sandbox(args))
        }
        Command::Status(args) => finish(show_status(&args)),
        Command::Report(args) => finish(rewrite_report(&args)),
    }
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
        "{:>5}  {:<20}  {:<11}  {:>6} {:>9} {:>6} {:>7} {:>7} {:>7}  input",
        "run", "started", "outcome", "rows", "succeeded", "failed", "invalid", "skipped", "pending"
    );
    for run in runs {
        let n = |status: &str| {
            run.counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n)
        };
        let total: u64 = run.counts.iter().map(|(_, n)| n).sum();
        println!(
            "{:>5}  {:<20}  {:<11}  {:>6} {:>9} {:>6} {:>7} {:>7} {:>7}  {}",
            run.id,
            run.started_at,
            run.outcome,
            total,
            n("succeeded"),
            n("failed"),
            n("invalid"),
            n("skipped"),
            n("pending"),
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
    let path = match &args.output {
        Some(path) => path.clone(),
        None => {
            journal
                .load_run(run_id)
                .map_err(|e| e.to_string())?
                .report_path
        }
    };
    let rows = write_report_from_journal(&journal, run_id, &path)?;
    println!(
        "report of run {run_id}: {} rows written to {}",
        rows.len(),
        path.display()
    );
    Ok(())
}

async fn serve_sandbox(args: SandboxArgs) -> u8 {
    let scenario = match &args.scenario {
        Some(path) => match Scenario::load(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("license-batch: error: {e}");
                return exit_code::NOTHING_SENT;
            }
        },
        None => Scenario::default(),
    };
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
    exit_code::ALL_SUCCEEDED
}
