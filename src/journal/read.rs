//! Reading a run back without loading it whole: the engine's open groups in pages per
//! customer ([`WorkPages`]), the report's rows one at a time, and the figures `plan` prints.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Row, params};
use uuid::Uuid;

use super::{Journal, JournalError, parse_time, status_of};
use crate::country::UsageLocation;
use crate::engine::{GivenLocation, GroupWork, LocationFix, LocationWork, WorkSource};
use crate::input::{Action, LicenseGroup};
use crate::outcome::OperationOutcome;
use crate::outcome::RowStatus;
use crate::outcome::Tally;
use crate::plan::{Group, Operation};

/// An operation still to send: never sent, or sent without a definitive answer.
const OPEN: &str = "(status IS NULL OR status = 'pending')";

/// A group's operations, read once per group while a run sends. Sorted in Rust, not by
/// `ORDER BY`: with one, this SQLite build (STAT4) prepared the statement again on every call.
pub(super) const OPERATIONS_OF_GROUP: &str =
    "SELECT sku_id, action, excluded_plans, first_row, row_count, send_id, status, http_status,
            error_code, message, attempts, request_id, correlation_id, finished_at, warnings,
            unanswered, op_idx
     FROM operations WHERE run_id = ?1 AND group_idx = ?2";

/// A group as recorded.
pub(super) struct StoredGroup {
    pub request: Group,
    /// Each operation's outcome so far (`None`: not sent yet).
    pub outcomes: Vec<Option<OperationOutcome>>,
    /// The request ID each operation is sent under.
    pub send_ids: Vec<Uuid>,
    /// The request ID the group was planned with (its other passes were carried over from
    /// an earlier run, or split off after an answer).
    pub own_request_id: Option<Uuid>,
    /// The PATCH that gives the user a usage location, once one is recorded.
    pub location_fix: Option<LocationFix>,
}

/// The carried cells of one input row, as recorded.
pub type Cells = Vec<String>;

/// An input row as recorded: what it asked for, and why it is invalid or how its operation
/// ended (the report makes its row of this).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// Line of the row in the input file.
    pub line: u64,
    pub customer_id: Option<Uuid>,
    pub sku_id: Option<Uuid>,
    pub license_group: Option<LicenseGroup>,
    pub state: RowState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RowState {
    /// Never planned, for this reason.
    Invalid(String),
    /// Planned as an operation: its outcome (`None`: not sent yet); `same_as`, the line of
    /// the operation's first row when that is another row (identical rows are sent once).
    Planned {
        outcome: Option<OperationOutcome>,
        same_as: Option<u64>,
    },
}

