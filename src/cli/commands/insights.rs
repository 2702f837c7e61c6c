//! `license-batch insights`: licenses deployed vs sold per product of some customers, as a table,
//! a CSV file or a workbook (`--output *.xlsx`).

use super::super::*;

const INSIGHTS_COLUMNS: [&str; 8] = [
    "customer_id",
    "customer_name",
    "product_name",
    "licenses_deployed",
    "licenses_sold",
    "deployment_percent",
    "processed_at",
    "error",
];

pub(in crate::cli) async fn show_insights(args: &InsightsArgs) -> Result<u8, Error> {
    let connection = connect_for(&args.connect).await?;
    let all = deployment_insights(&connection.calls, args.customers.iter().copied()).await;
    let failed = all.iter().filter(|c| c.products.is_err()).count();
    match &args.output {
        Some(path) => {
            let mut rows = Vec::new();
            for customer in &all {
                let id = customer.customer.to_string();
                match &customer.products {
                    Ok(products) => rows.extend(products.iter().map(|p| {
                        vec![
                            id.clone(),
                            p.customer_name.clone(),
                            p.product_name.clone(),
                            p.licenses_deployed.to_string(),
                            p.licenses_sold.to_string(),
                            p.deployment_percent.to_string(),
                            p.processed_at.clone(),
                            String::new(),
                        ]
                    })),
                    Err(error) => {
                        let mut row = vec![String::new(); 8];
                        row[0] = id;
                        row[7] = error.clone();
                        rows.push(row);
                    }
                }
            }
            report::write_table(path, "Insights", &INSIGHTS_COLUMNS, &rows).map_err(|e| {
                Error::Write {
                    path: path.clone(),
                    source: e,
                }
            })?;
            println!(
                "insights of {} customers written to {}",
                all.len(),
                path.display()
            );
        }
        None => print!("{}", InsightsTable(&all)),
    }
    Ok(if failed == 0 {
        exit_code::ALL_SUCCEEDED
    } else {
        exit_code::SOME_NOT_SUCCEEDED
    })
}
