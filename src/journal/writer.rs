//! The journal's writer thread: outcomes arrive from the engine and are committed in batches
//! (up to [`BATCH`] messages or [`LINGER`]), so durability costs one fsync per batch rather than
//! per request. A message that someone waits for (a new request ID, a flush) ends the batch at
//! once and is acknowledged only after its commit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, params};
use tokio::sync::oneshot;

use super::schema;
use crate::engine::{LocationFix, Pass, Recorder};
use crate::outcome::{OperationOutcome, OperationStatus};

const BATCH: usize = 512;
const LINGER: Duration = Duration::from_millis(25);

type Ack = oneshot::Sender<Result<(), String>>;

enum Message {
    Record {
        group: usize,
        outcomes: Vec<(usize, OperationOutcome)>,
    },
    BeginPasses {
        group: usize,
        passes: Vec<Pass>,
        settled: Vec<(usize, OperationOutcome)>,
        ack: Ack,
    },
    Location {
        group: usize,
        fix: LocationFix,
        passes: Vec<Pass>,
        ack: Ack,
    },
}

impl Message {
    /// Someone waits for its commit: it ends the batch.
    fn awaited(&self) -> bool {
        matches!(self, Message::BeginPasses { .. } | Message::Location { .. })
    }

    fn ack(self) -> Option<Ack> {
        match self {
            Message::BeginPasses { ack, .. } | Message::Location { ack, .. } => Some(ack),
            Message::Record { .. } => None,
        }
    }
}

/// Hands outcomes to the writer thread; dropping the last sender lets the thread finish.
pub struct JournalWriter {
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    thread: Mutex<Option<JoinHandle<Result<(), String>>>>,
}

struct Context {
    run_id: i64,
    target: String,
    /// The passes of this run that re-send an earlier run's unanswered request: (group,
    /// request ID) → (earlier run, its group). Usually empty.
    carried: HashMap<(i64, String), (i64, i64)>,
}

/// The carried passes of `run_id` (see [`super::carry`]).
fn carried_of(
    conn: &Connection,
    run_id: i64,
) -> rusqlite::Result<HashMap<(i64, String), (i64, i64)>> {
    let mut stmt = conn.prepare(
        "SELECT group_idx, request_id, from_run, from_group FROM carried WHERE run_id = ?1",
    )?;
    stmt.query_map([run_id], |r| {
        Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?)))
    })?
    .collect()
}

impl JournalWriter {
    /// Starts the writer on its own connection to `path`.
    pub fn start(path: &Path, run_id: i64, target: &str) -> Result<JournalWriter, String> {
        let conn = Connection::open(path).map_err(|e| e.to_string())?;
        schema::prepare(&conn).map_err(|e| e.to_string())?;
        conn.pragma_update(None, "cache_size", -schema::SMALL_CACHE_KIB)
            .map_err(|e| e.to_string())?;
        let (sender, receiver) = mpsc::channel();
        let context = Context {
            run_id,
            target: target.to_string(),
            carried: carried_of(&conn, run_id).map_err(|e| e.to_string())?,
        };
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || write_loop(conn, receiver, context))
            .map_err(|e| e.to_string())?;
        Ok(JournalWriter {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, message: Message) {
        if let Some(sender) = self.sender.lock().expect("writer lock").as_ref() {
            // A send error means the thread stopped on a write error; finish() reports it.
            let _ = sender.send(message);
        }
    }

    /// Commits everything sent so far and stops the thread; the first write error, if any.
    pub fn finish(&self) -> Result<(), String> {
        drop(self.sender.lock().expect("writer lock").take());
        match self.thread.lock().expect("writer lock").take() {
            Some(thread) => thread
                .join()
                .map_err(|_| "the journal writer panicked".to_string())?,
            None => Ok(()),
        }
    }
}

impl Recorder for JournalWriter {
    fn record(&self, group: usize, outcomes: Vec<(usize, OperationOutcome)>) {
        self.send(Message::Record { group, outcomes });
    }

