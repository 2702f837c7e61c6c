//! Test support: a run's whole plan read back into memory, for the tests that compare planning
//! with a model (`tests/property_input.rs`, the planning unit tests). A run never loads its
//! plan whole: the engine reads it in pages, the report row by row.

use uuid::Uuid;

use super::{Journal, JournalError};
use crate::input::LicenseGroup;
use crate::plan::Group;

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

/// A whole plan in memory (a run keeps its plan in the journal and reads it in pages).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Parallel to the input's data rows.
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

impl Journal {
    /// A run's whole plan in memory (small plans and tests; a run reads it in pages).
    pub fn load_plan(&self, run_id: i64) -> Result<Plan, JournalError> {
        let e = |source| self.sqlite(source);
        let mut groups = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT idx FROM groups WHERE run_id = ?1 ORDER BY idx")
            .map_err(e)?;
        let indices: Vec<i64> = stmt
            .query_map([run_id], |r| r.get(0))
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        // A group's index is its first row's; in memory, groups are numbered 0.. in that order.
        let mut position = std::collections::HashMap::new();
        for g in indices {
            position.insert(g, groups.len());
            groups.push(self.group(run_id, g)?.request);
        }
        let mut plan_rows = Vec::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT line, customer_id, group_idx, op_idx, invalid_message, sku_id, license_group
                 FROM rows WHERE run_id = ?1 ORDER BY idx",
            )
            .map_err(e)?;
        let mut rows = stmt.query([run_id]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let customer: Option<String> = r.get(1).map_err(e)?;
            let plan = match (
                r.get::<_, Option<i64>>(2).map_err(e)?,
                r.get::<_, Option<i64>>(3).map_err(e)?,
            ) {
                (Some(g), Some(o)) => RowPlan::Send {
                    group: *position.get(&g).ok_or_else(|| self.corrupt("row plan"))?,
                    operation: o as usize,
                },
                _ => {
                    let sku: Option<String> = r.get(5).map_err(e)?;
                    let license_group: Option<String> = r.get(6).map_err(e)?;
                    RowPlan::Invalid {
                        message: r
                            .get::<_, Option<String>>(4)
                            .map_err(e)?
                            .unwrap_or_default(),
                        sku_id: sku.and_then(|s| s.parse().ok()),
                        license_group: license_group.and_then(|g| LicenseGroup::parse(&g)),
                    }
                }
            };
            plan_rows.push(PlannedRow {
                line: r.get::<_, i64>(0).map_err(e)? as u64,
                customer_id: customer.and_then(|c| c.parse().ok()),
                plan,
            });
        }
        Ok(Plan {
            rows: plan_rows,
            groups,
        })
    }
}
