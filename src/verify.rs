//! `license-batch verify <REPORT>`: reads each reported user's current licenses (both license
//! groups) and lists every row whose recorded outcome disagrees with the tenant as it is now.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use uuid::Uuid;

use crate::api::models;
use crate::engine::Dispatcher;
use crate::error::Error;
use crate::input::{self, Action, InputError};

/// A row the tenant contradicts, or could not be checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub line: u64,
    pub customer: Uuid,
    pub user: String,
    pub sku: Uuid,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Rows compared with the tenant.
    pub checked: usize,
    /// Rows whose outcome says nothing about the tenant now (invalid, pending, a failed
    /// remove): not compared.
    pub not_comparable: usize,
    pub findings: Vec<Finding>,
}

impl Verification {
    pub fn all_agree(&self) -> bool {
        self.findings.is_empty()
    }
}

struct Claim {
    line: u64,
    customer: Uuid,
    user: String,
    sku: Uuid,
    /// What the report implies the user holds now.
    held: bool,
    reported: String,
}

/// Compares `report` with the tenants behind `calls`.
pub async fn verify(report: &Path, calls: &Arc<Dispatcher>) -> Result<Verification, Error> {
    let file = input::read_whole(report, None)?;
    let column = |name: &str| {
        file.header
            .headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| InputError {
                path: report.display().to_string(),
                line: Some(1),
                reason: format!("no {name} column: this is not a license-batch report"),
                advice: "give the report a run wrote (<input>.report.csv)".into(),
            })
    };
    let (status_column, sku_column) = (column("result_status")?, column("result_sku_id")?);

    let mut result = Verification::default();
    let mut claims = Vec::new();
    for row in &file.rows {
        let request = row.request.as_ref().ok();
        let sku = Uuid::try_parse(row.cells[sku_column].trim()).ok();
        let claim = match (request, sku, row.cells[status_column].trim()) {
            (Some(r), Some(sku), "succeeded") => Some((r, sku, r.action == Action::Assign)),
            (Some(r), Some(sku), "failed") if r.action == Action::Assign => Some((r, sku, false)),
            _ => None,
        };
        match claim {
            Some((r, sku, held)) => claims.push(Claim {
                line: row.line,
                customer: r.customer_id,
                user: r.user.clone(),
                sku,
                held,
                reported: format!("{} {}", row.cells[status_column].trim(), r.action.as_str()),
            }),
            None => result.not_comparable += 1,
        }
    }

    // One read per (customer, user).
    let users: BTreeMap<(Uuid, String), String> = claims
        .iter()
        .map(|c| ((c.customer, c.user.to_lowercase()), c.user.clone()))
        .collect();
    let reads = users
        .into_iter()
        .map(|(key, user)| {
            let url = calls.client.user_licenses_url(key.0, &user);
            (key, url)
        })
        .collect();
    let held: BTreeMap<(Uuid, String), Result<HashSet<Uuid>, String>> = calls
        .read_all(reads)
        .await
        .into_iter()
        .map(|(key, result)| {
            let skus = result
                .map(|body| {
                    models::user_licenses(&body)
                        .into_iter()
                        .map(|p| p.id)
                        .collect()
                })
                .map_err(|failure| failure.message);
            (key, skus)
        })
        .collect();

    for claim in claims {
        let finding = |message: String| Finding {
            line: claim.line,
            customer: claim.customer,
            user: claim.user.clone(),
            sku: claim.sku,
            message,
        };
        match &held[&(claim.customer, claim.user.to_lowercase())] {
            Err(error) => result
                .findings
                .push(finding(format!("cannot check: {error}"))),
            Ok(skus) => {
                result.checked += 1;
                let has = skus.contains(&claim.sku);
                if has != claim.held {
                    let now = if has { "has it" } else { "does not have it" };
                    result.findings.push(finding(format!(
                        "report says {}, but the user {now} now",
                        claim.reported
                    )));
                }
            }
        }
    }
    Ok(result)
}
