//! A new run being recorded: the rows go to the [`Planner`] as they are read, and the plan it
//! makes comes back through [`PlanSink`] (implemented here) as rows, groups and operations in
//! input order, so every table is only appended to. Then what is not sent is settled (done
//! before, refused customers, the strict preflight's excess). Everything happens in one
//! transaction: the run, its plan and every group's request ID become durable together at
//! [`Draft::commit`], before anything is sent, or not at all.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};
use uuid::Uuid;

use super::{Journal, JournalError, NewRun, now_text};
use crate::input::{InputHeader, InputRow};
use crate::outcome::OperationOutcome;
use crate::plan::RowResolution;
use crate::plan::guard::LicenseChanges;
use crate::plan::planner::{
    NewGroup, NewOperation, NewRow, PlanCounts, PlanError, PlanSink, Planner,
};
use crate::tenant::preflight::SeatNeed;

/// A run in the making; dropped without [`Draft::commit`], it leaves no trace.
pub struct Draft<'a> {
    journal: &'a Journal,
    run_id: i64,
    blank_lines: i64,
    /// Rows read but not yet grouped and written; `None` once [`Draft::group`] wrote them.
    planner: Option<Planner>,
    /// Counted while the plan was written; dropped as soon as an operation is settled.
    counts: Option<PlanCounts>,
    /// False: open operations (and the rows, groups they stand for) are counted, not
    /// recorded ([`Draft::count_open_operations_only`]).
    record_open: bool,
    committed: bool,
}

