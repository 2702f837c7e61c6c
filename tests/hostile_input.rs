//! The hostile-input corpus (`tests/hostile/`) through the real binary on the sandbox: every
//! file gets a precise outcome — exit 2 naming the line and what to do, or per-row `invalid` —
//! never a panic, never a row silently dropped, and no formula reaches the report unneutralised.
//! The sandbox runs as a server process, so what was sent is read from what it received.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_license-batch");
const C: &str = "7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90";
const U: &str = "554526aa-cf5e-46fa-95df-98dbc55d8a1e";

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile")
        .join(name)
}

/// What a run of a corpus file did: its output, its report's rows (if it wrote one), its
/// directory, and the license updates the sandbox server received.
type Ran = (
    Output,
    Option<Vec<csv::StringRecord>>,
    tempfile::TempDir,
    Vec<serde_json::Value>,
);

/// Runs `run <file>` in a temp dir against a sandbox server (its default, permissive world).
fn run(file: &Path) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join(file.file_name().unwrap());
    std::fs::copy(file, &input).unwrap();
    let server = common::SandboxServer::start(dir.path(), "");
    let output = Command::new(BIN)
        .args(["run"])
        .arg(&input)
        .args(["-q", "--requests-per-minute", "60000"])
        .current_dir(dir.path())
        .env_clear()
        .envs(server.env())
        .output()
        .unwrap();
    let record = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(server.record());
    let sent = record["requests"].as_array().cloned().unwrap_or_default();
    let report = license_batch::report::default_path(&input);
    let rows = report.exists().then(|| {
        // The report keeps the input's delimiter: tell it from the header line.
        let text = std::fs::read_to_string(&report).unwrap();
        let header = text.lines().next().unwrap_or_default();
        let delimiter = if header.matches(';').count() > header.matches(',').count() {
            b';'
        } else {
            b','
        };
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .from_path(&report)
            .unwrap();
        reader.records().map(Result::unwrap).collect()
    });
    (output, rows, dir, sent)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit 2, nothing sent, and the message names the line and the reason.
fn assert_refused(name: &str, line: Option<u64>, reason: &str) {
    let (output, report, _dir, sent) = run(&corpus(name));
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{name}: {message}");
    if let Some(line) = line {
        assert!(
            message.contains(&format!("line {line}")),
            "{name}: {message}"
        );
    }
    assert!(message.contains(reason), "{name}: {message}");
    assert!(!message.contains("panicked"), "{name}: {message}");
    assert!(sent.is_empty(), "{name}: the server received {sent:?}");
    assert!(report.is_none(), "{name}: nothing ran, so no report");
}

fn status_column(rows: &[csv::StringRecord], headers_len: usize) -> Vec<String> {
    rows.iter()
        .map(|r| r[headers_len + 1].to_string())
        .collect()
}

#[test]
fn files_that_cannot_be_used_are_refused_with_line_and_advice() {
    assert_refused("empty.csv", None, "the file is empty");
    assert_refused(
        "missing_column.csv",
        Some(1),
        "required column missing: user_id",
    );
    assert_refused("binary.csv", Some(3), "NUL bytes");
    assert_refused("utf16.csv", Some(1), "UTF-16");
    assert_refused("latin1.csv", Some(3), "not valid UTF-8 (column 4");
    assert_refused("unterminated_quote.csv", Some(3), "never closed");
    assert_refused("duplicate_headers.csv", Some(1), "both mean sku");
}

#[test]
fn a_header_without_rows_is_nothing_to_do() {
    let (output, report, _dir, sent) = run(&corpus("header_only.csv"));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(report.unwrap().len(), 0);
    assert!(String::from_utf8_lossy(&output.stdout).contains("0 total"));
}

#[test]
fn bom_crlf_and_semicolon_files_work() {
    let (output, report, _dir, _sent) = run(&corpus("bom_crlf.csv"));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        status_column(&report.unwrap(), 3),
        ["succeeded", "succeeded"]
    );
    let (output, report, _dir, _sent) = run(&corpus("semicolon.csv"));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = report.unwrap();
    assert_eq!(&report[0][3], "a;b", "the quoted cell with a ';' survives");
}

#[test]
fn ragged_rows_are_invalid_and_kept() {
    let (output, report, _dir, _sent) = run(&corpus("ragged.csv"));
    assert_eq!(output.status.code(), Some(1));
    let report = report.unwrap();
    assert_eq!(
        status_column(&report, 4),
        ["invalid", "invalid", "succeeded"]
    );
    let messages: Vec<&str> = report.iter().map(|r| r.get(10).unwrap()).collect();
    assert!(messages[0].contains("2 cells"), "{messages:?}");
    assert!(
        messages[1].contains("\"extra\", \"cells\""),
        "nothing dropped silently: {messages:?}"
    );
}

#[test]
fn formulas_in_every_column_are_invalid_and_neutralised() {
    let (output, report, _dir, _sent) = run(&corpus("formulas.csv"));
    assert_eq!(output.status.code(), Some(1));
    let report = report.unwrap();
    assert_eq!(report.len(), 1);
    for cell in report[0].iter() {
        assert!(
            !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
            "unneutralised cell {cell:?}"
        );
    }
    assert!(report[0][0].starts_with("'=HYPERLINK"));
    assert_eq!(&report[0][5], "invalid");
}

