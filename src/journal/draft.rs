//! A new run being recorded: its rows are written as they are read, then planned where they
//! are stored — conflicts, identical rows, groups and operations as set operations in SQL — so
//! a sheet of any size is planned without holding it in memory. Everything happens in one
//! transaction: the run, its plan and every group's request ID become durable together at
//! [`Draft::commit`], before anything is sent, or not at all.

use rusqlite::{Connection, params};
use uuid::Uuid;

use super::{Journal, JournalError, NewRun, now_text, status_text};
use crate::engine::OperationOutcome;
use crate::input::{InputHeader, InputRow};
use crate::plan::RowResolution;
use crate::tenant::preflight::SeatNeed;

/// A run in the making; dropped without [`Draft::commit`], it leaves no trace.
pub struct Draft<'a> {
    journal: &'a Journal,
    run_id: i64,
    next_row: i64,
    blank_lines: i64,
    committed: bool,
}

impl Journal {
    /// Starts recording a new run (one transaction until [`Draft::commit`]).
    pub fn draft(&mut self, new: NewRun<'_>) -> Result<Draft<'_>, JournalError> {
        let e = |source| self.sqlite(source);
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(e)?;
        let mut draft = Draft {
            journal: self,
            run_id: 0,
            next_row: 0,
            blank_lines: 0,
            committed: false,
        };
        self.conn
            .execute(
                "INSERT INTO runs (input_path, input_hash, target, started_at, outcome, settings,
                                   report_path, delimiter, headers)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7, ?8)",
                params![
                    new.input_path.display().to_string(),
                    new.input_hash,
                    new.target,
                    now_text(),
                    new.settings_json,
                    new.report_path.display().to_string(),
                    new.delimiter as i64,
                    serde_json::to_string(&new.headers).expect("strings serialise"),
                ],
            )
            .map_err(e)?;
        draft.run_id = self.conn.last_insert_rowid();
        Ok(draft)
    }
}

