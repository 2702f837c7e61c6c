//! Request IDs follow the operation across runs (SPEC §8). When a new run plans an operation
//! (customer, user, SKU, action) whose last request in an earlier run of the same target got
//! no definitive answer — killed in flight, timed out, retries run out — that request may have
//! been applied. The new run must not send the operation under a new ID while the old one's
//! outcome is unknown, so the earlier request is re-sent first, *as it was*: the same
//! MS-RequestId with the same licenses, which the API answers from its idempotency store if
//! it was applied, or applies now if it was not.
//!
//! In the plan this is one more pass of the new group: the new operations that match the
//! earlier request's licenses exactly are sent under its ID; licenses of that request the new
//! sheet no longer asks for are added to the group as *carried* operations (no rows, so they
//! never show in the report) so that the body is the earlier one. The group's own request (its
//! other operations) goes after it ([`crate::engine::GroupWork::open`]), and is held back when
//! the earlier one still gets no answer and asks for the same license. `carried` records which
//! earlier run and group a pass re-sends, so its answer is written back there too.

use rusqlite::{OptionalExtension, params};

use super::{Draft, JournalError};

/// The condition on an operation `o` whose request may have been applied without an answer:
/// never answered (killed before or while sending), pending after a stop, or given up on.
const IN_DOUBT: &str = "(o.status IS NULL OR o.status = 'pending' OR o.unanswered = 1)";

/// One license of an earlier request: SKU, action and excluded plans as the journal keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct License {
    sku: String,
    action: String,
    excluded: String,
}

/// A request of an earlier run without a definitive answer, and the new run's group that asks
/// for some of its licenses again.
struct EarlierRequest {
    from_run: i64,
    from_group: i64,
    request_id: String,
    licenses: Vec<License>,
    new_group: i64,
}

/// The rows of `carry_matches` read at a time.
const PAGE: i64 = 4096;

