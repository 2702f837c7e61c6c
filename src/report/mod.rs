//! The per-row report (SPEC §9): every input row in input order, its original cells, then the
//! `result_*` columns; written atomically (temp file + rename), as CSV with formula-like cells
//! neutralised for spreadsheets, or as a workbook ([`workbook`]) when its name ends in `.xlsx`.

mod workbook;

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::input::{LicenseGroup, RESULT_COLUMNS};
use crate::journal::Journal;
use crate::journal::read::{RowState, StoredRow};
use crate::outcome::{OperationOutcome, RowStatus, Tally};

/// One row of the report model.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    pub line: u64,
    pub customer_id: Option<Uuid>,
    pub status: RowStatus,
    pub sku_id: Option<Uuid>,
    pub license_group: Option<LicenseGroup>,
    /// The row's operation's outcome, its message the row's own (an identical row's says it
    /// was sent once); an invalid row's says only why it is invalid.
    pub outcome: OperationOutcome,
}

impl ReportRow {
    /// Counts this row in `tally`.
    pub fn count_in(&self, tally: &mut Tally) {
        tally.add_rows(
            self.customer_id,
            self.status,
            self.outcome.error_code.as_deref(),
            self.outcome.http_status,
            1,
        );
    }
}

/// What an operation without a definitive outcome says in the report of a run.
pub const NOT_FINISHED: &str = "not finished yet: run the same command again to resume";

/// The report row of a row as the journal holds it; `open_message`: what an operation without
/// a definitive outcome says.
pub fn row_of(row: StoredRow, open_message: &str) -> ReportRow {
    let StoredRow {
        line,
        customer_id,
        sku_id,
        license_group,
        state,
    } = row;
    match state {
        RowState::Invalid(message) => {
            invalid_row(line, customer_id, message, sku_id, license_group)
        }
        RowState::Planned { outcome, same_as } => {
            let outcome = outcome.unwrap_or_else(|| OperationOutcome::pending(open_message));
            sent_row(line, customer_id, sku_id, license_group, outcome, same_as)
        }
    }
}

/// The report row of an input row that is invalid.
pub fn invalid_row(
    line: u64,
    customer_id: Option<Uuid>,
    message: String,
    sku_id: Option<Uuid>,
    license_group: Option<LicenseGroup>,
) -> ReportRow {
    ReportRow {
        line,
        customer_id,
        status: RowStatus::Invalid,
        sku_id,
        license_group,
        outcome: OperationOutcome::pending(message),
    }
}

/// The report row of an input row planned for sending, with its operation's outcome.
/// `same_as`: the line of the operation's first row when that is another row (identical rows
/// are sent once).
pub fn sent_row(
    line: u64,
    customer_id: Option<Uuid>,
    sku_id: Option<Uuid>,
    license_group: Option<LicenseGroup>,
    outcome: OperationOutcome,
    same_as: Option<u64>,
) -> ReportRow {
    let message = match same_as {
        Some(first) if outcome.message.is_empty() => {
            format!("same operation as line {first}, sent once")
        }
        Some(first) => format!(
            "same operation as line {first}, sent once; {}",
            outcome.message
        ),
        None => outcome.message.clone(),
    };
    ReportRow {
        line,
        customer_id,
        status: RowStatus::from(outcome.status),
        sku_id,
        license_group,
        outcome: OperationOutcome { message, ..outcome },
    }
}

/// `<input stem>.report.csv` next to the input; `.report.xlsx` for a spreadsheet input.
pub fn default_path(input: &Path) -> PathBuf {
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    let extension = if crate::input::is_spreadsheet(input) {
        "xlsx"
    } else {
        "csv"
    };
    input.with_file_name(format!("{stem}.report.{extension}"))
}

/// Whether a report (or an `insights` file) at `path` is written as a workbook: its name ends
/// in `.xlsx`, whatever the case.
pub fn is_workbook(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("xlsx"))
}

