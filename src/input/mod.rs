//! Reading the onboarding CSV: a first pass for the file's hash and encoding problems
//! ([`scan`]; a run collects its customers in the same pass), then header aliases and one
//! [`InputRow`] per data record with its validation result, streamed: memory does not grow
//! with the file. Nothing is sent from here.

mod header;
mod rows;
mod scan;
mod sheet;
mod validate;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use sha2::Digest;

pub use header::{Columns, InputHeader, RESULT_COLUMNS};
pub use rows::{Rows, read_rows};
pub use scan::Scan;
pub use sheet::{cell_name, is_spreadsheet, number_text};
pub use validate::{Action, LicenseGroup, PlanRef, RowProblem, RowRequest, SkuRef, UsageLocation};

/// Why a file cannot be used at all (exit 2, nothing sent).
#[derive(Debug, thiserror::Error)]
#[error("{path}{}: {reason}{}", line.map(|l| format!(", line {l}")).unwrap_or_default(),
        if advice.is_empty() { String::new() } else { format!(". {advice}") })]
pub struct InputError {
    pub path: String,
    pub line: Option<u64>,
    pub reason: String,
    pub advice: String,
}

/// A whole input file in memory (small files: tests, `verify`); a run streams [`Rows`].
#[derive(Debug)]
pub struct InputFile {
    pub header: InputHeader,
    pub rows: Vec<InputRow>,
    /// Lines holding no value at all (e.g. trailing `,,,` from a spreadsheet); not data rows.
    pub blank_lines: Vec<u64>,
}

/// One record after the header.
#[derive(Debug)]
pub enum Record {
    Row(InputRow),
    /// A line holding no value at all (e.g. trailing `,,,` from a spreadsheet): not a data row.
    Blank(u64),
}

/// One data record of the input.
#[derive(Debug)]
pub struct InputRow {
    /// Line number in the file where the record starts (the header is line 1).
    pub line: u64,
    /// The cells as read, padded with empty cells to the header's width.
    pub cells: Vec<String>,
    pub request: Result<RowRequest, RowProblem>,
}

/// Reads an input file's bytes (small files: `verify`, tests); a run uses [`scan_file`] and
/// [`read_file`], which stream.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, InputError> {
    std::fs::read(path).map_err(|e| cannot_read(path, e))
}

fn cannot_read(path: &Path, e: std::io::Error) -> InputError {
    InputError {
        path: path.display().to_string(),
        line: None,
        reason: format!("cannot read the file: {e}"),
        advice: "check the path and permissions".into(),
    }
}

fn scan_error(path: &Path, error: scan::ScanError) -> InputError {
    match error {
        scan::ScanError::Io(e) => cannot_read(path, e),
        scan::ScanError::Unusable(problem) => InputError {
            path: path.display().to_string(),
            line: problem.line,
            reason: problem.reason.into(),
            advice: problem.advice.into(),
        },
    }
}

/// The first pass over the file: its hash and delimiter, or why it cannot be used at all — and,
/// from the same bytes, every record handed to `each` as it is read (a run collects its
/// customers so). A problem of the whole file wins over one of its rows, as if the scan had
/// come first; `each` sees nothing planned or sent. Without `delimiter`, the header line is
/// read ahead to learn it.
///
/// A spreadsheet (by extension) is read as its worksheet `sheet`, else its first one; `sheet`
/// given for a CSV file is a usage error.
pub fn scan_file(
    path: &Path,
    delimiter: Option<u8>,
    sheet: Option<&str>,
    mut each: impl FnMut(Record),
) -> Result<Scan, InputError> {
    if is_spreadsheet(path) {
        return scan_workbook(path, sheet, each);
    }
    if let Some(sheet) = sheet {
        return Err(InputError {
            path: path.display().to_string(),
            line: None,
            reason: format!("--sheet {sheet:?} is for a spreadsheet, and this file is read as CSV"),
            advice: "leave --sheet out, or give the workbook (.xlsx, .xlsm, .xlsb, .xls, .ods)"
                .into(),
        });
    }
    let open = || File::open(path).map_err(|e| cannot_read(path, e));
    let delimiter = match delimiter {
        Some(delimiter) => delimiter,
        None => header_delimiter(path, open()?)?,
    };
    let mut scanned = scan::Scanned::new(open()?, delimiter);
    let mut first_error = None;
    {
        let mut source = BufReader::with_capacity(64 * 1024, &mut scanned);
        match source.fill_buf() {
            Ok(bytes) if bytes.starts_with(BOM) => source.consume(BOM.len()),
            _ => {}
        }
        match read_rows(path, source, delimiter) {
            Ok(rows) => {
                for record in rows {
                    match record {
                        Ok(record) => each(record),
                        Err(error) => {
                            first_error = Some(error);
                            break;
                        }
                    }
                }
            }
            Err(error) => first_error = Some(error),
        }
    }
    // The rest of the file, for the scan, after a row stopped the reading.
    let _ = std::io::copy(&mut scanned, &mut std::io::sink());
    let scan = scanned.finish().map_err(|e| scan_error(path, e))?;
    match first_error {
        Some(error) => Err(error),
        None => Ok(scan),
    }
}

