//! The steps `run` and `plan` share before the first write: the output paths checked, the file
//! scanned and its customers collected, the customers' subscriptions read, and the rows planned
//! into a draft of the journal with the preflight's decisions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::RunOptions;
use crate::config::PreflightMode;
use crate::engine::{Dispatcher, ReadFailure, ReadFailureKind};
use crate::error::Error;
use crate::input::{self, Record};
use crate::journal::Draft;
use crate::outcome::{OperationOutcome, OperationStatus};
use crate::paths;
use crate::plan;
use crate::report;
use crate::tenant::preflight::{self, SeatCheck};
use crate::tenant::{CustomerCatalog, TenantCatalog};

/// What the first step learnt: where the report goes, the file's scan, and its customers.
pub(super) struct Prepared {
    pub(super) report_path: PathBuf,
    pub(super) scan: input::Scan,
    pub(super) customers: BTreeSet<Uuid>,
}

/// The first step of `run` and `plan`: the paths checked, the file scanned, its customers
/// collected; nothing is sent before.
pub(super) fn prepare(opts: &RunOptions) -> Result<Prepared, Error> {
    let report_path = opts
        .report
        .clone()
        .unwrap_or_else(|| report::default_path(&opts.input));
    check_paths(opts, &report_path)?;
    // The customers of the valid rows, whose subscriptions are read before planning: collected
    // in the scan's pass, so that planning can resolve each row as it reads it.
    let mut customers = BTreeSet::new();
    let scan = input::scan_file(
        &opts.input,
        opts.delimiter,
        opts.sheet.as_deref(),
        |record| {
            if let Record::Row(row) = record
                && let Ok(request) = row.request
            {
                customers.insert(request.customer_id);
            }
        },
    )?;
    Ok(Prepared {
        report_path,
        scan,
        customers,
    })
}

/// The subscriptions (and seats) of the customers, read before planning.
pub(super) async fn read_tenants(
    calls: &Arc<Dispatcher>,
    customers: &BTreeSet<Uuid>,
) -> Result<TenantCatalog, Error> {
    TenantCatalog::fetch(calls, customers.iter().copied())
        .await
        .map_err(read_failure_error)
}

/// The journal must not be the input, nor the report, the summary JSON or the metrics file any
/// of them or one another (or a file SQLite keeps beside the journal): refused before anything
/// is read or sent.
fn check_paths(opts: &RunOptions, report_path: &Path) -> Result<(), Error> {
    let state = opts.settings.run.state_file.as_path();
    paths::check_outputs(
        Some(&opts.input),
        None,
        &[paths::Output {
            what: "the journal (--state)",
            path: state,
        }],
    )
    .and_then(|()| {
        let run = &opts.settings.run;
        let mut outputs = vec![paths::Output {
            what: "the report (--report)",
            path: report_path,
        }];
        if let Some(path) = &run.summary_file {
            outputs.push(paths::Output {
                what: "the summary JSON (--summary-json)",
                path,
            });
        }
        if let Some(path) = &run.metrics_file {
            outputs.push(paths::Output {
                what: "the metrics file (--metrics-file)",
                path,
            });
        }
        paths::check_outputs(Some(&opts.input), Some(state), &outputs)
    })
    .map_err(Error::Usage)
}

fn read_failure_error(failure: ReadFailure) -> Error {
    match failure.kind {
        ReadFailureKind::Stopped => Error::Interrupted,
        _ => Error::Auth(failure.message),
    }
}

/// Plans the file's rows into `draft` as they are read, then decides what is not sent: done
/// before on `done_target` (none with `--resend`), refused customers, and the strict
/// preflight's excess. Returns the seat check.
pub(super) fn plan_into<R: std::io::Read>(
    draft: &mut Draft<'_>,
    rows: input::Rows<R>,
    tenants: &TenantCatalog,
    customers: &BTreeSet<Uuid>,
    done_target: Option<&str>,
    mode: PreflightMode,
) -> Result<SeatCheck, Error> {
    let header = rows.header.clone();
    let clock = Instant::now();
    for record in rows {
        match record? {
            Record::Row(row) => {
                draft.add_row(&row, &header, &plan::resolve_row(&header, &row, tenants))?
            }
            Record::Blank(_) => draft.add_blank_line(),
        }
    }
    tracing::debug!(
        "planning: rows read, resolved and recorded in {:?}",
        clock.elapsed()
    );
    draft.group()?;
    if let Some(target) = done_target {
        draft.settle_done_before(target)?;
    }
    for &customer in customers {
        if let Some(CustomerCatalog::Refused(failure)) = tenants.customer(customer) {
            let outcome = OperationOutcome {
                http_status: failure.http_status,
                error_code: failure.error_code.clone(),
                ..OperationOutcome::unsent(
                    OperationStatus::Failed,
                    format!(
                        "not sent: reading the customer's subscriptions was refused: {}",
                        failure.message
                    ),
                )
            };
            draft.settle_customer(customer, &outcome)?;
        }
    }
    let seats = preflight::check(&draft.seat_needs()?, tenants, mode);
    for line in seats.shortages() {
        tracing::warn!(
            customer = %line.customer,
            "seat shortage: {} has {} free seats, this sheet needs {}",
            line.label,
            line.available.unwrap_or(0),
            line.needed
        );
    }
    for excess in &seats.excess {
        draft.settle_excess(excess.customer, excess.sku, excess.keep, &excess.outcome)?;
    }
    Ok(seats)
}