/// Prefixes a cell a spreadsheet would execute with `'`; plain numbers (`-5`, `+3.5`) stay.
pub fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    let risky = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    // `strip_prefix` of an ASCII sign, never a byte slice: a cell may start with `É` or `日`.
    let plain_number = cell.strip_prefix(['+', '-']).is_some_and(|digits| {
        digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && digits.chars().any(|c| c.is_ascii_digit())
    });
    if risky && !plain_number {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

fn opt<T: ToString>(value: &Option<T>) -> String {
    value.as_ref().map(T::to_string).unwrap_or_default()
}

/// Writes the report row by row into a temporary file beside the target, which
/// [`ReportWriter::finish`] renames over it: readers see the old report or the whole new one.
pub struct ReportWriter {
    path: PathBuf,
    temp_path: PathBuf,
    format: Format,
}

enum Format {
    Csv(Box<csv::Writer<std::io::BufWriter<std::fs::File>>>),
    Workbook(Box<workbook::WorkbookReport>),
}

impl ReportWriter {
    /// Creates the temporary file and writes the header: the carried input columns, then
    /// the `result_*` columns. A path ending in `.xlsx` gets a workbook, any other CSV.
    pub fn create(path: &Path, delimiter: u8, headers: &[String]) -> std::io::Result<Self> {
        let dir = crate::paths::folder_of(path);
        // A fixed temporary name beside the target: a run killed while writing leaves one
        // stale file that the next write of the same report simply replaces.
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "report.csv".into());
        let temp_path = dir.join(format!(".{file_name}.tmp"));
        let header: Vec<&str> = headers
            .iter()
            .map(String::as_str)
            .chain(RESULT_COLUMNS)
            .collect();
        let format = if is_workbook(path) {
            // The workbook library writes its own file at the end; this one claims the name.
            std::fs::File::create(&temp_path)?;
            Format::Workbook(Box::new(workbook::WorkbookReport::create(&header, &dir)?))
        } else {
            let mut writer = csv::WriterBuilder::new()
                .delimiter(delimiter)
                .from_writer(std::io::BufWriter::new(std::fs::File::create(&temp_path)?));
            writer.write_record(
                header
                    .iter()
                    .map(|c| neutralise(c))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|c| c.as_ref()),
            )?;
            Format::Csv(Box::new(writer))
        };
        Ok(ReportWriter {
            path: path.to_path_buf(),
            temp_path,
            format,
        })
    }

    /// One input row: its carried cells, then its results.
    pub fn write(&mut self, cells: &[String], report: &ReportRow) -> std::io::Result<()> {
        let outcome = &report.outcome;
        let results = [
            report.line.to_string(),
            report.status.as_str().to_string(),
            opt(&report.sku_id),
            report
                .license_group
                .map(|g| g.as_str().to_string())
                .unwrap_or_default(),
            opt(&outcome.http_status),
            opt(&outcome.error_code),
            outcome.message.clone(),
            outcome.attempts.to_string(),
            opt(&outcome.request_id),
            opt(&outcome.correlation_id),
            outcome
                .finished_at
                .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                .unwrap_or_default(),
            outcome.warnings.join("; "),
        ];
        let cells = cells
            .iter()
            .map(String::as_str)
            .chain(results.iter().map(String::as_str));
        match &mut self.format {
            Format::Csv(writer) => writer.write_record(
                cells
                    .map(neutralise)
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|c| c.as_ref()),
            )?,
            Format::Workbook(book) => book.write(&cells.collect::<Vec<_>>(), report)?,
        }
        Ok(())
    }

    /// Makes the file durable and puts it in place of the report.
    pub fn finish(self) -> std::io::Result<()> {
        let file = match self.format {
            Format::Csv(writer) => writer
                .into_inner()
                .map_err(|e| e.into_error())?
                .into_inner()
                .map_err(|e| e.into_error())?,
            Format::Workbook(book) => {
                book.save(&self.temp_path)?;
                std::fs::File::open(&self.temp_path)?
            }
        };
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.temp_path, &self.path)
    }
}

/// Writes a small table (`insights --output`) atomically: a workbook (one sheet `sheet`,
/// header frozen, autofilter, numbers as numbers) when `path` ends in `.xlsx`, else CSV with
/// formula-like cells neutralised.
pub fn write_table(
    path: &Path,
    sheet: &str,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix(".license-batch-")
        .tempfile_in(crate::paths::folder_of(path))?;
    if is_workbook(path) {
        workbook::write_table(temp.path(), sheet, header, rows)?;
    } else {
        let mut writer = csv::Writer::from_writer(std::io::BufWriter::new(temp.as_file()));
        writer.write_record(header)?;
        for row in rows {
            writer.write_record(
                row.iter()
                    .map(|c| neutralise(c))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|c| c.as_ref()),
            )?;
        }
        writer.flush()?;
    }
    temp.as_file().sync_all()?;
    temp.persist(path).map(drop).map_err(|e| e.error)
}

/// Fails early (before anything is sent) when the report's folder is not writable.
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    tempfile::Builder::new()
        .prefix(".license-batch-check-")
        .tempfile_in(crate::paths::folder_of(path))
        .map(drop)
}