impl Draft<'_> {
    fn conn(&self) -> &Connection {
        &self.journal.conn
    }

    fn sqlite(&self, source: rusqlite::Error) -> JournalError {
        self.journal.sqlite(source)
    }

    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Records one data row with what resolution made of it.
    pub fn add_row(
        &mut self,
        row: &InputRow,
        header: &InputHeader,
        resolution: &RowResolution,
    ) -> Result<(), JournalError> {
        let cells: Vec<&str> = header
            .carried
            .iter()
            .map(|&i| row.cells[i].as_str())
            .collect();
        let customer = row.request.as_ref().ok().map(|r| r.customer_id.to_string());
        let mut insert = self
            .conn()
            .prepare_cached(
                "INSERT INTO rows (run_id, idx, line, cells, customer_id, invalid_message, sku_id,
                                   license_group, user, user_key, action, excluded_plans)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .map_err(|e| self.sqlite(e))?;
        let cells = serde_json::to_string(&cells).expect("strings serialise");
        let result = match resolution {
            RowResolution::Invalid {
                message,
                sku_id,
                license_group,
            } => insert.execute(params![
                self.run_id,
                self.next_row,
                row.line as i64,
                cells,
                customer,
                message,
                sku_id.map(|s| s.to_string()),
                license_group.map(|g| g.as_str()),
                None::<String>,
                None::<String>,
                None::<String>,
                None::<String>,
            ]),
            RowResolution::Resolved(r) => insert.execute(params![
                self.run_id,
                self.next_row,
                row.line as i64,
                cells,
                customer,
                None::<String>,
                r.sku.to_string(),
                r.license_group.as_str(),
                r.user,
                r.user_key,
                r.action.as_str(),
                serde_json::to_string(&r.excluded).expect("uuids serialise"),
            ]),
        };
        drop(insert);
        result.map_err(|e| self.sqlite(e))?;
        self.next_row += 1;
        Ok(())
    }

    /// Counts a line that holds no value (reported in the summary, not a data row).
    pub fn add_blank_line(&mut self) {
        self.blank_lines += 1;
    }

    /// Applies the rules between rows (SPEC §4): rows asking about the same (customer, user,
    /// SKU) must agree — identical ones become one operation, an assign and a remove (or two
    /// different exclusions) make all of them invalid; then one group (one request, with its
    /// request ID) per (customer, user, license group). A group's index is the index of its
    /// first row (so groups go out in input order); its operations are numbered 0.. by their
    /// first rows. Each step is one pass, or one keyed lookup per row or operation: no step
    /// compares rows pairwise, and none needs memory per row.
    pub fn group(&mut self) -> Result<(), JournalError> {
        let e = |source| self.sqlite(source);
        let conn = self.conn();
        let run = self.run_id;
        let mut clock = std::time::Instant::now();
        let mut step = |what: &str| {
            tracing::debug!("planning: {what} took {:?}", clock.elapsed());
            clock = std::time::Instant::now();
        };
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS conflict (
                 customer_id TEXT, user_key TEXT, sku_id TEXT, message TEXT,
                 PRIMARY KEY (customer_id, user_key, sku_id)) WITHOUT ROWID;
             CREATE TEMP TABLE IF NOT EXISTS operation_key (
                 customer_id TEXT, user_key TEXT, license_group TEXT, sku_id TEXT,
                 first INTEGER, n INTEGER, action TEXT, excluded_plans TEXT,
                 group_idx INTEGER, op_idx INTEGER,
                 PRIMARY KEY (customer_id, user_key, license_group, sku_id)) WITHOUT ROWID;
             DELETE FROM temp.conflict;
             DELETE FROM temp.operation_key;",
        )
        .map_err(e)?;
        let conflicts = conn
            .execute(
                "INSERT INTO temp.conflict
                 SELECT customer_id, user_key, sku_id,
                        'conflict: lines ' || group_concat(line, ' and ' ORDER BY idx) || ' ' ||
                        CASE WHEN COUNT(DISTINCT action) > 1
                             THEN 'ask to both assign and remove this SKU for this user'
                             ELSE 'assign this SKU with different excluded_plans' END ||
                        '; keep one and run again'
                 FROM rows WHERE run_id = ?1 AND invalid_message IS NULL
                 GROUP BY customer_id, user_key, sku_id
                 HAVING COUNT(DISTINCT action) > 1 OR COUNT(DISTINCT excluded_plans) > 1",
                [run],
            )
            .map_err(e)?;
        if conflicts > 0 {
            conn.execute(
                "UPDATE rows SET invalid_message = c.message FROM temp.conflict c
                 WHERE rows.run_id = ?1 AND rows.invalid_message IS NULL
                   AND rows.customer_id = c.customer_id AND rows.user_key = c.user_key
                   AND rows.sku_id = c.sku_id",
                [run],
            )
            .map_err(e)?;
        }
        step("conflicts");
        // One operation per (customer, user, license group, SKU), keyed so that each row can
        // look its operation up.
        conn.execute(
            "INSERT INTO temp.operation_key
             SELECT customer_id, user_key, license_group, sku_id, MIN(idx), COUNT(*), action,
                    excluded_plans, NULL, NULL
             FROM rows WHERE run_id = ?1 AND invalid_message IS NULL
             GROUP BY customer_id, user_key, license_group, sku_id",
            [run],
        )
        .map_err(e)?;
        step("operations found");
        // The group of an operation: the same key without the SKU, a range of the primary key.
        conn.execute(
            "UPDATE temp.operation_key AS k SET
                 group_idx = (SELECT MIN(first) FROM temp.operation_key s
                              WHERE s.customer_id = k.customer_id AND s.user_key = k.user_key
                                AND s.license_group = k.license_group),
                 op_idx = (SELECT COUNT(*) FROM temp.operation_key s
                           WHERE s.customer_id = k.customer_id AND s.user_key = k.user_key
                             AND s.license_group = k.license_group AND s.first < k.first)",
            [],
        )
        .map_err(e)?;
        step("operations numbered");
        conn.execute(
            "INSERT INTO groups (run_id, idx, customer_id, user, user_key, license_group, send_id)
             SELECT ?1, k.group_idx, k.customer_id, f.user, k.user_key, k.license_group,
                    new_request_id()
             FROM temp.operation_key k JOIN rows f ON f.run_id = ?1 AND f.idx = k.first
             WHERE k.op_idx = 0",
            [run],
        )
        .map_err(e)?;
        step("groups");
        conn.execute(
            "INSERT INTO operations (run_id, group_idx, op_idx, sku_id, action, excluded_plans,
                                     send_id, first_row, row_count)
             SELECT ?1, k.group_idx, k.op_idx, k.sku_id, k.action, k.excluded_plans, g.send_id,
                    k.first, k.n
             FROM temp.operation_key k JOIN groups g ON g.run_id = ?1 AND g.idx = k.group_idx",
            [run],
        )
        .map_err(e)?;
        step("operations");
        conn.execute(
            "UPDATE rows SET (group_idx, op_idx) = (
                 SELECT group_idx, op_idx FROM temp.operation_key k
                 WHERE k.customer_id = rows.customer_id AND k.user_key = rows.user_key
                   AND k.license_group = rows.license_group AND k.sku_id = rows.sku_id)
             WHERE run_id = ?1 AND invalid_message IS NULL",
            [run],
        )
        .map_err(e)?;
        step("rows to operations");
        Ok(())
    }

    /// Operations that already succeeded on `target` in an earlier run (of this journal, or of
    /// the journal attached as `prior`): not sent again.
    pub fn settle_done_before(&mut self, target: &str) -> Result<(), JournalError> {
        let e = |source| self.sqlite(source);
        let done = self.journal.done_schema;
        let conn = self.conn();
        let any: bool = conn
            .query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM {done}.done WHERE target = ?1)"),
                [target],
                |r| r.get(0),
            )
            .map_err(e)?;
        if !any {
            return Ok(());
        }
        conn.execute(
            &format!(
                "UPDATE operations SET status = 'succeeded', attempts = 0, finished_at = d.finished_at,
                        message = 'already done in run ' || d.run_id || ' on ' || d.finished_at ||
                                  '; not sent again (--resend sends it)'
                 FROM groups g, {done}.done d
                 WHERE operations.run_id = ?1 AND operations.status IS NULL
                   AND g.run_id = ?1 AND g.idx = operations.group_idx
                   AND d.target = ?2 AND d.customer_id = g.customer_id AND d.user_key = g.user_key
                   AND d.sku_id = operations.sku_id AND d.action = operations.action"
            ),
            params![self.run_id, target],
        )
        .map_err(e)?;
        Ok(())
    }

    /// Every still open operation of `customer` gets `outcome` (e.g. a refused customer).
    pub fn settle_customer(
        &mut self,
        customer: Uuid,
        outcome: &OperationOutcome,
    ) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "UPDATE operations SET status = ?3, http_status = ?4, error_code = ?5, message = ?6,
                        finished_at = ?7
                 WHERE run_id = ?1 AND status IS NULL
                   AND group_idx IN (SELECT idx FROM groups WHERE run_id = ?1 AND customer_id = ?2)",
                params![
                    self.run_id,
                    customer.to_string(),
                    status_text(outcome.status),
                    outcome.http_status.map(i64::from),
                    outcome.error_code,
                    outcome.message,
                    now_text(),
                ],
            )
            .map(drop)
            .map_err(|e| self.sqlite(e))
    }

    /// Assigns still to send, per (customer, SKU): what the seat preflight checks.
    pub fn seat_needs(&self) -> Result<Vec<SeatNeed>, JournalError> {
        let e = |source| self.sqlite(source);
        let mut stmt = self
            .conn()
            .prepare(
                "SELECT g.customer_id, o.sku_id, COUNT(*) FROM operations o
                 JOIN groups g ON g.run_id = o.run_id AND g.idx = o.group_idx
                 WHERE o.run_id = ?1 AND o.status IS NULL AND o.action = 'assign'
                 GROUP BY g.customer_id, o.sku_id ORDER BY g.customer_id, o.sku_id",
            )
            .map_err(e)?;
        let needs = stmt
            .query_map([self.run_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(e)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(e)?;
        needs
            .into_iter()
            .map(|(customer, sku, needed)| {
                Ok(SeatNeed {
                    customer: customer
                        .parse()
                        .map_err(|_| self.journal.corrupt("customer ID"))?,
                    sku: sku.parse().map_err(|_| self.journal.corrupt("SKU ID"))?,
                    needed: needed as u64,
                })
            })
            .collect()
    }

    /// Marks the open assigns of (customer, SKU) after the first `keep`, in input order, with
    /// `outcome` (the strict preflight's excess).
    pub fn settle_excess(
        &mut self,
        customer: Uuid,
        sku: Uuid,
        keep: u64,
        outcome: &OperationOutcome,
    ) -> Result<(), JournalError> {
        self.conn()
            .execute(
                "UPDATE operations SET status = ?5, message = ?6, finished_at = ?7
                 WHERE run_id = ?1 AND (group_idx, op_idx) IN (
                     SELECT o.group_idx, o.op_idx FROM operations o
                     JOIN groups g ON g.run_id = o.run_id AND g.idx = o.group_idx
                     WHERE o.run_id = ?1 AND o.status IS NULL AND o.action = 'assign'
                       AND g.customer_id = ?2 AND o.sku_id = ?3
                     ORDER BY o.first_row LIMIT -1 OFFSET ?4)",
                params![
                    self.run_id,
                    customer.to_string(),
                    sku.to_string(),
                    keep as i64,
                    status_text(outcome.status),
                    outcome.message,
                    now_text(),
                ],
            )
            .map(drop)
            .map_err(|e| self.sqlite(e))
    }

    /// Makes the run, its plan and its request IDs durable; returns the run's ID.
    pub fn commit(mut self) -> Result<i64, JournalError> {
        let e = |source| self.sqlite(source);
        self.conn()
            .execute(
                "UPDATE runs SET blank_lines = ?2 WHERE id = ?1",
                params![self.run_id, self.blank_lines],
            )
            .map_err(e)?;
        self.conn().execute_batch("COMMIT").map_err(e)?;
        self.committed = true;
        Ok(self.run_id)
    }
}

impl Drop for Draft<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = self.conn().execute_batch("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine::OperationStatus;
    use crate::plan::catalog::BuiltinCatalog;
    use crate::plan::resolve_row;
    use crate::report::RowStatus;

    const C: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";
    const PBI: &str = "f8a1db68-be16-40ed-86d5-cb42ce701560";

    #[test]
    fn the_excess_is_skipped_in_input_order_and_settled_operations_need_no_seat() {
        // Users listed 4, 3, 2, 1, 0: input order, not user order, decides who waits.
        let mut text = String::from("customer_id,user_id,sku\n");
        for i in (0..5).rev() {
            text.push_str(&format!("{C},u{i}@x.com,{PBI}\n"));
        }
        let input = crate::input::parse(Path::new("t.csv"), text.as_bytes(), None).unwrap();
        let mut journal = Journal::scratch().unwrap();
        let mut draft = journal.draft(NewRun::scratch(&input.header)).unwrap();
        for row in &input.rows {
            let resolution = resolve_row(&input.header, row, &BuiltinCatalog);
            draft.add_row(row, &input.header, &resolution).unwrap();
        }
        draft.group().unwrap();
        let (customer, sku) = (C.parse().unwrap(), PBI.parse().unwrap());
        assert_eq!(draft.seat_needs().unwrap()[0].needed, 5);
        let skipped = OperationOutcome::unsent(OperationStatus::Skipped, "no seat");
        draft.settle_excess(customer, sku, 3, &skipped).unwrap();
        assert_eq!(draft.seat_needs().unwrap()[0].needed, 3);
        let run = draft.commit().unwrap();
        let mut statuses = Vec::new();
        journal
            .each_report_row(run, "open", |cells, row| {
                statuses.push((cells[1].clone(), row.status));
                Ok(())
            })
            .unwrap();
        let waiting: Vec<&str> = statuses
            .iter()
            .filter(|(_, s)| *s == RowStatus::Skipped)
            .map(|(user, _)| user.as_str())
            .collect();
        assert_eq!(
            waiting,
            ["u1@x.com", "u0@x.com"],
            "the last rows of the sheet wait"
        );
    }

    #[test]
    fn a_draft_dropped_before_commit_leaves_nothing() {
        let input = crate::input::parse(
            Path::new("t.csv"),
            format!("customer_id,user_id,sku\n{C},ada@x.com,{PBI}\n").as_bytes(),
            None,
        )
        .unwrap();
        let mut journal = Journal::scratch().unwrap();
        {
            let mut draft = journal.draft(NewRun::scratch(&input.header)).unwrap();
            let row = &input.rows[0];
            let resolution = resolve_row(&input.header, row, &BuiltinCatalog);
            draft.add_row(row, &input.header, &resolution).unwrap();
        }
        assert_eq!(journal.latest_run().unwrap(), None);
    }
}
