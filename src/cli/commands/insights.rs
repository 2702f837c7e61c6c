//! `license-batch insights`: licenses deployed vs sold per product of some customers, as a table or a CSV file.

use super::super::*;

pub(in crate::cli) async fn show_insights(args: &InsightsArgs) -> Result<u8, Error> {
    let connection = connect_for(&args.connect).await?;
    let all = deployment_insights(&connection.calls, args.customers.iter().copied()).await;
    let failed = all.iter().filter(|c| c.products.is_err()).count();
    match &args.output {
        Some(path) => {
            let mut writer = csv::Writer::from_path(path).map_err(|e| Error::Write {
                path: path.clone(),
                source: e.into(),
            })?;
            let write_error = |e: csv::Error| Error::Write {
                path: path.clone(),
                source: e.into(),
            };
            writer
                .write_record([
                    "customer_id",
                    "customer_name",
                    "product_name",
                    "licenses_deployed",
                    "licenses_sold",
                    "deployment_percent",
                    "processed_at",
                    "error",
                ])
                .map_err(write_error)?;
            for customer in &all {
                let id = customer.customer.to_string();
                match &customer.products {
                    Ok(products) => {
                        for p in products {
                            writer
                                .write_record([
                                    id.as_str(),
                                    &report::neutralise(&p.customer_name),
                                    &report::neutralise(&p.product_name),
                                    &p.licenses_deployed.to_string(),
                                    &p.licenses_sold.to_string(),
                                    &p.deployment_percent.to_string(),
                                    &p.processed_at,
                                    "",
                                ])
                                .map_err(write_error)?;
                        }
                    }
                    Err(error) => writer
                        .write_record([
                            id.as_str(),
                            "",
                            "",
                            "",
                            "",
                            "",
                            "",
                            &report::neutralise(error),
                        ])
                        .map_err(write_error)?,
                }
            }
            writer.flush().map_err(|e| Error::Write {
                path: path.clone(),
                source: e,
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
