//! The seat preflight: per (customer, SKU), the seats this run newly needs against the
//! subscription's `availableUnits`. By default a shortage is only reported (the API then
//! answers 60012 for the excess); `--preflight strict` marks the excess rows `skipped`, in
//! input order, without calling the API.

use uuid::Uuid;

use super::TenantCatalog;
use crate::config::PreflightMode;
use crate::outcome::{OperationOutcome, OperationStatus};

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

/// Assigns still to send of one SKU to one customer's users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatNeed {
    pub customer: Uuid,
    pub sku: Uuid,
    pub needed: u64,
}

/// In strict mode: of the open assigns of (customer, SKU), the first `keep` in input order
/// are sent; the rest get `outcome`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeatExcess {
    pub customer: Uuid,
    pub sku: Uuid,
    pub keep: u64,
    pub outcome: OperationOutcome,
}

#[derive(Debug, Clone, Default)]
pub struct SeatCheck {
    pub lines: Vec<SeatLine>,
    pub excess: Vec<SeatExcess>,
}

impl SeatCheck {
    pub fn shortages(&self) -> impl Iterator<Item = &SeatLine> {
        self.lines.iter().filter(|l| l.shortage() > 0)
    }
}

/// Compares the needs (operations already settled are not counted) with the free seats.
pub fn check(needs: &[SeatNeed], tenants: &TenantCatalog, mode: PreflightMode) -> SeatCheck {
    let mut result = SeatCheck::default();
    for need in needs {
        let available = tenants
            .subscribed(need.customer, need.sku)
            .and_then(|s| s.available_units);
        let line = SeatLine {
            customer: need.customer,
            sku: need.sku,
            label: tenants.sku_label(need.customer, need.sku),
            available,
            needed: need.needed,
        };
        if mode == PreflightMode::Strict && line.shortage() > 0 {
            let free = available.unwrap_or(0).max(0);
            result.excess.push(SeatExcess {
                customer: need.customer,
                sku: need.sku,
                keep: free as u64,
                outcome: OperationOutcome::unsent(
                    OperationStatus::Skipped,
                    format!(
                        "skipped by the seat preflight (--preflight strict): {} has {} free seats of {} and this sheet needs {}; buy seats and run again",
                        need.customer, free, line.label, line.needed
                    ),
                ),
            });
        }
        result.lines.push(line);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::api::models::{ProductSku, SubscribedSku};
    use crate::tenant::CustomerCatalog;

    const C: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";
    const PBI: &str = "f8a1db68-be16-40ed-86d5-cb42ce701560";

    fn setup(available: i64) -> (Vec<SeatNeed>, TenantCatalog) {
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
        let needs = vec![SeatNeed {
            customer,
            sku: PBI.parse().unwrap(),
            needed: 5,
        }];
        (needs, tenants)
    }

    #[test]
    fn warn_mode_reports_the_shortage_and_skips_nothing() {
        let (needs, tenants) = setup(3);
        let check = check(&needs, &tenants, PreflightMode::Warn);
        assert_eq!(check.lines[0].needed, 5);
        assert_eq!(check.lines[0].shortage(), 2);
        assert_eq!(check.lines[0].label, "Power BI Pro");
        assert!(check.excess.is_empty());
    }

    #[test]
    fn strict_mode_keeps_what_fits_and_skips_the_rest() {
        let (needs, tenants) = setup(3);
        let check = check(&needs, &tenants, PreflightMode::Strict);
        let [excess] = &check.excess[..] else {
            panic!("{:?}", check.excess)
        };
        assert_eq!(excess.keep, 3);
        assert_eq!(excess.outcome.status, OperationStatus::Skipped);
        assert!(
            excess.outcome.message.contains("3 free seats"),
            "{}",
            excess.outcome.message
        );
        let (needs, tenants) = setup(5);
        assert!(check_is_clean(&needs, &tenants));
    }

    fn check_is_clean(needs: &[SeatNeed], tenants: &TenantCatalog) -> bool {
        let check = check(needs, tenants, PreflightMode::Strict);
        check.excess.is_empty() && check.shortages().next().is_none()
    }
}
