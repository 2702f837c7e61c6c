//! Writes `samples/onboarding.xlsx` from `samples/onboarding.csv`: the same rows, with
//! `start_date` as a date cell and an `employee_number` column of number cells, as an HR
//! workbook would hold them. `cargo run --example sample_workbook` (from the repository root);
//! `cargo run --release --example sample_workbook -- IN.csv OUT.xlsx` converts any sheet so
//! (`scripts/bench-scale.sh` with `WORKBOOK=1`).

use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let from = args
        .next()
        .unwrap_or_else(|| "samples/onboarding.csv".into());
    let to = args
        .next()
        .unwrap_or_else(|| "samples/onboarding.xlsx".into());
    let mut reader = csv::Reader::from_path(&from)?;
    let headers: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
    let date_column = headers.iter().position(|h| h == "start_date");
    let mut book = Workbook::new();
    // A fixed creation time, so that writing the sample again gives the same file.
    book.set_properties(
        &rust_xlsxwriter::DocProperties::new()
            .set_creation_datetime(&ExcelDateTime::from_ymd(2026, 12, 1)?),
    );
    // As Excel saves: every text once in the shared-string table (what a reader must hold).
    let sheet = book.add_worksheet();
    sheet.set_name("Onboarding")?;
    let bold = Format::new().set_bold();
    let date = Format::new().set_num_format("yyyy-mm-dd");
    for (column, name) in headers.iter().enumerate() {
        sheet.write_string_with_format(0, column as u16, name, &bold)?;
    }
    let number_column = headers.len() as u16;
    sheet.write_string_with_format(0, number_column, "employee_number", &bold)?;
    for (i, record) in reader.records().enumerate() {
        let row = i as u32 + 1;
        for (column, cell) in record?.iter().enumerate() {
            if cell.is_empty() {
                continue;
            }
            if Some(column) == date_column {
                let day = ExcelDateTime::parse_from_str(cell)?;
                sheet.write_datetime_with_format(row, column as u16, &day, &date)?;
            } else {
                sheet.write_string(row, column as u16, cell)?;
            }
        }
        sheet.write_number(row, number_column, 10_400.0 + f64::from(row))?;
    }
    book.save(&to)?;
    Ok(())
}
