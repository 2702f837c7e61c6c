//! The first pass over an input file, in fixed-size chunks: its content hash (the journal's
//! "same input"), the delimiter, and the problems that make the whole file unusable (UTF-16,
//! NUL bytes, nothing in it, a quote never closed) — found before a single row is read, with
//! memory that does not grow with the file.

use std::io::Read;

use sha2::{Digest, Sha256};

/// What the first pass learned about a usable file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// SHA-256 of the file's bytes, hex.
    pub hash: String,
    pub delimiter: u8,
    /// The worksheet read, for a spreadsheet input (its name is part of the hash).
    pub sheet: Option<String>,
}

/// Why the file cannot be read at all: the line it concerns (if any), what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanProblem {
    pub line: Option<u64>,
    pub reason: &'static str,
    pub advice: &'static str,
}

pub(super) enum ScanError {
    Io(std::io::Error),
    Unusable(ScanProblem),
}

const CHUNK: usize = 64 * 1024;

/// The scan's state, fed the file's bytes in order, in chunks of any size: so it can read the
/// file itself ([`scan`]) or watch the bytes another reader reads ([`Scanned`]).
pub(super) struct Scanner {
    hasher: Sha256,
    /// Both candidate delimiters are followed until the header line decides between them.
    quotes: Vec<QuoteTracker>,
    detect: DelimiterCount,
    given: Option<u8>,
    offset: u64,
    newlines: u64,
    any_text: bool,
    /// The first problem found; nothing is fed after it.
    problem: Option<ScanProblem>,
}

impl Scanner {
    /// `delimiter`: the one the operator gave, else detected from the header line (`,` or `;`,
    /// whichever occurs more often outside quotes).
    pub(super) fn new(delimiter: Option<u8>) -> Self {
        Scanner {
            hasher: Sha256::new(),
            quotes: match delimiter {
                Some(d) => vec![QuoteTracker::new(d)],
                None => vec![QuoteTracker::new(b','), QuoteTracker::new(b';')],
            },
            detect: DelimiterCount::default(),
            given: delimiter,
            offset: 0,
            newlines: 0,
            any_text: false,
            problem: None,
        }
    }

    /// The next bytes of the file; `false` once the file is known to be unusable.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> bool {
        if self.problem.is_some() {
            return false;
        }
        let mut chunk = bytes;
        self.hasher.update(chunk);
        if self.offset == 0 {
            if chunk.starts_with(&[0xFF, 0xFE]) || chunk.starts_with(&[0xFE, 0xFF]) {
                self.problem = Some(ScanProblem {
                    line: Some(1),
                    reason: "the file is UTF-16 encoded",
                    advice: "save it as \"CSV UTF-8 (comma delimited)\" and run again",
                });
                return false;
            }
            if let Some(problem) = workbook_in_disguise(chunk) {
                self.problem = Some(problem);
                return false;
            }
            chunk = chunk.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(chunk);
        }
        self.offset += bytes.len() as u64;
        if let Some(pos) = chunk.iter().position(|&b| b == 0) {
            let line = 1 + self.newlines + count_newlines(&chunk[..pos]);
            self.problem = Some(ScanProblem {
                line: Some(line),
                reason: "the file contains NUL bytes: it is not a text CSV file",
                advice: "export the sheet as CSV UTF-8 and run again",
            });
            return false;
        }
        self.newlines += count_newlines(chunk);
        self.any_text = self.any_text || chunk.iter().any(|b| !b.is_ascii_whitespace());
        self.detect.feed(chunk);
        for tracker in &mut self.quotes {
            tracker.feed(chunk);
        }
        true
    }

    /// The delimiter as far as the bytes fed so far tell: decided once the header line ended.
    pub(super) fn delimiter_known(&self) -> Option<u8> {
        self.given
            .or_else(|| self.detect.done.then(|| self.detect.delimiter()))
    }

    /// What the whole file showed, once every byte was fed.
    pub(super) fn finish(self) -> Result<Scan, ScanProblem> {
        if let Some(problem) = self.problem {
            return Err(problem);
        }
        if !self.any_text {
            return Err(ScanProblem {
                line: None,
                reason: "the file is empty",
                advice: "it needs a header row (customer_id,user_id,sku) and at least one data row",
            });
        }
        let delimiter = self.given.unwrap_or_else(|| self.detect.delimiter());
        let tracker = self
            .quotes
            .iter()
            .find(|t| t.delimiter == delimiter)
            .expect("a tracker per candidate delimiter");
        if let Some(line) = tracker.unterminated() {
            return Err(ScanProblem {
                line: Some(line),
                reason: "a quoted cell opened here is never closed, so every line after it would be read as one cell",
                advice: "close the quote; a \" inside a quoted cell must be doubled (\"\")",
            });
        }
        Ok(Scan {
            hash: self
                .hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            delimiter,
            sheet: None,
        })
    }
}