impl Draft<'_> {
    /// Puts the requests of earlier runs on `target` that got no definitive answer into this
    /// run's plan, where this run asks for one of their licenses again; returns how many.
    /// Newer runs first: a license an earlier run's request carried is not carried again from
    /// an older one. A request whose licenses a newer run changed since (a success recorded in
    /// `done`) is not re-sent: its replayed answer would no longer describe the tenant.
    pub fn carry_unanswered(&mut self, target: &str) -> Result<usize, JournalError> {
        self.group()?;
        let e = |source| self.sqlite(source);
        let candidates: Vec<i64> = self
            .conn()
            .prepare(
                "SELECT id FROM runs WHERE target = ?1 AND id <> ?2
                   AND (in_doubt IS NULL OR in_doubt > 0)
                 ORDER BY id DESC",
            )
            .and_then(|mut s| {
                s.query_map(params![target, self.run_id()], |r| r.get(0))?
                    .collect()
            })
            .map_err(e)?;
        if candidates.is_empty() {
            return Ok(0);
        }
        self.refuse_settling_uncounted()?;
        let mut carried = 0;
        for run in candidates {
            if self.stage_unanswered_requests_of(run, target)? == 0 {
                // Nothing of it is in doubt any more: later runs need not look at it again.
                self.conn()
                    .execute("UPDATE runs SET in_doubt = 0 WHERE id = ?1", [run])
                    .map_err(e)?;
                continue;
            }
            carried += self.carry_staged(run)?;
        }
        self.conn()
            .execute_batch(
                "DROP TABLE IF EXISTS temp.carry_doubt; DROP TABLE IF EXISTS temp.carry_matches;",
            )
            .map_err(e)?;
        if carried > 0 {
            self.settled(carried);
        }
        Ok(carried)
    }

    /// Stages in temporary tables the operations of `run` without a definitive answer
    /// (`carry_doubt`, indexed by user) and those of them whose group this run has too — same
    /// customer, user and license group — in request order (`carry_matches`); returns how
    /// many of the run's operations are in doubt. In tables rather than in memory: a run
    /// killed early leaves every operation in doubt, a million for a million-row sheet, and
    /// each side is read once (no lookup per group through an index made for other queries).
    fn stage_unanswered_requests_of(&self, run: i64, target: &str) -> Result<u64, JournalError> {
        let e = |source| self.sqlite(source);
        self.conn()
            .execute_batch(
                "DROP TABLE IF EXISTS temp.carry_doubt;
                 DROP TABLE IF EXISTS temp.carry_matches;
                 CREATE TEMP TABLE carry_doubt (
                     customer_id, user_key, license_group, group_idx, send_id, op_idx, sku_id,
                     action, excluded_plans, changed_since);",
            )
            .map_err(e)?;
        let in_doubt = self
            .conn()
            .execute(
                &format!(
                    "INSERT INTO temp.carry_doubt
                     SELECT g.customer_id, g.user_key, g.license_group, o.group_idx, o.send_id,
                            o.op_idx, o.sku_id, o.action, o.excluded_plans,
                            EXISTS (SELECT 1 FROM done d
                                    WHERE d.target = ?2 AND d.customer_id = g.customer_id
                                      AND d.user_key = g.user_key AND d.sku_id = o.sku_id
                                      AND d.run_id > ?1)
                     FROM operations o JOIN groups g ON g.run_id = o.run_id AND g.idx = o.group_idx
                     WHERE o.run_id = ?1 AND {IN_DOUBT}"
                ),
                params![run, target],
            )
            .map_err(e)?;
        if in_doubt == 0 {
            return Ok(0);
        }
        self.conn()
            .execute_batch(
                "CREATE INDEX temp.carry_doubt_by_user
                     ON carry_doubt (customer_id, user_key, license_group);",
            )
            .map_err(e)?;
        self.conn()
            .execute(
                "CREATE TEMP TABLE carry_matches AS
                 SELECT d.group_idx, d.send_id, d.sku_id, d.action, d.excluded_plans,
                        d.changed_since, ng.idx AS new_group
                 FROM groups ng JOIN temp.carry_doubt d
                   ON d.customer_id = ng.customer_id AND d.user_key = ng.user_key
                  AND d.license_group = ng.license_group
                 WHERE ng.run_id = ?1
                 ORDER BY d.group_idx, d.send_id, d.op_idx",
                [self.run_id()],
            )
            .map_err(e)?;
        Ok(in_doubt as u64)
    }

    /// Carries the staged requests of `from_run` a page of rows at a time; returns how many.
    fn carry_staged(&self, from_run: i64) -> Result<usize, JournalError> {
        let e = |source| self.sqlite(source);
        let mut carried = 0;
        let mut current: Option<(EarlierRequest, bool)> = None;
        let mut after = 0_i64;
        loop {
            let page: Vec<(i64, i64, String, License, bool, i64)> = self
                .conn()
                .prepare_cached(
                    "SELECT rowid, group_idx, send_id, sku_id, action, excluded_plans,
                            changed_since, new_group
                     FROM temp.carry_matches WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![after, PAGE], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            License {
                                sku: r.get(3)?,
                                action: r.get(4)?,
                                excluded: r.get(5)?,
                            },
                            r.get(6)?,
                            r.get(7)?,
                        ))
                    })?
                    .collect()
                })
                .map_err(e)?;
            let Some(last) = page.last() else { break };
            after = last.0;
            for (_, from_group, request_id, license, changed_since, new_group) in page {
                match &mut current {
                    Some((request, superseded))
                        if request.from_group == from_group && request.request_id == request_id =>
                    {
                        request.licenses.push(license);
                        *superseded |= changed_since;
                    }
                    _ => {
                        if let Some((request, superseded)) = current.take()
                            && !superseded
                            && self.carry(&request)?
                        {
                            carried += 1;
                        }
                        current = Some((
                            EarlierRequest {
                                from_run,
                                from_group,
                                request_id,
                                licenses: vec![license],
                                new_group,
                            },
                            changed_since,
                        ));
                    }
                }
            }
        }
        if let Some((request, superseded)) = current
            && !superseded
            && self.carry(&request)?
        {
            carried += 1;
        }
        Ok(carried)
    }

    /// Makes `request` a pass of its new group when that group asks, still open, for one of
    /// its licenses (same SKU and action) that no newer run's request carries already.
    fn carry(&self, request: &EarlierRequest) -> Result<bool, JournalError> {
        let e = |source| self.sqlite(source);
        let run = self.run_id();
        let own_id: Option<String> = self
            .conn()
            .query_row(
                "SELECT send_id FROM groups WHERE run_id = ?1 AND idx = ?2",
                params![run, request.new_group],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?
            .flatten();
        // (op_idx, license, open, send_id) of the new group, in order.
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT op_idx, sku_id, action, excluded_plans, status IS NULL, send_id
                 FROM operations WHERE run_id = ?1 AND group_idx = ?2",
            )
            .map_err(e)?;
        let mut operations: Vec<(i64, License, bool, String)> = stmt
            .query_map(params![run, request.new_group], |r| {
                Ok((
                    r.get(0)?,
                    License {
                        sku: r.get(1)?,
                        action: r.get(2)?,
                        excluded: r.get(3)?,
                    },
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(e)?
            .collect::<Result<_, _>>()
            .map_err(e)?;
        operations.sort_unstable_by_key(|(op, ..)| *op);
        let same_license = |a: &License, b: &License| a.sku == b.sku && a.action == b.action;
        let asked_again = request.licenses.iter().any(|license| {
            operations
                .iter()
                .any(|(_, op, open, _)| *open && same_license(op, license))
        });
        let carried_by_newer = request.licenses.iter().any(|license| {
            operations.iter().any(|(_, op, _, send_id)| {
                same_license(op, license) && Some(send_id) != own_id.as_ref()
            })
        });
        if !asked_again || carried_by_newer {
            return Ok(false);
        }
        let mut claim = self
            .conn()
            .prepare_cached(
                "UPDATE operations SET send_id = ?4 WHERE run_id = ?1 AND group_idx = ?2 AND op_idx = ?3",
            )
            .map_err(e)?;
        let mut add = self
            .conn()
            .prepare_cached(
                "INSERT INTO operations (run_id, group_idx, op_idx, sku_id, action, excluded_plans,
                                         send_id, first_row, row_count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?2, 0)",
            )
            .map_err(e)?;
        let mut next_op = operations.len() as i64;
        for license in &request.licenses {
            let exact = operations.iter_mut().find(|(_, op, open, send_id)| {
                *open && op == license && own_id.as_deref() == Some(send_id.as_str())
            });
            match exact {
                Some((op_idx, _, _, send_id)) => {
                    claim
                        .execute(params![run, request.new_group, *op_idx, request.request_id])
                        .map_err(e)?;
                    *send_id = request.request_id.clone();
                }
                None => {
                    add.execute(params![
                        run,
                        request.new_group,
                        next_op,
                        license.sku,
                        license.action,
                        license.excluded,
                        request.request_id
                    ])
                    .map_err(e)?;
                    next_op += 1;
                }
            }
        }
        self.conn()
            .execute(
                "INSERT INTO carried (run_id, group_idx, request_id, from_run, from_group)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    run,
                    request.new_group,
                    request.request_id,
                    request.from_run,
                    request.from_group
                ],
            )
            .map_err(e)?;
        tracing::info!(
            "request {} of run {} got no definitive answer: sent again first, under its ID",
            request.request_id,
            request.from_run
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::super::draft::tests::{add_rows, sheet};
    use crate::journal::{Journal, NewRun};

    const C: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";
    /// Business Premium, Power BI Pro, Visio Plan 2: one license group.
    const SKUS: [&str; 3] = ["SPB", "POWER_BI_PRO", "VISIOCLIENT"];

    /// Per user of `run`: the request IDs its operations are sent under.
    fn send_ids(journal: &Journal, run: i64) -> BTreeMap<String, BTreeSet<String>> {
        let mut stmt = journal
            .conn
            .prepare(
                "SELECT g.user_key, o.send_id FROM operations o
                 JOIN groups g ON g.run_id = o.run_id AND g.idx = o.group_idx WHERE o.run_id = ?1",
            )
            .unwrap();
        let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for pair in stmt
            .query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
        {
            let (user, id): (String, String) = pair.unwrap();
            ids.entry(user).or_default().insert(id);
        }
        ids
    }

    #[test]
    fn a_killed_run_of_any_size_lends_its_request_ids_to_a_grown_sheet() {
        // 1,400 users with three licenses each: 4,200 operations in doubt, more than a page,
        // and a page ends inside a request.
        let users = 1400;
        let mut text = String::from("customer_id,user_id,sku\n");
        for i in 0..users {
            for sku in SKUS {
                text.push_str(&format!("{C},u{i}@x.com,{sku}\n"));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open_for_run(&dir.path().join("state.sqlite")).unwrap();
        let input = sheet(&text);
        let on_target = |header| NewRun {
            target: "t",
            ..NewRun::scratch(header)
        };
        let mut draft = journal.draft(on_target(&input.header)).unwrap();
        add_rows(&mut draft, &input);
        let killed = draft.commit().unwrap();
        let before = send_ids(&journal, killed);

        // The next night: every user again, one more, and another target's run beside it.
        text.push_str(&format!("{C},new@x.com,SPB\n"));
        let grown = sheet(&text);
        let mut draft = journal.draft(on_target(&grown.header)).unwrap();
        add_rows(&mut draft, &grown);
        assert_eq!(draft.carry_unanswered("another API").unwrap(), 0);
        assert_eq!(draft.carry_unanswered("t").unwrap(), users);
        let next = draft.commit().unwrap();
        let after = send_ids(&journal, next);
        for (user, ids) in &before {
            assert_eq!(ids.len(), 1, "one request per user");
            assert_eq!(
                &after[user], ids,
                "{user} keeps the killed run's request ID"
            );
        }
        assert!(!before.contains_key("new@x.com"));
        assert_eq!(after["new@x.com"].len(), 1);
        assert!(
            before
                .values()
                .all(|ids| !ids.is_superset(&after["new@x.com"]))
        );
    }
}