impl Journal {
    /// Starts recording a new run (one transaction until [`Draft::commit`]), grouped in as
    /// many partitions as the size of its input calls for.
    pub fn draft(&mut self, new: NewRun<'_>) -> Result<Draft<'_>, JournalError> {
        let input_bytes = std::fs::metadata(new.input_path).map_or(0, |m| m.len());
        self.draft_in_partitions(new, Planner::partitions_for(input_bytes))
    }

    /// [`Journal::draft`] with a given number of partitions (the plan does not depend on it;
    /// tests show that).
    pub fn draft_in_partitions(
        &mut self,
        new: NewRun<'_>,
        partitions: usize,
    ) -> Result<Draft<'_>, JournalError> {
        let e = |source| self.sqlite(source);
        let dir = self.spill_dir();
        let planner = Planner::new(&dir, partitions).map_err(|error| self.spill_error(error))?;
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(e)?;
        let mut draft = Draft {
            journal: self,
            run_id: 0,
            blank_lines: 0,
            planner: Some(planner),
            counts: None,
            record_open: true,
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
    pub(super) fn conn(&self) -> &Connection {
        &self.journal.conn
    }

    pub(super) fn sqlite(&self, source: rusqlite::Error) -> JournalError {
        self.journal.sqlite(source)
    }

    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Takes one data row with what resolution made of it (written by [`Draft::group`]).
    pub fn add_row(
        &mut self,
        row: &InputRow,
        header: &InputHeader,
        resolution: &RowResolution,
    ) -> Result<(), JournalError> {
        let Some(planner) = self.planner.as_mut() else {
            return Err(JournalError::Invalid {
                path: self.journal.path.display().to_string(),
                message: "a row came after the run was planned".into(),
            });
        };
        planner
            .add_row(row, header, resolution)
            .map_err(|error| self.journal.spill_error(error))
    }

    /// For `plan`, when nothing will be settled before sending: the valid rows' operations
    /// are counted ([`Draft::counts`]) but not recorded; invalid rows still are. Writing a
    /// large plan is most of the time it takes, and `plan` reads back only the invalid rows.
    /// Settling anything afterwards is refused (there would be nothing to settle in).
    pub fn count_open_operations_only(&mut self) {
        self.record_open = false;
        if let Some(planner) = self.planner.as_mut() {
            planner.count_open_operations_only();
        }
    }

    pub(super) fn refuse_settling_uncounted(&self) -> Result<(), JournalError> {
        match self.record_open {
            true => Ok(()),
            false => Err(JournalError::Invalid {
                path: self.journal.path.display().to_string(),
                message: "a plan that was only counted cannot settle operations".into(),
            }),
        }
    }

    /// Counts a line that holds no value (reported in the summary, not a data row).
    pub fn add_blank_line(&mut self) {
        self.blank_lines += 1;
    }

    /// Has the [`Planner`] apply the rules between rows and writes every row, group and
    /// operation it plans, in input order. Called once; [`Draft::commit`] calls it if nobody
    /// did.
    pub fn group(&mut self) -> Result<(), JournalError> {
        let Some(planner) = self.planner.take() else {
            return Ok(());
        };
        let e = |source| self.sqlite(source);
        let conn = self.conn();
        let mut sink = Statements {
            run: self.run_id,
            row: conn
                .prepare(
                    "INSERT INTO rows (run_id, idx, line, cells, customer_id, group_idx, op_idx,
                                       invalid_message, sku_id, license_group, usage_location)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(e)?,
            group: conn
                .prepare(
                    "INSERT INTO groups (run_id, idx, customer_id, user, user_key, license_group,
                                         send_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(e)?,
            operation: conn
                .prepare(
                    "INSERT INTO operations (run_id, group_idx, op_idx, sku_id, action,
                                             excluded_plans, send_id, first_row, row_count)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(e)?,
        };
        let counts = planner.finish(&mut sink).map_err(|error| match error {
            PlanError::Spill(error) => self.journal.spill_error(error),
            PlanError::Sink(error) => self.sqlite(error),
        })?;
        drop(sink);
        self.counts = Some(counts);
        Ok(())
    }

    /// Operations that already succeeded on `target` in an earlier run (of this journal, or of
    /// the journal attached as `prior`): not sent again.
    pub fn settle_done_before(&mut self, target: &str) -> Result<(), JournalError> {
        if !self.done_before_exists(target)? {
            return Ok(());
        }
        self.refuse_settling_uncounted()?;
        let e = |source| self.sqlite(source);
        let done = self.journal.done_schema;
        let settled = self.conn().execute(
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
        self.settled(settled);
        Ok(())
    }

    /// Whether any operation succeeded on `target` in an earlier run.
    pub fn done_before_exists(&self, target: &str) -> Result<bool, JournalError> {
        let done = self.journal.done_schema;
        self.conn()
            .query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM {done}.done WHERE target = ?1)"),
                [target],
                |r| r.get(0),
            )
            .map_err(|e| self.sqlite(e))
    }

    /// `settled` operations just got an outcome: the counted figures no longer hold.
    pub(super) fn settled(&mut self, settled: usize) {
        if settled > 0 {
            self.counts = None;
        }
    }

    /// The figures counted while the plan was written, while no operation is settled yet.
    pub fn counts(&self) -> Option<&PlanCounts> {
        self.counts.as_ref()
    }

    /// Every still open operation of `customer` gets `outcome` (e.g. a refused customer).
    pub fn settle_customer(
        &mut self,
        customer: Uuid,
        outcome: &OperationOutcome,
    ) -> Result<(), JournalError> {
        self.refuse_settling_uncounted()?;
        let settled = self
            .conn()
            .execute(
                "UPDATE operations SET status = ?3, http_status = ?4, error_code = ?5, message = ?6,
                        finished_at = ?7
                 WHERE run_id = ?1 AND status IS NULL
                   AND group_idx IN (SELECT idx FROM groups WHERE run_id = ?1 AND customer_id = ?2)",
                params![
                    self.run_id,
                    customer.to_string(),
                    outcome.status.as_str(),
                    outcome.http_status.map(i64::from),
                    outcome.error_code,
                    outcome.message,
                    now_text(),
                ],
            )
            .map_err(|e| self.sqlite(e))?;
        self.settled(settled);
        Ok(())
    }

    /// Assigns still to send, per (customer, SKU): what the seat preflight checks.
    pub fn seat_needs(&self) -> Result<Vec<SeatNeed>, JournalError> {
        match &self.counts {
            Some(counts) => Ok(counts
                .seat_needs
                .iter()
                .map(|(&(customer, sku), &needed)| SeatNeed {
                    customer,
                    sku,
                    needed,
                })
                .collect()),
            None => self.seat_needs_from_tables(),
        }
    }

    fn seat_needs_from_tables(&self) -> Result<Vec<SeatNeed>, JournalError> {
        self.open_counts_by(
            "o.sku_id",
            "AND o.action = 'assign' GROUP BY g.customer_id, o.sku_id ORDER BY g.customer_id, o.sku_id",
        )?
        .into_iter()
        .map(|(customer, sku, needed)| {
            Ok(SeatNeed {
                customer,
                sku: sku.parse().map_err(|_| self.journal.corrupt("SKU ID"))?,
                needed,
            })
        })
        .collect()
    }

    /// The license changes still to send, per customer: what the guard checks (SPEC §13).
    pub fn license_changes(&self) -> Result<BTreeMap<Uuid, LicenseChanges>, JournalError> {
        match &self.counts {
            Some(counts) => Ok(counts.changes.clone()),
            None => self.license_changes_from_tables(),
        }
    }

    fn license_changes_from_tables(&self) -> Result<BTreeMap<Uuid, LicenseChanges>, JournalError> {
        let mut changes: BTreeMap<Uuid, LicenseChanges> = BTreeMap::new();
        for (customer, action, count) in
            self.open_counts_by("o.action", "GROUP BY g.customer_id, o.action")?
        {
            let entry = changes.entry(customer).or_default();
            match action.as_str() {
                "assign" => entry.assigns += count,
                _ => entry.removals += count,
            }
        }
        Ok(changes)
    }

    /// Open operations counted per (customer, `column`), `grouping` the rest of the query.
    fn open_counts_by(
        &self,
        column: &str,
        grouping: &str,
    ) -> Result<Vec<(Uuid, String, u64)>, JournalError> {
        let e = |source| self.sqlite(source);
        let mut stmt = self
            .conn()
            .prepare(&format!(
                "SELECT g.customer_id, {column}, COUNT(*) FROM operations o
                 JOIN groups g ON g.run_id = o.run_id AND g.idx = o.group_idx
                 WHERE o.run_id = ?1 AND o.status IS NULL {grouping}"
            ))
            .map_err(e)?;
        let counted = stmt
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
        counted
            .into_iter()
            .map(|(customer, key, count)| {
                let customer = customer
                    .parse()
                    .map_err(|_| self.journal.corrupt("customer ID"))?;
                Ok((customer, key, count as u64))
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
        self.refuse_settling_uncounted()?;
        let settled = self
            .conn()
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
                    outcome.status.as_str(),
                    outcome.message,
                    now_text(),
                ],
            )
            .map_err(|e| self.sqlite(e))?;
        self.settled(settled);
        Ok(())
    }

    /// Makes the run, its plan and its request IDs durable; returns the run's ID.
    pub fn commit(mut self) -> Result<i64, JournalError> {
        self.group()?;
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

/// The statements that write a planned run: the journal's [`PlanSink`].
struct Statements<'conn> {
    run: i64,
    row: rusqlite::Statement<'conn>,
    group: rusqlite::Statement<'conn>,
    operation: rusqlite::Statement<'conn>,
}

impl PlanSink for Statements<'_> {
    type Error = rusqlite::Error;

    fn group(&mut self, group: &NewGroup<'_>) -> Result<(), rusqlite::Error> {
        self.group
            .execute(params![
                self.run,
                group.index as i64,
                group.customer.to_string(),
                group.user,
                group.user_key,
                group.license_group,
                group.request_id.to_string()
            ])
            .map(drop)
    }

    fn operation(&mut self, operation: &NewOperation<'_>) -> Result<(), rusqlite::Error> {
        self.operation
            .execute(params![
                self.run,
                operation.group as i64,
                operation.operation,
                operation.sku.to_string(),
                operation.action,
                operation.excluded,
                operation.request_id.to_string(),
                operation.first_row as i64,
                operation.row_count as i64
            ])
            .map(drop)
    }

    fn row(&mut self, row: &NewRow<'_>) -> Result<(), rusqlite::Error> {
        let sent = row.sent.ok();
        self.row
            .execute(params![
                self.run,
                row.index as i64,
                row.line as i64,
                row.cells,
                row.customer.map(|c| c.to_string()),
                sent.map(|(group, _)| group as i64),
                sent.map(|(_, operation)| operation),
                row.sent.err(),
                row.sku.map(|s| s.to_string()),
                row.license_group,
                row.usage_location,
            ])
            .map(drop)
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
pub(super) mod tests {
    use std::path::Path;

    use super::*;
    use crate::journal::read::{RowState, StoredRow};
    use crate::outcome::OperationStatus;
    use crate::outcome::RowStatus;
    use crate::plan::catalog::BuiltinCatalog;
    use crate::plan::resolve_row;

    const C: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";
    const PBI: &str = "f8a1db68-be16-40ed-86d5-cb42ce701560";

    pub(in crate::journal) fn sheet(text: &str) -> crate::input::InputFile {
        crate::input::parse(Path::new("t.csv"), text.as_bytes(), None).unwrap()
    }

    /// The status a stored row is reported with (the report's rule, restated for these tests:
    /// the journal sits below the report).
    pub(in crate::journal) fn status_of_row(row: &StoredRow) -> RowStatus {
        match &row.state {
            RowState::Invalid(_) => RowStatus::Invalid,
            RowState::Planned { outcome, .. } => outcome
                .as_ref()
                .map_or(RowStatus::Pending, |o| RowStatus::from(o.status)),
        }
    }

    /// Resolves every row of `input` against the built-in catalog into `draft`.
    pub(in crate::journal) fn add_rows(draft: &mut Draft<'_>, input: &crate::input::InputFile) {
        for row in &input.rows {
            let resolution = resolve_row(&input.header, row, &BuiltinCatalog);
            draft.add_row(row, &input.header, &resolution).unwrap();
        }
    }

    #[test]
    fn the_excess_is_skipped_in_input_order_and_settled_operations_need_no_seat() {
        // Users listed 4, 3, 2, 1, 0: input order, not user order, decides who waits.
        let mut text = String::from("customer_id,user_id,sku\n");
        for i in (0..5).rev() {
            text.push_str(&format!("{C},u{i}@x.com,{PBI}\n"));
        }
        let input = sheet(&text);
        let mut journal = Journal::scratch().unwrap();
        let mut draft = journal.draft(NewRun::scratch(&input.header)).unwrap();
        add_rows(&mut draft, &input);
        draft.group().unwrap();
        let (customer, sku) = (C.parse().unwrap(), PBI.parse().unwrap());
        assert_eq!(draft.seat_needs().unwrap()[0].needed, 5);
        let skipped = OperationOutcome::unsent(OperationStatus::Skipped, "no seat");
        draft.settle_excess(customer, sku, 3, &skipped).unwrap();
        assert_eq!(draft.seat_needs().unwrap()[0].needed, 3);
        let run = draft.commit().unwrap();
        let mut statuses = Vec::new();
        journal
            .each_stored_row(run, |cells, row| {
                statuses.push((cells[1].clone(), status_of_row(&row)));
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
    fn the_counted_tally_is_the_tally_of_the_report_rows() {
        const D: &str = "5b0e4d1a-7c2f-4e8b-9a61-3d2c1b0a9f8e";
        let text = format!(
            "customer_id,user_id,sku,action\n\
             {C},ada@x.com,{PBI},\n\
             {C},ada@x.com,{PBI},\n\
             {C},émilie@x.com,{PBI},remove\n\
             {C},bo@x.com,NO_SUCH_SKU,\n\
             {C},cy@x.com,{PBI},\n\
             {C},cy@x.com,{PBI},remove\n\
             {C},di@x.com,{PBI},\n\
             {D},ed@x.com,{PBI},\n\
             not-a-customer,fa@x.com,{PBI},\n"
        );
        let input = sheet(&text);
        let mut journal = Journal::scratch().unwrap();
        let mut draft = journal.draft(NewRun::scratch(&input.header)).unwrap();
        add_rows(&mut draft, &input);
        draft.group().unwrap();
        // While nothing is settled, the figures counted while writing are those of the tables.
        let counts = draft.counts().cloned().expect("nothing settled yet");
        let tables = draft.journal;
        assert_eq!(counts.tally, tables.tally(draft.run_id).unwrap());
        let per_customer: Vec<(Uuid, u64, u64)> = counts
            .per_customer
            .iter()
            .map(|(&customer, &(requests, rows))| (customer, requests, rows))
            .collect();
        assert_eq!(
            per_customer,
            tables.requests_per_customer(draft.run_id).unwrap()
        );
        assert_eq!(per_customer.len(), 2, "two valid customers");
        assert_eq!(
            draft.seat_needs().unwrap(),
            draft.seat_needs_from_tables().unwrap()
        );
        assert_eq!(
            draft.license_changes().unwrap(),
            draft.license_changes_from_tables().unwrap()
        );
        assert_eq!(
            draft.license_changes().unwrap()[&C.parse::<Uuid>().unwrap()],
            LicenseChanges {
                assigns: 2,
                removals: 1
            },
            "ada's two rows are one change; the conflicting rows none"
        );
        let refused = OperationOutcome {
            http_status: Some(403),
            error_code: Some("2000".into()),
            ..OperationOutcome::unsent(OperationStatus::Failed, "refused")
        };
        draft.settle_customer(D.parse().unwrap(), &refused).unwrap();
        assert!(
            draft.counts().is_none(),
            "settled: the counts no longer hold"
        );
        let open = draft.license_changes().unwrap();
        assert!(
            !open.contains_key(&D.parse::<Uuid>().unwrap()),
            "a refused customer's changes are not sent: {open:?}"
        );
        assert_eq!(open.len(), 1, "{open:?}");
        let skipped = OperationOutcome::unsent(OperationStatus::Skipped, "no seat");
        draft
            .settle_excess(C.parse().unwrap(), PBI.parse().unwrap(), 0, &skipped)
            .unwrap();
        let run = draft.commit().unwrap();
        let mut by_row = crate::outcome::Tally::default();
        journal
            .each_stored_row(run, |_, row| {
                let outcome = match &row.state {
                    RowState::Planned {
                        outcome: Some(outcome),
                        ..
                    } => Some(outcome),
                    _ => None,
                };
                by_row.add_rows(
                    row.customer_id,
                    status_of_row(&row),
                    outcome.and_then(|o| o.error_code.as_deref()),
                    outcome.and_then(|o| o.http_status),
                    1,
                );
                Ok(())
            })
            .unwrap();
        let counted = journal.tally(run).unwrap();
        assert_eq!(counted, by_row);
        assert_eq!(counted.rows(), 9);
        assert_eq!(
            counted.count(RowStatus::Invalid),
            4,
            "bad SKU, conflict x2, bad customer"
        );
        assert_eq!(
            counted.count(RowStatus::Skipped),
            3,
            "ada's two rows and di's"
        );
        assert_eq!(counted.count(RowStatus::Failed), 1);
    }

    #[test]
    fn a_plan_only_counted_has_the_same_figures_and_invalid_rows_and_settles_nothing() {
        let text = format!(
            "customer_id,user_id,sku,action\n\
             {C},ada@x.com,{PBI},\n\
             {C},ada@x.com,{PBI},\n\
             {C},bo@x.com,NO_SUCH_SKU,\n\
             {C},cy@x.com,{PBI},\n\
             {C},cy@x.com,{PBI},remove\n"
        );
        let input = sheet(&text);
        let plan = |counted_only: bool| {
            let mut journal = Journal::scratch().unwrap();
            let mut draft = journal.draft(NewRun::scratch(&input.header)).unwrap();
            if counted_only {
                draft.count_open_operations_only();
            }
            add_rows(&mut draft, &input);
            draft.group().unwrap();
            let counts = draft.counts().cloned().unwrap();
            let refused = OperationOutcome::unsent(OperationStatus::Failed, "refused");
            let settled = draft.settle_customer(C.parse().unwrap(), &refused);
            assert_eq!(settled.is_err(), counted_only);
            drop(draft);
            let mut draft = journal.draft(NewRun::scratch(&input.header)).unwrap();
            if counted_only {
                draft.count_open_operations_only();
            }
            add_rows(&mut draft, &input);
            let run = draft.commit().unwrap();
            let mut invalid = Vec::new();
            journal
                .each_invalid_row(run, |line, message| {
                    invalid.push((line, message.to_string()))
                })
                .unwrap();
            let groups: i64 = journal
                .conn
                .query_row("SELECT COUNT(*) FROM groups", [], |r| r.get(0))
                .unwrap();
            (counts, invalid, groups)
        };
        let (recorded, counted) = (plan(false), plan(true));
        assert_eq!(counted.0, recorded.0, "the same figures");
        assert_eq!(counted.1, recorded.1, "the same invalid rows");
        assert_eq!(counted.1.len(), 3, "unknown SKU and the conflict");
        assert_eq!((recorded.2, counted.2), (1, 0), "open groups only counted");
    }

    #[test]
    fn reading_a_group_does_not_prepare_its_statement_again() {
        let text = format!("customer_id,user_id,sku\n{C},ada@x.com,{PBI}\n{C},bo@x.com,{PBI}\n");
        let input = sheet(&text);
        let mut journal = Journal::scratch().unwrap();
        let mut draft = journal.draft(NewRun::scratch(&input.header)).unwrap();
        add_rows(&mut draft, &input);
        let run = draft.commit().unwrap();
        for _ in 0..3 {
            for group in [0, 1] {
                assert_eq!(
                    journal.group(run, group).unwrap().request.operations.len(),
                    1
                );
            }
        }
        // Re-preparing on every call cost a third of the engine's time (docs/BENCHMARKS.md).
        let statement = journal
            .conn
            .prepare_cached(super::super::read::OPERATIONS_OF_GROUP)
            .unwrap();
        assert!(statement.get_status(rusqlite::StatementStatus::VmStep) > 0);
        assert_eq!(
            statement.get_status(rusqlite::StatementStatus::RePrepare),
            0
        );
    }

    #[test]
    fn a_draft_dropped_before_commit_leaves_nothing() {
        let input = sheet(&format!("customer_id,user_id,sku\n{C},ada@x.com,{PBI}\n"));
        let mut journal = Journal::scratch().unwrap();
        {
            let mut draft = journal.draft(NewRun::scratch(&input.header)).unwrap();
            add_rows(&mut draft, &input);
        }
        assert_eq!(journal.latest_run().unwrap(), None);
    }
}
