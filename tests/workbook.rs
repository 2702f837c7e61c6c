//! Spreadsheets in and out (SPEC §3, §9): workbooks written here with `rust_xlsxwriter` (and the
//! shipped sample) are read as a person sees their cells, their rows numbered as the sheet
//! numbers them; the report workbook is read back with `calamine` for its values and from its
//! own XML parts for what calamine does not show (the frozen header, the autofilter, the
//! fills); it is a valid input again; and workbooks that cannot be read get exit 2 with what to
//! do, never a panic.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;

use calamine::{Data, Reader, Xlsx};
use common::*;
use license_batch::outcome::RowStatus;
use rust_xlsxwriter::{ExcelDateTime, Format, Formula, Workbook};

/// A cell as a test writes it.
#[derive(Clone, Debug)]
enum Cell {
    Text(String),
    Number(f64),
    Date(u16, u8, u8),
    Bool(bool),
    /// A formula and the value Excel cached for it.
    Formula(&'static str, &'static str),
    /// A cell with a format and no value (what Excel leaves where someone once typed).
    Blank,
}

fn text(value: &str) -> Cell {
    Cell::Text(value.to_string())
}

/// A sheet's rows: 0-based row index, cells from column A.
type Rows = Vec<(u32, Vec<Cell>)>;

/// Writes a workbook of `sheets`, each a name and its rows.
fn write_workbook(path: &Path, sheets: &[(&str, Rows)]) {
    let mut book = Workbook::new();
    let date = Format::new().set_num_format("dd/mm/yyyy");
    let blank = Format::new().set_background_color(0xFFFF00);
    for (name, rows) in sheets {
        let sheet = book.add_worksheet();
        sheet.set_name(*name).unwrap();
        for (row, cells) in rows {
            for (column, cell) in cells.iter().enumerate() {
                let column = column as u16;
                match cell {
                    Cell::Text(value) => sheet.write_string(*row, column, value).map(drop),
                    Cell::Number(value) => sheet.write_number(*row, column, *value).map(drop),
                    Cell::Date(y, m, d) => {
                        let day = ExcelDateTime::from_ymd(*y, *m, *d).unwrap();
                        sheet
                            .write_datetime_with_format(*row, column, &day, &date)
                            .map(drop)
                    }
                    Cell::Bool(value) => sheet.write_boolean(*row, column, *value).map(drop),
                    Cell::Formula(formula, result) => sheet
                        .write_formula(*row, column, Formula::new(*formula).set_result(*result))
                        .map(drop),
                    Cell::Blank => sheet.write_blank(*row, column, &blank).map(drop),
                }
                .unwrap();
            }
        }
    }
    book.save(path).unwrap();
}

/// Every row of a sheet of the workbook at `path`, as calamine reads it (from A1).
fn sheet_values(path: &Path, sheet: &str) -> Vec<Vec<Data>> {
    let mut book: Xlsx<_> = calamine::open_workbook(path).unwrap();
    let range = book.worksheet_range(sheet).unwrap();
    assert_eq!(range.start(), Some((0, 0)), "{sheet} starts at A1");
    range.rows().map(<[Data]>::to_vec).collect()
}

fn sheet_names(path: &Path) -> Vec<String> {
    let book: Xlsx<_> = calamine::open_workbook(path).unwrap();
    book.sheet_names()
}

/// One XML part of the workbook at `path` (a workbook is a zip of them).
fn part(path: &Path, name: &str) -> String {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut xml = String::new();
    zip.by_name(name).unwrap().read_to_string(&mut xml).unwrap();
    xml
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    Some(tag[start..start + tag[start..].find('"')?].to_string())
}

/// The fill colour (ARGB) of cell `cell` of sheet 1, from its style's fill in styles.xml.
fn fill_of(report: &Path, cell: &str) -> Option<String> {
    let sheet = part(report, "xl/worksheets/sheet1.xml");
    let styles = part(report, "xl/styles.xml");
    let start = sheet.find(&format!("<c r=\"{cell}\""))?;
    let tag = &sheet[start..start + sheet[start..].find('>')?];
    let style: usize = attribute(tag, "s")?.parse().ok()?;
    let xfs = &styles[styles.find("<cellXfs")?..styles.find("</cellXfs>")?];
    let xf = xfs.split("<xf ").nth(style + 1)?;
    let fill: usize = attribute(&format!(" {xf}"), "fillId")?.parse().ok()?;
    let fills = &styles[styles.find("<fills")?..styles.find("</fills>")?];
    attribute(fills.split("<fill>").nth(fill + 1)?, "rgb")
}

