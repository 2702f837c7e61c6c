//! The durable journal (SQLite, WAL): runs, their rows and plan, each group's request ID, every
//! operation's outcome, and what is already done per API target. It makes `kill -9` safe,
//! resumes unfinished runs, keeps nightly runs incremental, and is the source of the report.
//!
//! Durability rules: the plan and every group's MS-RequestId are committed in one transaction
//! before any request leaves; outcomes are group-committed by a writer thread (see
//! [`writer`]); a new request ID (after a partial failure) is committed, together with the
//! outcome that caused it, before that request is sent.

mod schema;
pub mod writer;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::engine::{OperationOutcome, OperationStatus};
use crate::input::{Action, InputFile, LicenseGroup};
use crate::plan::{Group, Operation, Plan, PlannedRow, RowPlan};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("journal {path}: {message}")]
    Io { path: String, message: String },
    #[error(
        "journal {path} is in use by another license-batch run; wait for it to finish, or give \
         this run its own --state file"
    )]
    Busy { path: String },
    #[error("journal {path}: {message}")]
    Invalid { path: String, message: String },
}

/// A run as `status` lists it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub id: i64,
    pub input_path: String,
    pub target: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: String,
    pub message: Option<String>,
    pub report_path: String,
    pub counts: Vec<(String, u64)>,
}

/// A run loaded back from the journal: everything the engine and the report need.
#[derive(Debug, Clone)]
pub struct LoadedRun {
    pub id: i64,
    pub report_path: PathBuf,
    pub delimiter: u8,
    /// Header names of the carried input columns.
    pub headers: Vec<String>,
    /// Carried cells per row, parallel to `plan.rows`.
    pub cells: Vec<Vec<String>>,
    pub plan: Plan,
    /// Per group and operation: the request ID it is sent under. Open operations sharing an
    /// ID form one request (a pass).
    pub send_ids: Vec<Vec<Uuid>>,
    /// `None`: no definitive outcome yet (never sent, or pending).
    pub outcomes: Vec<Vec<Option<OperationOutcome>>>,
}

