//! The commands other than `run`/`plan`, one file each: `check`, `insights`, `verify`,
//! `status`, `report`, `sandbox`.

mod check;
mod insights;
mod report;
mod sandbox;
mod status;
mod verify;

pub(in crate::cli) use check::run_check;
pub(in crate::cli) use insights::show_insights;
pub(in crate::cli) use report::rewrite_report;
pub(in crate::cli) use sandbox::serve_sandbox;
pub(in crate::cli) use status::show_status;
pub(in crate::cli) use verify::run_verify;
