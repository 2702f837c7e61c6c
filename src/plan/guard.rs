//! The brake of SPEC §13: a new run whose plan would send more license changes than
//! `run.max_changes`, or remove more licenses than `run.max_removals`, sends nothing. A sheet
//! exported wrong (`action = remove` on every row) must not strip a customer at 3 a.m.

use std::collections::BTreeMap;
use std::fmt;

use uuid::Uuid;

pub use crate::config::GuardLimits;

/// The license changes a plan would send for one customer: one per operation (a SKU assigned to,
/// or removed from, one user), however many rows ask for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LicenseChanges {
    pub assigns: u64,
    pub removals: u64,
}

impl LicenseChanges {
    pub fn total(&self) -> u64 {
        self.assigns + self.removals
    }

    pub fn add(&mut self, other: LicenseChanges) {
        self.assigns += other.assigns;
        self.removals += other.removals;
    }
}

/// What the guard says of a plan: the changes per customer and the limits they were held
/// against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardCheck {
    pub per_customer: BTreeMap<Uuid, LicenseChanges>,
    pub limits: GuardLimits,
}

impl GuardCheck {
    pub fn new(per_customer: BTreeMap<Uuid, LicenseChanges>, limits: GuardLimits) -> Self {
        GuardCheck {
            per_customer,
            limits,
        }
    }

    pub fn totals(&self) -> LicenseChanges {
        let mut totals = LicenseChanges::default();
        for changes in self.per_customer.values() {
            totals.add(*changes);
        }
        totals
    }

    /// The limits the plan goes over, as "N license changes (max_changes = M)"; empty: it may
    /// be sent.
    pub fn exceeded(&self) -> Vec<String> {
        let totals = self.totals();
        let mut over = Vec::new();
        if self.limits.max_removals > 0 && totals.removals > self.limits.max_removals {
            over.push(format!(
                "{} license removals (max_removals = {}; --max-removals)",
                totals.removals, self.limits.max_removals
            ));
        }
        if self.limits.max_changes > 0 && totals.total() > self.limits.max_changes {
            over.push(format!(
                "{} license changes (max_changes = {}; --max-changes)",
                totals.total(),
                self.limits.max_changes
            ));
        }
        over
    }

    /// The plan goes over a limit.
    pub fn stops(&self) -> bool {
        !self.exceeded().is_empty()
    }

    /// One line for `plan`: what a run of this plan would be told (`confirmed`: with `--yes`).
    pub fn verdict_line(&self, confirmed: bool) -> String {
        let totals = self.totals();
        let limit = |max: u64| match max {
            0 => "no limit".to_string(),
            max => format!("limit {max}"),
        };
        let figures = format!(
            "{} license changes ({}), {} removals ({})",
            totals.total(),
            limit(self.limits.max_changes),
            totals.removals,
            limit(self.limits.max_removals)
        );
        match (self.exceeded().is_empty(), confirmed) {
            (true, _) => format!("guard: {figures}: a run would send them"),
            (false, true) => format!("guard: {figures}: over the limit, sent because of --yes"),
            (false, false) => format!(
                "guard: {figures}: a run would stop before sending anything; --yes lets it go"
            ),
        }
    }
}

/// Why a run was stopped by the guard: the limits it goes over, the changes per customer, and
/// how to proceed. Printed as the run's error (exit 2).
impl fmt::Display for GuardCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this sheet would send {}; nothing was sent. Per customer:",
            self.exceeded().join(" and ")
        )?;
        for (customer, changes) in &self.per_customer {
            write!(
                f,
                "\n  {customer}: {} removals, {} assigns",
                changes.removals, changes.assigns
            )?;
        }
        write!(
            f,
            "\nCheck the sheet (an export with the wrong action column removes what it names). \
             If it is right, run again with --yes, or raise the limit (--max-removals / \
             --max-changes, run.max_removals / run.max_changes; 0 = no limit)."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(per_customer: &[(u128, u64, u64)], max_changes: u64, max_removals: u64) -> GuardCheck {
        GuardCheck::new(
            per_customer
                .iter()
                .map(|&(c, assigns, removals)| {
                    (Uuid::from_u128(c), LicenseChanges { assigns, removals })
                })
                .collect(),
            GuardLimits {
                max_changes,
                max_removals,
            },
        )
    }

    #[test]
    fn removals_over_the_limit_across_customers_stop_the_run_and_name_each_customer() {
        // 30 + 30 removals: each customer under 50, together over it.
        let guard = check(&[(1, 5, 30), (2, 0, 30)], 0, 50);
        assert!(guard.stops());
        let text = guard.to_string();
        assert!(
            text.contains("60 license removals (max_removals = 50"),
            "{text}"
        );
        assert!(
            text.contains(&format!("{}: 30 removals, 5 assigns", Uuid::from_u128(1))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{}: 30 removals, 0 assigns", Uuid::from_u128(2))),
            "{text}"
        );
        assert!(text.contains("--yes"), "{text}");
    }

    #[test]
    fn a_limit_is_a_maximum_and_zero_is_none() {
        assert!(!check(&[(1, 0, 50)], 0, 50).stops(), "50 of at most 50");
        assert!(check(&[(1, 0, 51)], 0, 50).stops());
        assert!(!check(&[(1, 0, 10_000)], 0, 0).stops(), "0 = no limit");
        assert!(!check(&[(1, 100, 0)], 100, 50).stops());
        let over = check(&[(1, 90, 11)], 100, 50);
        assert_eq!(over.exceeded().len(), 1, "{:?}", over.exceeded());
        assert!(over.exceeded()[0].contains("101 license changes (max_changes = 100"));
    }

    #[test]
    fn the_plan_line_says_what_a_run_would_do() {
        let passes = check(&[(1, 3, 2)], 0, 50).verdict_line(false);
        assert!(
            passes.contains("5 license changes (no limit), 2 removals (limit 50)"),
            "{passes}"
        );
        assert!(passes.contains("would send them"), "{passes}");
        let stops = check(&[(1, 0, 75)], 0, 50);
        assert!(stops.verdict_line(false).contains("would stop"));
        assert!(stops.verdict_line(true).contains("sent because of --yes"));
    }
}
