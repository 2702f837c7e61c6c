//! Planning: resolves each valid row's SKU and license group, sends identical rows once, marks
//! assign/remove conflicts invalid, and groups operations into one request per
//! (customer, user, license group) — never mixing license groups (SPEC §4).

pub mod catalog;

use std::collections::HashMap;

use uuid::Uuid;

use crate::input::{Action, InputFile, LicenseGroup, PlanRef, SkuRef};

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

/// One SKU to assign or remove for one user; all input rows that ask for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub sku_id: Uuid,
    pub action: Action,
    pub excluded_plans: Vec<Uuid>,
    /// Indices into [`InputFile::rows`], in input order.
    pub rows: Vec<usize>,
}

/// One LicenseUpdate request: a user's operations within one license group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub customer_id: Uuid,
    pub user: String,
    pub license_group: LicenseGroup,
    pub operations: Vec<Operation>,
}

/// What the plan does with an input row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowPlan {
    Invalid {
        message: String,
        sku_id: Option<Uuid>,
        license_group: Option<LicenseGroup>,
    },
    Send {
        group: usize,
        operation: usize,
    },
}

/// An input row as the plan (and the journal) knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRow {
    /// Line of the row in the input file.
    pub line: u64,
    pub customer_id: Option<Uuid>,
    pub plan: RowPlan,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Parallel to [`InputFile::rows`].
    pub rows: Vec<PlannedRow>,
    pub groups: Vec<Group>,
}

impl Plan {
    pub fn invalid_rows(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.plan, RowPlan::Invalid { .. }))
            .count()
    }
}

struct Resolved {
    row: usize,
    customer: Uuid,
    user: String,
    user_key: String,
    sku: Uuid,
    group: LicenseGroup,
    action: Action,
    excluded: Vec<Uuid>,
}

