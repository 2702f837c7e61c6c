//! The data records of a file, one at a time, each decoded (UTF-8, or an error naming line and
//! column) and validated, with the line each starts on.

use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;

use super::header::{InputHeader, map_headers};
use super::sheet::{self, SheetRow, SheetRows};
use super::{InputError, InputRow, Record, RowProblem, validate};

/// Reads the header of `source` (a file already [`scan`]ned and without its BOM).
pub fn read_rows<R: Read>(path: &Path, source: R, delimiter: u8) -> Result<Rows<R>, InputError> {
    let fail = |line: Option<u64>, reason: String, advice: &str| InputError {
        path: path.display().to_string(),
        line,
        reason,
        advice: advice.to_string(),
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(LineTracking::new(source));
    let mut record = csv::ByteRecord::new();
    let found = reader
        .read_byte_record(&mut record)
        .map_err(|e| fail(Some(1), format!("cannot read the header: {e}"), ""))?;
    if !found {
        return Err(fail(None, "the file has no header row".into(), ""));
    }
    let headers = decode_record(&record, 1, &[], path)?;
    let (columns, carried) =
        map_headers(&headers).map_err(|(reason, advice)| fail(Some(1), reason, &advice))?;
    Ok(Rows {
        header: InputHeader {
            path: path.to_path_buf(),
            delimiter,
            headers,
            carried,
            columns,
        },
        source: Source::Csv { reader, record },
    })
}

/// Reads the header of a worksheet's rows: the first row holding a value.
pub(super) fn read_sheet_rows<R>(path: &Path, mut sheet: SheetRows) -> Result<Rows<R>, InputError> {
    let fail = |line: Option<u64>, reason: String, advice: String| InputError {
        path: path.display().to_string(),
        line,
        reason,
        advice,
    };
    let first = match sheet.next() {
        None => {
            return Err(fail(
                None,
                "the sheet has no header row".into(),
                String::new(),
            ));
        }
        Some(Err(problem)) => return Err(fail(problem.line, problem.reason, problem.advice)),
        Some(Ok(row)) => row,
    };
    if let Some((column, error)) = first.errors.first() {
        return Err(fail(
            Some(first.line),
            format!(
                "the header cell {} holds the error {error}",
                sheet::cell_name(*column, first.line)
            ),
            "type the column's name into it".into(),
        ));
    }
    let headers = first.cells;
    let (columns, carried) =
        map_headers(&headers).map_err(|(reason, advice)| fail(Some(first.line), reason, advice))?;
    Ok(Rows {
        header: InputHeader {
            path: path.to_path_buf(),
            delimiter: b',',
            headers,
            carried,
            columns,
        },
        source: Source::Sheet(sheet),
    })
}

/// The data records of a file, one at a time, each validated.
pub struct Rows<R> {
    pub header: InputHeader,
    source: Source<R>,
}

enum Source<R> {
    Csv {
        reader: csv::Reader<LineTracking<R>>,
        record: csv::ByteRecord,
    },
    Sheet(SheetRows),
}

impl<R: Read> Iterator for Rows<R> {
    type Item = Result<Record, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        let header = &self.header;
        let (reader, record) = match &mut self.source {
            Source::Csv { reader, record } => (reader, record),
            Source::Sheet(sheet) => {
                return sheet.next().map(|row| match row {
                    Ok(row) => Ok(sheet_record(header, row)),
                    Err(problem) => Err(InputError {
                        path: header.path.display().to_string(),
                        line: problem.line,
                        reason: problem.reason,
                        advice: problem.advice,
                    }),
                });
            }
        };
        match reader.read_byte_record(record) {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) => {
                return Some(Err(InputError {
                    path: header.path.display().to_string(),
                    line: e.position().map(|p| p.line()),
                    reason: format!("not readable as CSV: {e}"),
                    advice: String::new(),
                }));
            }
        }
        let start = record.position().map_or(0, |p| p.byte());
        let line = reader.get_mut().line_at(start);
        Some(
            decode_record(record, line, &header.headers, &header.path)
                .map(|cells| record_of(header, line, cells, false)),
        )
    }
}

