//! The durable journal (SQLite, WAL): runs, their rows and plan, each group's request ID, every
//! operation's outcome, and what is already done per API target. It makes `kill -9` safe,
//! resumes unfinished runs, keeps nightly runs incremental, and is the source of the report.
//!
//! The journal also holds the plan while it is made ([`Draft`]) and hands it back in pages
//! ([`read`]), so no part of a run keeps a per-row copy of the sheet in memory.
//!
//! Durability rules: the plan and every group's MS-RequestId are committed in one transaction
//! before any request leaves; outcomes are group-committed by a writer thread (see
//! [`writer`]); a new request ID (after a partial failure) is committed, together with the
//! outcome that caused it, before that request is sent.

mod carry;
mod draft;
#[doc(hidden)]
pub mod inspect;
#[cfg(test)]
mod planning_tests;
pub mod read;
mod schema;
pub mod writer;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

pub use draft::Draft;

use crate::input::InputHeader;
use crate::outcome::OperationStatus;

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

/// What a run recorded about its input and report.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: i64,
    /// The input file as the run was given it.
    pub input_path: PathBuf,
    pub report_path: PathBuf,
    pub delimiter: u8,
    /// Header names of the carried input columns.
    pub headers: Vec<String>,
    pub blank_lines: usize,
}

/// What a new run records besides its rows.
pub struct NewRun<'a> {
    pub input_path: &'a Path,
    pub input_hash: &'a str,
    pub delimiter: u8,
    /// Header names of the carried input columns.
    pub headers: Vec<&'a str>,
    pub target: &'a str,
    pub report_path: &'a Path,
    pub settings_json: String,
}

impl<'a> NewRun<'a> {
    /// A run of `header`'s file that only plans (no target, no report).
    pub fn scratch(header: &'a InputHeader) -> Self {
        NewRun {
            input_path: &header.path,
            input_hash: "",
            delimiter: header.delimiter,
            headers: header.carried_names(),
            target: "",
            report_path: Path::new(""),
            settings_json: "{}".into(),
        }
    }
}

pub struct Journal {
    path: PathBuf,
    conn: Connection,
    _lock: Option<File>,
    /// The schema whose `done` table says what earlier runs did: `main`, or `prior` when a
    /// scratch journal plans against a state file it must not write.
    done_schema: &'static str,
}

/// SHA-256 of some bytes, hex: a short, stable fingerprint (e.g. of a sandbox scenario).
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
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

/// The status an operation's `status` column holds; a text no operation has (a journal written
/// by a newer version) reads as pending, so the operation is looked at again.
fn status_of(text: &str) -> OperationStatus {
    OperationStatus::from_text(text).unwrap_or(OperationStatus::Pending)
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

    /// A private journal in a temporary file, deleted when dropped: `plan` and `--dry-run`
    /// plan in it, so planning a large sheet needs no more memory than a run does.
    pub fn scratch() -> Result<Journal, JournalError> {
        let journal = Journal::connect(Path::new(""))?;
        journal
            .conn
            .pragma_update(None, "synchronous", "OFF")
            .map_err(|e| journal.sqlite(e))?;
        Ok(journal)
    }

    /// Reads what earlier runs did from the journal at `path` (read only; a scratch journal
    /// plans against the state file of the real runs).
    pub fn attach_prior(&mut self, path: &Path) -> Result<(), JournalError> {
        // Opening it once brings an older journal up to date before it is read.
        drop(Journal::open_to_read(path)?);
        self.conn
            .execute("ATTACH DATABASE ?1 AS prior", [path.display().to_string()])
            .map_err(|e| self.sqlite(e))?;
        self.done_schema = "prior";
        Ok(())
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
            done_schema: "main",
        };
        schema::prepare(&journal.conn).map_err(|e| journal.sqlite(e))?;
        // Request IDs are made where groups are made: in SQL (see `Draft::group`).
        journal
            .conn
            .create_scalar_function("new_request_id", 0, FunctionFlags::SQLITE_UTF8, |_| {
                Ok(Uuid::new_v4().to_string())
            })
            .map_err(|e| journal.sqlite(e))?;
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

    /// Where planning keeps its temporary files: beside the journal (the same disk), or in
    /// the system's temporary directory for a scratch journal.
    fn spill_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ if self.path.as_os_str().is_empty() => std::env::temp_dir(),
            _ => PathBuf::from("."),
        }
    }

    fn spill_error(&self, error: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.display().to_string(),
            message: format!(
                "planning's temporary file in {}: {error}",
                self.spill_dir().display()
            ),
        }
    }

    fn corrupt(&self, what: &str) -> JournalError {
        JournalError::Invalid {
            path: self.path.display().to_string(),
            message: format!("unreadable {what}; the file is damaged or from another program"),
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

    /// What a run recorded about its input and report.
    pub fn run_record(&self, run_id: i64) -> Result<RunRecord, JournalError> {
        let (report_path, delimiter, headers, blank_lines, input_path): (
            String,
            i64,
            String,
            i64,
            String,
        ) = self
            .conn
            .query_row(
                "SELECT report_path, delimiter, headers, blank_lines, input_path FROM runs
                 WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?
            .ok_or_else(|| JournalError::Invalid {
                path: self.path.display().to_string(),
                message: format!("there is no run {run_id}"),
            })?;
        Ok(RunRecord {
            id: run_id,
            input_path: PathBuf::from(input_path),
            report_path: PathBuf::from(report_path),
            delimiter: u8::try_from(delimiter).unwrap_or(b','),
            headers: serde_json::from_str(&headers).map_err(|_| self.corrupt("headers"))?,
            blank_lines: blank_lines as usize,
        })
    }

    /// A run taken up again may leave requests in doubt anew: counted when it ends.
    pub fn resume_run(&self, run_id: i64) -> Result<(), JournalError> {
        self.conn
            .execute("UPDATE runs SET in_doubt = NULL WHERE id = ?1", [run_id])
            .map(drop)
            .map_err(|e| self.sqlite(e))
    }

    /// Marks how the run ended; only `finished` runs are no longer resumed.
    pub fn finish_run(
        &self,
        run_id: i64,
        outcome: &str,
        message: Option<&str>,
    ) -> Result<(), JournalError> {
        // How many of its operations the run leaves in doubt: a later run looks for requests
        // to send again only in runs that left some (see `carry`).
        self.conn
            .execute(
                "UPDATE runs SET outcome = ?2, message = ?3, finished_at = ?4,
                        in_doubt = (SELECT COUNT(*) FROM operations o WHERE o.run_id = ?1
                                    AND (o.status IS NULL OR o.status = 'pending'
                                         OR o.unanswered = 1))
                 WHERE id = ?1",
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Planning's temporary files go beside the journal (the disk the operator chose for the
    /// state file, not the working directory cron happens to start in); a scratch journal's go
    /// to the system's temporary directory.
    #[test]
    fn planning_spills_beside_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nächtlich").join("state.sqlite");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let journal = Journal::connect(&path).unwrap();
        assert_eq!(journal.spill_dir(), dir.path().join("nächtlich"));
        let scratch = Journal::scratch().unwrap();
        assert_eq!(scratch.spill_dir(), std::env::temp_dir());
        let relative = Journal {
            path: PathBuf::from("state.sqlite"),
            ..Journal::scratch().unwrap()
        };
        assert_eq!(relative.spill_dir(), PathBuf::from("."));
    }
}