impl Journal {
    /// One group of a run with its operations, their outcomes so far (`None`: not sent yet)
    /// and the request ID each is sent under.
    pub(super) fn group(&self, run_id: i64, group: i64) -> Result<StoredGroup, JournalError> {
        let e = |source| self.sqlite(source);
        type GroupColumns = (
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            bool,
        );
        let (customer, user, license_group, own_request_id, location, location_id, answered): GroupColumns = self
            .conn
            .prepare_cached(
                "SELECT customer_id, user, license_group, send_id,
                        location, location_request_id, location_answered FROM groups
                 WHERE run_id = ?1 AND idx = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![run_id, group], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                })
            })
            .map_err(e)?;
        let location_fix = match (location, location_id) {
            (Some(location), Some(id)) => Some(LocationFix {
                location: UsageLocation::parse(&location)
                    .map_err(|_| self.corrupt("usage location"))?,
                request_id: id.parse().map_err(|_| self.corrupt("request ID"))?,
                answered,
            }),
            _ => None,
        };
        let mut request = Group {
            customer_id: customer.parse().map_err(|_| self.corrupt("customer ID"))?,
            user,
            license_group: LicenseGroup::parse(&license_group)
                .ok_or_else(|| self.corrupt("license group"))?,
            operations: Vec::new(),
        };
        let mut read = Vec::new();
        let mut stmt = self.conn.prepare_cached(OPERATIONS_OF_GROUP).map_err(e)?;
        let mut rows = stmt.query(params![run_id, group]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let sku: String = r.get(0).map_err(e)?;
            let action: String = r.get(1).map_err(e)?;
            let excluded: String = r.get(2).map_err(e)?;
            let operation = Operation {
                sku_id: sku.parse().map_err(|_| self.corrupt("SKU ID"))?,
                action: if action == "remove" {
                    Action::Remove
                } else {
                    Action::Assign
                },
                excluded_plans: serde_json::from_str(&excluded)
                    .map_err(|_| self.corrupt("excluded plans"))?,
                first_row: r.get::<_, i64>(3).map_err(e)? as usize,
                row_count: r.get::<_, i64>(4).map_err(e)? as u64,
            };
            let send_id: String = r.get(5).map_err(e)?;
            let send_id: Uuid = send_id.parse().map_err(|_| self.corrupt("request ID"))?;
            let op_index: i64 = r.get(16).map_err(e)?;
            read.push((op_index, operation, outcome(r, 6).map_err(e)?, send_id));
        }
        read.sort_unstable_by_key(|(op_index, ..)| *op_index);
        let (mut outcomes, mut send_ids) = (Vec::new(), Vec::new());
        for (position, (op_index, operation, outcome, send_id)) in read.into_iter().enumerate() {
            // Operations are numbered 0.. within their group: a gap is a damaged journal.
            if op_index != position as i64 {
                return Err(self.corrupt("operation numbers"));
            }
            request.operations.push(operation);
            outcomes.push(outcome);
            send_ids.push(send_id);
        }
        Ok(StoredGroup {
            request,
            outcomes,
            send_ids,
            own_request_id: own_request_id.and_then(|id| id.parse().ok()),
            location_fix,
        })
    }

    /// The usage locations the rows of a group give, each with its first line.
    fn locations_given(&self, run_id: i64, group: i64) -> Result<GivenLocation, JournalError> {
        let e = |source| self.sqlite(source);
        let mut given = Vec::new();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT usage_location, MIN(line) FROM rows
                 WHERE run_id = ?1 AND group_idx = ?2 AND usage_location IS NOT NULL
                 GROUP BY usage_location",
            )
            .map_err(e)?;
        let mut rows = stmt.query(params![run_id, group]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let text: String = r.get(0).map_err(e)?;
            let location =
                UsageLocation::parse(&text).map_err(|_| self.corrupt("usage location"))?;
            given.push((location, r.get::<_, i64>(1).map_err(e)? as u64));
        }
        Ok(GivenLocation::of(given))
    }

    /// Counts of a run: (groups with open operations, rows, rows whose operation is open).
    pub fn open_counts(&self, run_id: i64) -> Result<(u64, u64, u64), JournalError> {
        let e = |source| self.sqlite(source);
        let groups: i64 = self
            .conn
            .query_row(
                &format!(
                    "SELECT COUNT(DISTINCT group_idx) FROM operations WHERE run_id = ?1 AND {OPEN}"
                ),
                [run_id],
                |r| r.get(0),
            )
            .map_err(e)?;
        let rows: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM rows WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(e)?;
        let open_rows: i64 = self
            .conn
            .query_row(
                &format!(
                    "SELECT COALESCE(SUM(row_count), 0) FROM operations WHERE run_id = ?1 AND {OPEN}"
                ),
                [run_id],
                |r| r.get(0),
            )
            .map_err(e)?;
        Ok((groups as u64, rows as u64, open_rows as u64))
    }

    /// Customers with open operations, in the order of their first open group.
    pub fn open_customers(&self, run_id: i64) -> Result<Vec<Uuid>, JournalError> {
        let e = |source| self.sqlite(source);
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT g.customer_id FROM groups g
                 WHERE g.run_id = ?1 AND EXISTS (SELECT 1 FROM operations
                     WHERE run_id = ?1 AND group_idx = g.idx AND {OPEN})
                 GROUP BY g.customer_id ORDER BY MIN(g.idx)"
            ))
            .map_err(e)?;
        let customers: Vec<String> = stmt
            .query_map([run_id], |r| r.get(0))
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        customers
            .iter()
            .map(|c| c.parse().map_err(|_| self.corrupt("customer ID")))
            .collect()
    }

    /// Every row of a run in input order, as recorded, with its carried cells.
    pub fn each_stored_row(
        &self,
        run_id: i64,
        mut each: impl FnMut(Cells, StoredRow) -> Result<(), String>,
    ) -> Result<(), String> {
        let e = |source| self.sqlite(source).to_string();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT r.line, r.cells, r.customer_id, r.invalid_message, r.sku_id, r.license_group,
                        r.idx, o.first_row, f.line, o.status, o.http_status, o.error_code,
                        o.message, o.attempts, o.request_id, o.correlation_id, o.finished_at,
                        o.warnings, o.unanswered
                 FROM rows r
                 LEFT JOIN operations o
                   ON o.run_id = r.run_id AND o.group_idx = r.group_idx AND o.op_idx = r.op_idx
                 LEFT JOIN rows f ON f.run_id = r.run_id AND f.idx = o.first_row
                 WHERE r.run_id = ?1 ORDER BY r.idx",
            )
            .map_err(e)?;
        let mut rows = stmt.query([run_id]).map_err(e)?;
        let uuid = |text: Option<String>| text.and_then(|t| t.parse::<Uuid>().ok());
        while let Some(r) = rows.next().map_err(e)? {
            let cells: String = r.get(1).map_err(e)?;
            let cells: Cells =
                serde_json::from_str(&cells).map_err(|_| self.corrupt("row cells").to_string())?;
            let line = r.get::<_, i64>(0).map_err(e)? as u64;
            let customer = uuid(r.get(2).map_err(e)?);
            let sku = uuid(r.get(4).map_err(e)?);
            let license_group = r
                .get::<_, Option<String>>(5)
                .map_err(e)?
                .and_then(|g| LicenseGroup::parse(&g));
            let state = match r.get::<_, Option<String>>(3).map_err(e)? {
                Some(message) => RowState::Invalid(message),
                None => {
                    let index: i64 = r.get(6).map_err(e)?;
                    let first: Option<i64> = r.get(7).map_err(e)?;
                    let first_line: Option<i64> = r.get(8).map_err(e)?;
                    RowState::Planned {
                        outcome: outcome(r, 9).map_err(e)?,
                        same_as: first_line
                            .filter(|_| first != Some(index))
                            .map(|l| l as u64),
                    }
                }
            };
            let row = StoredRow {
                line,
                customer_id: customer,
                sku_id: sku,
                license_group,
                state,
            };
            each(cells, row)?;
        }
        Ok(())
    }

    /// The summary's counts of a run's report rows, from its operations (each counting for
    /// its rows) and its invalid rows, without reading every row back.
    pub fn tally(&self, run_id: i64) -> Result<Tally, JournalError> {
        let e = |source| self.sqlite(source);
        let customer = |text: Option<String>| text.and_then(|t| t.parse::<Uuid>().ok());
        let mut tally = Tally::default();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT customer_id, COUNT(*) FROM rows
                 WHERE run_id = ?1 AND group_idx IS NULL GROUP BY customer_id",
            )
            .map_err(e)?;
        let mut rows = stmt.query([run_id]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let count: i64 = r.get(1).map_err(e)?;
            tally.add_rows(
                customer(r.get(0).map_err(e)?),
                RowStatus::Invalid,
                None,
                None,
                count as u64,
            );
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT g.customer_id, o.status, o.error_code, o.http_status, SUM(o.row_count)
                 FROM operations o JOIN groups g ON g.run_id = o.run_id AND g.idx = o.group_idx
                 WHERE o.run_id = ?1
                 GROUP BY g.customer_id, o.status, o.error_code, o.http_status",
            )
            .map_err(e)?;
        let mut rows = stmt.query([run_id]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let status: Option<String> = r.get(1).map_err(e)?;
            let status = status.map_or(RowStatus::Pending, |s| RowStatus::from(status_of(&s)));
            let error_code: Option<String> = r.get(2).map_err(e)?;
            let http_status: Option<i64> = r.get(3).map_err(e)?;
            let count: i64 = r.get(4).map_err(e)?;
            tally.add_rows(
                customer(r.get(0).map_err(e)?),
                status,
                error_code.as_deref(),
                http_status.map(|s| s as u16),
                count as u64,
            );
        }
        Ok(tally)
    }

    /// Per customer: groups still to send and rows planned for sending.
    pub fn requests_per_customer(
        &self,
        run_id: i64,
    ) -> Result<Vec<(Uuid, u64, u64)>, JournalError> {
        let e = |source| self.sqlite(source);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT g.customer_id,
                        COUNT(DISTINCT CASE WHEN o.status IS NULL THEN g.idx END),
                        SUM(o.row_count)
                 FROM groups g JOIN operations o ON o.run_id = g.run_id AND o.group_idx = g.idx
                 WHERE g.run_id = ?1 GROUP BY g.customer_id ORDER BY g.customer_id",
            )
            .map_err(e)?;
        let found: Vec<(String, i64, i64)> = stmt
            .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        found
            .into_iter()
            .map(|(c, requests, rows)| {
                Ok((
                    c.parse().map_err(|_| self.corrupt("customer ID"))?,
                    requests as u64,
                    rows as u64,
                ))
            })
            .collect()
    }

    /// The lines of rows decided without sending, by the outcome's message, lines ascending.
    pub fn each_unsent_line(
        &self,
        run_id: i64,
        mut each: impl FnMut(&str, u64),
    ) -> Result<(), JournalError> {
        let e = |source| self.sqlite(source);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT o.message, r.line FROM rows r
                 JOIN operations o
                   ON o.run_id = r.run_id AND o.group_idx = r.group_idx AND o.op_idx = r.op_idx
                 WHERE r.run_id = ?1 AND o.status IS NOT NULL
                 ORDER BY o.message, r.line",
            )
            .map_err(e)?;
        let mut rows = stmt.query([run_id]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let message: String = r.get(0).map_err(e)?;
            each(&message, r.get::<_, i64>(1).map_err(e)? as u64);
        }
        Ok(())
    }

    /// Invalid rows in input order: (line, why).
    pub fn each_invalid_row(
        &self,
        run_id: i64,
        mut each: impl FnMut(u64, &str),
    ) -> Result<(), JournalError> {
        let e = |source| self.sqlite(source);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT line, invalid_message FROM rows
                 WHERE run_id = ?1 AND invalid_message IS NOT NULL ORDER BY idx",
            )
            .map_err(e)?;
        let mut rows = stmt.query([run_id]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let message: String = r.get(1).map_err(e)?;
            each(r.get::<_, i64>(0).map_err(e)? as u64, &message);
        }
        Ok(())
    }
}

