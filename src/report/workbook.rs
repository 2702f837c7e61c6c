//! The report as a workbook (SPEC §9, `--report *.xlsx`, the default for a spreadsheet input):
//! sheet `Report` (the CSV report's columns, header frozen, an autofilter over the table,
//! columns sized to their content, `result_status` filled by status, every cell a value, never
//! a formula), sheet `Summary` (counts by status, failed rows by error code with what the first
//! of them says, counts by customer). `Report` is written in the library's constant-memory mode:
//! each row goes to a temporary file as it is written, so memory does not grow with the rows.

use std::collections::BTreeMap;
use std::path::Path;

use rust_xlsxwriter::{Color, Format, Workbook, Worksheet, XlsxError};

use super::ReportRow;
use crate::outcome::{RowStatus, Tally, error_key};

/// The rows a worksheet holds, header included (Excel's limit).
const MAX_ROWS: u32 = 1_048_576;
/// Columns wider than this are cut to it; the cell keeps its whole text.
const MAX_WIDTH: usize = 60;

/// A report workbook being written, row by row.
pub(super) struct WorkbookReport {
    book: Workbook,
    /// The next row of `Report` to write (0 = the header).
    next_row: u32,
    columns: usize,
    status_column: u16,
    widths: Vec<usize>,
    fills: BTreeMap<RowStatus, Format>,
    tally: Tally,
    /// Per error code, the message of its first failed row: the advice the summary shows.
    advice: BTreeMap<String, String>,
}

