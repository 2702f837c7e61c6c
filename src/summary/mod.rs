//! The end-of-run summary (SPEC §11): counts by status, top error codes, a per-customer table,
//! elapsed time, achieved request rate, retries and 429s, and where the report is; the same
//! as JSON (`json`) and as Prometheus metrics (`metrics`) for unattended runs (SPEC §13).

mod json;
mod metrics;

#[cfg(test)]
pub(crate) use json::tests::a_night;
pub use json::{RunEnd, meaning_of, rfc3339, summary_json};
pub use metrics::metrics_text;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

use crate::api::models::DeploymentInsight;
use crate::engine::StatsSnapshot;
use crate::outcome::{Completion, RowStatus, Tally};

use crate::tenant::preflight::SeatLine;

/// Deployment insights of one customer, or why they could not be read.
#[derive(Debug, Clone)]
pub struct CustomerInsights {
    pub customer: Uuid,
    pub products: Result<Vec<DeploymentInsight>, String>,
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub completion: Completion,
    pub counts: BTreeMap<RowStatus, u64>,
    /// Error codes (or HTTP statuses) of failed rows, most frequent first.
    pub top_errors: Vec<(String, u64)>,
    /// Per customer ID (or "(no valid customer)"), counts by status.
    pub per_customer: BTreeMap<String, BTreeMap<RowStatus, u64>>,
    pub elapsed: Duration,
    pub stats: StatsSnapshot,
    pub report_path: Option<PathBuf>,
    pub blank_lines: usize,
    /// The journal's ID of this run.
    pub run_id: Option<i64>,
    /// (Customer, SKU) pairs the sheet needs more seats of than are free.
    pub seat_shortages: Vec<SeatLine>,
    /// Licenses deployed vs sold of the customers the run touched.
    pub insights: Vec<CustomerInsights>,
    /// How to make a run like this faster (see `EngineSettings::concurrency_advice`).
    pub advice: Option<String>,
}

impl RunSummary {
    pub fn new(tally: Tally, completion: Completion) -> Self {
        let (counts, per_customer, errors) = tally.into_parts();
        let mut top_errors: Vec<(String, u64)> = errors.into_iter().collect();
        top_errors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        RunSummary {
            completion,
            counts,
            top_errors,
            per_customer,
            elapsed: Duration::ZERO,
            stats: StatsSnapshot::default(),
            report_path: None,
            blank_lines: 0,
            run_id: None,
            seat_shortages: Vec::new(),
            insights: Vec::new(),
            advice: None,
        }
    }

