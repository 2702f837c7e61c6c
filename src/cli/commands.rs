//! The commands other than `run`/`plan`: `check`, `insights`, `verify`, `status`, `report`,
//! `sandbox`.

use super::*;

pub(super) async fn show_insights(args: &InsightsArgs) -> Result<u8, Error> {
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

/// `check`: the customers of the sheet and of `--customer`, then the report on stdout.
pub(super) async fn run_check(args: &CheckArgs) -> Result<u8, Error> {
    let mut customers: std::collections::BTreeSet<uuid::Uuid> =
        args.customers.iter().copied().collect();
    if let Some(input) = &args.input {
        crate::input::scan_file(input, args.delimiter, |record| {
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

pub(super) async fn run_verify(args: &VerifyArgs) -> Result<u8, Error> {
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

pub(super) fn show_status(args: &StatusArgs) -> Result<u8, Error> {
    let journal = Journal::open_to_read(&args.journal.state)?;
    let runs = journal.recent_runs(args.limit)?;
    if runs.is_empty() {
        println!("no runs in {}", args.journal.state.display());
        return Ok(exit_code::ALL_SUCCEEDED);
    }
    println!(
        "{:>5}  {:<20}  {:<11}  {:>6} {}  input",
        "run",
        "started",
        "outcome",
        "rows",
        RowStatus::columns(|status| status.as_str().to_string())
    );
    for run in runs {
        let n = |status: RowStatus| {
            run.counts
                .iter()
                .find(|(s, _)| s == status.as_str())
                .map_or(0, |(_, n)| *n)
        };
        let total: u64 = run.counts.iter().map(|(_, n)| n).sum();
        println!(
            "{:>5}  {:<20}  {:<11}  {:>6} {}  {}",
            run.id,
            run.started_at,
            run.outcome,
            total,
            RowStatus::columns(|status| n(status).to_string()),
            run.input_path
        );
        if let Some(message) = &run.message {
            println!("       {message}");
        }
    }
    Ok(exit_code::ALL_SUCCEEDED)
}

pub(super) fn rewrite_report(args: &ReportArgs) -> Result<u8, Error> {
    let journal = Journal::open_to_read(&args.journal.state)?;
    let run_id = match args.run {
        Some(id) => id,
        None => journal
            .latest_run()?
            .ok_or_else(|| Error::NoRuns(args.journal.state.clone()))?,
    };
    let record = journal.run_record(run_id)?;
    let path = args.output.clone().unwrap_or(record.report_path);
    crate::paths::check_outputs(
        Some(&record.input_path),
        Some(&args.journal.state),
        &[crate::paths::Output {
            what: "the report (--output)",
            path: &path,
        }],
    )
    .map_err(Error::Usage)?;
    let tally = report::write_from_journal(&journal, run_id, &path).map_err(Error::Report)?;
    println!(
        "report of run {run_id}: {} rows written to {}",
        tally.rows(),
        path.display()
    );
    Ok(exit_code::ALL_SUCCEEDED)
}

pub(super) async fn serve_sandbox(args: SandboxArgs) -> Result<u8, Error> {
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::load(path).map_err(Error::Sandbox)?,
        None => Scenario::default(),
    };
    args.faults.apply(&mut scenario);
    let server = Sandbox::start(scenario, args.listen)
        .await
        .map_err(Error::Sandbox)?;
    let url = &server.url;
    // A closed stdout (e.g. `| head -1`) must not take the server down with it.
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "sandbox listening on {url}\n\
         point license-batch at it with (sandbox credentials are not secret):\n  \
         export LICENSE_BATCH_API_BASE_URL={url} LICENSE_BATCH_AUTH_AUTHORITY={url}\n  \
         export LICENSE_BATCH_TENANT_ID={} LICENSE_BATCH_CLIENT_ID={}\n  \
         export LICENSE_BATCH_CLIENT_SECRET={} LICENSE_BATCH_REFRESH_TOKEN={}\n\
         ground truth: GET {url}sandbox/record\n\
         stop with Ctrl-C",
        sandbox::TENANT_ID,
        sandbox::CLIENT_ID,
        sandbox::CLIENT_SECRET,
        sandbox::REFRESH_TOKEN
    );
    wait_for_signal().await;
    if let Some(path) = &args.dump {
        let json = serde_json::to_string_pretty(&server.dump()).expect("JSON serialises");
        std::fs::write(path, json).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
        eprintln!("ground truth written to {}", path.display());
    }
    Ok(exit_code::ALL_SUCCEEDED)
}
