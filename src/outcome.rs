//! The words every layer shares: where an operation ended ([`OperationStatus`]) and what its
//! answer said ([`OperationOutcome`]), a report row's status ([`RowStatus`]) and how a run ended
//! ([`Completion`]). The one mapping between a status and its text (report, journal, `status`)
//! lives here. Nothing in this module names another of the crate.

use std::collections::BTreeMap;
use std::time::SystemTime;

use uuid::Uuid;

/// Where an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationStatus {
    Succeeded,
    Failed,
    /// Deliberately not sent (e.g. the seat preflight in strict mode).
    Skipped,
    /// No definitive answer: the run was aborted or interrupted first.
    Pending,
}

/// The outcome of one operation (a SKU for a user), shared by all rows that asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationOutcome {
    pub status: OperationStatus,
    pub http_status: Option<u16>,
    pub error_code: Option<String>,
    pub message: String,
    /// HTTP attempts made for the group in this run (resumes included).
    pub attempts: u32,
    pub request_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub finished_at: Option<SystemTime>,
    pub warnings: Vec<String>,
    /// Its last request got no definitive answer (timeouts, 5xx or 429 until the retries ran
    /// out): it may have been applied, so its request ID is kept for whichever run sends the
    /// operation next (SPEC §8).
    pub unanswered: bool,
}

impl OperationOutcome {
    /// Decided without sending: done in an earlier run, skipped by the preflight, or a
    /// customer that refused the tenant read.
    pub fn unsent(status: OperationStatus, message: impl Into<String>) -> Self {
        OperationOutcome {
            status,
            finished_at: Some(SystemTime::now()),
            ..OperationOutcome::pending(message)
        }
    }

    pub fn pending(message: impl Into<String>) -> Self {
        OperationOutcome {
            status: OperationStatus::Pending,
            http_status: None,
            error_code: None,
            message: message.into(),
            attempts: 0,
            request_id: None,
            correlation_id: None,
            finished_at: None,
            warnings: Vec::new(),
            unanswered: false,
        }
    }
}

impl OperationStatus {
    /// The text of this status in the report and the journal (SPEC §9).
    pub fn as_str(self) -> &'static str {
        RowStatus::from(self).as_str()
    }

    /// The status a journal's `status` column holds; `None` for a text no operation has.
    pub fn from_text(text: &str) -> Option<OperationStatus> {
        match RowStatus::from_text(text)? {
            RowStatus::Succeeded => Some(OperationStatus::Succeeded),
            RowStatus::Failed => Some(OperationStatus::Failed),
            RowStatus::Skipped => Some(OperationStatus::Skipped),
            RowStatus::Pending => Some(OperationStatus::Pending),
            RowStatus::Invalid => None,
        }
    }
}

/// A report row's status (SPEC §9): an operation's, or `invalid` for a row never planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowStatus {
    Succeeded,
    Failed,
    Invalid,
    Skipped,
    Pending,
}

/// The report status of the rows of an operation with this outcome.
impl From<OperationStatus> for RowStatus {
    fn from(status: OperationStatus) -> RowStatus {
        match status {
            OperationStatus::Succeeded => RowStatus::Succeeded,
            OperationStatus::Failed => RowStatus::Failed,
            OperationStatus::Skipped => RowStatus::Skipped,
            OperationStatus::Pending => RowStatus::Pending,
        }
    }
}

impl RowStatus {
    pub const ALL: [RowStatus; 5] = [
        RowStatus::Succeeded,
        RowStatus::Failed,
        RowStatus::Invalid,
        RowStatus::Skipped,
        RowStatus::Pending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Succeeded => "succeeded",
            RowStatus::Failed => "failed",
            RowStatus::Invalid => "invalid",
            RowStatus::Skipped => "skipped",
            RowStatus::Pending => "pending",
        }
    }

    /// One cell per status in the order of [`RowStatus::ALL`], each right-aligned as wide as the
    /// status's name (the table columns of the summary and of `status`).
    pub fn columns(cell: impl Fn(RowStatus) -> String) -> String {
        RowStatus::ALL
            .iter()
            .map(|&status| format!("{:>1$}", cell(status), status.as_str().len()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The status whose text is `text` (the inverse of [`RowStatus::as_str`]).
    pub fn from_text(text: &str) -> Option<RowStatus> {
        RowStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Every group got a definitive answer (or was invalid).
    Finished,
    /// Stopped early (fatal credential error, failure threshold, unwritable report).
    Aborted(String),
    /// Stopped by SIGINT/SIGTERM.
    Interrupted,
    /// `--dry-run`: planned, nothing sent.
    Planned,
}

/// Counts of report rows by status, per customer and by error (what the summary shows), taken
/// one row at a time as the report is written or from the journal's tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    counts: BTreeMap<RowStatus, u64>,
    per_customer: BTreeMap<String, BTreeMap<RowStatus, u64>>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    /// Counts `rows` report rows alike in what the summary shows of them.
    pub fn add_rows(
        &mut self,
        customer: Option<Uuid>,
        status: RowStatus,
        error_code: Option<&str>,
        http_status: Option<u16>,
        rows: u64,
    ) {
        if rows == 0 {
            return;
        }
        *self.counts.entry(status).or_default() += rows;
        let customer = customer
            .map(|c| c.to_string())
            .unwrap_or_else(|| "(no valid customer)".into());
        *self
            .per_customer
            .entry(customer)
            .or_default()
            .entry(status)
            .or_default() += rows;
        if status == RowStatus::Failed {
            *self
                .errors
                .entry(error_key(error_code, http_status))
                .or_default() += rows;
        }
    }

    /// Rows counted so far.
    pub fn rows(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn count(&self, status: RowStatus) -> u64 {
        self.counts.get(&status).copied().unwrap_or(0)
    }

    /// Counts by status, by customer and status, and failed rows by error code.
    pub fn into_parts(
        self,
    ) -> (
        StatusCounts,
        BTreeMap<String, StatusCounts>,
        BTreeMap<String, u64>,
    ) {
        (self.counts, self.per_customer, self.errors)
    }
}

/// What a failed row is counted under: its error code, else its HTTP status, else no response.
pub fn error_key(error_code: Option<&str>, http_status: Option<u16>) -> String {
    error_code
        .map(str::to_string)
        .unwrap_or_else(|| http_status.map_or("no response".into(), |s| format!("HTTP {s}")))
}

/// Rows by status.
pub type StatusCounts = BTreeMap<RowStatus, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_text_and_nothing_else_does() {
        for status in RowStatus::ALL {
            assert_eq!(RowStatus::from_text(status.as_str()), Some(status));
        }
        for status in [
            OperationStatus::Succeeded,
            OperationStatus::Failed,
            OperationStatus::Skipped,
            OperationStatus::Pending,
        ] {
            assert_eq!(OperationStatus::from_text(status.as_str()), Some(status));
            assert_eq!(RowStatus::from(status).as_str(), status.as_str());
        }
        assert_eq!(OperationStatus::from_text("invalid"), None);
        assert_eq!(RowStatus::from_text("Succeeded"), None);
        assert_eq!(RowStatus::from_text(""), None);
    }

    #[test]
    fn status_columns_are_as_wide_as_their_names() {
        assert_eq!(
            RowStatus::columns(|s| s.as_str().into()),
            "succeeded failed invalid skipped pending"
        );
        assert_eq!(
            RowStatus::columns(|s| (s as usize).to_string()),
            "        0      1       2       3       4"
        );
    }
}