/// The first pass over a workbook: its hash (the bytes and the sheet's name: another sheet of
/// the same workbook is another input), then its rows handed to `each`.
fn scan_workbook(
    path: &Path,
    sheet: Option<&str>,
    mut each: impl FnMut(Record),
) -> Result<Scan, InputError> {
    let (name, rows) = open_sheet(path, sheet)?;
    let mut hasher = sha2::Sha256::new();
    let mut file = File::open(path).map_err(|e| cannot_read(path, e))?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(cannot_read(path, e)),
        }
    }
    hasher.update(b"\0sheet:");
    hasher.update(name.as_bytes());
    let hash = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for record in rows::read_sheet_rows::<File>(path, rows)? {
        each(record?);
    }
    Ok(Scan {
        hash,
        delimiter: b',',
        sheet: Some(name),
    })
}

fn open_sheet(path: &Path, sheet: Option<&str>) -> Result<(String, sheet::SheetRows), InputError> {
    sheet::SheetRows::open(path, sheet).map_err(|problem| InputError {
        path: path.display().to_string(),
        line: problem.line,
        reason: problem.reason,
        advice: problem.advice,
    })
}

/// The delimiter of the header line (`,` or `;`), reading no further than it ends.
fn header_delimiter(path: &Path, mut file: File) -> Result<u8, InputError> {
    let mut scanner = scan::Scanner::new(None);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(cannot_read(path, e)),
        };
        if !scanner.feed(&buffer[..read]) {
            break;
        }
        if let Some(delimiter) = scanner.delimiter_known() {
            return Ok(delimiter);
        }
    }
    // One line, or unusable: the scan of what was read says which.
    scanner
        .finish()
        .map(|scan| scan.delimiter)
        .map_err(|problem| scan_error(path, scan::ScanError::Unusable(problem)))
}

