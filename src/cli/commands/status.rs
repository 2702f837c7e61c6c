//! `license-batch status`: the recent runs of a journal and their row counts.

use super::super::*;

pub(in crate::cli) fn show_status(args: &StatusArgs) -> Result<u8, Error> {
    let journal = Journal::open_to_read(&args.journal.state)?;
    let runs = journal.recent_runs(args.limit)?;
    if runs.is_empty() {
        println!("no runs in {}", args.journal.state.display());
        return Ok(exit_code::ALL_SUCCEEDED);
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
    Ok(exit_code::ALL_SUCCEEDED)
}