/// The outcome in the operation columns starting at `at` (status first); `None` when the
/// operation was never sent.
fn outcome(r: &Row<'_>, at: usize) -> rusqlite::Result<Option<OperationOutcome>> {
    let Some(status) = r.get::<_, Option<String>>(at)? else {
        return Ok(None);
    };
    let uuid = |text: Option<String>| text.and_then(|t| t.parse().ok());
    let warnings: Option<String> = r.get(at + 8)?;
    Ok(Some(OperationOutcome {
        status: status_of(&status),
        http_status: r.get::<_, Option<i64>>(at + 1)?.map(|s| s as u16),
        error_code: r.get(at + 2)?,
        message: r.get::<_, Option<String>>(at + 3)?.unwrap_or_default(),
        attempts: r.get::<_, Option<i64>>(at + 4)?.unwrap_or(0) as u32,
        request_id: uuid(r.get(at + 5)?),
        correlation_id: uuid(r.get(at + 6)?),
        finished_at: parse_time(r.get(at + 7)?),
        warnings: warnings
            .and_then(|w| serde_json::from_str(&w).ok())
            .unwrap_or_default(),
        unanswered: r.get::<_, Option<i64>>(at + 9)?.unwrap_or(0) != 0,
    }))
}

/// The engine's work, read from the journal a page of groups per customer at a time, on a
/// connection of its own.
pub struct WorkPages {
    journal: Journal,
    run_id: i64,
    /// Per customer: the last group index handed out.
    after: HashMap<Uuid, i64>,
}

