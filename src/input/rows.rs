//! The data records of a file, one at a time, each decoded (UTF-8, or an error naming line and
//! column) and validated, with the line each starts on.

use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;

use super::header::{InputHeader, map_headers};
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
        reader,
        record,
    })
}

/// The data records of a file, one at a time, each validated.
pub struct Rows<R> {
    pub header: InputHeader,
    reader: csv::Reader<LineTracking<R>>,
    record: csv::ByteRecord,
}

impl<R: Read> Iterator for Rows<R> {
    type Item = Result<Record, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        let header = &self.header;
        match self.reader.read_byte_record(&mut self.record) {
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
        let start = self.record.position().map_or(0, |p| p.byte());
        let line = self.reader.get_mut().line_at(start);
        Some(
            decode_record(&self.record, line, &header.headers, &header.path).map(|mut cells| {
                if cells.iter().all(|c| c.trim().is_empty()) {
                    return Record::Blank(line);
                }
                let request = if cells.len() != header.headers.len() {
                    Err(RowProblem::ragged(
                        cells.len(),
                        header.headers.len(),
                        &cells,
                    ))
                } else {
                    validate::validate_row(&header.columns, &header.headers, &cells)
                };
                cells.resize(header.headers.len(), String::new());
                Record::Row(InputRow {
                    line,
                    cells,
                    request,
                })
            }),
        )
    }
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