fn string(value: &Data) -> String {
    match value {
        Data::String(s) => s.clone(),
        Data::Float(f) => license_batch::input::number_text(*f),
        Data::Int(i) => i.to_string(),
        Data::Empty => String::new(),
        other => format!("{other:?}"),
    }
}

/// The report sheet's rows as maps from header to cell.
fn report_rows(report: &Path) -> Vec<std::collections::HashMap<String, Data>> {
    let rows = sheet_values(report, "Report");
    let header: Vec<String> = rows[0].iter().map(string).collect();
    rows[1..]
        .iter()
        .map(|row| header.iter().cloned().zip(row.iter().cloned()).collect())
        .collect()
}

const HEADER: [&str; 9] = [
    "customer_id",
    "user_id",
    "sku",
    "ticket",
    "start_date",
    "approved",
    "cost",
    "note",
    "Büro",
];

fn header_row() -> (u32, Vec<Cell>) {
    (0, HEADER.iter().map(|h| text(h)).collect())
}

/// The night's sheet: three good rows around an empty row, an error cell (D6), a row with a bad
/// customer, and formatted empty cells down to the sheet's last row (1,048,576).
fn night_sheet() -> Rows {
    use Cell::{Formula, Number};
    // Row index (0-based; 3 = row 4 is left empty), customer, user, SKU, ticket, cost, note.
    let night: [(u32, &str, &str, &str, Cell, Cell, &str); 5] = [
        (
            1,
            CONTOSO,
            "émilie.durand@contoso.example",
            "SPB",
            Number(1000.0),
            Formula("=2*3", "6"),
            "=cmd|' /C calc'!A0",
        ),
        (
            2,
            FABRIKAM,
            "łukasz.nowak@fabrikam.example",
            "SPB",
            Number(1001.0),
            Formula("=0.1+0.2", "0.3"),
            "+49 30 1234",
        ),
        (
            4,
            CONTOSO,
            "zoë.müller@contoso.example",
            "Power BI Pro",
            Number(1002.0),
            Number(2.5),
            "@SUM(A1)",
        ),
        (
            5,
            CONTOSO,
            "søren.kierkegaard@contoso.example",
            "SPB",
            Formula("=VLOOKUP(9,A1:A2,2,0)", "#N/A"),
            Number(1.0),
            "",
        ),
        (
            6,
            "not-a-customer",
            "ada@contoso.example",
            "SPB",
            Number(1004.0),
            Number(1.0),
            "",
        ),
    ];
    let mut rows = vec![header_row()];
    rows.extend(
        night
            .into_iter()
            .map(|(index, customer, user, sku, ticket, cost, note)| {
                let cells = vec![
                    text(customer),
                    text(user),
                    text(sku),
                    ticket,
                    Cell::Date(2026, 12, 1),
                    Cell::Bool(true),
                    cost,
                    text(note),
                    text("日本語 Zürich"),
                ];
                (index, cells)
            }),
    );
    for blank_row in [99, 5_000, 1_048_575] {
        rows.push((blank_row, vec![Cell::Blank; HEADER.len()]));
    }
    rows
}