/// A record's cells checked against the header: blank, ragged, or validated. A sheet's row
/// ends at its last value, so only a `sheet` row that is too long is ragged.
fn record_of(header: &InputHeader, line: u64, mut cells: Vec<String>, sheet: bool) -> Record {
    if cells.iter().all(|c| c.trim().is_empty()) {
        return Record::Blank(line);
    }
    let width = header.headers.len();
    let request = if cells.len() > width || (cells.len() < width && !sheet) {
        Err(RowProblem::ragged(cells.len(), width, &cells))
    } else {
        cells.resize(width, String::new());
        validate::validate_row(&header.columns, &header.headers, &cells)
    };
    cells.resize(width, String::new());
    Record::Row(InputRow {
        line,
        cells,
        request,
    })
}

/// A worksheet row as a record: an error cell makes it invalid, naming the cell.
fn sheet_record(header: &InputHeader, row: SheetRow) -> Record {
    let SheetRow {
        line,
        cells,
        errors,
    } = row;
    let mut record = record_of(header, line, cells, true);
    if let Record::Row(row) = &mut record
        && !errors.is_empty()
    {
        let problems = errors.iter().map(|(column, error)| {
            let name = header
                .headers
                .get(*column)
                .map(String::as_str)
                .unwrap_or("(row)");
            (
                name.to_string(),
                format!(
                    "{}: {error} (an error cell: fix its formula or value in the workbook)",
                    sheet::cell_name(*column, line)
                ),
            )
        });
        let mut problem = RowProblem {
            problems: problems.collect(),
        };
        if let Err(other) = &row.request {
            problem.problems.extend(other.problems.iter().cloned());
        }
        row.request = Err(problem);
    }
    record
}

/// Line numbers from byte offsets. The csv crate's own line count is one short after a CRLF
/// (a record "starts" at the `\n` of the previous line's `\r\n`) and after skipped empty lines,
/// so this reader, which the csv reader reads through, notes where the line breaks are. Only
/// the breaks the csv reader has read ahead of the current record are kept.
struct LineTracking<R> {
    inner: R,
    /// Offset of the next byte to hand out.
    offset: u64,
    /// Line breaks at or after the current record's start: (offset, is `\n`).
    breaks: VecDeque<(u64, bool)>,
    /// `\n`s before the first kept break.
    newlines: u64,
}

impl<R> LineTracking<R> {
    fn new(inner: R) -> Self {
        LineTracking {
            inner,
            offset: 0,
            breaks: VecDeque::new(),
            newlines: 0,
        }
    }

    /// The line of a record whose bytes begin at `start` (offsets only grow).
    fn line_at(&mut self, start: u64) -> u64 {
        while let Some(&(at, newline)) = self.breaks.front() {
            if at >= start {
                break;
            }
            self.newlines += u64::from(newline);
            self.breaks.pop_front();
        }
        // Breaks right at the start belong before the record: blank lines, or the `\n` of a
        // CRLF that ended the previous one.
        let leading = (start..)
            .zip(&self.breaks)
            .take_while(|(next, (at, _))| at == next)
            .filter(|(_, (_, newline))| *newline)
            .count() as u64;
        self.newlines + leading + 1
    }
}

impl<R: Read> Read for LineTracking<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        for (i, &b) in buf[..read].iter().enumerate() {
            if b == b'\n' || b == b'\r' {
                self.breaks.push_back((self.offset + i as u64, b == b'\n'));
            }
        }
        self.offset += read as u64;
        Ok(read)
    }
}

fn decode_record(
    record: &csv::ByteRecord,
    line: u64,
    headers: &[String],
    path: &Path,
) -> Result<Vec<String>, InputError> {
    record
        .iter()
        .enumerate()
        .map(|(i, field)| {
            String::from_utf8(field.to_vec()).map_err(|_| {
                let column = headers
                    .get(i)
                    .map(|h| format!(" (column {}, {h:?})", i + 1))
                    .unwrap_or_else(|| format!(" (column {})", i + 1));
                InputError {
                    path: path.display().to_string(),
                    line: Some(line),
                    reason: format!("a cell is not valid UTF-8{column}"),
                    advice:
                        "the file is probably Latin-1/ANSI; save it as \"CSV UTF-8\" and run again"
                            .into(),
                }
            })
        })
        .collect()
}