#[test]
fn user_ids_that_could_reach_another_endpoint_never_leave() {
    let (output, report, _dir, sent) = run(&corpus("path_user.csv"));
    // Only the legal guest UPN reached the server, decoded back to itself.
    let users: Vec<&str> = sent.iter().map(|r| r["user"].as_str().unwrap()).collect();
    assert_eq!(users, ["a#b@contoso.com"]);
    assert_eq!(output.status.code(), Some(1));
    let report = report.unwrap();
    assert_eq!(
        status_column(&report, 3),
        ["invalid", "invalid", "invalid", "succeeded"]
    );
    // '#' is legal in guest UPNs: it was sent, as one encoded path segment.
    assert_eq!(&report[3][1], "a#b@contoso.com");
}

#[test]
fn duplicate_extra_headers_are_both_carried() {
    let (output, report, _dir, _sent) = run(&corpus("duplicate_extra_headers.csv"));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = report.unwrap();
    assert_eq!((&report[0][3], &report[0][4]), ("T-1", "T-2"));
}

#[test]
fn a_two_megabyte_cell_is_carried_whole() {
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(2 * 1024 * 1024);
    let file = dir.path().join("big_field.csv");
    std::fs::write(
        &file,
        format!("customer_id,user_id,sku,note\n{C},{U},SPB,{big}\n{C},{U},{big}\n"),
    )
    .unwrap();
    let (output, report, _dir, _sent) = run(&file);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let report = report.unwrap();
    assert_eq!(report[0][3].len(), big.len());
    assert_eq!(&report[0][5], "succeeded");
    assert_eq!(&report[1][5], "invalid", "a 2 MB SKU name is not a SKU");
}

#[test]
fn a_thousand_columns_work() {
    let dir = tempfile::tempdir().unwrap();
    let extra: Vec<String> = (0..997).map(|i| format!("extra{i}")).collect();
    let values: Vec<String> = (0..997).map(|i| i.to_string()).collect();
    let file = dir.path().join("wide.csv");
    std::fs::write(
        &file,
        format!(
            "customer_id,user_id,sku,{}\n{C},{U},SPB,{}\n",
            extra.join(","),
            values.join(",")
        ),
    )
    .unwrap();
    let (output, report, _dir, _sent) = run(&file);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report = report.unwrap();
    assert_eq!(report[0].len(), 1000 + 12);
    assert_eq!(&report[0][999], "996");
}

/// The corpus file's own records (header first), as a spreadsheet would show them.
fn input_records(name: &str) -> Vec<csv::StringRecord> {
    let bytes = std::fs::read(corpus(name)).unwrap();
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text)
        .records()
        .map(Result::unwrap)
        .collect()
}

/// The report's header row.
fn report_header(file: &Path, dir: &tempfile::TempDir) -> Vec<String> {
    let report = license_batch::report::default_path(&dir.path().join(file.file_name().unwrap()));
    let mut reader = csv::Reader::from_path(report).unwrap();
    reader.headers().unwrap().iter().map(String::from).collect()
}

#[test]
fn utf8_sheets_keep_every_cell_and_header_as_they_were() {
    for (name, exit, statuses) in [
        (
            "utf8_first_characters.csv",
            1,
            vec!["succeeded", "succeeded", "invalid", "invalid"],
        ),
        ("foreign_headers.csv", 0, vec!["succeeded"]),
        ("bom_multibyte_header.csv", 0, vec!["succeeded"]),
    ] {
        let file = corpus(name);
        let (output, report, dir, _sent) = run(&file);
        assert_eq!(
            output.status.code(),
            Some(exit),
            "{name}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).contains("panicked"), "{name}");
        let report = report.unwrap();
        let input = input_records(name);
        let columns = input[0].len();
        let header = report_header(&file, &dir);
        assert_eq!(
            header[..columns],
            input[0].iter().collect::<Vec<_>>(),
            "{name}: the header as it was (without the BOM)"
        );
        assert_eq!(status_column(&report, columns), statuses, "{name}");
        for (row, reported) in input[1..].iter().zip(&report) {
            for (column, cell) in row.iter().enumerate() {
                let expected = license_batch::report::neutralise(cell);
                assert_eq!(
                    &reported[column],
                    expected.as_ref(),
                    "{name} column {column}"
                );
            }
        }
    }
    // The invalid rows name the column and the problem, several-byte characters and all.
    let (_, report, _dir, _sent) = run(&corpus("utf8_first_characters.csv"));
    let report = report.unwrap();
    assert!(
        report[2][12].contains("column customer_id: \"Ü7f3c2a10"),
        "{}",
        &report[2][12]
    );
    assert!(
        report[3][12].contains("no subscription called \"Ünknown Prödüct\""),
        "{}",
        &report[3][12]
    );
    assert_eq!(&report[3][5], "'=É formula before É");
}