/// A workbook saved under a CSV name: a zip (`.xlsx`, `.ods`) or an OLE compound file (`.xls`)
/// where text was expected. Workbooks are read directly under their own extension.
fn workbook_in_disguise(first_bytes: &[u8]) -> Option<ScanProblem> {
    if first_bytes.starts_with(b"PK\x03\x04") {
        return Some(ScanProblem {
            line: None,
            reason: "the file is a zip archive, not CSV text: probably an .xlsx or .ods workbook under a CSV name",
            advice: "rename it to .xlsx (or .ods): license-batch reads workbooks directly",
        });
    }
    if first_bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
        return Some(ScanProblem {
            line: None,
            reason: "the file is an Excel 97-2003 (.xls) workbook or a password-protected one, not CSV text",
            advice: "rename it to .xls (license-batch reads workbooks directly), or remove its password in Excel and save it as .xlsx",
        });
    }
    None
}

/// Reads `source` to its end once. `delimiter`: the one the operator gave, else detected from
/// the header line (`,` or `;`, whichever occurs more often outside quotes).
pub(super) fn scan(mut source: impl Read, delimiter: Option<u8>) -> Result<Scan, ScanError> {
    let mut scanner = Scanner::new(delimiter);
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let read = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ScanError::Io(e)),
        };
        if !scanner.feed(&buffer[..read]) {
            break;
        }
    }
    scanner.finish().map_err(ScanError::Unusable)
}

/// A reader that shows every byte it hands out to a [`Scanner`]: the scan made in the same pass
/// as another read of the file. It stops (an error) once the file is known to be unusable.
pub(super) struct Scanned<R> {
    inner: R,
    scanner: Scanner,
    /// The first error reading the file itself: it wins over what the scan saw.
    failed: Option<std::io::Error>,
}

impl<R: Read> Scanned<R> {
    pub(super) fn new(inner: R, delimiter: u8) -> Self {
        Scanned {
            inner,
            scanner: Scanner::new(Some(delimiter)),
            failed: None,
        }
    }

    pub(super) fn finish(self) -> Result<Scan, ScanError> {
        match self.failed {
            Some(error) => Err(ScanError::Io(error)),
            None => self.scanner.finish().map_err(ScanError::Unusable),
        }
    }
}

impl<R: Read> Read for Scanned<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = match self.inner.read(buf) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let copy = std::io::Error::new(e.kind(), e.to_string());
                self.failed.get_or_insert(e);
                return Err(copy);
            }
        };
        if read > 0 && !self.scanner.feed(&buf[..read]) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file is not usable (see the scan)",
            ));
        }
        Ok(read)
    }
}

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Counts `,` and `;` outside quotes on the header line; Excel in many locales writes `;`.
#[derive(Default)]
struct DelimiterCount {
    commas: usize,
    semicolons: usize,
    quoted: bool,
    done: bool,
}

