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

/// Reads `source` to its end once. `delimiter`: the one the operator gave, else detected from
/// the header line (`,` or `;`, whichever occurs more often outside quotes).
pub(super) fn scan(mut source: impl Read, delimiter: Option<u8>) -> Result<Scan, ScanError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    // Both candidate delimiters are followed until the header line decides between them.
    let mut quotes: Vec<QuoteTracker> = match delimiter {
        Some(d) => vec![QuoteTracker::new(d)],
        None => vec![QuoteTracker::new(b','), QuoteTracker::new(b';')],
    };
    let mut detect = DelimiterCount::default();
    let (mut offset, mut newlines, mut any_text) = (0u64, 0u64, false);
    loop {
        let read = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ScanError::Io(e)),
        };
        let mut chunk = &buffer[..read];
        hasher.update(chunk);
        if offset == 0 {
            if chunk.starts_with(&[0xFF, 0xFE]) || chunk.starts_with(&[0xFE, 0xFF]) {
                return Err(ScanError::Unusable(ScanProblem {
                    line: Some(1),
                    reason: "the file is UTF-16 encoded",
                    advice: "save it as \"CSV UTF-8 (comma delimited)\" and run again",
                }));
            }
            chunk = chunk.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(chunk);
        }
        offset += read as u64;
        if let Some(pos) = chunk.iter().position(|&b| b == 0) {
            let line = 1 + newlines + count_newlines(&chunk[..pos]);
            return Err(ScanError::Unusable(ScanProblem {
                line: Some(line),
                reason: "the file contains NUL bytes: it is not a text CSV file",
                advice: "export the sheet as CSV UTF-8 and run again",
            }));
        }
        newlines += count_newlines(chunk);
        any_text = any_text || chunk.iter().any(|b| !b.is_ascii_whitespace());
        detect.feed(chunk);
        for tracker in &mut quotes {
            tracker.feed(chunk);
        }
    }
    if !any_text {
        return Err(ScanError::Unusable(ScanProblem {
            line: None,
            reason: "the file is empty",
            advice: "it needs a header row (customer_id,user_id,sku) and at least one data row",
        }));
    }
    let delimiter = delimiter.unwrap_or_else(|| detect.delimiter());
    let tracker = quotes
        .iter()
        .find(|t| t.delimiter == delimiter)
        .expect("a tracker per candidate delimiter");
    if let Some(line) = tracker.unterminated() {
        return Err(ScanError::Unusable(ScanProblem {
            line: Some(line),
            reason: "a quoted cell opened here is never closed, so every line after it would be read as one cell",
            advice: "close the quote; a \" inside a quoted cell must be doubled (\"\")",
        }));
    }
    Ok(Scan {
        hash: hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        delimiter,
    })
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
    fn nul_empty_and_utf16_are_found() {
        assert_eq!(problem(b"a,b\n1,2\n3\0").line, Some(3));
        assert!(problem(b" \r\n\n").reason.contains("empty"));
        assert!(problem(&[0xFF, 0xFE, b'a', 0]).reason.contains("UTF-16"));
    }
}