    pub fn count(&self, status: RowStatus) -> u64 {
        self.counts.get(&status).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Exit 0 requires every row `succeeded`; for a plan: nothing invalid, refused, skipped
    /// or short of seats (nothing that would not succeed).
    pub fn all_succeeded(&self) -> bool {
        match self.completion {
            Completion::Planned => {
                [RowStatus::Invalid, RowStatus::Failed, RowStatus::Skipped]
                    .iter()
                    .all(|s| self.count(*s) == 0)
                    && self.seat_shortages.is_empty()
            }
            _ => self.count(RowStatus::Succeeded) == self.total(),
        }
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        match &self.completion {
            Completion::Finished => writeln!(
                f,
                "license-batch: run {}finished in {secs:.1}s",
                self.run_id.map(|id| format!("{id} ")).unwrap_or_default()
            )?,
            Completion::Planned => writeln!(f, "license-batch: dry run, nothing sent")?,
            Completion::Aborted(reason) => writeln!(
                f,
                "license-batch: run ABORTED after {secs:.1}s: {reason}\n  pending rows are finished by running the same command again"
            )?,
            Completion::Interrupted => writeln!(
                f,
                "license-batch: run INTERRUPTED after {secs:.1}s\n  pending rows are finished by running the same command again"
            )?,
        }
        let counts: Vec<String> = RowStatus::ALL
            .iter()
            .map(|s| format!("{} {}", self.count(*s), s.as_str()))
            .collect();
        writeln!(
            f,
            "  rows:        {} total: {}",
            self.total(),
            counts.join(", ")
        )?;
        if self.blank_lines > 0 {
            writeln!(
                f,
                "  blank lines: {} skipped (no values at all)",
                self.blank_lines
            )?;
        }
        if self.completion != Completion::Planned {
            let calls = self.stats.requests + self.stats.reads;
            let rate = if secs > 0.0 { calls as f64 / secs } else { 0.0 };
            writeln!(
                f,
                "  requests:    {} license updates + {} reads ({:.1}/s, {:.0}/min), retries {}, throttled (429) {}",
                self.stats.requests,
                self.stats.reads,
                rate,
                rate * 60.0,
                self.stats.retries,
                self.stats.throttled
            )?;
        }
        if let Some(advice) = &self.advice {
            writeln!(f, "  pace:        {advice}")?;
        }
        if !self.top_errors.is_empty() {
            let top: Vec<String> = self
                .top_errors
                .iter()
                .take(5)
                .map(|(code, n)| format!("{code} x{n}"))
                .collect();
            writeln!(f, "  top errors:  {}", top.join(", "))?;
        }
        writeln!(
            f,
            "  {:<38} {:>6} {}",
            "customer",
            "rows",
            RowStatus::columns(|status| status.as_str().to_string())
        )?;
        for (customer, counts) in &self.per_customer {
            let n = |s| counts.get(&s).copied().unwrap_or(0);
            writeln!(
                f,
                "  {:<38} {:>6} {}",
                customer,
                counts.values().sum::<u64>(),
                RowStatus::columns(|status| n(status).to_string())
            )?;
        }
        for line in &self.seat_shortages {
            writeln!(
                f,
                "  seats short: {} {}: {} free, the sheet needs {}",
                line.customer,
                line.label,
                line.available.unwrap_or(0),
                line.needed
            )?;
        }
        write!(f, "{}", InsightsTable(&self.insights))?;
        if let Some(path) = &self.report_path {
            writeln!(f, "  report:      {}", path.display())?;
        }
        Ok(())
    }
}

/// Deployment insights as a table: licenses deployed / sold per product and customer.
pub struct InsightsTable<'a>(pub &'a [CustomerInsights]);

impl fmt::Display for InsightsTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "  licenses deployed / sold (deployment insights, refreshed daily by Partner Center):"
        )?;
        for customer in self.0 {
            match &customer.products {
                Ok(products) if products.is_empty() => {
                    writeln!(f, "    {}: no data yet", customer.customer)?
                }
                Ok(products) => {
                    let name = products
                        .first()
                        .map(|p| p.customer_name.clone())
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| customer.customer.to_string());
                    writeln!(f, "    {name}")?;
                    for p in products {
                        writeln!(
                            f,
                            "      {:<40} {:>9} of {:<9} ({})",
                            p.product_name,
                            grouped(p.licenses_deployed as u64),
                            grouped(p.licenses_sold as u64),
                            share_text(p.deployment_percent, p.licenses_deployed > 0.0)
                        )?;
                    }
                }
                Err(error) => writeln!(f, "    {}: not available ({error})", customer.customer)?,
            }
        }
        Ok(())
    }
}

/// `1000000` as `1,000,000`: a seat count a person reads at a glance.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A deployment share: `<1%` for a few seats of many, which `0%` would misstate as none.
/// A share as the summary shows it; `some`: whether anything was deployed at all (Partner
/// Center rounds the percentage it gives: 6 of 1,000,000 comes as 0, which is not "none").
fn share_text(percent: f64, some: bool) -> String {
    match percent {
        p if p < 1.0 && (p > 0.0 || some) => "<1%".to_string(),
        p => format!("{p:.0}%"),
    }
}

#[cfg(test)]
mod figures_tests {
    use super::{grouped, share_text};

    #[test]
    fn seat_counts_and_shares_read_as_a_person_expects() {
        assert_eq!(grouped(1_000_000), "1,000,000");
        assert_eq!(grouped(15), "15");
        assert_eq!(grouped(1234), "1,234");
        assert_eq!(share_text(0.0015, true), "<1%");
        assert_eq!(
            share_text(0.0, true),
            "<1%",
            "rounded to 0 by the API, yet some"
        );
        assert_eq!(share_text(0.0, false), "0%");
        assert_eq!(share_text(62.4, true), "62%");
    }
}