/// Rewrites a run's report from the journal (also `license-batch report`), row by row;
/// returns the counts of what it wrote.
pub fn write_from_journal(journal: &Journal, run_id: i64, path: &Path) -> Result<Tally, String> {
    let record = journal.run_record(run_id).map_err(|e| e.to_string())?;
    let cannot = |e: std::io::Error| format!("cannot write the report {}: {e}", path.display());
    let mut writer =
        ReportWriter::create(path, record.delimiter, &record.headers).map_err(cannot)?;
    let mut tally = Tally::default();
    journal.each_stored_row(run_id, |cells, row| {
        let row = row_of(row, NOT_FINISHED);
        writer.write(&cells, &row).map_err(cannot)?;
        row.count_in(&mut tally);
        Ok(())
    })?;
    writer.finish().map_err(cannot)?;
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The temporary file is written beside the report (a rename within one folder is
    /// atomic; across file systems it fails), not in the working directory.
    #[test]
    fn the_report_is_written_beside_itself_then_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("night.report.csv");
        let writer = ReportWriter::create(&path, b',', &["user_id".to_string()]).unwrap();
        assert!(dir.path().join(".night.report.csv.tmp").exists());
        assert!(!path.exists(), "not in place before it is whole");
        writer.finish().unwrap();
        assert!(path.exists());
        assert!(!dir.path().join(".night.report.csv.tmp").exists());
    }

    #[test]
    fn a_folder_that_cannot_take_the_report_is_found_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(&dir.path().join("ok.csv")).is_ok());
        assert!(check_writable(&dir.path().join("missing/ok.csv")).is_err());
    }

    #[test]
    fn a_row_sent_once_for_an_identical_earlier_one_says_so_and_keeps_the_answer() {
        let failed = OperationOutcome {
            status: crate::outcome::OperationStatus::Failed,
            message: "out of licenses".into(),
            ..OperationOutcome::pending("")
        };
        let row = sent_row(5, None, None, None, failed.clone(), Some(2));
        assert_eq!(
            row.outcome.message,
            "same operation as line 2, sent once; out of licenses"
        );
        assert_eq!(row.status, RowStatus::Failed);
        let succeeded = OperationOutcome {
            status: crate::outcome::OperationStatus::Succeeded,
            ..OperationOutcome::pending("")
        };
        let row = sent_row(5, None, None, None, succeeded, Some(2));
        assert_eq!(row.outcome.message, "same operation as line 2, sent once");
        // The first row of the operation carries the answer alone.
        assert_eq!(
            sent_row(2, None, None, None, failed, None).outcome.message,
            "out of licenses"
        );
    }

    #[test]
    fn a_stored_row_becomes_its_report_row() {
        let stored = |state| StoredRow {
            line: 7,
            customer_id: Some(Uuid::from_u128(1)),
            sku_id: Some(Uuid::from_u128(2)),
            license_group: Some(LicenseGroup::Group1),
            state,
        };
        let invalid = row_of(
            stored(RowState::Invalid("column sku: unknown".into())),
            "open",
        );
        assert_eq!(
            (
                invalid.status,
                invalid.outcome.message.as_str(),
                invalid.line
            ),
            (RowStatus::Invalid, "column sku: unknown", 7)
        );
        assert_eq!(invalid.sku_id, Some(Uuid::from_u128(2)));
        let unsent = row_of(
            stored(RowState::Planned {
                outcome: None,
                same_as: Some(3),
            }),
            NOT_FINISHED,
        );
        assert_eq!(unsent.status, RowStatus::Pending);
        assert_eq!(
            unsent.outcome.message,
            format!("same operation as line 3, sent once; {NOT_FINISHED}")
        );
        let answered = OperationOutcome {
            status: crate::outcome::OperationStatus::Succeeded,
            attempts: 2,
            ..OperationOutcome::pending("")
        };
        let sent = row_of(
            stored(RowState::Planned {
                outcome: Some(answered),
                same_as: None,
            }),
            "open",
        );
        assert_eq!(
            (sent.status, sent.outcome.attempts),
            (RowStatus::Succeeded, 2)
        );
        assert_eq!(sent.customer_id, Some(Uuid::from_u128(1)));
    }

    #[test]
    fn formulas_are_neutralised_numbers_are_not() {
        for risky in [
            "=HYPERLINK(\"x\")",
            "@SUM(A1)",
            "+cmd|' /C calc'!A0",
            "-2+3",
            "\tx",
            "\rx",
            "+1 555 1234",
        ] {
            assert!(neutralise(risky).starts_with('\''), "{risky:?}");
        }
        for safe in ["-5", "+3.5", "ada@contoso.com", "plain", ""] {
            assert_eq!(neutralise(safe), safe);
        }
    }

    #[test]
    fn cells_that_start_with_a_character_of_several_bytes_are_kept_as_they_are() {
        for cell in [
            "Émilie",
            "Ödön",
            "Łukasz",
            "日本語",
            "🙂",
            "\u{200f}x",
            "\u{a0}",
            "é",
        ] {
            assert_eq!(neutralise(cell), cell);
        }
        // A formula character before one of them is still neutralised, and the rest kept.
        assert_eq!(neutralise("=É"), "'=É");
        assert_eq!(neutralise("-日本"), "'-日本");
        assert_eq!(neutralise("+"), "'+");
    }

    #[test]
    fn default_path_sits_next_to_the_input() {
        assert_eq!(
            default_path(Path::new("a/b/sheet.csv")),
            PathBuf::from("a/b/sheet.report.csv")
        );
    }
}
