//! Spreadsheet input (SPEC §3): a workbook (`.xlsx`, `.xlsm`, `.xlsb`, `.xls`, `.ods`) read with
//! `calamine`, one worksheet's rows as the text a person sees in them, numbered as the sheet
//! numbers them. An `.xlsx` sheet is streamed cell by cell (memory does not grow with its rows);
//! the other formats are read a sheet at a time, as calamine reads them.
//!
//! The reading runs on its own thread and hands rows over a bounded channel: calamine's
//! streaming reader borrows the workbook it reads, and a thread that owns both lets the rows be
//! an ordinary iterator like the CSV reader's.

use std::io::Read;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use calamine::{Data, Ods, Reader, Xls, Xlsb, Xlsx};

/// The workbook formats read directly, by (lower-case) extension.
const EXTENSIONS: [&str; 5] = ["xlsx", "xlsm", "xlsb", "xls", "ods"];

/// Whether `path` names a spreadsheet (by its extension, whatever its case) rather than CSV.
pub fn is_spreadsheet(path: &Path) -> bool {
    extension(path).is_some_and(|e| EXTENSIONS.contains(&e.as_str()))
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// Why a workbook cannot be read: what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SheetProblem {
    pub(super) line: Option<u64>,
    pub(super) reason: String,
    pub(super) advice: String,
}

impl SheetProblem {
    fn new(reason: impl Into<String>, advice: impl Into<String>) -> Self {
        SheetProblem {
            line: None,
            reason: reason.into(),
            advice: advice.into(),
        }
    }
}

const SAVE_AGAIN: &str = "open it in Excel or LibreOffice and save it again as .xlsx, or export the sheet as \"CSV UTF-8\" and run on that";

/// One row of the sheet that holds a value.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SheetRow {
    /// The sheet's row number (1 = the first row).
    pub(super) line: u64,
    /// The cells from column A to the last one holding a value, as text.
    pub(super) cells: Vec<String>,
    /// The cells that hold an error (`#N/A`, `#DIV/0!`): column index and the error.
    pub(super) errors: Vec<(usize, String)>,
}

enum Message {
    /// The workbook opened: the name of the sheet being read.
    Opened(String),
    Row(SheetRow),
    Failed(SheetProblem),
    End,
}

/// The rows of one worksheet, in order, read on a thread of their own.
pub(super) struct SheetRows {
    receiver: Receiver<Message>,
    /// Set once the sheet ended or failed: nothing more comes.
    done: bool,
}

impl std::fmt::Debug for SheetRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SheetRows")
    }
}

/// Rows read ahead of the reader: enough to keep the thread busy, a bound on memory.
const READ_AHEAD: usize = 512;

impl SheetRows {
    /// Opens the workbook and its sheet (`sheet`, else the first one); returns the sheet's
    /// name and its rows, or why it cannot be read.
    pub(super) fn open(path: &Path, sheet: Option<&str>) -> Result<(String, Self), SheetProblem> {
        refuse_what_is_not_a_workbook(path)?;
        let (sender, receiver) = sync_channel(READ_AHEAD);
        let (path, sheet) = (path.to_path_buf(), sheet.map(str::to_string));
        let spawned = std::thread::Builder::new()
            .name("sheet-reader".into())
            .spawn(move || {
                // A workbook crafted to make the reader panic is a bad input, not a crash.
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    read_sheet(&path, sheet.as_deref(), &sender)
                }));
                let last = match caught {
                    Ok(Ok(())) => Message::End,
                    Ok(Err(problem)) => Message::Failed(problem),
                    Err(payload) => Message::Failed(SheetProblem::new(
                        format!(
                            "the workbook could not be read (the reader failed on it: {})",
                            crate::panic::message(payload.as_ref())
                        ),
                        SAVE_AGAIN,
                    )),
                };
                let _ = sender.send(last);
            });
        if let Err(e) = spawned {
            return Err(SheetProblem::new(
                format!("cannot start reading the workbook: {e}"),
                "",
            ));
        }
        let mut rows = SheetRows {
            receiver,
            done: false,
        };
        match rows.receiver.recv() {
            Ok(Message::Opened(name)) => Ok((name, rows)),
            Ok(Message::Failed(problem)) => Err(problem),
            Ok(Message::Row(_) | Message::End) | Err(_) => {
                rows.done = true;
                Err(SheetProblem::new(
                    "the workbook reader stopped before opening the sheet",
                    SAVE_AGAIN,
                ))
            }
        }
    }
}

