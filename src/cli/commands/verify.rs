//! `license-batch verify`: a report compared with what the tenants hold now (see [`crate::verify`]).

use super::super::*;

pub(in crate::cli) async fn run_verify(args: &VerifyArgs) -> Result<u8, Error> {
    let connection = connect_for(&args.connect).await?;
    let result = verify(&args.report, &connection.calls).await?;
    for finding in &result.findings {
        println!(
            "line {}: {} {} SKU {}: {}",
            finding.line, finding.customer, finding.user, finding.sku, finding.message
        );
    }
    println!(
        "verify: {} rows checked against the tenants, {} disagree, {} not comparable (invalid, pending, failed removes)",
        result.checked,
        result.findings.len(),
        result.not_comparable
    );
    Ok(if result.all_agree() {
        exit_code::ALL_SUCCEEDED
    } else {
        exit_code::SOME_NOT_SUCCEEDED
    })
}