pub fn build(input: &InputFile, resolver: &dyn SkuResolver) -> Plan {
    let mut rows: Vec<Option<RowPlan>> = vec![None; input.rows.len()];
    let mut resolved = Vec::new();

    for (index, row) in input.rows.iter().enumerate() {
        let request = match &row.request {
            Ok(request) => request,
            Err(problem) => {
                rows[index] = Some(RowPlan::Invalid {
                    message: problem.to_string(),
                    sku_id: None,
                    license_group: None,
                });
                continue;
            }
        };
        let sku = match resolver.resolve(request.customer_id, &request.sku) {
            Ok(sku) => sku,
            Err(message) => {
                let column = &input.headers[input.columns.sku];
                rows[index] = Some(RowPlan::Invalid {
                    message: format!("column {column}: {message}"),
                    sku_id: None,
                    license_group: request.license_group,
                });
                continue;
            }
        };
        let group = match (request.license_group, sku.license_group) {
            (Some(given), Some(known)) if given != known => {
                let column = input
                    .columns
                    .license_group
                    .map(|i| input.headers[i].as_str())
                    .unwrap_or("license_group");
                rows[index] = Some(RowPlan::Invalid {
                    message: format!(
                        "column {column}: says {given} but SKU {} is in {known}; fix or clear the cell",
                        sku.id
                    ),
                    sku_id: Some(sku.id),
                    license_group: Some(known),
                });
                continue;
            }
            (Some(given), _) => given,
            (None, Some(known)) => known,
            (None, None) => LicenseGroup::Group1,
        };
        let mut excluded = Vec::new();
        let mut plan_problem = None;
        for plan in &request.excluded_plans {
            match plan {
                PlanRef::Id(id) => excluded.push(*id),
                PlanRef::Name(name) => {
                    match resolver.resolve_plan(request.customer_id, sku.id, name) {
                        Ok(id) => excluded.push(id),
                        Err(message) => plan_problem = Some(message),
                    }
                }
            }
        }
        if let Some(message) = plan_problem {
            let column = input
                .columns
                .excluded_plans
                .map(|i| input.headers[i].as_str())
                .unwrap_or("excluded_plans");
            rows[index] = Some(RowPlan::Invalid {
                message: format!("column {column}: {message}"),
                sku_id: Some(sku.id),
                license_group: Some(group),
            });
            continue;
        }
        excluded.sort();
        excluded.dedup();
        resolved.push(Resolved {
            row: index,
            customer: request.customer_id,
            user: request.user.clone(),
            user_key: request.user_key.clone(),
            sku: sku.id,
            group,
            action: request.action,
            excluded,
        });
    }

    // Rows asking about the same (customer, user, SKU) must agree: identical ones are one
    // operation; an assign and a remove (or two different exclusions) are a conflict.
    let mut by_operation: HashMap<(Uuid, &str, Uuid), Vec<&Resolved>> = HashMap::new();
    for r in &resolved {
        by_operation
            .entry((r.customer, r.user_key.as_str(), r.sku))
            .or_default()
            .push(r);
    }
    let mut conflicting = vec![false; input.rows.len()];
    for same in by_operation.values() {
        let first = same[0];
        let conflict = if same.iter().any(|r| r.action != first.action) {
            Some("ask to both assign and remove this SKU for this user")
        } else if same.iter().any(|r| r.excluded != first.excluded) {
            Some("assign this SKU with different excluded_plans")
        } else {
            None
        };
        if let Some(what) = conflict {
            let lines: Vec<String> = same
                .iter()
                .map(|r| input.rows[r.row].line.to_string())
                .collect();
            for r in same {
                conflicting[r.row] = true;
                rows[r.row] = Some(RowPlan::Invalid {
                    message: format!(
                        "conflict: lines {} {what}; keep one and run again",
                        lines.join(" and ")
                    ),
                    sku_id: Some(r.sku),
                    license_group: Some(r.group),
                });
            }
        }
    }

    let mut groups: Vec<Group> = Vec::new();
    let mut group_index: HashMap<(Uuid, &str, LicenseGroup), usize> = HashMap::new();
    for r in resolved.iter().filter(|r| !conflicting[r.row]) {
        let g = *group_index
            .entry((r.customer, r.user_key.as_str(), r.group))
            .or_insert_with(|| {
                groups.push(Group {
                    customer_id: r.customer,
                    user: r.user.clone(),
                    license_group: r.group,
                    operations: Vec::new(),
                });
                groups.len() - 1
            });
        let operations = &mut groups[g].operations;
        let op = match operations.iter().position(|o| o.sku_id == r.sku) {
            Some(op) => op,
            None => {
                operations.push(Operation {
                    sku_id: r.sku,
                    action: r.action,
                    excluded_plans: r.excluded.clone(),
                    rows: Vec::new(),
                });
                operations.len() - 1
            }
        };
        operations[op].rows.push(r.row);
        rows[r.row] = Some(RowPlan::Send {
            group: g,
            operation: op,
        });
    }

    Plan {
        rows: rows
            .into_iter()
            .zip(&input.rows)
            .map(|(plan, row)| PlannedRow {
                line: row.line,
                customer_id: row.request.as_ref().ok().map(|r| r.customer_id),
                plan: plan.expect("every row is planned exactly once"),
            })
            .collect(),
        groups,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::catalog::BuiltinCatalog;
    use super::*;

    const C: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";
    const C2: &str = "11111111-2222-4333-8444-555555555555";

    fn plan(body: &str) -> (InputFile, Plan) {
        let text = format!("customer_id,user_id,sku,license_group,action,excluded_plans\n{body}");
        let input = crate::input::parse(Path::new("t.csv"), text.as_bytes(), None).unwrap();
        let plan = build(&input, &BuiltinCatalog);
        (input, plan)
    }

    #[test]
    fn groups_by_customer_user_and_license_group() {
        let (_, plan) = plan(&format!(
            "{C},ada@x.com,SPB,,,\n{C},ADA@x.com,Power BI Pro,,,\n{C},ada@x.com,MEE_STUDENT,,,\n\
             {C2},ada@x.com,SPB,,,\n{C},bob@x.com,ENTERPRISEPACK,,remove,\n"
        ));
        assert_eq!(plan.groups.len(), 4);
        let first = &plan.groups[0];
        assert_eq!(first.user, "ada@x.com");
        assert_eq!(first.license_group, LicenseGroup::Group1);
        assert_eq!(first.operations.len(), 2);
        assert_eq!(plan.groups[1].license_group, LicenseGroup::Group2);
        assert_eq!(plan.groups[3].operations[0].action, Action::Remove);
        assert_eq!(
            plan.rows[1].plan,
            RowPlan::Send {
                group: 0,
                operation: 1
            }
        );
    }

    #[test]
    fn identical_rows_share_one_operation() {
        let (_, plan) = plan(&format!(
            "{C},ada@x.com,SPB,,,\n{C},ada@x.com,spb,,assign,\n"
        ));
        assert_eq!(plan.groups.len(), 1);
        assert_eq!(plan.groups[0].operations[0].rows, [0, 1]);
    }

    #[test]
    fn assign_and_remove_of_one_sku_are_both_invalid() {
        let (_, plan) = plan(&format!(
            "{C},ada@x.com,SPB,,,\n{C},ada@x.com,Microsoft 365 Business Premium,,remove,\n{C},ada@x.com,POWER_BI_PRO,,,\n"
        ));
        for row in &plan.rows[..2] {
            let RowPlan::Invalid { message, .. } = &row.plan else {
                panic!("{row:?}")
            };
            assert!(
                message.contains("lines 2 and 3 ask to both assign and remove"),
                "{message}"
            );
        }
        assert_eq!(plan.groups.len(), 1);
        assert_eq!(plan.groups[0].operations.len(), 1);
    }

    #[test]
    fn contradicting_license_group_and_unknown_names_are_invalid() {
        let (_, plan) = plan(&format!(
            "{C},ada@x.com,MEE_STUDENT,group1,,\n{C},ada@x.com,E9,,,\n"
        ));
        let RowPlan::Invalid {
            message,
            license_group,
            ..
        } = &plan.rows[0].plan
        else {
            panic!()
        };
        assert!(message.contains("group2"), "{message}");
        assert_eq!(*license_group, Some(LicenseGroup::Group2));
        let RowPlan::Invalid { message, .. } = &plan.rows[1].plan else {
            panic!()
        };
        assert!(message.starts_with("column sku: unknown SKU"), "{message}");
        assert!(plan.groups.is_empty());
    }
}