    fn begin_passes(
        &self,
        group: usize,
        passes: Vec<Pass>,
        settled: Vec<(usize, OperationOutcome)>,
    ) -> oneshot::Receiver<Result<(), String>> {
        let (ack, done) = oneshot::channel();
        self.send(Message::BeginPasses {
            group,
            passes,
            settled,
            ack,
        });
        done
    }

    fn record_location(
        &self,
        group: usize,
        fix: LocationFix,
        passes: Vec<Pass>,
    ) -> oneshot::Receiver<Result<(), String>> {
        let (ack, done) = oneshot::channel();
        self.send(Message::Location {
            group,
            fix,
            passes,
            ack,
        });
        done
    }
}

fn write_loop(
    mut conn: Connection,
    receiver: mpsc::Receiver<Message>,
    context: Context,
) -> Result<(), String> {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + LINGER;
        while batch.len() < BATCH && !batch.last().is_some_and(Message::awaited) {
            match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let result = commit(&mut conn, &context, &mut batch).map_err(|e| e.to_string());
        for ack in batch.into_iter().filter_map(Message::ack) {
            let _ = ack.send(result.clone());
        }
        if let Err(error) = result {
            tracing::error!("cannot write the journal: {error}");
            return Err(error);
        }
    }
    Ok(())
}

fn commit(conn: &mut Connection, context: &Context, batch: &mut [Message]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for message in batch.iter() {
        match message {
            Message::Record { group, outcomes } => write_outcomes(&tx, context, *group, outcomes)?,
            Message::BeginPasses {
                group,
                passes,
                settled,
                ..
            } => {
                write_outcomes(&tx, context, *group, settled)?;
                write_passes(&tx, context, *group, passes)?;
            }
            Message::Location {
                group, fix, passes, ..
            } => {
                tx.prepare_cached(
                    "UPDATE groups SET location = ?3, location_request_id = ?4, location_answered = ?5
                     WHERE run_id = ?1 AND idx = ?2",
                )?
                .execute(params![
                    context.run_id,
                    *group as i64,
                    fix.location.as_str(),
                    fix.request_id.to_string(),
                    fix.answered
                ])?;
                write_passes(&tx, context, *group, passes)?;
            }
        }
    }
    tx.commit()
}

/// The request ID each operation of `passes` is (next) sent under.
fn write_passes(
    tx: &Transaction<'_>,
    context: &Context,
    group: usize,
    passes: &[Pass],
) -> rusqlite::Result<()> {
    let mut assign = tx.prepare_cached(
        "UPDATE operations SET send_id = ?4 WHERE run_id = ?1 AND group_idx = ?2 AND op_idx = ?3",
    )?;
    for pass in passes {
        for op in &pass.operations {
            assign.execute(params![
                context.run_id,
                group as i64,
                *op as i64,
                pass.request_id.to_string()
            ])?;
        }
    }
    Ok(())
}

fn write_outcomes(
    tx: &Transaction<'_>,
    context: &Context,
    group_index: usize,
    outcomes: &[(usize, OperationOutcome)],
) -> rusqlite::Result<()> {
    let mut update = tx.prepare_cached(
        "UPDATE operations SET status = ?4, http_status = ?5, error_code = ?6, message = ?7, attempts = ?8,
                request_id = ?9, correlation_id = ?10, finished_at = ?11, warnings = ?12,
                unanswered = ?13
         WHERE run_id = ?1 AND group_idx = ?2 AND op_idx = ?3",
    )?;
    // A success is remembered per target; it undoes an earlier opposite one (a remove after
    // an assign, and the other way round): the next sheet that asks for that must send it.
    // Plain keyed statements: with a join, SQLite re-prepared the statement on every call.
    let mut user_of_group = tx.prepare_cached(
        "SELECT customer_id, user_key FROM groups WHERE run_id = ?1 AND idx = ?2",
    )?;
    let mut operation = tx.prepare_cached(
        "SELECT sku_id, action FROM operations WHERE run_id = ?1 AND group_idx = ?2 AND op_idx = ?3",
    )?;
    let mut mark_done = tx.prepare_cached(
        "INSERT OR REPLACE INTO done (target, customer_id, user_key, sku_id, action, run_id, finished_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut undo_opposite = tx.prepare_cached(
        "DELETE FROM done
         WHERE target = ?1 AND customer_id = ?2 AND user_key = ?3 AND sku_id = ?4 AND action = ?5",
    )?;
    let mut user: Option<(String, String)> = None;
    for (op_index, outcome) in outcomes {
        let finished_at = outcome
            .finished_at
            .map(|t| humantime::format_rfc3339_seconds(t).to_string());
        if let Some(request_id) = outcome.request_id
            && !context.carried.is_empty()
        {
            answer_earlier_run(tx, context, group_index, request_id, outcome)?;
        }
        update.execute(params![
            context.run_id,
            group_index as i64,
            *op_index as i64,
            outcome.status.as_str(),
            outcome.http_status.map(i64::from),
            outcome.error_code,
            outcome.message,
            outcome.attempts as i64,
            outcome.request_id.map(|id| id.to_string()),
            outcome.correlation_id.map(|id| id.to_string()),
            finished_at,
            (!outcome.warnings.is_empty())
                .then(|| serde_json::to_string(&outcome.warnings).expect("strings serialise")),
            outcome.unanswered,
        ])?;
        if outcome.status == OperationStatus::Succeeded {
            if user.is_none() {
                user = Some(
                    user_of_group.query_row(params![context.run_id, group_index as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?,
                );
            }
            let (customer, user_key) = user.as_ref().expect("read above");
            let (sku, action): (String, String) = operation.query_row(
                params![context.run_id, group_index as i64, *op_index as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let opposite = if action == "assign" {
                "remove"
            } else {
                "assign"
            };
            mark_done.execute(params![
                context.target,
                customer,
                user_key,
                sku,
                action,
                context.run_id,
                finished_at.clone().unwrap_or_default()
            ])?;
            undo_opposite.execute(params![context.target, customer, user_key, sku, opposite])?;
        }
    }
    Ok(())
}

/// A carried pass got its answer: the earlier run's operations sent under the same request ID
/// get it too, so that run no longer holds a request in doubt.
fn answer_earlier_run(
    tx: &Transaction<'_>,
    context: &Context,
    group_index: usize,
    request_id: uuid::Uuid,
    outcome: &OperationOutcome,
) -> rusqlite::Result<()> {
    let definitive = match outcome.status {
        OperationStatus::Succeeded => true,
        OperationStatus::Failed => !outcome.unanswered,
        OperationStatus::Skipped | OperationStatus::Pending => false,
    };
    let request_id = request_id.to_string();
    let Some(&(from_run, from_group)) = context
        .carried
        .get(&(group_index as i64, request_id.clone()))
        .filter(|_| definitive)
    else {
        return Ok(());
    };
    tx.prepare_cached(
        "UPDATE operations SET status = ?4, http_status = ?5, error_code = ?6,
                message = 'answered in run ' || ?7 || ', which sent this request again: ' || ?8,
                request_id = ?3, correlation_id = ?9, finished_at = ?10, unanswered = 0
         WHERE run_id = ?1 AND group_idx = ?2 AND send_id = ?3
           AND (status IS NULL OR status = 'pending' OR unanswered = 1)",
    )?
    .execute(params![
        from_run,
        from_group,
        request_id,
        outcome.status.as_str(),
        outcome.http_status.map(i64::from),
        outcome.error_code,
        context.run_id,
        if outcome.message.is_empty() {
            "done"
        } else {
            outcome.message.as_str()
        },
        outcome.correlation_id.map(|id| id.to_string()),
        outcome
            .finished_at
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
    ])
    .map(drop)
}
