//! Reading the onboarding CSV: encoding checks, delimiter detection, header aliases, and one
//! [`InputRow`] per data record with its validation result. Nothing is sent from here.

mod validate;

use std::path::{Path, PathBuf};

pub use validate::{Action, LicenseGroup, PlanRef, RowProblem, RowRequest, SkuRef};

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

/// Which column holds which field; indices into the record.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    pub customer: usize,
    pub user: usize,
    pub sku: usize,
    pub license_group: Option<usize>,
    pub excluded_plans: Option<usize>,
    pub action: Option<usize>,
}

/// A parsed input file: the header, which columns go to the report, and every data row.
#[derive(Debug)]
pub struct InputFile {
    pub path: PathBuf,
    pub delimiter: u8,
    pub headers: Vec<String>,
    /// Columns carried to the report: every column except `result_*` ones of an earlier report.
    pub carried: Vec<usize>,
    pub columns: Columns,
    pub rows: Vec<InputRow>,
    /// Lines holding no value at all (e.g. trailing `,,,` from a spreadsheet); not data rows.
    pub blank_lines: Vec<u64>,
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

/// The columns this tool adds to a report; ignored when a report is read back as input.
pub const RESULT_COLUMNS: [&str; 12] = [
    "result_row",
    "result_status",
    "result_sku_id",
    "result_license_group",
    "result_http_status",
    "result_error_code",
    "result_message",
    "result_attempts",
    "result_request_id",
    "result_correlation_id",
    "result_finished_at",
    "result_warnings",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Customer,
    User,
    Sku,
    LicenseGroup,
    ExcludedPlans,
    Action,
}

impl Field {
    fn canonical(self) -> &'static str {
        match self {
            Field::Customer => "customer_id",
            Field::User => "user_id",
            Field::Sku => "sku",
            Field::LicenseGroup => "license_group",
            Field::ExcludedPlans => "excluded_plans",
            Field::Action => "action",
        }
    }

    /// Header names (normalized) that mean this field (SPEC §3).
    fn recognise(normalized: &str) -> Option<Field> {
        Some(match normalized {
            "customerid" | "customer" | "tenantid" | "customertenantid" => Field::Customer,
            "userid" | "user" | "upn" | "userprincipalname" => Field::User,
            "sku" | "skuid" | "productsku" | "product" => Field::Sku,
            "licensegroup" => Field::LicenseGroup,
            "excludedplans" => Field::ExcludedPlans,
            "action" => Field::Action,
            _ => return None,
        })
    }
}

/// Header matching ignores case, spaces, `_` and `-` (SPEC §3).
fn normalize_header(name: &str) -> String {
    name.trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-' | '\t'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Reads an input file's bytes (hashed by the journal, then [`parse`]d).
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, InputError> {
    std::fs::read(path).map_err(|e| InputError {
        path: path.display().to_string(),
        line: None,
        reason: format!("cannot read the file: {e}"),
        advice: "check the path and permissions".into(),
    })
}

/// Parses input bytes; see [`read`].
pub fn parse(path: &Path, bytes: &[u8], delimiter: Option<u8>) -> Result<InputFile, InputError> {
    let fail = |line: Option<u64>, reason: String, advice: &str| InputError {
        path: path.display().to_string(),
        line,
        reason,
        advice: advice.to_string(),
    };

    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(fail(
            Some(1),
            "the file is UTF-16 encoded".into(),
            "save it as \"CSV UTF-8 (comma delimited)\" and run again",
        ));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        let line = 1 + bytes[..pos].iter().filter(|&&b| b == b'\n').count() as u64;
        return Err(fail(
            Some(line),
            "the file contains NUL bytes: it is not a text CSV file".into(),
            "export the sheet as CSV UTF-8 and run again",
        ));
    }
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(fail(
            None,
            "the file is empty".into(),
            "it needs a header row (customer_id,user_id,sku) and at least one data row",
        ));
    }

    let delimiter = delimiter.unwrap_or_else(|| detect_delimiter(bytes));
    if let Some(line) = unterminated_quote(bytes, delimiter) {
        return Err(fail(
            Some(line),
            "a quoted cell opened here is never closed, so every line after it would be read as one cell"
                .into(),
            "close the quote; a \" inside a quoted cell must be doubled (\"\")",
        ));
    }
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);

    let mut records = reader.byte_records();
    let header_record = records
        .next()
        .ok_or_else(|| fail(None, "the file has no header row".into(), ""))?
        .map_err(|e| fail(Some(1), format!("cannot read the header: {e}"), ""))?;
    let headers = decode_record(&header_record, 1, &[], path)?;
    let (columns, carried) =
        map_headers(&headers).map_err(|(reason, advice)| fail(Some(1), reason, &advice))?;

    let mut rows = Vec::new();
    let mut blank_lines = Vec::new();
    let mut lines = LineCounter::default();
    for record in records {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line());
            fail(line, format!("not readable as CSV: {e}"), "")
        })?;
        let line = lines.line_at(bytes, record.position().map_or(0, |p| p.byte()) as usize);
        let mut cells = decode_record(&record, line, &headers, path)?;
        if cells.iter().all(|c| c.trim().is_empty()) {
            blank_lines.push(line);
            continue;
        }
        let request = if cells.len() != headers.len() {
            Err(RowProblem::ragged(cells.len(), headers.len(), &cells))
        } else {
            validate::validate_row(&columns, &headers, &cells)
        };
        cells.resize(headers.len(), String::new());
        rows.push(InputRow {
            line,
            cells,
            request,
        });
    }

    Ok(InputFile {
        path: path.to_path_buf(),
        delimiter,
        headers,
        carried,
        columns,
        rows,
        blank_lines,
    })
}