impl Iterator for SheetRows {
    type Item = Result<SheetRow, SheetProblem>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.receiver.recv() {
            Ok(Message::Row(row)) => Some(Ok(row)),
            Ok(Message::End) => {
                self.done = true;
                None
            }
            Ok(Message::Failed(problem)) => {
                self.done = true;
                Some(Err(problem))
            }
            Ok(Message::Opened(_)) | Err(_) => {
                self.done = true;
                Some(Err(SheetProblem::new(
                    "the workbook reader stopped in the middle of the sheet",
                    SAVE_AGAIN,
                )))
            }
        }
    }
}

/// The magic of an OLE compound file: an `.xls`, or an `.xlsx` that is encrypted (Excel keeps
/// a password-protected workbook in one).
const COMPOUND_FILE: [u8; 8] = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// What the first bytes tell before calamine is asked: a protected `.xlsx`, or a file that is
/// not a workbook at all (CSV text saved under a workbook's name), each with what to do.
fn refuse_what_is_not_a_workbook(path: &Path) -> Result<(), SheetProblem> {
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .and_then(|file| file.take(512).read_to_end(&mut head))
        .map_err(|e| {
            SheetProblem::new(
                format!("cannot read the file: {e}"),
                "check the path and permissions",
            )
        })?;
    let zipped = matches!(
        extension(path).as_deref(),
        Some("xlsx" | "xlsm" | "xlsb" | "ods")
    );
    if head.is_empty() {
        return Err(SheetProblem::new(
            "the file is empty",
            "it needs a header row (customer_id, user_id, sku) and at least one data row",
        ));
    }
    if zipped && head.starts_with(&COMPOUND_FILE) {
        return Err(protected());
    }
    let is_zip = head.starts_with(b"PK\x03\x04");
    // An `.xls` is a compound file; one that is a zip (an `.xlsx` renamed) goes to calamine,
    // whose error says the rest.
    let is_its_kind = if zipped {
        is_zip
    } else {
        is_zip || head.starts_with(&COMPOUND_FILE)
    };
    if !is_its_kind {
        let text = std::str::from_utf8(&head).is_ok_and(|t| !t.contains('\0'));
        let what = if text {
            "it holds plain text, probably CSV saved under a workbook's name"
        } else {
            "it is damaged or another kind of file"
        };
        return Err(SheetProblem::new(
            format!(
                "the file is not a .{} workbook: {what}",
                extension(path).unwrap_or_default()
            ),
            if text {
                "rename it to .csv, or save it again from Excel as .xlsx".to_string()
            } else {
                SAVE_AGAIN.to_string()
            },
        ));
    }
    Ok(())
}

fn protected() -> SheetProblem {
    SheetProblem::new(
        "the workbook is password-protected (encrypted), so it cannot be read",
        "open it, remove the password (Excel: File > Info > Protect Workbook > Encrypt with Password, cleared; LibreOffice: File > Save As without \"Save with password\"), save, and run again",
    )
}

/// What calamine's error means for the operator.
fn unreadable(error: impl std::fmt::Display) -> SheetProblem {
    let text = error.to_string();
    if text.to_ascii_lowercase().contains("password") {
        return protected();
    }
    SheetProblem::new(format!("cannot read the workbook: {text}"), SAVE_AGAIN)
}