fn io_error(error: XlsxError) -> std::io::Error {
    match error {
        XlsxError::IoError(e) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

/// The fill and font colours of each status (Excel's "Good", "Bad", "Neutral" styles; grey).
fn status_fill(status: RowStatus) -> Format {
    let (fill, font) = match status {
        RowStatus::Succeeded => (0xC6EFCE, 0x006100),
        RowStatus::Failed => (0xFFC7CE, 0x9C0006),
        RowStatus::Invalid | RowStatus::Skipped => (0xFFEB9C, 0x9C5700),
        RowStatus::Pending => (0xD9D9D9, 0x404040),
    };
    Format::new()
        .set_background_color(Color::RGB(fill))
        .set_font_color(Color::RGB(font))
}

/// Whether a cell's text is a number as the input sheet showed it (`1000`, `-2.5`): written
/// as a number, so that it reads back as the same text. Anything else stays text (`00123`,
/// `+49 30`, `1e5`, a GUID).
fn as_number(text: &str) -> Option<f64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    (crate::input::number_text(value) == text).then_some(value)
}

/// The most a cell holds, in UTF-16 units (Excel's limit).
const MAX_CELL: usize = 32_767;

/// A text too long for a cell, cut where it still fits with a note that says so and where the
/// whole of it is (the journal keeps every cell; a CSV report has no limit).
fn fit_in_cell(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_CELL || text.encode_utf16().count() <= MAX_CELL {
        return text.into();
    }
    let note = format!(
        " … [cut: the cell holds {} characters, more than a workbook cell can; the whole text is \
         in the CSV report: license-batch report --output FILE.csv]",
        text.chars().count()
    );
    let room = MAX_CELL - note.encode_utf16().count();
    let (mut units, mut end) = (0, 0);
    for (at, c) in text.char_indices() {
        if units + c.len_utf16() > room {
            break;
        }
        units += c.len_utf16();
        end = at + c.len_utf8();
    }
    format!("{}{note}", &text[..end]).into()
}

impl WorkbookReport {
    /// A workbook whose `Report` sheet starts with `header` (the carried input columns, then
    /// the `result_*` columns); `temp_dir`: where constant-memory mode keeps its row files.
    pub(super) fn create(header: &[&str], temp_dir: &Path) -> std::io::Result<Self> {
        let mut book = Workbook::new();
        book.set_tempdir(temp_dir).map_err(io_error)?;
        let sheet = book
            .add_worksheet_with_constant_memory()
            .map_err(io_error)?;
        sheet.set_name("Report").map_err(io_error)?;
        let bold = Format::new().set_bold();
        for (column, name) in header.iter().enumerate() {
            sheet
                .write_string_with_format(0, column as u16, *name, &bold)
                .map_err(io_error)?;
        }
        let status_column = header
            .iter()
            .position(|name| *name == "result_status")
            .unwrap_or_default() as u16;
        Ok(WorkbookReport {
            book,
            next_row: 1,
            columns: header.len(),
            status_column,
            widths: header.iter().map(|h| h.chars().count()).collect(),
            fills: RowStatus::ALL
                .into_iter()
                .map(|status| (status, status_fill(status)))
                .collect(),
            tally: Tally::default(),
            advice: BTreeMap::new(),
        })
    }

    fn report_sheet(&mut self) -> std::io::Result<&mut Worksheet> {
        self.book.worksheet_from_index(0).map_err(io_error)
    }

    /// One row: every cell as a value (a number when it was one, else text: a cell starting
    /// with `=` is a string, so nothing in it can run).
    pub(super) fn write(&mut self, cells: &[&str], report: &ReportRow) -> std::io::Result<()> {
        if self.next_row >= MAX_ROWS {
            return Err(std::io::Error::other(format!(
                "a worksheet holds at most {} rows, and this report has more: write it as CSV \
                 (--report with a .csv name, or `license-batch report --output FILE.csv`)",
                MAX_ROWS - 1
            )));
        }
        let row = self.next_row;
        let (status_column, fill) = (self.status_column, self.fills[&report.status].clone());
        for (column, text) in cells.iter().enumerate() {
            if let Some(width) = self.widths.get_mut(column) {
                *width = (*width).max(text.chars().count().min(MAX_WIDTH));
            }
        }
        let sheet = self.report_sheet()?;
        for (column, text) in cells.iter().enumerate() {
            let column = column as u16;
            let written = match (as_number(text), column == status_column) {
                (_, true) => sheet.write_string_with_format(row, column, *text, &fill),
                (Some(number), false) => sheet.write_number(row, column, number),
                (None, false) if text.is_empty() => continue,
                (None, false) => sheet.write_string(row, column, fit_in_cell(text)),
            };
            written.map_err(io_error)?;
        }
        self.next_row += 1;
        report.count_in(&mut self.tally);
        if report.status == RowStatus::Failed {
            let outcome = &report.outcome;
            let code = error_key(outcome.error_code.as_deref(), outcome.http_status);
            self.advice
                .entry(code)
                .or_insert_with(|| report.outcome.message.clone());
        }
        Ok(())
    }

    /// Freezes the header, puts the autofilter over the table, sizes the columns, adds the
    /// `Summary` sheet and saves the workbook to `path`.
    pub(super) fn save(mut self, path: &Path) -> std::io::Result<()> {
        let (last_row, last_column) = (self.next_row - 1, self.columns.max(1) as u16 - 1);
        let widths = std::mem::take(&mut self.widths);
        let sheet = self.report_sheet()?;
        sheet.set_freeze_panes(1, 0).map_err(io_error)?;
        sheet
            .autofilter(0, 0, last_row, last_column)
            .map_err(io_error)?;
        for (column, width) in widths.iter().enumerate() {
            sheet
                .set_column_width(column as u16, (*width as f64 + 2.0).max(8.0))
                .map_err(io_error)?;
        }
        self.write_summary().map_err(io_error)?;
        self.book.save(path).map_err(io_error)
    }

    fn write_summary(&mut self) -> Result<(), XlsxError> {
        let bold = Format::new().set_bold();
        let (counts, per_customer, errors) = std::mem::take(&mut self.tally).into_parts();
        let advice = std::mem::take(&mut self.advice);
        let fills = self.fills.clone();
        let sheet = self.book.add_worksheet();
        sheet.set_name("Summary")?;
        let mut row = 0;
        sheet.write_string_with_format(row, 0, "status", &bold)?;
        sheet.write_string_with_format(row, 1, "rows", &bold)?;
        for status in RowStatus::ALL {
            row += 1;
            sheet.write_string_with_format(row, 0, status.as_str(), &fills[&status])?;
            sheet.write_number(row, 1, counts.get(&status).copied().unwrap_or(0) as f64)?;
        }
        row += 1;
        sheet.write_string_with_format(row, 0, "total", &bold)?;
        sheet.write_number(row, 1, counts.values().sum::<u64>() as f64)?;

        row += 2;
        sheet.write_string_with_format(row, 0, "failed rows by error code", &bold)?;
        sheet.write_string_with_format(row, 1, "rows", &bold)?;
        sheet.write_string_with_format(row, 2, "what the first of them says", &bold)?;
        let mut by_count: Vec<(String, u64)> = errors.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        if by_count.is_empty() {
            row += 1;
            sheet.write_string(row, 0, "(none)")?;
        }
        for (code, rows) in &by_count {
            row += 1;
            sheet.write_string(row, 0, code)?;
            sheet.write_number(row, 1, *rows as f64)?;
            if let Some(text) = advice.get(code) {
                sheet.write_string(row, 2, text)?;
            }
        }

        row += 2;
        sheet.write_string_with_format(row, 0, "customer", &bold)?;
        for (i, status) in RowStatus::ALL.into_iter().enumerate() {
            sheet.write_string_with_format(row, 1 + i as u16, status.as_str(), &bold)?;
        }
        for (customer, statuses) in &per_customer {
            row += 1;
            sheet.write_string(row, 0, customer)?;
            for (i, status) in RowStatus::ALL.into_iter().enumerate() {
                let count = statuses.get(&status).copied().unwrap_or(0);
                sheet.write_number(row, 1 + i as u16, count as f64)?;
            }
        }
        sheet.set_column_width(0, 40)?;
        sheet.set_column_width(2, 80)?;
        Ok(())
    }
}

/// A one-sheet workbook of `rows` under a bold, frozen `header` with an autofilter; cells that
/// are numbers as numbers, the rest as text.
pub(super) fn write_table(
    path: &Path,
    name: &str,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    let written = (|| -> Result<(), XlsxError> {
        sheet.set_name(name)?;
        let bold = Format::new().set_bold();
        for (column, title) in header.iter().enumerate() {
            sheet.write_string_with_format(0, column as u16, *title, &bold)?;
        }
        for (i, row) in rows.iter().enumerate() {
            for (column, text) in row.iter().enumerate() {
                let (r, c) = (i as u32 + 1, column as u16);
                match as_number(text) {
                    Some(number) => sheet.write_number(r, c, number)?,
                    None if text.is_empty() => continue,
                    None => sheet.write_string(r, c, text)?,
                };
            }
        }
        sheet.set_freeze_panes(1, 0)?;
        sheet.autofilter(0, 0, rows.len() as u32, header.len().max(1) as u16 - 1)?;
        sheet.autofit();
        Ok(())
    })();
    written.map_err(io_error)?;
    book.save(path).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_too_long_for_a_cell_is_cut_to_fit_and_says_so() {
        assert_eq!(fit_in_cell("Łukasz"), "Łukasz");
        let fits = "é".repeat(MAX_CELL);
        assert_eq!(fit_in_cell(&fits), fits);
        // 🙂 takes two UTF-16 units: 20,000 of them are 40,000 units.
        let long = "🙂".repeat(20_000);
        let cut = fit_in_cell(&long);
        assert!(cut.encode_utf16().count() <= MAX_CELL);
        assert!(cut.starts_with("🙂🙂"));
        assert!(
            cut.contains("the cell holds 20000 characters"),
            "{}",
            &cut[cut.len() - 200..]
        );
        assert!(cut.ends_with("license-batch report --output FILE.csv]"));
    }

    #[test]
    fn numbers_stay_numbers_and_everything_else_stays_text() {
        for (text, number) in [("1000", 1000.0), ("-2.5", -2.5), ("0", 0.0), ("0.3", 0.3)] {
            assert_eq!(as_number(text), Some(number), "{text}");
        }
        for text in [
            "00123",
            "+49 30 1234",
            "+5",
            "1e5",
            "1.",
            "",
            "-",
            "12345678901234567890",
            "7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90",
            "=1+1",
            "١٢٣",
        ] {
            assert_eq!(as_number(text), None, "{text}");
        }
    }
}