impl DelimiterCount {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.done {
                return;
            }
            match b {
                b'"' => self.quoted = !self.quoted,
                b'\n' if !self.quoted => self.done = true,
                b',' if !self.quoted => self.commas += 1,
                b';' if !self.quoted => self.semicolons += 1,
                _ => {}
            }
        }
    }

    fn delimiter(&self) -> u8 {
        if self.semicolons > self.commas {
            b';'
        } else {
            b','
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum QuoteState {
    CellStart,
    Unquoted,
    Quoted,
    QuoteInQuoted,
}

/// Where a quoted cell opens that the file never closes, following the csv crate's rules: a
/// quote opens a quoted cell only at the start of a cell, and `""` inside it is a quote.
struct QuoteTracker {
    delimiter: u8,
    state: QuoteState,
    line: u64,
    opened_at: u64,
}

impl QuoteTracker {
    fn new(delimiter: u8) -> Self {
        QuoteTracker {
            delimiter,
            state: QuoteState::CellStart,
            line: 1,
            opened_at: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        use QuoteState::*;
        for &b in bytes {
            self.state = match (self.state, b) {
                (Quoted, b'"') => QuoteInQuoted,
                (Quoted, _) => Quoted,
                (QuoteInQuoted, b'"') => Quoted,
                (CellStart, b'"') => {
                    self.opened_at = self.line;
                    Quoted
                }
                (_, b'\n') => CellStart,
                (_, b) if b == self.delimiter => CellStart,
                (QuoteInQuoted, b'\r') => QuoteInQuoted,
                _ => Unquoted,
            };
            if b == b'\n' {
                self.line += 1;
            }
        }
    }

    fn unterminated(&self) -> Option<u64> {
        (self.state == QuoteState::Quoted).then_some(self.opened_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its bytes a few at a time, as a pipe or a slow disk may.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(self.0.len()).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn problem(bytes: &[u8]) -> ScanProblem {
        match scan(bytes, None) {
            Err(ScanError::Unusable(p)) => p,
            _ => panic!("expected a problem"),
        }
    }

    #[test]
    fn the_answer_does_not_depend_on_how_the_bytes_arrive() {
        let text = b"a;b;\"c\nd\";e\n1;2;3;4\n";
        let whole = scan(&text[..], None).ok().unwrap();
        for step in [1, 2, 3, 7] {
            let trickled = scan(Trickle(text, step), None).ok().unwrap();
            assert_eq!(trickled, whole);
        }
        assert_eq!(whole.delimiter, b';');
        let open = b"a,b\n1,\"2\n3,4\n";
        for step in [1, 5] {
            match scan(Trickle(open, step), None) {
                Err(ScanError::Unusable(p)) => assert_eq!(p.line, Some(2)),
                _ => panic!("unterminated quote not found"),
            }
        }
    }

    #[test]
    fn the_hash_covers_every_byte_including_the_bom() {
        let with_bom = scan(&b"\xEF\xBB\xBFa,b\n"[..], None).ok().unwrap();
        let without = scan(&b"a,b\n"[..], None).ok().unwrap();
        assert_ne!(with_bom.hash, without.hash);
        assert_eq!(with_bom.hash.len(), 64);
    }

    #[test]
    fn a_workbook_under_a_csv_name_is_told_to_be_renamed() {
        assert!(
            problem(b"PK\x03\x04\x14\0\0\0")
                .advice
                .contains("rename it to .xlsx")
        );
        let compound = [0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0, 0];
        assert!(problem(&compound).reason.contains(".xls"));
        // Text that merely starts with "PK" is text.
        assert!(scan(&b"PK,user,sku\n"[..], None).is_ok());
    }

    #[test]
    fn nul_empty_and_utf16_are_found() {
        assert_eq!(problem(b"a,b\n1,2\n3\0").line, Some(3));
        assert!(problem(b" \r\n\n").reason.contains("empty"));
        assert!(problem(&[0xFF, 0xFE, b'a', 0]).reason.contains("UTF-16"));
    }
}