/// Runs on the reader thread: opens the workbook, finds the sheet, sends its rows.
fn read_sheet(
    path: &Path,
    sheet: Option<&str>,
    sender: &SyncSender<Message>,
) -> Result<(), SheetProblem> {
    match extension(path).as_deref() {
        Some("xlsx" | "xlsm") => {
            let mut book: Xlsx<_> = calamine::open_workbook(path).map_err(unreadable)?;
            let name = choose_sheet(&book.sheet_names(), sheet)?;
            let mut cells = book.worksheet_cells_reader(&name).map_err(unreadable)?;
            if sender.send(Message::Opened(name)).is_err() {
                return Ok(());
            }
            let mut row = RowBuilder::default();
            while let Some(cell) = cells.next_cell().map_err(unreadable)? {
                let (r, c) = cell.get_position();
                if let Some(done) = row.take_if_past(r)
                    && sender.send(Message::Row(done)).is_err()
                {
                    return Ok(());
                }
                row.put(r, c, text_of(&Data::from(cell.get_value().clone())));
            }
            if let Some(done) = row.finish() {
                let _ = sender.send(Message::Row(done));
            }
            Ok(())
        }
        Some("xlsb") => {
            let book: Xlsb<_> = calamine::open_workbook(path).map_err(unreadable)?;
            send_range(book, sheet, sender)
        }
        Some("ods") => {
            let book: Ods<_> = calamine::open_workbook(path).map_err(unreadable)?;
            send_range(book, sheet, sender)
        }
        _ => {
            let book: Xls<_> = calamine::open_workbook(path).map_err(unreadable)?;
            send_range(book, sheet, sender)
        }
    }
}