#[tokio::test]
async fn a_workbook_is_read_as_a_person_sees_it_and_reported_as_a_workbook() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("night.xlsx");
    write_workbook(&input, &[("Onboarding", night_sheet())]);
    let sandbox = start("").await;
    let summary = run(options(&sandbox, &input)).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 3);
    assert_eq!(summary.count(RowStatus::Invalid), 2);
    let rows: u64 = RowStatus::ALL.iter().map(|s| summary.count(*s)).sum();
    assert_eq!(rows, 5, "the empty rows are no rows");
    assert_eq!(sandbox.requests().len(), 3);

    let report = dir.path().join("night.report.xlsx");
    assert_eq!(report_path(&input), report);
    assert!(!dir.path().join("night.report.csv").exists());
    assert_eq!(sheet_names(&report), ["Report", "Summary"]);
    let values = sheet_values(&report, "Report");
    let header: Vec<String> = values[0].iter().map(string).collect();
    let expected: Vec<&str> = HEADER
        .iter()
        .copied()
        .chain(license_batch::input::RESULT_COLUMNS)
        .collect();
    assert_eq!(header, expected);
    let rows = report_rows(&report);
    let lines: Vec<String> = rows.iter().map(|r| string(&r["result_row"])).collect();
    assert_eq!(
        lines,
        ["2", "3", "5", "6", "7"],
        "the sheet's row numbers, in order"
    );
    assert!(
        rows.iter()
            .all(|r| matches!(r["result_row"], Data::Float(_))),
        "numbers stay numbers"
    );
    let statuses: Vec<String> = rows.iter().map(|r| string(&r["result_status"])).collect();
    assert_eq!(
        statuses,
        ["succeeded", "succeeded", "succeeded", "invalid", "invalid"]
    );

    // Cells as a person saw them, and as values: text stays text, numbers numbers.
    let first = &rows[0];
    assert_eq!(first["ticket"], Data::Float(1000.0));
    assert_eq!(first["start_date"], Data::String("2026-12-01".into()));
    assert_eq!(first["approved"], Data::String("TRUE".into()));
    assert_eq!(
        first["cost"],
        Data::Float(6.0),
        "a formula is its cached value"
    );
    assert_eq!(first["note"], Data::String("=cmd|' /C calc'!A0".into()));
    assert_eq!(first["Büro"], Data::String("日本語 Zürich".into()));
    assert_eq!(rows[1]["cost"], Data::Float(0.3));
    assert_eq!(rows[1]["note"], Data::String("+49 30 1234".into()));
    assert_eq!(rows[2]["note"], Data::String("@SUM(A1)".into()));
    let error_row = string(&rows[3]["result_message"]);
    assert!(error_row.contains("column ticket: D6: #N/A"), "{error_row}");
    assert!(string(&rows[4]["result_message"]).contains("customer_id"));

    // What calamine does not show: no formula anywhere, the header frozen, the autofilter
    // over the whole table, each status cell filled by its status.
    let sheet = part(&report, "xl/worksheets/sheet1.xml");
    assert!(
        !sheet.contains("<f>") && !sheet.contains("<f "),
        "no formula"
    );
    assert!(
        sheet.contains(
            r#"<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>"#
        ),
        "{sheet:.600}"
    );
    let last = license_batch::input::cell_name(header.len() - 1, 6);
    assert!(
        sheet.contains(&format!(r#"<autoFilter ref="A1:{last}"/>"#)),
        "{last}"
    );
    let status_column = header.iter().position(|h| h == "result_status").unwrap();
    let fills: Vec<Option<String>> = (2..=6)
        .map(|line| {
            fill_of(
                &report,
                &license_batch::input::cell_name(status_column, line),
            )
        })
        .collect();
    let (green, amber) = (Some("FFC6EFCE".to_string()), Some("FFFFEB9C".to_string()));
    assert_eq!(
        fills,
        [green.clone(), green.clone(), green, amber.clone(), amber]
    );

    // The summary sheet: counts by status and by customer.
    let summary_rows: Vec<Vec<String>> = sheet_values(&report, "Summary")
        .iter()
        .map(|row| row.iter().map(string).collect())
        .collect();
    let find = |first: &str| {
        summary_rows
            .iter()
            .find(|row| row[0] == first)
            .cloned()
            .unwrap_or_else(|| panic!("{first} in {summary_rows:?}"))
    };
    assert_eq!(find("succeeded")[1], "3");
    assert_eq!(find("invalid")[1], "2");
    assert_eq!(find("total")[1], "5");
    assert_eq!(&find(CONTOSO)[1..4], ["2", "0", "0"]);
    assert_eq!(&find(FABRIKAM)[1..3], ["1", "0"]);
    // Rows invalid on reading are counted apart from any customer, as for CSV.
    assert_eq!(&find("(no valid customer)")[1..4], ["0", "0", "2"]);
}

/// The report workbook as the next input: the failed row fixed in a copy (as a reviewer saves
/// it from Excel), the `result_*` columns left in. Only the fixed row is sent; the rows done
/// the night before are recognised as done.
#[tokio::test]
async fn the_report_workbook_is_an_input_again_and_its_done_rows_stay_done() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = start(&format!(
        "[[customers]]\nid = \"{CONTOSO}\"\n\
         users = [\"émilie@contoso.example\", \"łukasz@contoso.example\", \"zoë@contoso.example\"]\n\
         skus = [{{ sku = \"SPB\", total = 40, consumed = 0 }}]\n"
    ))
    .await;
    let input = dir.path().join("night.xlsx");
    let users = [
        "émilie@contoso.example",
        "łukasz@contoso.example",
        "zoe@contoso.example",
    ];
    let mut rows = vec![(0, vec![text("customer_id"), text("upn"), text("product")])];
    rows.extend(
        users
            .iter()
            .enumerate()
            .map(|(i, user)| (i as u32 + 1, vec![text(CONTOSO), text(user), text("SPB")])),
    );
    write_workbook(&input, &[("Sheet1", rows)]);
    let first = run(options(&sandbox, &input)).await;
    assert_eq!(
        (
            first.count(RowStatus::Succeeded),
            first.count(RowStatus::Failed)
        ),
        (2, 1)
    );
    assert_eq!(sandbox.requests().len(), 3);

    // The reviewer fixes the user of the failed row and saves the report as a new workbook.
    let report = dir.path().join("night.report.xlsx");
    let fixed: Rows = sheet_values(&report, "Report")
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let cells = row
                .iter()
                .map(|value| match value {
                    Data::Float(f) => Cell::Number(*f),
                    Data::String(s) if s == "zoe@contoso.example" => text("zoë@contoso.example"),
                    other => text(&string(other)),
                })
                .collect();
            (i as u32, cells)
        })
        .collect();
    let again = dir.path().join("fixed.xlsx");
    write_workbook(&again, &[("Report", fixed)]);
    let second = run(options(&sandbox, &again)).await;
    assert_eq!(second.count(RowStatus::Succeeded), 3);
    assert_eq!(sandbox.requests().len(), 4, "only the fixed row is sent");
    let statuses: Vec<String> = report_rows(&dir.path().join("fixed.report.xlsx"))
        .iter()
        .map(|r| string(&r["result_status"]))
        .collect();
    assert_eq!(statuses, ["succeeded"; 3]);
    let spb = "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46".parse().unwrap();
    assert!(
        sandbox
            .licenses(CONTOSO.parse().unwrap(), "zoë@contoso.example")
            .contains(&spb)
    );

    // `verify` reads the report workbook as it reads a CSV report.
    let connection = connect_to(&sandbox).await;
    let fixed_report = dir.path().join("fixed.report.xlsx");
    let clean = license_batch::verify::verify(&fixed_report, &connection.calls)
        .await
        .unwrap();
    assert!(clean.all_agree(), "{:?}", clean.findings);
    assert_eq!(clean.checked, 3);
    sandbox.revoke_license(CONTOSO.parse().unwrap(), "zoë@contoso.example", spb);
    let after = license_batch::verify::verify(&fixed_report, &connection.calls)
        .await
        .unwrap();
    assert_eq!(after.findings.len(), 1);
    assert_eq!(
        (after.findings[0].line, after.findings[0].user.as_str()),
        (4, "zoë@contoso.example")
    );
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// An interrupted run of a workbook's second sheet writes its report workbook with the
/// unfinished rows `pending`, and the same command resumes that run (the same workbook and
/// sheet are the same input) without sending anything twice; the workbook's first sheet is
/// another input, a new run.
#[tokio::test]
async fn an_interrupted_workbook_run_resumes_from_its_report_workbook_state() {
    let sandbox = start("[faults]\nlatency_ms = 5\n").await;
    let dir = tempfile::tempdir().unwrap();
    let names = ["émilie", "łukasz", "zoë", "søren", "日本"];
    let mut rows = vec![(0, vec![text("customer_id"), text("user_id"), text("sku")])];
    rows.extend((0..40u32).map(|i| {
        let user = format!("{}.{i}@contoso.example", names[i as usize % names.len()]);
        (i + 1, vec![text(CONTOSO), text(&user), text("SPB")])
    }));
    let first_sheet = vec![rows[0].clone(), rows[1].clone()];
    let input = dir.path().join("two.xlsx");
    write_workbook(&input, &[("Intro", first_sheet), ("Night", rows)]);
    let opts_for = || {
        let mut opts = options(&sandbox, &input);
        opts.sheet = Some("Night".into());
        opts.settings.limits.concurrency = license_batch::config::Concurrency::fixed(2);
        opts
    };
    let opts = opts_for();
    let stop = opts.stop.clone();
    let running = tokio::spawn(license_batch::run(opts));
    sandbox.wait_for(10, 0).await;
    stop.cancel();
    let interrupted = running.await.unwrap().unwrap();
    assert_eq!(
        interrupted.completion,
        license_batch::Completion::Interrupted
    );
    let done_first = interrupted.count(RowStatus::Succeeded);
    assert!((10..40).contains(&done_first), "{done_first}");
    let report = dir.path().join("two.report.xlsx");
    let statuses: Vec<String> = report_rows(&report)
        .iter()
        .map(|r| string(&r["result_status"]))
        .collect();
    assert_eq!(
        statuses.len(),
        40,
        "the report workbook written on interrupt"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "pending").count() as u64,
        40 - done_first
    );

    let resumed = run(opts_for()).await;
    assert_eq!(resumed.run_id, interrupted.run_id);
    assert_eq!(resumed.count(RowStatus::Succeeded), 40);
    let users: std::collections::HashSet<_> =
        sandbox.requests().iter().map(|r| r.user.clone()).collect();
    assert_eq!(sandbox.requests().len(), 40, "nothing sent twice");
    assert_eq!(users.len(), 40);

    // The first sheet of the same workbook is another input: a run of its own.
    let other = run(options(&sandbox, &input)).await;
    assert_ne!(other.run_id, resumed.run_id);
}