/// Opens the file for the second pass: the header is read and mapped, the rows follow.
pub fn read_file(path: &Path, scan: &Scan) -> Result<Rows<BufReader<File>>, InputError> {
    if let Some(sheet) = &scan.sheet {
        let (_, rows) = open_sheet(path, Some(sheet))?;
        return rows::read_sheet_rows(path, rows);
    }
    let file = File::open(path).map_err(|e| cannot_read(path, e))?;
    let mut source = BufReader::with_capacity(64 * 1024, file);
    let starts_with_bom = source
        .fill_buf()
        .map_err(|e| cannot_read(path, e))?
        .starts_with(BOM);
    if starts_with_bom {
        source.consume(BOM.len());
    }
    read_rows(path, source, scan.delimiter)
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A whole input file, CSV or spreadsheet (its first sheet), in memory: `verify`, tests.
pub fn read_whole(path: &Path, delimiter: Option<u8>) -> Result<InputFile, InputError> {
    if !is_spreadsheet(path) {
        return parse(path, &read_bytes(path)?, delimiter);
    }
    let scan = scan_file(path, None, None, |_| {})?;
    let rows = read_file(path, &scan)?;
    collect(rows)
}

fn collect<R: Read>(rows: Rows<R>) -> Result<InputFile, InputError> {
    let header = rows.header.clone();
    let (mut data, mut blank_lines) = (Vec::new(), Vec::new());
    for record in rows {
        match record? {
            Record::Row(row) => data.push(row),
            Record::Blank(line) => blank_lines.push(line),
        }
    }
    Ok(InputFile {
        header,
        rows: data,
        blank_lines,
    })
}

/// Parses a whole file held in memory; see [`read_file`] for the streaming form.
pub fn parse(path: &Path, bytes: &[u8], delimiter: Option<u8>) -> Result<InputFile, InputError> {
    let scan = scan::scan(bytes, delimiter).map_err(|e| scan_error(path, e))?;
    let rows = read_rows(
        path,
        bytes.strip_prefix(BOM).unwrap_or(bytes),
        scan.delimiter,
    )?;
    collect(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<InputFile, InputError> {
        parse(Path::new("test.csv"), text.as_bytes(), None)
    }

    const C: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";
    const U: &str = "554526aa-cf5e-46fa-95df-98dbc55d8a1e";

    #[test]
    fn aliases_bom_crlf_and_extra_columns() {
        let text =
            format!("\u{feff}Tenant ID,UPN,Product-SKU,Ticket\r\n{C},ada@contoso.com,SPB,T-1\r\n");
        let file = parse_str(&text).unwrap();
        assert_eq!(
            file.header.headers,
            ["Tenant ID", "UPN", "Product-SKU", "Ticket"]
        );
        assert_eq!(file.header.columns.customer, 0);
        assert_eq!(file.header.columns.sku, 2);
        assert_eq!(file.header.carried, [0, 1, 2, 3]);
        let row = &file.rows[0];
        assert_eq!(row.line, 2);
        assert_eq!(row.cells[3], "T-1");
        let req = row.request.as_ref().unwrap();
        assert_eq!(req.user, "ada@contoso.com");
        assert_eq!(req.sku, SkuRef::Name("SPB".into()));
    }

    #[test]
    fn a_usage_location_column_is_known_by_its_aliases() {
        for name in [
            "usage_location",
            "Usage Location",
            "UsageLocation",
            "country",
        ] {
            let text = format!("customer_id,user_id,sku,{name}\n{C},łukasz@contoso.com,SPB,pl\n");
            let file = parse_str(&text).unwrap();
            assert_eq!(file.header.columns.usage_location, Some(3), "{name}");
            let req = file.rows[0].request.as_ref().unwrap();
            assert_eq!(req.usage_location.as_ref().unwrap().as_str(), "PL");
        }
        let both = parse_str("customer_id,user_id,sku,country,usage_location\n").unwrap_err();
        assert!(
            both.to_string().contains("both mean usage_location"),
            "{both}"
        );
    }

    #[test]
    fn semicolon_files_are_detected() {
        let text = format!("customer_id;user_id;sku;excluded_plans\n{C};{U};SPB;\"{C}|{U}\"\n");
        let file = parse_str(&text).unwrap();
        assert_eq!(file.header.delimiter, b';');
        let req = file.rows[0].request.as_ref().unwrap();
        assert_eq!(req.excluded_plans.len(), 2);
    }

    #[test]
    fn missing_required_column_names_it_and_line_one() {
        let err = parse_str("customer_id,sku\nx,y\n").unwrap_err();
        assert_eq!(err.line, Some(1));
        assert!(err.reason.contains("user_id"), "{err}");
        assert!(err.to_string().contains("test.csv, line 1"), "{err}");
    }

    /// Writes `bytes` to a file of its own and scans it, collecting the records.
    fn scan_bytes(bytes: &[u8], delimiter: Option<u8>) -> Result<(Scan, Vec<Record>), InputError> {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("lb-scan-{}-{n}.csv", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let mut records = Vec::new();
        let scanned = scan_file(&path, delimiter, None, |r| records.push(r));
        std::fs::remove_file(&path).unwrap();
        scanned.map(|scan| (scan, records))
    }

    /// The records of the scan's pass are the rows a second read gives, and the scan is the
    /// scan of the bytes; a problem of the whole file wins over a row's, wherever it is.
    #[test]
    fn the_scan_and_the_rows_come_from_one_pass() {
        let text = format!(
            "\u{FEFF}Customer;user_id;sku\n{C};émilie@contoso.onmicrosoft.com;SPB\n;;\n\
             {C};\"łukasz\n日本語\";SPB\n"
        );
        let bytes = text.as_bytes();
        let (scan, records) = scan_bytes(bytes, None).unwrap();
        assert_eq!(scan, scan::scan(bytes, None).ok().unwrap());
        assert_eq!(scan.delimiter, b';');
        let parsed = parse(Path::new("t.csv"), bytes, None).unwrap();
        let rows: Vec<&InputRow> = records
            .iter()
            .filter_map(|r| match r {
                Record::Row(row) => Some(row),
                Record::Blank(_) => None,
            })
            .collect();
        assert_eq!(rows.len(), 2);
        for (row, expected) in rows.iter().zip(&parsed.rows) {
            assert_eq!((row.line, &row.cells), (expected.line, &expected.cells));
        }
        let blanks: Vec<u64> = records
            .iter()
            .filter_map(|r| match r {
                Record::Blank(line) => Some(*line),
                Record::Row(_) => None,
            })
            .collect();
        assert_eq!((&blanks, &parsed.blank_lines), (&vec![3], &vec![3]));
        // The operator's delimiter is used, not the one the header suggests (more commas).
        let header = b"customer_id;user_id;sku;note,a,b,c,d\n";
        assert_eq!(scan::scan(&header[..], None).ok().unwrap().delimiter, b',');
        let (given, _) = scan_bytes(header, Some(b';')).unwrap();
        assert_eq!(given.delimiter, b';');

        // A Latin-1 byte on line 2 stops the rows, a NUL on line 4 makes the file unusable:
        // the NUL is what is reported, as when the scan came first.
        let mut bytes = format!("customer_id,user_id,sku\n{C},{U},Caf").into_bytes();
        bytes.extend_from_slice(b"\xE9\n");
        bytes.extend_from_slice(format!("{C},{U},SPB\n{C},\0,SPB\n").as_bytes());
        // (With the delimiter given: the look at the header line ahead would see the NUL.)
        for delimiter in [None, Some(b',')] {
            let err = scan_bytes(&bytes, delimiter).unwrap_err();
            assert!(err.reason.contains("NUL") && err.line == Some(4), "{err}");
        }
        // A quote never closed, after a header that names no customer column.
        let err = scan_bytes(b"who,what\n1,\"2\n3,4\n", None).unwrap_err();
        assert!(
            err.reason.contains("never closed") && err.line == Some(2),
            "{err}"
        );
        // The row's own error when the file is usable.
        bytes.truncate(bytes.len() - format!("{C},\0,SPB\n").len());
        let err = scan_bytes(&bytes, None).unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        // A header line without a line break: one line is the whole file.
        let (one, records) = scan_bytes(b"customer_id;user_id;sku", None).unwrap();
        assert_eq!((one.delimiter, records.len()), (b';', 0));
        assert!(scan_bytes(b"", None).unwrap_err().reason.contains("empty"));
        let utf16 = [0xFF, 0xFE, b'a', 0, b',', 0, b'\n', 0];
        assert!(
            scan_bytes(&utf16, None)
                .unwrap_err()
                .reason
                .contains("UTF-16")
        );
    }

    #[test]
    fn empty_binary_and_utf16_files_are_refused() {
        assert!(parse_str("").unwrap_err().reason.contains("empty"));
        assert!(
            parse(Path::new("b"), b"a,b\n\0\0\x01", None)
                .unwrap_err()
                .reason
                .contains("NUL")
        );
        let utf16 = [0xFF, 0xFE, b'a', 0, b',', 0];
        assert!(
            parse(Path::new("u"), &utf16, None)
                .unwrap_err()
                .reason
                .contains("UTF-16")
        );
    }

    #[test]
    fn latin1_bytes_are_refused_with_line_and_column() {
        let mut bytes = format!("customer_id,user_id,sku\n{C},{U},SPB\n{C},{U},Caf").into_bytes();
        bytes.push(0xE9);
        bytes.push(b'\n');
        let err = parse(Path::new("l.csv"), &bytes, None).unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(err.reason.contains("column 3"), "{err}");
        assert!(err.advice.contains("UTF-8"));
    }

    #[test]
    fn an_unterminated_quote_is_refused_at_the_line_it_opens() {
        let err = parse_str(&format!(
            "customer_id,user_id,sku,note\n{C},{U},SPB,ok\n{C},{U},SPB,\"oops\n{C},{U},SPB,x\n"
        ))
        .unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(err.advice.contains("doubled"), "{err}");
        // Quotes inside unquoted cells, escaped quotes and multi-line cells are fine.
        let fine = format!(
            "customer_id,user_id,sku,note\n{C},{U},SPB,5\" screen\n{C},{U},SPB,\"say \"\"hi\"\"\nthere\"\r\n"
        );
        assert_eq!(parse_str(&fine).unwrap().rows.len(), 2);
    }

    #[test]
    fn duplicate_field_columns_are_refused() {
        let err = parse_str("customer_id,tenant_id,user,sku\n").unwrap_err();
        assert!(err.reason.contains("both mean customer_id"), "{err}");
    }

    #[test]
    fn ragged_rows_are_invalid_not_dropped_and_blank_lines_are_counted() {
        let text = format!("customer_id,user_id,sku\n{C},{U}\n,,\n{C},{U},SPB,extra\n");
        let file = parse_str(&text).unwrap();
        assert_eq!(file.rows.len(), 2);
        assert_eq!(file.blank_lines, [3]);
        let short = file.rows[0].request.as_ref().unwrap_err();
        assert!(short.to_string().contains("2 cells"), "{short}");
        let long = file.rows[1].request.as_ref().unwrap_err();
        assert!(long.to_string().contains("extra"), "{long}");
        assert_eq!(file.rows[0].cells.len(), 3);
    }

    #[test]
    fn result_columns_of_a_report_are_ignored() {
        let text =
            format!("customer_id,user_id,sku,result_status,Result Message\n{C},{U},SPB,failed,x\n");
        let file = parse_str(&text).unwrap();
        assert_eq!(file.header.carried, [0, 1, 2]);
        assert!(file.rows[0].request.is_ok());
    }

    #[test]
    fn quoted_multiline_cells_keep_the_starting_line() {
        let text =
            format!("customer_id,user_id,sku,note\n{C},{U},SPB,\"two\nlines\"\n{C},{U},SPE_E3,x\n");
        let file = parse_str(&text).unwrap();
        assert_eq!(file.rows[0].line, 2);
        assert_eq!(file.rows[1].line, 4);
    }
}