/// The formats calamine reads a whole sheet at a time: the range, then its rows.
fn send_range<RS, R>(
    mut book: R,
    sheet: Option<&str>,
    sender: &SyncSender<Message>,
) -> Result<(), SheetProblem>
where
    RS: std::io::Read + std::io::Seek,
    R: Reader<RS>,
    R::Error: std::fmt::Display,
{
    let name = choose_sheet(&book.sheet_names(), sheet)?;
    let range = book.worksheet_range(&name).map_err(unreadable)?;
    if sender.send(Message::Opened(name)).is_err() {
        return Ok(());
    }
    let Some((first_row, first_column)) = range.start() else {
        return Ok(());
    };
    for (i, cells) in range.rows().enumerate() {
        let mut row = RowBuilder::default();
        let r = first_row + i as u32;
        for (j, value) in cells.iter().enumerate() {
            row.put(r, first_column + j as u32, text_of(value));
        }
        if let Some(done) = row.finish()
            && sender.send(Message::Row(done)).is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// The sheet asked for, or the first; an unknown name lists the sheets there are.
fn choose_sheet(names: &[String], wanted: Option<&str>) -> Result<String, SheetProblem> {
    match wanted {
        None => names.first().cloned().ok_or_else(|| {
            SheetProblem::new("the workbook has no worksheet", "add a sheet with the rows")
        }),
        Some(wanted) => names
            .iter()
            .find(|name| name.as_str() == wanted)
            .or_else(|| names.iter().find(|name| name.eq_ignore_ascii_case(wanted)))
            .cloned()
            .ok_or_else(|| {
                SheetProblem::new(
                    format!(
                        "there is no sheet {wanted:?} in the workbook; its sheets are: {}",
                        names
                            .iter()
                            .map(|n| format!("{n:?}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "give one of them with --sheet",
                )
            }),
    }
}

/// A cell as text, and whether it holds an error.
enum CellText {
    Empty,
    Value(String),
    Error(String),
}

/// Collects the cells of one row (they arrive in row order) into text from column A.
#[derive(Default)]
struct RowBuilder {
    row: Option<u32>,
    cells: Vec<String>,
    errors: Vec<(usize, String)>,
}

/// Columns past this in a row are not read: Excel's own limit is 16,384 (XFD).
const MAX_COLUMNS: u32 = 16_384;

impl RowBuilder {
    /// The row collected so far, when a cell of a later row arrives.
    fn take_if_past(&mut self, row: u32) -> Option<SheetRow> {
        match self.row {
            Some(current) if current != row => self.finish(),
            _ => None,
        }
    }

    fn put(&mut self, row: u32, column: u32, text: CellText) {
        self.row = Some(row);
        if column >= MAX_COLUMNS {
            return;
        }
        let (value, error) = match text {
            CellText::Empty => return,
            CellText::Value(value) if value.is_empty() => return,
            CellText::Value(value) => (value, false),
            CellText::Error(value) => (value, true),
        };
        let column = column as usize;
        if self.cells.len() <= column {
            self.cells.resize(column + 1, String::new());
        }
        if error {
            self.errors.push((column, value.clone()));
        }
        self.cells[column] = value;
    }

    /// The row, if any cell of it held a value; the builder starts over.
    fn finish(&mut self) -> Option<SheetRow> {
        let row = self.row.take()?;
        let cells = std::mem::take(&mut self.cells);
        let errors = std::mem::take(&mut self.errors);
        (!cells.is_empty()).then(|| SheetRow {
            line: u64::from(row) + 1,
            cells,
            errors,
        })
    }
}

fn text_of(value: &Data) -> CellText {
    match value {
        Data::Empty => CellText::Empty,
        // Only a date cell's midnight is left out: text typed as such stays as typed.
        Data::DateTimeIso(s) => CellText::Value(iso_date(s)),
        Data::String(s) | Data::DurationIso(s) => CellText::Value(s.clone()),
        Data::Int(i) => CellText::Value(i.to_string()),
        Data::Float(f) => CellText::Value(number_text(*f)),
        Data::Bool(b) => CellText::Value(if *b { "TRUE" } else { "FALSE" }.into()),
        Data::DateTime(d) => CellText::Value(date_text(d)),
        Data::Error(e) => CellText::Error(e.to_string()),
    }
}

/// An ISO date-time (how `.ods` keeps a date) as an `.xlsx` date reads: the date alone at
/// midnight, else `YYYY-MM-DD HH:MM:SS`.
fn iso_date(text: &str) -> String {
    let is_date = |date: &str| date.len() == 10 && date.as_bytes()[4] == b'-';
    if let Some(date) = text.strip_suffix("T00:00:00").filter(|d| is_date(d)) {
        return date.to_string();
    }
    match text.split_once('T') {
        Some((date, time)) if is_date(date) => format!("{date} {time}"),
        _ => text.to_string(),
    }
}

/// A number as a person sees it in a General cell: `1000`, not `1000.0`; at most 15
/// significant digits (Excel's precision), so `0.1 + 0.2` is `0.3`.
pub fn number_text(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return format!("{}", value as i64);
    }
    let rounded: f64 = format!("{value:.14e}").parse().unwrap_or(value);
    rounded.to_string()
}

/// A date `YYYY-MM-DD`; a date with a time of day `YYYY-MM-DD HH:MM:SS`; a duration as Excel
/// shows `[h]:mm:ss`.
fn date_text(value: &calamine::ExcelDateTime) -> String {
    if value.is_duration() {
        let seconds = (value.as_f64() * 86_400.0).round() as i64;
        return format!(
            "{}:{:02}:{:02}",
            seconds / 3600,
            (seconds / 60) % 60,
            seconds % 60
        );
    }
    let (year, month, day, hour, minute, second, _) = value.to_ymd_hms_milli();
    if (hour, minute, second) == (0, 0, 0) {
        format!("{year:04}-{month:02}-{day:02}")
    } else {
        format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}")
    }
}

/// The A1 name of a cell: column index from 0, the sheet's row number.
pub fn cell_name(column: usize, line: u64) -> String {
    let mut letters = Vec::new();
    let mut n = column + 1;
    while n > 0 {
        let rem = (n - 1) % 26;
        letters.push(b'A' + rem as u8);
        n = (n - 1) / 26;
    }
    letters.reverse();
    format!("{}{line}", String::from_utf8_lossy(&letters))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_a_person_sees_them() {
        assert_eq!(number_text(1000.0), "1000");
        assert_eq!(number_text(-3.0), "-3");
        assert_eq!(number_text(0.1 + 0.2), "0.3");
        assert_eq!(number_text(2.5), "2.5");
        assert_eq!(number_text(1e20), "100000000000000000000");
    }

    #[test]
    fn a_date_cell_is_its_day_and_text_stays_as_typed() {
        let text = |value: Data| match text_of(&value) {
            CellText::Value(text) => text,
            _ => panic!("a value"),
        };
        assert_eq!(
            text(Data::DateTimeIso("2026-12-01T00:00:00".into())),
            "2026-12-01"
        );
        assert_eq!(
            text(Data::DateTimeIso("2026-12-01T08:30:00".into())),
            "2026-12-01 08:30:00"
        );
        assert_eq!(
            text(Data::String("2026-12-01T00:00:00".into())),
            "2026-12-01T00:00:00"
        );
        assert_eq!(text(Data::Bool(false)), "FALSE");
        assert_eq!(text(Data::Int(-7)), "-7");
        assert!(matches!(text_of(&Data::Empty), CellText::Empty));
        assert!(matches!(
            text_of(&Data::Error(calamine::CellErrorType::NA)),
            CellText::Error(e) if e == "#N/A"
        ));
    }

    #[test]
    fn cells_are_named_as_excel_names_them() {
        assert_eq!(cell_name(0, 1), "A1");
        assert_eq!(cell_name(3, 17), "D17");
        assert_eq!(cell_name(25, 2), "Z2");
        assert_eq!(cell_name(26, 2), "AA2");
        assert_eq!(cell_name(16_383, 9), "XFD9");
    }

    #[test]
    fn an_unknown_sheet_lists_the_sheets_there_are() {
        let names = vec!["Onboarding".to_string(), "Ünits 日本".to_string()];
        assert_eq!(choose_sheet(&names, None).unwrap(), "Onboarding");
        assert_eq!(
            choose_sheet(&names, Some("onboarding")).unwrap(),
            "Onboarding"
        );
        let problem = choose_sheet(&names, Some("Sheet9")).unwrap_err();
        assert!(
            problem.reason.contains("\"Onboarding\", \"Ünits 日本\""),
            "{}",
            problem.reason
        );
        assert!(choose_sheet(&[], None).is_err());
    }

    #[test]
    fn a_row_keeps_its_columns_and_drops_empty_cells_at_its_end() {
        let mut row = RowBuilder::default();
        row.put(4, 1, CellText::Value("Łukasz".into()));
        row.put(4, 3, CellText::Error("#N/A".into()));
        row.put(4, 7, CellText::Empty);
        assert!(row.take_if_past(4).is_none());
        let done = row.take_if_past(5).unwrap();
        assert_eq!(done.line, 5);
        assert_eq!(done.cells, ["", "Łukasz", "", "#N/A"]);
        assert_eq!(done.errors, [(3, "#N/A".to_string())]);
        // A row of empty cells only is no row.
        row.put(9, 0, CellText::Empty);
        assert!(row.finish().is_none());
    }

    #[test]
    fn extensions_choose_the_reader_whatever_their_case() {
        assert!(is_spreadsheet(Path::new("a/Onboarding.XLSX")));
        assert!(is_spreadsheet(Path::new("b.ods")));
        assert!(!is_spreadsheet(Path::new("c.csv")));
        assert!(!is_spreadsheet(Path::new("xlsx")));
    }
}