/// Line numbers from byte offsets. The csv crate's own line count is one short after a CRLF
/// (a record "starts" at the `\n` of the previous line's `\r\n`), so count newlines ourselves,
/// incrementally, since offsets only grow.
#[derive(Default)]
struct LineCounter {
    offset: usize,
    newlines: u64,
}

impl LineCounter {
    fn line_at(&mut self, bytes: &[u8], start: usize) -> u64 {
        let mut start = start.min(bytes.len());
        while start < bytes.len() && matches!(bytes[start], b'\r' | b'\n') {
            start += 1;
        }
        if start >= self.offset {
            self.newlines += bytes[self.offset..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
            self.offset = start;
        }
        self.newlines + 1
    }
}

/// The line where a quoted cell opens that the file never closes, following the csv crate's
/// rules: a quote opens a quoted cell only at the start of a cell, and `""` inside it is a quote.
fn unterminated_quote(bytes: &[u8], delimiter: u8) -> Option<u64> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        CellStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let (mut state, mut line, mut opened_at) = (State::CellStart, 1u64, 0u64);
    for &b in bytes {
        state = match (state, b) {
            (State::Quoted, b'"') => State::QuoteInQuoted,
            (State::Quoted, _) => State::Quoted,
            (State::QuoteInQuoted, b'"') => State::Quoted,
            (State::CellStart, b'"') => {
                opened_at = line;
                State::Quoted
            }
            (_, b'\n') => State::CellStart,
            (_, b) if b == delimiter => State::CellStart,
            (State::QuoteInQuoted, b'\r') => State::QuoteInQuoted,
            _ => State::Unquoted,
        };
        if b == b'\n' {
            line += 1;
        }
    }
    (state == State::Quoted).then_some(opened_at)
}

/// Counts `,` and `;` outside quotes on the header line; Excel in many locales writes `;`.
fn detect_delimiter(bytes: &[u8]) -> u8 {
    let (mut commas, mut semicolons, mut quoted) = (0usize, 0usize, false);
    for &b in bytes {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => break,
            b',' if !quoted => commas += 1,
            b';' if !quoted => semicolons += 1,
            _ => {}
        }
    }
    if semicolons > commas { b';' } else { b',' }
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

type HeaderProblem = (String, String);

fn map_headers(headers: &[String]) -> Result<(Columns, Vec<usize>), HeaderProblem> {
    let mut found: Vec<(Field, usize)> = Vec::new();
    let mut carried = Vec::new();
    for (i, name) in headers.iter().enumerate() {
        let normalized = normalize_header(name);
        if RESULT_COLUMNS
            .iter()
            .any(|r| normalize_header(r) == normalized)
        {
            continue;
        }
        carried.push(i);
        if let Some(field) = Field::recognise(&normalized) {
            if let Some(&(_, first)) = found.iter().find(|(f, _)| *f == field) {
                return Err((
                    format!(
                        "columns {} ({:?}) and {} ({:?}) both mean {}",
                        first + 1,
                        headers[first],
                        i + 1,
                        name,
                        field.canonical()
                    ),
                    "keep one of them, or rename the other".into(),
                ));
            }
            found.push((field, i));
        }
    }
    let index = |field: Field| found.iter().find(|(f, _)| *f == field).map(|&(_, i)| i);
    let missing: Vec<&str> = [Field::Customer, Field::User, Field::Sku]
        .into_iter()
        .filter(|f| index(*f).is_none())
        .map(Field::canonical)
        .collect();
    if !missing.is_empty() {
        return Err((
            format!(
                "required column{} missing: {} (header is: {})",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                headers.join(", ")
            ),
            "the header row needs customer_id, user_id and sku (aliases: customer/tenant_id, user/upn, sku_id/product)".into(),
        ));
    }
    Ok((
        Columns {
            customer: index(Field::Customer).unwrap_or_default(),
            user: index(Field::User).unwrap_or_default(),
            sku: index(Field::Sku).unwrap_or_default(),
            license_group: index(Field::LicenseGroup),
            excluded_plans: index(Field::ExcludedPlans),
            action: index(Field::Action),
        },
        carried,
    ))
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
        assert_eq!(file.headers, ["Tenant ID", "UPN", "Product-SKU", "Ticket"]);
        assert_eq!(file.columns.customer, 0);
        assert_eq!(file.columns.sku, 2);
        assert_eq!(file.carried, [0, 1, 2, 3]);
        let row = &file.rows[0];
        assert_eq!(row.line, 2);
        assert_eq!(row.cells[3], "T-1");
        let req = row.request.as_ref().unwrap();
        assert_eq!(req.user, "ada@contoso.com");
        assert_eq!(req.sku, SkuRef::Name("SPB".into()));
    }

    #[test]
    fn semicolon_files_are_detected() {
        let text = format!("customer_id;user_id;sku;excluded_plans\n{C};{U};SPB;\"{C}|{U}\"\n");
        let file = parse_str(&text).unwrap();
        assert_eq!(file.delimiter, b';');
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
        assert_eq!(file.carried, [0, 1, 2]);
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
