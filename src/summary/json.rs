//! The summary as JSON (SPEC §13, `--summary-json`): what a monitoring job or a notification
//! reads of a night, schema version 1.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::RunSummary;
use crate::outcome::{Completion, RowStatus};

/// What the summary does not hold itself: where the sheet was, how the process ends, and when.
#[derive(Debug, Clone, Copy)]
pub struct RunEnd<'a> {
    pub input: &'a Path,
    pub exit_code: u8,
    pub finished_at: SystemTime,
}

/// What a failed row's code means, for the codes SPEC §5 names.
pub fn meaning_of(code: &str) -> &'static str {
    match code {
        "900309" => "blocked by the customer's Conditional Access policies",
        "900316" => "a partner token where license calls need App+User",
        "900421" => "multi-factor authentication required: consent again signing in with MFA",
        "60002" => "user not found",
        "60003" => "tenant not found",
        "60012" => "out of licenses: buy more seats and run again",
        "HTTP 403" => "forbidden: a GDAP role is missing for this customer",
        "HTTP 429" => "throttled until the retries ran out",
        "no response" => "no answer before the retries ran out",
        _ => "",
    }
}

fn outcome_text(completion: &Completion) -> &'static str {
    match completion {
        Completion::Finished => "finished",
        Completion::Aborted(_) => "aborted",
        Completion::Interrupted => "interrupted",
        Completion::Planned => "planned",
    }
}

/// A time as the summary writes it (RFC 3339, milliseconds, UTC).
pub fn rfc3339(at: SystemTime) -> String {
    // humantime panics on a time before 1970; a clock set that wrong must not end the run
    // in a panic after its work is done.
    humantime::format_rfc3339_millis(at.max(SystemTime::UNIX_EPOCH)).to_string()
}

/// The counts of `counts` by status, every status present (zeros too), and the total.
fn rows_of(counts: &std::collections::BTreeMap<RowStatus, u64>) -> serde_json::Map<String, Value> {
    let mut rows = serde_json::Map::new();
    rows.insert("total".into(), json!(counts.values().sum::<u64>()));
    for status in RowStatus::ALL {
        let count = counts.get(&status).copied().unwrap_or(0);
        rows.insert(status.as_str().into(), json!(count));
    }
    rows
}

/// The document of SPEC §13.
pub fn summary_json(summary: &RunSummary, end: RunEnd<'_>) -> Value {
    let started_at = end
        .finished_at
        .checked_sub(summary.elapsed)
        .unwrap_or(end.finished_at);
    let customers: Vec<Value> = summary
        .per_customer
        .iter()
        .map(|(customer, counts)| {
            let mut row = rows_of(counts);
            let total = row.remove("total").unwrap_or(json!(0));
            row.insert("customer_id".into(), json!(customer));
            row.insert("rows".into(), total);
            Value::Object(row)
        })
        .collect();
    let top_errors: Vec<Value> = summary
        .top_errors
        .iter()
        .map(|(code, count)| json!({"code": code, "count": count, "message": meaning_of(code)}))
        .collect();
    json!({
        "version": 1,
        "run": summary.run_id,
        "outcome": outcome_text(&summary.completion),
        "exit_code": end.exit_code,
        "started_at": rfc3339(started_at),
        "finished_at": rfc3339(end.finished_at),
        "elapsed_secs": round_millis(summary.elapsed),
        "input": end.input.display().to_string(),
        "report": summary.report_path.as_ref().map(|p| p.display().to_string()),
        "rows": rows_of(&summary.counts),
        "requests": {
            "license_updates": summary.stats.requests,
            "reads": summary.stats.reads,
            "retries": summary.stats.retries,
            "throttled": summary.stats.throttled,
        },
        "top_errors": top_errors,
        "customers": customers,
    })
}

fn round_millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::outcome::Tally;
    use uuid::Uuid;

    /// A night every test of the summary's readers starts from: 40 succeeded, 2 failed (60012),
    /// 1 invalid, 44 license updates.
    pub(crate) fn a_night() -> RunSummary {
        let customer: Uuid = "7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90".parse().unwrap();
        let mut tally = Tally::default();
        tally.add_rows(Some(customer), RowStatus::Succeeded, None, Some(201), 40);
        tally.add_rows(
            Some(customer),
            RowStatus::Failed,
            Some("60012"),
            Some(400),
            2,
        );
        tally.add_rows(None, RowStatus::Invalid, None, None, 1);
        let mut summary = RunSummary::new(tally, Completion::Finished);
        summary.elapsed = Duration::from_millis(61_250);
        summary.run_id = Some(7);
        summary.report_path = Some("sheets/Émilie.report.csv".into());
        summary.stats.requests = 44;
        summary.stats.reads = 1;
        summary.stats.retries = 3;
        summary.stats.throttled = 2;
        summary
    }

    #[test]
    fn a_clock_set_before_1970_gives_1970_not_a_panic() {
        let end = RunEnd {
            input: Path::new("sheets/Émilie.csv"),
            exit_code: 1,
            finished_at: SystemTime::UNIX_EPOCH,
        };
        let document = summary_json(&a_night(), end);
        assert_eq!(document["started_at"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn the_document_has_every_field_of_the_spec() {
        let finished_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let end = RunEnd {
            input: Path::new("sheets/Émilie.csv"),
            exit_code: 1,
            finished_at,
        };
        let document = summary_json(&a_night(), end);
        assert_eq!(document["version"], 1);
        assert_eq!(document["run"], 7);
        assert_eq!(document["outcome"], "finished");
        assert_eq!(document["exit_code"], 1);
        assert_eq!(document["elapsed_secs"], 61.25);
        assert_eq!(document["finished_at"], "2026-11-30T00:53:20.000Z");
        assert_eq!(document["started_at"], "2026-11-30T00:52:18.750Z");
        assert_eq!(document["input"], "sheets/Émilie.csv");
        assert_eq!(document["report"], "sheets/Émilie.report.csv");
        assert_eq!(
            document["rows"],
            json!({"total": 43, "succeeded": 40, "failed": 2, "invalid": 1, "skipped": 0, "pending": 0})
        );
        assert_eq!(
            document["requests"],
            json!({"license_updates": 44, "reads": 1, "retries": 3, "throttled": 2})
        );
        assert_eq!(
            document["top_errors"],
            json!([{"code": "60012", "count": 2, "message": meaning_of("60012")}])
        );
        let customers = document["customers"].as_array().unwrap();
        assert_eq!(customers.len(), 2);
        let contoso = customers
            .iter()
            .find(|c| c["customer_id"] == "7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90")
            .unwrap();
        assert_eq!(contoso["rows"], 42);
        assert_eq!(contoso["failed"], 2);
        assert_eq!(contoso["pending"], 0);
    }
}