impl WorkPages {
    pub fn open(path: &Path, run_id: i64) -> Result<WorkPages, JournalError> {
        let journal = Journal::connect(path)?;
        journal
            .conn
            .pragma_update(None, "cache_size", -super::schema::SMALL_CACHE_KIB)
            .map_err(|e| journal.sqlite(e))?;
        Ok(WorkPages {
            journal,
            run_id,
            after: HashMap::new(),
        })
    }
}

impl WorkSource for WorkPages {
    fn next_of(&mut self, customer: Uuid, limit: usize) -> Result<Vec<GroupWork>, String> {
        let journal = &self.journal;
        let e = |source| journal.sqlite(source).to_string();
        let after = self.after.get(&customer).copied().unwrap_or(-1);
        let indices: Vec<i64> = journal
            .conn
            .prepare_cached(&format!(
                "SELECT g.idx FROM groups g
                 WHERE g.run_id = ?1 AND g.customer_id = ?2 AND g.idx > ?3
                   AND EXISTS (SELECT 1 FROM operations
                               WHERE run_id = ?1 AND group_idx = g.idx AND {OPEN})
                 ORDER BY g.idx LIMIT ?4"
            ))
            .and_then(|mut s| {
                s.query_map(
                    params![self.run_id, customer.to_string(), after, limit as i64],
                    |r| r.get(0),
                )?
                .collect()
            })
            .map_err(e)?;
        let mut work = Vec::with_capacity(indices.len());
        for &g in &indices {
            let stored = journal.group(self.run_id, g).map_err(|e| e.to_string())?;
            let Some(mut open) = GroupWork::open(
                g as usize,
                stored.request,
                &stored.outcomes,
                &stored.send_ids,
                stored.own_request_id,
            ) else {
                continue;
            };
            open.location = LocationWork {
                given: journal
                    .locations_given(self.run_id, g)
                    .map_err(|e| e.to_string())?,
                fix: stored.location_fix,
            };
            work.push(open);
        }
        if let Some(&last) = indices.last() {
            self.after.insert(customer, last);
        }
        Ok(work)
    }
}
