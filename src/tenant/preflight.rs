//! The seat preflight: per (customer, SKU), the seats this run newly needs against the
//! subscription's `availableUnits`. By default a shortage is only reported (the API then
//! answers 60012 for the excess); `--preflight strict` marks the excess rows `skipped`, in
//! input order, without calling the API.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use super::TenantCatalog;
use crate::engine::{OperationOutcome, OperationStatus};
use crate::input::Action;
use crate::plan::Plan;

/// What to do about a shortage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PreflightMode {
    /// Report it and send anyway; the API decides.
    #[default]
    Warn,
    /// Send only what fits; the excess rows are `skipped`.
    Strict,
}

/// One line of the seat table.
#[derive(Debug, Clone, PartialEq)]
pub struct SeatLine {
    pub customer: Uuid,
    pub sku: Uuid,
    pub label: String,
    /// `None`: the customer's subscriptions could not be read.
    pub available: Option<i64>,
    pub needed: u64,
}

impl SeatLine {
    pub fn shortage(&self) -> u64 {
        self.available
            .map(|a| self.needed.saturating_sub(a.max(0) as u64))
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, Default)]
pub struct SeatCheck {
    pub lines: Vec<SeatLine>,
    /// In strict mode: the operations (group, op) not sent, with their outcome.
    pub skipped: HashMap<(usize, usize), OperationOutcome>,
}

impl SeatCheck {
    pub fn shortages(&self) -> impl Iterator<Item = &SeatLine> {
        self.lines.iter().filter(|l| l.shortage() > 0)
    }
}

/// An assign operation: (its first input row, group, operation).
type AssignAt = (usize, usize, usize);

/// Counts the assigns still to send (`settled` ones excluded) per (customer, SKU).
pub fn check(
    plan: &Plan,
    tenants: &TenantCatalog,
    settled: &HashMap<(usize, usize), OperationOutcome>,
    mode: PreflightMode,
) -> SeatCheck {
    // Assign operations per (customer, SKU), in input order of their first row.
    let mut needs: BTreeMap<(Uuid, Uuid), Vec<AssignAt>> = BTreeMap::new();
    for (g, group) in plan.groups.iter().enumerate() {
        for (o, op) in group.operations.iter().enumerate() {
            if op.action == Action::Assign && !settled.contains_key(&(g, o)) {
                let first_row = op.rows.first().copied().unwrap_or(usize::MAX);
                needs
                    .entry((group.customer_id, op.sku_id))
                    .or_default()
                    .push((first_row, g, o));
            }
        }
    }
    let mut result = SeatCheck::default();
    for ((customer, sku), mut ops) in needs {
        let available = tenants
            .subscribed(customer, sku)
            .and_then(|s| s.available_units);
        let line = SeatLine {
            customer,
            sku,
            label: tenants.sku_label(customer, sku),
            available,
            needed: ops.len() as u64,
        };
        if mode == PreflightMode::Strict && line.shortage() > 0 {
            ops.sort();
            let fits = available.unwrap_or(0).max(0) as usize;
            for &(_, g, o) in &ops[fits..] {
                let outcome = OperationOutcome::unsent(
                    OperationStatus::Skipped,
                    format!(
                        "skipped by the seat preflight (--preflight strict): {} has {} free seats of {} and this sheet needs {}; buy seats and run again",
                        customer,
                        available.unwrap_or(0).max(0),
                        line.label,
                        line.needed
                    ),
                );
                result.skipped.insert((g, o), outcome);
            }
        }
        result.lines.push(line);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::api::models::{ProductSku, SubscribedSku};
    use crate::tenant::CustomerCatalog;

    const C: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";
    const PBI: &str = "f8a1db68-be16-40ed-86d5-cb42ce701560";

    fn setup(available: i64) -> (Plan, TenantCatalog) {
        let mut text = String::from("customer_id,user_id,sku\n");
        for i in 0..5 {
            text.push_str(&format!("{C},u{i}@x.com,{PBI}\n"));
        }
        let input = crate::input::parse(Path::new("t.csv"), text.as_bytes(), None).unwrap();
        let customer: Uuid = C.parse().unwrap();
        let tenants = TenantCatalog::from_known(HashMap::from([(
            customer,
            CustomerCatalog::Known(vec![SubscribedSku {
                product: ProductSku {
                    id: PBI.parse().unwrap(),
                    name: "Power BI Pro".into(),
                    part_number: "POWER_BI_PRO".into(),
                    license_group: None,
                },
                available_units: Some(available),
                total_units: Some(10),
                consumed_units: Some(10 - available),
                service_plans: vec![],
            }]),
        )]));
        let plan = crate::plan::build(&input, &tenants);
        (plan, tenants)
    }

    #[test]
    fn warn_mode_reports_the_shortage_and_skips_nothing() {
        let (plan, tenants) = setup(3);
        let check = check(&plan, &tenants, &HashMap::new(), PreflightMode::Warn);
        assert_eq!(check.lines[0].needed, 5);
        assert_eq!(check.lines[0].shortage(), 2);
        assert!(check.skipped.is_empty());
    }

    #[test]
    fn strict_mode_skips_the_excess_in_input_order() {
        let (plan, tenants) = setup(3);
        let check = check(&plan, &tenants, &HashMap::new(), PreflightMode::Strict);
        let mut skipped: Vec<usize> = check.skipped.keys().map(|(g, _)| *g).collect();
        skipped.sort();
        assert_eq!(skipped, [3, 4], "the last rows of the sheet wait for seats");
        assert!(
            check
                .skipped
                .values()
                .all(|o| o.status == OperationStatus::Skipped)
        );
    }

    #[test]
    fn already_settled_operations_need_no_seat() {
        let (plan, tenants) = setup(3);
        let settled: HashMap<_, _> = [(0, 0), (1, 0)]
            .into_iter()
            .map(|k| (k, OperationOutcome::pending("done")))
            .collect();
        let check = check(&plan, &tenants, &settled, PreflightMode::Strict);
        assert_eq!(check.lines[0].needed, 3);
        assert!(check.skipped.is_empty());
    }
}