/// A run that must stop before sending: exit 2, the reason and what to do, no panic, no report.
fn assert_refused(dir: &Path, input: &str, extra: &[&str], reason: &str, advice: &str) {
    let mut args = vec!["run", input, "--sandbox", "-q"];
    args.extend_from_slice(extra);
    let out = license_batch(dir, &args);
    let message = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{input}: {message}");
    assert!(message.contains(reason), "{input}: {message}");
    assert!(message.contains(advice), "{input}: {message}");
    assert!(!message.contains("panicked"), "{input}: {message}");
    let report = license_batch::report::default_path(&dir.join(input));
    assert!(!report.exists(), "{input}: nothing sent, no report");
}

#[test]
fn the_sheet_is_chosen_by_name_and_an_unknown_name_lists_the_sheets() {
    let dir = tempfile::tempdir().unwrap();
    let row = |user: &str| vec![text(CONTOSO), text(user), text("SPB")];
    write_workbook(
        &dir.path().join("book.xlsx"),
        &[
            ("Notes", vec![(0, vec![text("read the second sheet")])]),
            (
                "Ünits 日本",
                vec![
                    (0, vec![text("customer"), text("user"), text("sku")]),
                    (1, row("émilie@contoso.example")),
                    (2, row("łukasz@contoso.example")),
                ],
            ),
        ],
    );
    assert_refused(
        dir.path(),
        "book.xlsx",
        &["--sheet", "Sheet9"],
        "there is no sheet \"Sheet9\" in the workbook; its sheets are: \"Notes\", \"Ünits 日本\"",
        "give one of them with --sheet",
    );
    // The first sheet has no header: the run says which columns are missing.
    assert_refused(
        dir.path(),
        "book.xlsx",
        &[],
        "required columns missing",
        "the header row needs",
    );
    let plan = license_batch(
        dir.path(),
        &["plan", "book.xlsx", "--sandbox", "--sheet", "Ünits 日本"],
    );
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    let shown = String::from_utf8_lossy(&plan.stdout);
    assert!(
        shown.starts_with(
            "sheet \"Ünits 日本\" of book.xlsx\nplan: 2 rows, 2 license updates to send"
        ),
        "{shown}"
    );
    let out = license_batch(
        dir.path(),
        &[
            "run",
            "book.xlsx",
            "--sandbox",
            "-q",
            "--sheet",
            "Ünits 日本",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let statuses: Vec<String> = report_rows(&dir.path().join("book.report.xlsx"))
        .iter()
        .map(|r| string(&r["result_status"]))
        .collect();
    assert_eq!(statuses, ["succeeded"; 2]);

    // `check` reads the customers of the sheet it is given.
    let check = license_batch(
        dir.path(),
        &["check", "book.xlsx", "--sandbox", "--sheet", "Ünits 日本"],
    );
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains(CONTOSO));
    let check = license_batch(
        dir.path(),
        &["check", "book.xlsx", "--sandbox", "--sheet", "Nope"],
    );
    assert_eq!(check.status.code(), Some(2), "{}", stderr(&check));
    std::fs::write(dir.path().join("plain.csv"), "customer_id,user_id,sku\n").unwrap();
    assert_refused(
        dir.path(),
        "plain.csv",
        &["--sheet", "Onboarding"],
        "--sheet \"Onboarding\" is for a spreadsheet",
        "leave --sheet out",
    );
}

/// The hostile corpus for workbooks: each file gets exit 2 with what is wrong and what to do.
#[test]
fn workbooks_that_cannot_be_read_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    // A whole workbook cut in half: a zip without its directory.
    write_workbook(
        &at("whole.xlsx"),
        &[("S", vec![header_row(), (1, vec![text(CONTOSO)])])],
    );
    let bytes = std::fs::read(at("whole.xlsx")).unwrap();
    std::fs::write(at("cut.xlsx"), &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(
        dir.path(),
        "cut.xlsx",
        &[],
        "cannot read the workbook",
        "save it again as .xlsx",
    );
    // CSV saved under a workbook's name.
    std::fs::write(
        at("really.xlsx"),
        format!("customer_id,user_id,sku\n{CONTOSO},émilie@contoso.example,SPB\n"),
    )
    .unwrap();
    assert_refused(
        dir.path(),
        "really.xlsx",
        &[],
        "not a .xlsx workbook: it holds plain text, probably CSV",
        "rename it to .csv",
    );
    // The other way round: a workbook saved under a CSV name (which read as CSV gave "the
    // file contains NUL bytes").
    std::fs::copy(at("whole.xlsx"), at("export.csv")).unwrap();
    assert_refused(
        dir.path(),
        "export.csv",
        &[],
        "the file is a zip archive, not CSV text",
        "rename it to .xlsx",
    );
    // A real password-protected workbook (the sample, encrypted as Excel does: an OLE compound
    // file holding the encrypted package, not a zip).
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/protected.xlsx"),
        at("protected.xlsx"),
    )
    .unwrap();
    assert_refused(
        dir.path(),
        "protected.xlsx",
        &[],
        "password-protected",
        "remove the password",
    );
    // A compound file's magic and nothing else, as an .xls: not a workbook.
    let mut compound = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
    compound.resize(4096, 0);
    std::fs::write(at("broken.xls"), &compound).unwrap();
    assert_refused(
        dir.path(),
        "broken.xls",
        &[],
        "cannot read the workbook",
        "save it again",
    );
    std::fs::write(at("empty.ods"), b"").unwrap();
    assert_refused(
        dir.path(),
        "empty.ods",
        &[],
        "the file is empty",
        "header row",
    );
    std::fs::write(at("garbage.ods"), b"PK\x03\x04 not really a zip").unwrap();
    assert_refused(
        dir.path(),
        "garbage.ods",
        &[],
        "cannot read the workbook",
        "save it again",
    );
    // An error cell in the header names the cell.
    write_workbook(
        &at("header.xlsx"),
        &[(
            "S",
            vec![(
                0,
                vec![
                    text("customer_id"),
                    text("user_id"),
                    Cell::Formula("=1/0", "#DIV/0!"),
                ],
            )],
        )],
    );
    assert_refused(
        dir.path(),
        "header.xlsx",
        &[],
        "the header cell C1 holds the error #DIV/0!",
        "type the column's name",
    );
}

