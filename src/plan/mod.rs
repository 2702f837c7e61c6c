//! Planning: resolves each valid row's SKU, license group and excluded plans, one row at a
//! time ([`resolve_row`]). The rules between rows — identical rows are sent once, assign/remove
//! conflicts are invalid, one request per (customer, user, license group), never mixing license
//! groups (SPEC §4) — are applied by [`grouping`] one partition of users at a time; the
//! [`planner`] drives both as the rows are read and hands the plan to a sink (the journal's
//! `Draft`).

pub mod catalog;
pub mod grouping;
pub mod guard;
pub mod planner;

use uuid::Uuid;

use crate::input::{Action, InputHeader, InputRow, LicenseGroup, PlanRef, SkuRef, UsageLocation};

/// A SKU after resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedSku {
    pub id: Uuid,
    /// The SKU's license group, when the source knows it.
    pub license_group: Option<LicenseGroup>,
}

/// Turns what a sheet says into a SKU ID; an `Err` is the row's `invalid` message.
pub trait SkuResolver {
    fn resolve(&self, customer: Uuid, sku: &SkuRef) -> Result<ResolvedSku, String>;
    /// A service plan of `sku` named by service name or display name.
    fn resolve_plan(&self, customer: Uuid, sku: Uuid, plan: &str) -> Result<Uuid, String>;
}

/// One SKU to assign or remove for one user, for all input rows that ask for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub sku_id: Uuid,
    pub action: Action,
    pub excluded_plans: Vec<Uuid>,
    /// Index of the first input row that asks for it (the one it is reported "sent" for).
    pub first_row: usize,
    /// How many input rows ask for it.
    pub row_count: u64,
}

/// One LicenseUpdate request: a user's operations within one license group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub customer_id: Uuid,
    pub user: String,
    pub license_group: LicenseGroup,
    pub operations: Vec<Operation>,
}

/// One row after resolution, before it is compared with the others: what it asks for, or
/// why it is invalid on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum RowResolution {
    Invalid {
        message: String,
        sku_id: Option<Uuid>,
        license_group: Option<LicenseGroup>,
    },
    Resolved(ResolvedRow),
}

/// A valid row's request with its SKU, license group and excluded plans resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRow {
    pub customer: Uuid,
    pub user: String,
    /// Case-insensitive identity of the user: rows of one group share it.
    pub user_key: String,
    pub sku: Uuid,
    pub license_group: LicenseGroup,
    pub action: Action,
    /// Sorted, without repeats: identical rows compare equal.
    pub excluded: Vec<Uuid>,
    /// What to give the user if the API asks for a usage location; not part of what the row
    /// asks for (rows that differ only in it are the same operation).
    pub usage_location: Option<UsageLocation>,
}

/// Resolves one row. The rules between rows — identical rows are one operation, an assign and
/// a remove of the same SKU (or two different exclusions) conflict, one request per (customer,
/// user, license group) — are applied to all rows at once by [`grouping`], so that a plan of
/// any size needs no memory per row.
pub fn resolve_row(
    header: &InputHeader,
    row: &InputRow,
    resolver: &dyn SkuResolver,
) -> RowResolution {
    let invalid = |message: String, sku_id, license_group| RowResolution::Invalid {
        message,
        sku_id,
        license_group,
    };
    let column_name = |index: Option<usize>, default: &'static str| {
        index
            .map_or(default, |i| header.headers[i].as_str())
            .to_string()
    };
    let request = match &row.request {
        Ok(request) => request,
        Err(problem) => return invalid(problem.to_string(), None, None),
    };
    let sku = match resolver.resolve(request.customer_id, &request.sku) {
        Ok(sku) => sku,
        Err(message) => {
            let column = &header.headers[header.columns.sku];
            return invalid(
                format!("column {column}: {message}"),
                None,
                request.license_group,
            );
        }
    };
    let license_group = match (request.license_group, sku.license_group) {
        (Some(given), Some(known)) if given != known => {
            let column = column_name(header.columns.license_group, "license_group");
            return invalid(
                format!(
                    "column {column}: says {given} but SKU {} is in {known}; fix or clear the cell",
                    sku.id
                ),
                Some(sku.id),
                Some(known),
            );
        }
        (Some(given), _) => given,
        (None, Some(known)) => known,
        (None, None) => LicenseGroup::Group1,
    };
    let mut excluded = Vec::new();
    for plan in &request.excluded_plans {
        match plan {
            PlanRef::Id(id) => excluded.push(*id),
            PlanRef::Name(name) => match resolver.resolve_plan(request.customer_id, sku.id, name) {
                Ok(id) => excluded.push(id),
                Err(message) => {
                    let column = column_name(header.columns.excluded_plans, "excluded_plans");
                    return invalid(
                        format!("column {column}: {message}"),
                        Some(sku.id),
                        Some(license_group),
                    );
                }
            },
        }
    }
    excluded.sort();
    excluded.dedup();
    RowResolution::Resolved(ResolvedRow {
        customer: request.customer_id,
        user: request.user.clone(),
        user_key: request.user_key.clone(),
        sku: sku.id,
        license_group,
        action: request.action,
        excluded,
        usage_location: request.usage_location.clone(),
    })
}
