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

impl Draft<'_> {
    /// Puts the requests of earlier runs on `target` that got no definitive answer into this
    /// run's plan, where this run asks for one of their licenses again; returns how many.
    /// Newer runs first: a license an earlier run's request carried is not carried again from
    /// an older one. A request whose licenses a newer run changed since (a success recorded in
    /// `done`) is not re-sent: its replayed answer would no longer describe the tenant.
    pub fn carry_unanswered(&mut self, target: &str) -> Result<usize, JournalError> {
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
            let (requests, in_doubt) = self.unanswered_requests_of(run, target)?;
            if in_doubt == 0 {
                // Nothing of it is in doubt any more: later runs need not look at it again.
                self.conn()
                    .execute("UPDATE runs SET in_doubt = 0 WHERE id = ?1", [run])
                    .map_err(e)?;
            }
            for request in requests {
                if self.carry(&request)? {
                    carried += 1;
                }
            }
        }
        if carried > 0 {
            self.settled(carried);
        }
        Ok(carried)
    }

    /// The requests of `run` without a definitive answer whose group this run has too (same
    /// customer, user and license group), each with its licenses in their order; and how many
    /// of the run's operations are in doubt at all.
    fn unanswered_requests_of(
        &self,
        run: i64,
        target: &str,
    ) -> Result<(Vec<EarlierRequest>, u64), JournalError> {
        let e = |source| self.sqlite(source);
        let in_doubt: i64 = self
            .conn()
            .query_row(
                &format!("SELECT COUNT(*) FROM operations o WHERE o.run_id = ?1 AND {IN_DOUBT}"),
                [run],
                |r| r.get(0),
            )
            .map_err(e)?;
        if in_doubt == 0 {
            return Ok((Vec::new(), 0));
        }
        let mut stmt = self
            .conn()
            .prepare(&format!(
                "SELECT o.group_idx, o.send_id, o.sku_id, o.action, o.excluded_plans, ng.idx,
                        EXISTS (SELECT 1 FROM done d
                                WHERE d.target = ?3 AND d.customer_id = eg.customer_id
                                  AND d.user_key = eg.user_key AND d.sku_id = o.sku_id
                                  AND d.run_id > ?1)
                 FROM operations o
                 JOIN groups eg ON eg.run_id = o.run_id AND eg.idx = o.group_idx
                 JOIN groups ng ON ng.run_id = ?2 AND ng.customer_id = eg.customer_id
                               AND ng.user_key = eg.user_key AND ng.license_group = eg.license_group
                 WHERE o.run_id = ?1 AND {IN_DOUBT}
                 ORDER BY o.group_idx, o.send_id, o.op_idx"
            ))
            .map_err(e)?;
        let mut rows = stmt.query(params![run, self.run_id(), target]).map_err(e)?;
        let mut requests: Vec<EarlierRequest> = Vec::new();
        let mut superseded: Vec<bool> = Vec::new();
        while let Some(r) = rows.next().map_err(e)? {
            let from_group: i64 = r.get(0).map_err(e)?;
            let request_id: String = r.get(1).map_err(e)?;
            let license = License {
                sku: r.get(2).map_err(e)?,
                action: r.get(3).map_err(e)?,
                excluded: r.get(4).map_err(e)?,
            };
            let new_group: i64 = r.get(5).map_err(e)?;
            let changed_since: bool = r.get(6).map_err(e)?;
            match requests.last_mut() {
                Some(last) if last.from_group == from_group && last.request_id == request_id => {
                    last.licenses.push(license);
                    *superseded.last_mut().expect("one per request") |= changed_since;
                }
                _ => {
                    requests.push(EarlierRequest {
                        from_run: run,
                        from_group,
                        request_id,
                        licenses: vec![license],
                        new_group,
                    });
                    superseded.push(changed_since);
                }
            }
        }
        let requests = requests
            .into_iter()
            .zip(superseded)
            .filter_map(|(request, superseded)| (!superseded).then_some(request))
            .collect();
        Ok((requests, in_doubt as u64))
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