/// A sheet whose every row down to Excel's last (1,048,576) holds a formatted empty cell, as a
/// sheet formatted by whole columns can: the rows with values are read, the rest are no rows,
/// and memory does not hold a grid of them.
#[test]
fn a_sheet_formatted_down_to_its_last_row_is_its_rows_with_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tall.xlsx");
    let mut book = Workbook::new();
    let sheet = book.add_worksheet_with_constant_memory().unwrap();
    let yellow = Format::new().set_background_color(0xFFFF00);
    for (column, name) in ["customer_id", "user_id", "sku"].iter().enumerate() {
        sheet.write_string(0, column as u16, *name).unwrap();
    }
    sheet.write_string(1, 0, CONTOSO).unwrap();
    sheet.write_string(1, 1, "émilie@contoso.example").unwrap();
    sheet.write_string(1, 2, "SPB").unwrap();
    for row in 2..1_048_576 {
        sheet.write_blank(row, 3, &yellow).unwrap();
    }
    book.save(&path).unwrap();
    let file = license_batch::input::read_whole(&path, None).unwrap();
    let lines: Vec<u64> = file.rows.iter().map(|row| row.line).collect();
    assert_eq!(lines, [2]);
    assert!(file.rows[0].request.is_ok());
}

/// An OpenDocument spreadsheet (LibreOffice's `.ods`) of `rows` (`None`: an empty row), its
/// parts written by hand: the writer crate writes only `.xlsx`. `encrypted`: its manifest says
/// the content is encrypted, as LibreOffice's "Save with password" does.
fn write_ods(path: &Path, rows: &[Option<Vec<OdsCell>>], encrypted: bool) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("mimetype", stored).unwrap();
    zip.write_all(b"application/vnd.oasis.opendocument.spreadsheet")
        .unwrap();
    let encryption = if encrypted {
        "<manifest:encryption-data manifest:checksum-type=\"SHA1/1K\"/>"
    } else {
        ""
    };
    zip.start_file("META-INF/manifest.xml", stored).unwrap();
    write!(
        zip,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">
<manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>
<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml">{encryption}</manifest:file-entry>
</manifest:manifest>"#
    )
    .unwrap();
    let mut table = String::new();
    for row in rows {
        match row {
            None => table.push_str(r#"<table:table-row><table:table-cell/></table:table-row>"#),
            Some(cells) => {
                table.push_str("<table:table-row>");
                for cell in cells {
                    table.push_str(&match cell {
                        OdsCell::Text(t) => format!(
                            r#"<table:table-cell office:value-type="string"><text:p>{t}</text:p></table:table-cell>"#
                        ),
                        OdsCell::Number(n) => format!(
                            r#"<table:table-cell office:value-type="float" office:value="{n}"><text:p>{n}</text:p></table:table-cell>"#
                        ),
                        OdsCell::Date(d) => format!(
                            r#"<table:table-cell office:value-type="date" office:date-value="{d}"><text:p>01.12.2026</text:p></table:table-cell>"#
                        ),
                        OdsCell::Empty => "<table:table-cell/>".to_string(),
                    });
                }
                table.push_str("</table:table-row>");
            }
        }
    }
    zip.start_file("content.xml", stored).unwrap();
    write!(
        zip,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2">
<office:body><office:spreadsheet><table:table table:name="Tabelle1">{table}</table:table></office:spreadsheet></office:body></office:document-content>"#
    )
    .unwrap();
    zip.finish().unwrap();
}