impl LoadedRun {
    /// Outcomes for the report: open operations become `pending`.
    pub fn outcomes_for_report(&self) -> Vec<Vec<OperationOutcome>> {
        self.outcomes
            .iter()
            .map(|ops| {
                ops.iter()
                    .map(|o| {
                        o.clone().unwrap_or_else(|| {
                            OperationOutcome::pending(
                                "not finished yet: run the same command again to resume",
                            )
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

/// What a new run records.
pub struct NewRun<'a> {
    pub input: &'a InputFile,
    pub input_hash: &'a str,
    pub plan: &'a Plan,
    pub target: &'a str,
    pub report_path: &'a Path,
    pub settings_json: String,
    /// Outcomes decided before sending (done in an earlier run, skipped by the preflight,
    /// refused customer), by (group, operation).
    pub presettled: &'a HashMap<(usize, usize), OperationOutcome>,
}

/// An earlier success of the same operation on the same target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoneBefore {
    pub run_id: i64,
    pub finished_at: String,
}

pub struct Journal {
    path: PathBuf,
    conn: Connection,
    _lock: Option<File>,
}

/// SHA-256 of the input bytes: "the same input" for resuming.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_text() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn parse_time(text: Option<String>) -> Option<SystemTime> {
    text.and_then(|t| humantime::parse_rfc3339(&t).ok())
}

pub(crate) fn user_key(user: &str) -> String {
    user.to_lowercase()
}

pub(crate) fn status_text(status: OperationStatus) -> &'static str {
    match status {
        OperationStatus::Succeeded => "succeeded",
        OperationStatus::Failed => "failed",
        OperationStatus::Skipped => "skipped",
        OperationStatus::Pending => "pending",
    }
}

impl Journal {
    /// Opens (creating if needed, mode 0600) the journal for a run, holding its lock.
    pub fn open_for_run(path: &Path) -> Result<Journal, JournalError> {
        let lock_path = lock_path(path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| JournalError::Io {
                path: lock_path.display().to_string(),
                message: format!("cannot create the lock file: {e}"),
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Busy {
                    path: path.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(JournalError::Io {
                    path: lock_path.display().to_string(),
                    message: format!("cannot lock: {e}"),
                });
            }
        }
        create_private(path)?;
        let mut journal = Journal::connect(path)?;
        journal._lock = Some(lock);
        Ok(journal)
    }

    /// Opens an existing journal to read (status, report); takes no lock.
    pub fn open_to_read(path: &Path) -> Result<Journal, JournalError> {
        if !path.exists() {
            return Err(JournalError::Io {
                path: path.display().to_string(),
                message: "no such journal; give the --state file of the runs".into(),
            });
        }
        Journal::connect(path)
    }

    fn connect(path: &Path) -> Result<Journal, JournalError> {
        let conn = Connection::open(path).map_err(|source| JournalError::Sqlite {
            path: path.display().to_string(),
            source,
        })?;
        let journal = Journal {
            path: path.to_path_buf(),
            conn,
            _lock: None,
        };
        schema::prepare(&journal.conn).map_err(|e| journal.sqlite(e))?;
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sqlite(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The newest unfinished run of the same input content against the same target.
    pub fn resumable_run(
        &self,
        input_hash: &str,
        target: &str,
    ) -> Result<Option<i64>, JournalError> {
        self.conn
            .query_row(
                "SELECT id FROM runs WHERE input_hash = ?1 AND target = ?2 AND outcome <> 'finished'
                 ORDER BY id DESC LIMIT 1",
                params![input_hash, target],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sqlite(e))
    }

    /// Records a new run with its rows, plan and request IDs in one transaction. Operations
    /// already done for this target in earlier runs are recorded as succeeded with 0 attempts
    /// (unless `resend`).
    pub fn create_run(&mut self, new: NewRun<'_>) -> Result<i64, JournalError> {
        let path = self.path.display().to_string();
        let err = |source| JournalError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let headers: Vec<&str> = new
            .input
            .carried
            .iter()
            .map(|&i| new.input.headers[i].as_str())
            .collect();
        tx.execute(
            "INSERT INTO runs (input_path, input_hash, target, started_at, outcome, settings,
                               report_path, delimiter, headers)
             VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7, ?8)",
            params![
                new.input.path.display().to_string(),
                new.input_hash,
                new.target,
                now_text(),
                new.settings_json,
                new.report_path.display().to_string(),
                new.input.delimiter as i64,
                serde_json::to_string(&headers).expect("strings serialise"),
            ],
        )
        .map_err(err)?;
        let run_id = tx.last_insert_rowid();
        {
            let mut insert_row = tx
                .prepare(
                    "INSERT INTO rows (run_id, idx, line, cells, customer_id, group_idx, op_idx,
                                       invalid_message, sku_id, license_group)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(err)?;
            for (idx, (row, planned)) in new.input.rows.iter().zip(&new.plan.rows).enumerate() {
                let cells: Vec<&str> = new
                    .input
                    .carried
                    .iter()
                    .map(|&i| row.cells[i].as_str())
                    .collect();
                let (group, op, invalid, sku, license_group) = match &planned.plan {
                    RowPlan::Send { group, operation } => {
                        let g = &new.plan.groups[*group];
                        (
                            Some(*group as i64),
                            Some(*operation as i64),
                            None,
                            Some(g.operations[*operation].sku_id.to_string()),
                            Some(g.license_group.as_str()),
                        )
                    }
                    RowPlan::Invalid {
                        message,
                        sku_id,
                        license_group,
                    } => (
                        None,
                        None,
                        Some(message.clone()),
                        sku_id.map(|s| s.to_string()),
                        license_group.map(|g| g.as_str()),
                    ),
                };
                insert_row
                    .execute(params![
                        run_id,
                        idx as i64,
                        planned.line as i64,
                        serde_json::to_string(&cells).expect("strings serialise"),
                        planned.customer_id.map(|c| c.to_string()),
                        group,
                        op,
                        invalid,
                        sku,
                        license_group,
                    ])
                    .map_err(err)?;
            }
            let mut insert_group = tx
                .prepare(
                    "INSERT INTO groups (run_id, idx, customer_id, user, user_key, license_group)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err)?;
            let mut insert_op = tx
                .prepare(
                    "INSERT INTO operations (run_id, group_idx, op_idx, sku_id, action, excluded_plans,
                                             send_id, status, http_status, error_code, message,
                                             attempts, finished_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0, ?12)",
                )
                .map_err(err)?;
            for (g, group) in new.plan.groups.iter().enumerate() {
                insert_group
                    .execute(params![
                        run_id,
                        g as i64,
                        group.customer_id.to_string(),
                        group.user,
                        user_key(&group.user),
                        group.license_group.as_str(),
                    ])
                    .map_err(err)?;
                // One request ID per group, committed before anything is sent.
                let send_id = Uuid::new_v4().to_string();
                for (o, op) in group.operations.iter().enumerate() {
                    let settled = new.presettled.get(&(g, o));
                    insert_op
                        .execute(params![
                            run_id,
                            g as i64,
                            o as i64,
                            op.sku_id.to_string(),
                            op.action.as_str(),
                            serde_json::to_string(&op.excluded_plans).expect("uuids serialise"),
                            send_id,
                            settled.map(|o| status_text(o.status)),
                            settled.and_then(|o| o.http_status).map(i64::from),
                            settled.and_then(|o| o.error_code.clone()),
                            settled.map(|o| o.message.clone()),
                            settled
                                .and_then(|o| o.finished_at)
                                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                        ])
                        .map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)?;
        Ok(run_id)
    }

    /// The earlier success of this operation on `target`, if any.
    pub fn done_before(
        &self,
        target: &str,
        customer: Uuid,
        user: &str,
        sku: Uuid,
        action: Action,
    ) -> Result<Option<DoneBefore>, JournalError> {
        self.conn
            .prepare_cached(
                "SELECT run_id, finished_at FROM done
                 WHERE target = ?1 AND customer_id = ?2 AND user_key = ?3 AND sku_id = ?4 AND action = ?5",
            )
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![target, customer.to_string(), user_key(user), sku.to_string(), action.as_str()],
                    |r| Ok(DoneBefore { run_id: r.get(0)?, finished_at: r.get(1)? }),
                )
                .optional()
            })
            .map_err(|e| self.sqlite(e))
    }

    /// Loads a run's plan, request IDs and outcomes.
    pub fn load_run(&self, run_id: i64) -> Result<LoadedRun, JournalError> {
        let e = |source| self.sqlite(source);
        let (report_path, delimiter, headers): (String, i64, String) = self
            .conn
            .query_row(
                "SELECT report_path, delimiter, headers FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(e)?
            .ok_or_else(|| JournalError::Invalid {
                path: self.path.display().to_string(),
                message: format!("there is no run {run_id}"),
            })?;
        let corrupt = |what: &str| JournalError::Invalid {
            path: self.path.display().to_string(),
            message: format!("unreadable {what}; the file is damaged or from another program"),
        };

        let mut groups: Vec<Group> = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT customer_id, user, license_group FROM groups WHERE run_id = ?1 ORDER BY idx")
            .map_err(e)?;
        let mut rows = stmt.query([run_id]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let customer: String = r.get(0).map_err(e)?;
            let license_group: String = r.get(2).map_err(e)?;
            groups.push(Group {
                customer_id: customer.parse().map_err(|_| corrupt("customer ID"))?,
                user: r.get(1).map_err(e)?,
                license_group: LicenseGroup::parse(&license_group)
                    .ok_or_else(|| corrupt("license group"))?,
                operations: Vec::new(),
            });
        }
        drop(rows);
        drop(stmt);

        let mut outcomes: Vec<Vec<Option<OperationOutcome>>> = vec![Vec::new(); groups.len()];
        let mut send_ids: Vec<Vec<Uuid>> = vec![Vec::new(); groups.len()];
        let mut stmt = self
            .conn
            .prepare(
                "SELECT group_idx, sku_id, action, excluded_plans, status, http_status, error_code, message,
                        attempts, request_id, correlation_id, finished_at, warnings, send_id
                 FROM operations WHERE run_id = ?1 ORDER BY group_idx, op_idx",
            )
            .map_err(e)?;
        let mut rows = stmt.query([run_id]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let g: i64 = r.get(0).map_err(e)?;
            let group = groups
                .get_mut(g as usize)
                .ok_or_else(|| corrupt("operation"))?;
            let sku: String = r.get(1).map_err(e)?;
            let action: String = r.get(2).map_err(e)?;
            let excluded: String = r.get(3).map_err(e)?;
            group.operations.push(Operation {
                sku_id: sku.parse().map_err(|_| corrupt("SKU ID"))?,
                action: if action == "remove" {
                    Action::Remove
                } else {
                    Action::Assign
                },
                excluded_plans: serde_json::from_str(&excluded)
                    .map_err(|_| corrupt("excluded plans"))?,
                rows: Vec::new(),
            });
            let status: Option<String> = r.get(4).map_err(e)?;
            let outcome = match status.as_deref() {
                None => None,
                Some(status) => {
                    let warnings: Option<String> = r.get(12).map_err(e)?;
                    let uuid = |text: Option<String>| text.and_then(|t| t.parse().ok());
                    Some(OperationOutcome {
                        status: match status {
                            "succeeded" => OperationStatus::Succeeded,
                            "failed" => OperationStatus::Failed,
                            "skipped" => OperationStatus::Skipped,
                            _ => OperationStatus::Pending,
                        },
                        http_status: r.get::<_, Option<i64>>(5).map_err(e)?.map(|s| s as u16),
                        error_code: r.get(6).map_err(e)?,
                        message: r
                            .get::<_, Option<String>>(7)
                            .map_err(e)?
                            .unwrap_or_default(),
                        attempts: r.get::<_, i64>(8).map_err(e)? as u32,
                        request_id: uuid(r.get(9).map_err(e)?),
                        correlation_id: uuid(r.get(10).map_err(e)?),
                        finished_at: parse_time(r.get(11).map_err(e)?),
                        warnings: warnings
                            .and_then(|w| serde_json::from_str(&w).ok())
                            .unwrap_or_default(),
                    })
                }
            };
            outcomes[g as usize].push(outcome);
            let send_id: String = r.get(13).map_err(e)?;
            send_ids[g as usize].push(send_id.parse().map_err(|_| corrupt("request ID"))?);
        }
        drop(rows);
        drop(stmt);

        let mut plan_rows = Vec::new();
        let mut cells = Vec::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT line, cells, customer_id, group_idx, op_idx, invalid_message, sku_id, license_group
                 FROM rows WHERE run_id = ?1 ORDER BY idx",
            )
            .map_err(e)?;
        let mut rows = stmt.query([run_id]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let index = plan_rows.len();
            let row_cells: String = r.get(1).map_err(e)?;
            cells.push(serde_json::from_str(&row_cells).map_err(|_| corrupt("row cells"))?);
            let customer: Option<String> = r.get(2).map_err(e)?;
            let group: Option<i64> = r.get(3).map_err(e)?;
            let op: Option<i64> = r.get(4).map_err(e)?;
            let plan = match (group, op) {
                (Some(g), Some(o)) => {
                    let operation = groups
                        .get_mut(g as usize)
                        .and_then(|g| g.operations.get_mut(o as usize))
                        .ok_or_else(|| corrupt("row plan"))?;
                    operation.rows.push(index);
                    RowPlan::Send {
                        group: g as usize,
                        operation: o as usize,
                    }
                }
                _ => {
                    let sku: Option<String> = r.get(6).map_err(e)?;
                    let license_group: Option<String> = r.get(7).map_err(e)?;
                    RowPlan::Invalid {
                        message: r
                            .get::<_, Option<String>>(5)
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
        drop(rows);
        drop(stmt);

        Ok(LoadedRun {
            id: run_id,
            report_path: PathBuf::from(report_path),
            delimiter: u8::try_from(delimiter).unwrap_or(b','),
            headers: serde_json::from_str(&headers).map_err(|_| corrupt("headers"))?,
            cells,
            plan: Plan {
                rows: plan_rows,
                groups,
            },
            send_ids,
            outcomes,
        })
    }

    /// Marks how the run ended; only `finished` runs are no longer resumed.
    pub fn finish_run(
        &self,
        run_id: i64,
        outcome: &str,
        message: Option<&str>,
    ) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE runs SET outcome = ?2, message = ?3, finished_at = ?4 WHERE id = ?1",
                params![run_id, outcome, message, now_text()],
            )
            .map(drop)
            .map_err(|e| self.sqlite(e))
    }

    /// The most recent runs, newest first, with their row counts by status.
    pub fn recent_runs(&self, limit: usize) -> Result<Vec<RunInfo>, JournalError> {
        let e = |source| self.sqlite(source);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, input_path, target, started_at, finished_at, outcome, message, report_path
                 FROM runs ORDER BY id DESC LIMIT ?1",
            )
            .map_err(e)?;
        let runs: Vec<RunInfo> = stmt
            .query_map([limit as i64], |r| {
                Ok(RunInfo {
                    id: r.get(0)?,
                    input_path: r.get(1)?,
                    target: r.get(2)?,
                    started_at: r.get(3)?,
                    finished_at: r.get(4)?,
                    outcome: r.get(5)?,
                    message: r.get(6)?,
                    report_path: r.get(7)?,
                    counts: Vec::new(),
                })
            })
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        let mut counts = self
            .conn
            .prepare(
                "SELECT CASE WHEN r.invalid_message IS NOT NULL THEN 'invalid'
                             ELSE COALESCE(o.status, 'pending') END AS s, COUNT(*)
                 FROM rows r LEFT JOIN operations o
                   ON o.run_id = r.run_id AND o.group_idx = r.group_idx AND o.op_idx = r.op_idx
                 WHERE r.run_id = ?1 GROUP BY s",
            )
            .map_err(e)?;
        let mut with_counts = Vec::new();
        for mut run in runs {
            run.counts = counts
                .query_map([run.id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(e)?
                .collect::<Result<_, _>>()
                .map_err(e)?;
            with_counts.push(run);
        }
        Ok(with_counts)
    }

    /// The newest run's ID, if any.
    pub fn latest_run(&self) -> Result<Option<i64>, JournalError> {
        self.conn
            .query_row("SELECT MAX(id) FROM runs", [], |r| r.get(0))
            .map_err(|e| self.sqlite(e))
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    path.with_file_name(name)
}

/// Creates the journal file readable by its owner only (it names customers and users).
fn create_private(path: &Path) -> Result<(), JournalError> {
    if path.exists() {
        return Ok(());
    }
    let mut options = OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop).map_err(|e| JournalError::Io {
        path: path.display().to_string(),
        message: format!("cannot create the journal: {e}"),
    })
}
