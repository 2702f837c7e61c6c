//! `plan` / `run --dry-run`: the shared preparation in a scratch journal (offline when there are
//! no credentials), then the plan printed: requests per customer, seats, what is not sent and
//! why, the invalid rows, the time at the ceiling.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::RunOptions;
use super::connect::connect;
use super::prepare::{plan_into, read_tenants};
use crate::config::{PreflightMode, Settings};
use crate::error::Error;
use crate::input;
use crate::journal::{self, Journal, NewRun};
use crate::outcome::{Completion, RowStatus, Tally};
use crate::plan::guard::GuardCheck;
use crate::summary::RunSummary;
use crate::tenant::preflight::SeatCheck;
use crate::tenant::{CustomerCatalog, TenantCatalog};

/// `run --dry-run` / `plan`: everything up to the first write, then the plan on stdout. The
/// plan is made in a scratch journal, exactly as a run makes it.
pub(super) async fn plan_only(
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
            read_tenants(&c.calls, &customers).await?,
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
    let guard = GuardCheck::new(draft.license_changes()?, opts.settings.run.guard);
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
    // A workbook: which of its sheets this plan is of (the first, unless --sheet).
    let sheet_line = match &scan.sheet {
        Some(sheet) => writeln!(out, "sheet {sheet:?} of {}", opts.input.display()),
        None => Ok(()),
    };
    sheet_line
        .and_then(|()| {
            describe_plan(
                &mut out,
                &journal,
                run_id,
                PlanFigures {
                    tally: &tally,
                    per_customer: &per_customer,
                    seats: &seats,
                },
                &guard.verdict_line(opts.confirmed),
                &opts.settings,
                note,
            )
        })
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
    guard_line: &str,
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
    writeln!(out, "  {guard_line}")?;
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
    let invalid = tally.count(RowStatus::Invalid);
    if invalid > 0 {
        let mut problems = InvalidProblems::default();
        journal
            .each_invalid_row(run_id, |line, message| problems.add(line, message))
            .map_err(io)?;
        problems.write(out, invalid, tally.rows())?;
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

/// The invalid rows of a plan grouped by problem: a sheet with 5,000 of them prints a few lines,
/// not 5,000 (the run's report lists every row).
#[derive(Default)]
struct InvalidProblems {
    /// In order of first appearance: (problem, rows, first lines, an example message).
    problems: Vec<(String, u64, Vec<u64>, String)>,
    index: std::collections::HashMap<String, usize>,
    /// Rows whose problem came after [`MAX_PROBLEMS`] different ones.
    others: u64,
}

/// Different problems printed at most; more are counted together.
const MAX_PROBLEMS: usize = 20;
/// Line numbers shown per problem.
const LINES_SHOWN: usize = 5;

impl InvalidProblems {
    fn add(&mut self, line: u64, message: &str) {
        let key = problem_of(message);
        let at = match self.index.get(&key) {
            Some(&at) => at,
            None if self.problems.len() < MAX_PROBLEMS => {
                self.problems
                    .push((key.clone(), 0, Vec::new(), message.to_string()));
                self.index.insert(key, self.problems.len() - 1);
                self.problems.len() - 1
            }
            None => {
                self.others += 1;
                return;
            }
        };
        let (_, rows, lines, _) = &mut self.problems[at];
        *rows += 1;
        if lines.len() < LINES_SHOWN {
            lines.push(line);
        }
    }

    fn write(&self, out: &mut impl Write, invalid: u64, rows: u64) -> std::io::Result<()> {
        writeln!(out, "  invalid rows: {invalid}, by problem:")?;
        for (_, count, lines, example) in &self.problems {
            let mut shown = lines
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            if *count > lines.len() as u64 {
                shown.push_str(", …");
            }
            let noun = if *count == 1 { "row" } else { "rows" };
            let line_noun = if *count == 1 { "line" } else { "lines" };
            writeln!(out, "    {count} {noun} ({line_noun} {shown}): {example}")?;
        }
        if self.others > 0 {
            writeln!(out, "    {} rows with other problems", self.others)?;
        }
        if rows >= 10 && invalid * 10 >= rows * 9 {
            writeln!(
                out,
                "  nearly every row is invalid: the columns are probably mapped wrong (check the \
                 header line against the README's \"The input sheet\", or the delimiter)"
            )?;
        }
        writeln!(
            out,
            "  every invalid row, with its message, is in the run's report (result_status invalid)"
        )
    }
}

/// What two rows' messages share when they have the same problem: the message with its
/// quoted values (the cells) and its numbers (line numbers) left out.
fn problem_of(message: &str) -> String {
    let mut key = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                key.push('…');
            }
            ('"', true) => quoted = false,
            (_, true) => {}
            (c, false) if c.is_ascii_digit() => {
                if !key.ends_with('#') {
                    key.push('#');
                }
            }
            (c, false) => key.push(c),
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_of_invalid_rows_print_a_line_per_problem() {
        let mut problems = InvalidProblems::default();
        for line in 2..5002u64 {
            problems.add(
                line,
                &format!("column sku: \"SKU-{line}\" is not a SKU of this customer"),
            );
        }
        for line in [6001, 6003] {
            problems.add(
                line,
                &format!(
                    "conflict: lines {line} and {} ask to both assign and remove",
                    line + 1
                ),
            );
        }
        problems.add(
            6000,
            "column user_id: \"zoë\" is neither a GUID nor a user principal name",
        );
        let mut out = Vec::new();
        problems.write(&mut out, 5001, 5001).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().count() <= 7, "{text}");
        assert!(
            text.contains("5000 rows (lines 2, 3, 4, 5, 6, …): column sku: \"SKU-2\" is not"),
            "{text}"
        );
        assert!(text.contains("1 row (line 6000): column user_id"), "{text}");
        assert!(
            text.contains("2 rows (lines 6001, 6003): conflict"),
            "{text}"
        );
        assert!(text.contains("columns are probably mapped wrong"), "{text}");
    }

    #[test]
    fn a_few_invalid_rows_among_many_good_ones_do_not_blame_the_columns() {
        let mut problems = InvalidProblems::default();
        problems.add(7, "column sku: empty");
        let mut out = Vec::new();
        problems.write(&mut out, 1, 100).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("1 row (line 7): column sku: empty"), "{text}");
        assert!(!text.contains("mapped wrong"), "{text}");
    }
}