enum OdsCell {
    Text(&'static str),
    Number(&'static str),
    Date(&'static str),
    Empty,
}

/// An `.ods` from LibreOffice (read a sheet at a time, not streamed): the same cells as text,
/// the rows numbered as the sheet numbers them, an empty row skipped; one saved with a
/// password stops the run with what to do.
#[tokio::test]
async fn an_ods_sheet_is_read_like_an_xlsx_one() {
    use OdsCell::*;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("onboarding.ods");
    let rows = [
        Some(vec![
            Text("customer_id"),
            Text("user_id"),
            Text("sku"),
            Text("ticket"),
            Text("start_date"),
        ]),
        Some(vec![
            Text(CONTOSO),
            Text("émilie@contoso.example"),
            Text("SPB"),
            Number("1000"),
            Date("2026-12-01"),
        ]),
        None,
        Some(vec![
            Text(CONTOSO),
            Text("łukasz@contoso.example"),
            Text("Power BI Pro"),
            Number("2.5"),
            Empty,
        ]),
        Some(vec![
            Text("not-a-customer"),
            Text("日本語@contoso.example"),
            Text("SPB"),
        ]),
    ];
    write_ods(&input, &rows, false);
    let file = license_batch::input::read_whole(&input, None).unwrap();
    let lines: Vec<u64> = file.rows.iter().map(|row| row.line).collect();
    assert_eq!(lines, [2, 4, 5]);
    assert_eq!(file.rows[0].cells[3..], ["1000", "2026-12-01"]);
    assert_eq!(file.rows[1].cells[3..], ["2.5", ""]);
    assert!(file.rows[2].request.is_err());

    let sandbox = start("").await;
    let summary = run(options(&sandbox, &input)).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 2);
    assert_eq!(summary.count(RowStatus::Invalid), 1);
    let report = dir.path().join("onboarding.report.xlsx");
    let lines: Vec<String> = report_rows(&report)
        .iter()
        .map(|r| string(&r["result_row"]))
        .collect();
    assert_eq!(lines, ["2", "4", "5"]);

    write_ods(&dir.path().join("locked.ods"), &rows, true);
    assert_refused(
        dir.path(),
        "locked.ods",
        &[],
        "password-protected",
        "remove the password",
    );
}

/// A CSV input asked for a report workbook (`--report x.xlsx`): a cell longer than a workbook
/// cell can hold is cut with a note saying where the whole of it is, and the CSV report written
/// from the same journal has it whole.
#[tokio::test]
async fn a_cell_too_long_for_a_workbook_is_cut_with_a_note_and_kept_whole_in_csv() {
    let dir = tempfile::tempdir().unwrap();
    let long = "Łukasz ".repeat(10_000);
    let input = write_csv(
        dir.path(),
        "night.csv",
        "customer_id,user_id,sku,note",
        &[format!("{CONTOSO},łukasz@contoso.example,SPB,{long}")],
    );
    let sandbox = start("").await;
    let mut opts = options(&sandbox, &input);
    let book = dir.path().join("night.xlsx");
    opts.report = Some(book.clone());
    let summary = run(opts).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 1);
    let rows = report_rows(&book);
    let note = string(&rows[0]["note"]);
    assert!(note.starts_with("Łukasz Łukasz"));
    assert!(
        note.contains("the cell holds 70000 characters"),
        "{}",
        &note[note.len() - 200..]
    );
    assert_eq!(string(&rows[0]["result_status"]), "succeeded");

    let out = license_batch(
        dir.path(),
        &["report", "--state", "state.sqlite", "--output", "whole.csv"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read_report(&dir.path().join("whole.csv"))[0]["note"], long);
}

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples")
}

/// The shipped workbook holds the CSV sample's rows (its dates and numbers as cells), and a
/// night on it ends as the CSV's does, row by row.
#[test]
fn the_sample_workbook_is_the_csv_sample_and_runs_like_it() {
    let csv = license_batch::input::read_whole(&samples().join("onboarding.csv"), None).unwrap();
    let book = license_batch::input::read_whole(&samples().join("onboarding.xlsx"), None).unwrap();
    let width = csv.header.headers.len();
    assert_eq!(book.header.headers[..width], csv.header.headers[..]);
    assert_eq!(book.header.headers[width], "employee_number");
    assert_eq!(book.rows.len(), csv.rows.len());
    for (from_csv, from_book) in csv.rows.iter().zip(&book.rows) {
        assert_eq!(from_book.line, from_csv.line);
        assert_eq!(from_book.cells[..width], from_csv.cells[..]);
        assert_eq!(
            from_book.cells[width],
            (10_400 + from_book.line - 1).to_string()
        );
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("samples")).unwrap();
    for name in ["onboarding.csv", "onboarding.xlsx", "sandbox-scenario.toml"] {
        std::fs::copy(samples().join(name), dir.path().join("samples").join(name)).unwrap();
    }
    let night = |input: &str, state: &str| {
        let out = license_batch(
            dir.path(),
            &[
                "run",
                input,
                "--sandbox",
                "--sandbox-scenario",
                "samples/sandbox-scenario.toml",
                "--state",
                state,
                "--requests-per-minute",
                "6000",
                // One at a time: which two of four users get Fabrikam's last two seats
                // depends on the order they are sent in.
                "--concurrency",
                "1",
                "-q",
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    };
    night("samples/onboarding.csv", "csv.sqlite");
    night("samples/onboarding.xlsx", "book.sqlite");
    let from_csv: Vec<String> = report_statuses(&dir.path().join("samples/onboarding.report.csv"));
    let from_book: Vec<String> = report_rows(&dir.path().join("samples/onboarding.report.xlsx"))
        .iter()
        .map(|r| string(&r["result_status"]))
        .collect();
    assert_eq!(from_book, from_csv);
    assert!(from_csv.iter().any(|s| s == "failed") && from_csv.iter().any(|s| s == "invalid"));

    // `report` writes either format from the journal.
    let out = license_batch(
        dir.path(),
        &["report", "--state", "csv.sqlite", "--output", "again.xlsx"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let again: Vec<String> = report_rows(&dir.path().join("again.xlsx"))
        .iter()
        .map(|r| string(&r["result_status"]))
        .collect();
    assert_eq!(again, from_csv);
    let out = license_batch(
        dir.path(),
        &["report", "--state", "book.sqlite", "--output", "again.csv"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(report_statuses(&dir.path().join("again.csv")), from_csv);
}

#[test]
fn insights_are_written_as_a_workbook() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        samples().join("sandbox-scenario.toml"),
        dir.path().join("scenario.toml"),
    )
    .unwrap();
    let out = license_batch(
        dir.path(),
        &[
            "insights",
            FABRIKAM,
            "--output",
            "insights.xlsx",
            "--sandbox",
            "--sandbox-scenario",
            "scenario.toml",
            "-q",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = sheet_values(&dir.path().join("insights.xlsx"), "Insights");
    assert_eq!(string(&rows[0][0]), "customer_id");
    let e3 = rows
        .iter()
        .find(|row| string(&row[2]) == "MICROSOFT 365 E3")
        .expect("the E3 row");
    assert_eq!(
        e3[1..5],
        [
            Data::String("Fabrikam Inc".into()),
            Data::String("MICROSOFT 365 E3".into()),
            Data::Float(30.0),
            Data::Float(50.0)
        ]
    );
}
