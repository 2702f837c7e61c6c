//! `license-batch check`: the customers of the sheet and of `--customer`, checked (see [`crate::check`]), the report on stdout.

use super::super::*;

/// `check`: the customers of the sheet and of `--customer`, then the report on stdout.
pub(in crate::cli) async fn run_check(args: &CheckArgs) -> Result<u8, Error> {
    let mut customers: std::collections::BTreeSet<uuid::Uuid> =
        args.customers.iter().copied().collect();
    if let Some(input) = &args.input {
        crate::input::scan_file(input, args.delimiter, args.sheet.as_deref(), |record| {
            if let crate::input::Record::Row(row) = record
                && let Ok(request) = row.request
            {
                customers.insert(request.customer_id);
            }
        })?;
    }
    let connection = connect_for(&args.connect).await?;
    let report = crate::check::check(&connection.calls, customers).await?;
    print!("{report}");
    Ok(report.exit_code())
}
