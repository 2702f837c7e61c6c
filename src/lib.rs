//! license-batch: bulk-assigns Microsoft 365 licenses through the Partner Center REST API.
//!
//! The modules follow the pipeline: [`input`] (CSV, validation) → [`plan`] (SKU resolution,
//! grouping) → [`engine`] (pool, pacing, retries) → [`api`] (client, auth, classification) →
//! [`journal`] (SQLite: resume, incremental runs) → [`report`] and [`summary`], the end-of-run [`notify`]; [`sandbox`] simulates Partner Center beside them. [`cli`] and
//! [`config`] turn flags, env and file into [`RunOptions`]; [`error`] maps results to exit codes.

pub mod api;
pub mod check;
pub mod cli;
pub mod config;
pub mod country;
pub mod engine;
pub mod error;
pub mod input;
pub mod journal;
pub mod notify;
pub mod outcome;
pub mod panic;
pub mod paths;
pub mod plan;
pub mod progress;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod secret;
pub mod spill;
pub mod summary;
pub mod tenant;
pub mod verify;

pub use error::{Error, exit_code_for};
pub use outcome::Completion;
pub use run::{RunOptions, Target, run};
pub use summary::RunSummary;
