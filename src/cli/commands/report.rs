//! `license-batch report`: a run's report written again from the journal.

use super::super::*;

pub(in crate::cli) fn rewrite_report(args: &ReportArgs) -> Result<u8, Error> {
    let journal = Journal::open_to_read(&args.journal.state)?;
    let run_id = match args.run {
        Some(id) => id,
        None => journal
            .latest_run()?
            .ok_or_else(|| Error::NoRuns(args.journal.state.clone()))?,
    };
    let record = journal.run_record(run_id)?;
    let path = args.output.clone().unwrap_or(record.report_path);
    crate::paths::check_outputs(
        Some(&record.input_path),
        Some(&args.journal.state),
        &[crate::paths::Output {
            what: "the report (--output)",
            path: &path,
        }],
    )
    .map_err(Error::Usage)?;
    let tally = report::write_from_journal(&journal, run_id, &path).map_err(Error::Report)?;
    println!(
        "report of run {run_id}: {} rows written to {}",
        tally.rows(),
        path.display()
    );
    Ok(exit_code::ALL_SUCCEEDED)
}
