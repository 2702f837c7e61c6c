//! The command line: clap's raw arguments, resolved with the config file and environment into
//! [`RunOptions`]; signal handling; printing the summary. The only module that knows of flags.

mod args;
mod commands;
mod resolve;
mod signals;

pub use args::*;
use commands::*;
pub use resolve::resolve_run;
use resolve::*;
use signals::*;

use std::net::SocketAddr;
use std::path::PathBuf;

use std::io::Write as _;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::PreflightMode;
use crate::config::{self, EnvSecrets, FileConfig, Overrides, Settings};
use crate::error::{self, Error, exit_code};
use crate::journal::Journal;
use crate::notify;
use crate::outcome::RowStatus;
use crate::paths;
use crate::progress::{self, LogFormat};
use crate::report;
use crate::run::{Connection, RunOptions, Target, deployment_insights, run};
use crate::sandbox::{self, Sandbox, Scenario};
use crate::summary::{self, InsightsTable, RunSummary};
use crate::verify::verify;

/// Once a command is done (its summary printed), what is still running — an idle connection,
/// a task nobody awaits, a blocking call — gets this long before the process ends anyway: a
/// nightly job that does not end overlaps tomorrow's (issue 20).
const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

/// Parses the command line, runs it, and returns the documented exit code.
pub fn main() -> u8 {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = run_cli(&runtime, cli);
    // Dropping a runtime waits for its blocking tasks without limit; this does not.
    runtime.shutdown_timeout(SHUTDOWN_BOUND);
    code
}

fn run_cli(runtime: &tokio::runtime::Runtime, cli: Cli) -> u8 {
    match cli.command {
        Command::Run(args) => run_command(runtime, args),
        Command::Plan(mut args) => {
            args.dry_run = true;
            run_command(runtime, args)
        }
        Command::Sandbox(args) => {
            progress::init_logging(LogFormat::Text, 0);
            exit_with(runtime.block_on(serve_sandbox(args)))
        }
        Command::Status(args) => exit_with(show_status(&args)),
        Command::Report(args) => exit_with(rewrite_report(&args)),
        Command::Insights(args) => {
            args.log.init_logging();
            exit_with(runtime.block_on(show_insights(&args)))
        }
        Command::Check(args) => {
            args.log.init_logging();
            exit_with(runtime.block_on(run_check(&args)))
        }
        Command::Verify(args) => {
            args.log.init_logging();
            exit_with(runtime.block_on(run_verify(&args)))
        }
    }
}

/// `run` and `plan`: the summary on stdout (and, when asked, as JSON and as metrics), the exit
/// code of SPEC §10.
fn run_command(runtime: &tokio::runtime::Runtime, args: RunArgs) -> u8 {
    args.output.init_logging();
    runtime.block_on(async {
        let mut outputs = (None, None);
        // A plan is looked at by a person: only a run notifies.
        let mut notify_settings = None;
        let result = match resolve_run(&args, &process_env) {
            Ok(opts) => {
                install_signal_handler(opts.stop.clone());
                let run_settings = &opts.settings.run;
                outputs = (
                    run_settings.summary_file.clone(),
                    run_settings.metrics_file.clone(),
                );
                if !opts.dry_run {
                    notify_settings = Some(opts.settings.notify.clone());
                }
                run(opts).await
            }
            Err(error) => Err(error),
        };
        let code = error::exit_code_for(&result);
        let finished_at = std::time::SystemTime::now();
        let ending = match &result {
            Ok(summary) => {
                print!("{summary}");
                let (summary_file, metrics_file) = outputs;
                let end = summary::RunEnd {
                    input: &args.input,
                    exit_code: code,
                    finished_at,
                };
                write_machine_summaries(summary, end, summary_file, metrics_file);
                notify::Ending::Planned { summary, end }
            }
            Err(error) => {
                eprintln!("license-batch: error: {error}");
                notify::Ending::Stopped {
                    input: &args.input,
                    message: error.to_string(),
                    exit_code: code,
                    finished_at,
                }
            }
        };
        if let Some(settings) = &notify_settings {
            notify::notify(settings, ending).await;
        }
        code
    })
}

/// The summary JSON and the metrics file of SPEC §13, when asked for: after every run that
/// planned. One that cannot be written is said on stderr; the exit code stays the run's.
fn write_machine_summaries(
    summary: &RunSummary,
    end: summary::RunEnd<'_>,
    summary_file: Option<PathBuf>,
    metrics_file: Option<PathBuf>,
) {
    if let Some(path) = summary_file {
        let mut text = serde_json::to_string_pretty(&summary::summary_json(summary, end))
            .expect("JSON serialises");
        text.push('\n');
        write_or_say(&path, text.as_bytes(), "summary JSON");
    }
    if let Some(path) = metrics_file {
        let text = summary::metrics_text(summary, end.exit_code, end.finished_at);
        write_or_say(&path, text.as_bytes(), "metrics file");
    }
}

/// Writes `content` atomically, readable by everyone (a monitoring agent is another user);
/// says on stderr when it cannot.
fn write_or_say(path: &std::path::Path, content: &[u8], what: &str) {
    if let Err(error) = paths::write_atomically(path, content, paths::Readers::Everyone) {
        eprintln!(
            "license-batch: warning: cannot write the {what} {}: {error}",
            path.display()
        );
    }
}

/// The exit code of a command other than `run`/`plan`; errors are printed and mapped by
/// [`Error::exit_code`].
fn exit_with(result: Result<u8, Error>) -> u8 {
    result.unwrap_or_else(|error| {
        eprintln!("license-batch: error: {error}");
        error.exit_code()
    })
}
