//! The library's error type and the one place that maps a run's result to a documented exit code.

use std::path::PathBuf;

use crate::outcome::Completion;
use crate::summary::RunSummary;

/// Everything that stops a run before a request was sent (exit 2). Failures after sending
/// starts are not errors: they end in a [`RunSummary`] whose [`Completion`] says why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad usage: {0}")]
    Usage(String),

    #[error("bad configuration: {0}")]
    Config(#[from] crate::config::ConfigError),

    #[error(transparent)]
    Input(#[from] crate::input::InputError),

    #[error("missing credentials: {0}")]
    Credentials(String),

    /// The credentials were refused before anything was sent.
    #[error("the credentials do not work: {0}")]
    Auth(String),

    /// The plan goes over a limit of the guard (SPEC §13) and `--yes` was not given.
    #[error("the guard stopped this run: {0}")]
    Guard(Box<crate::plan::guard::GuardCheck>),

    /// A signal arrived before anything was sent.
    #[error("interrupted before anything was sent")]
    Interrupted,

    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),

    /// `status`/`report` on a journal that has no run yet.
    #[error("no runs in {}", .0.display())]
    NoRuns(PathBuf),

    /// The report could not be rewritten (`license-batch report`); the message names the file.
    #[error("{0}")]
    Report(String),

    #[error("cannot start the sandbox: {0}")]
    Sandbox(String),

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Exit codes of SPEC §10.
pub mod exit_code {
    pub const ALL_SUCCEEDED: u8 = 0;
    pub const SOME_NOT_SUCCEEDED: u8 = 1;
    pub const NOTHING_SENT: u8 = 2;
    pub const ABORTED: u8 = 3;
    pub const INTERRUPTED: u8 = 130;
}

impl Error {
    /// The exit code of a command that ends in this error: nothing was sent (2), or a signal
    /// came first (130).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Interrupted => exit_code::INTERRUPTED,
            _ => exit_code::NOTHING_SENT,
        }
    }
}

/// The single mapping from a run's result to its exit code.
pub fn exit_code_for(result: &Result<RunSummary, Error>) -> u8 {
    match result {
        Err(error) => error.exit_code(),
        Ok(summary) => match &summary.completion {
            Completion::Aborted(_) => exit_code::ABORTED,
            Completion::Interrupted => exit_code::INTERRUPTED,
            Completion::Finished | Completion::Planned if summary.all_succeeded() => {
                exit_code::ALL_SUCCEEDED
            }
            Completion::Finished | Completion::Planned => exit_code::SOME_NOT_SUCCEEDED,
        },
    }
}
