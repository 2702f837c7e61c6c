//! The worker pool: takes the open groups of a run from the customers in turn (skipping a
//! customer that waits out its own Retry-After, see [`pacing`]), sends each as one
//! LicenseUpdate through the pacer (see [`worker`]), and hands every outcome to the
//! [`Recorder`] (the journal). Unless the operator fixed its size, the pool grows with the
//! latency it measures to what the ceiling needs ([`EngineSettings::pool_size`]).
//! Customer-level refusals stop traffic to that customer; credential failures and the failure
//! threshold abort the run, leaving what is not finished pending for a resume.

mod call;
mod lanes;
mod location;
pub mod pacing;
mod pool;
mod read;
mod worker;

pub use call::{Dispatcher, Stats, StatsSnapshot};
pub use lanes::{Work, WorkSource};
pub use location::{GivenLocation, LocationFix, LocationWork};
pub use pool::GROWS_FOR_PER_MINUTE;
pub use read::{ReadFailure, ReadFailureKind};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Concurrency, Settings};
use crate::country::UsageLocation;
use crate::outcome::Completion;
use crate::outcome::{OperationOutcome, OperationStatus};
use crate::plan::Group;
use lanes::Lanes;
use pool::PoolGrowth;

/// What the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub requests_per_minute: u32,
    pub concurrency: Concurrency,
    pub max_attempts: u32,
    pub max_elapsed: Duration,
    pub min_retry_delay: Duration,
    pub max_failure_ratio: f64,
    pub failure_ratio_min_groups: u64,
    pub default_usage_location: Option<UsageLocation>,
}

impl From<&Settings> for EngineSettings {
    fn from(s: &Settings) -> Self {
        EngineSettings {
            requests_per_minute: s.limits.requests_per_minute,
            concurrency: s.limits.concurrency,
            max_attempts: s.retry.max_attempts,
            max_elapsed: s.retry.max_elapsed,
            min_retry_delay: s.retry.min_delay,
            max_failure_ratio: s.run.max_failure_ratio,
            failure_ratio_min_groups: s.run.failure_ratio_min_groups,
            default_usage_location: s.run.default_usage_location.clone(),
        }
    }
}

/// Live notifications for the progress display.
pub trait Observer: Send + Sync {
    /// `rows`: input rows that got a definitive outcome with this group.
    fn group_finished(&self, _rows: u64) {}
    fn retrying(&self) {}
    fn throttled(&self, _wait: Duration) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// Where outcomes go (the journal). `record` may batch; `begin_passes` resolves only once the
/// new request IDs, and the outcomes that made them necessary, are durable: a request must not
/// leave before its ID is recorded.
pub trait Recorder: Send + Sync {
    fn record(&self, group: usize, outcomes: Vec<(usize, OperationOutcome)>);
    fn begin_passes(
        &self,
        group: usize,
        passes: Vec<Pass>,
        settled: Vec<(usize, OperationOutcome)>,
    ) -> oneshot::Receiver<Result<(), String>>;
    /// Records the group's usage-location fix as it now stands (before its PATCH is sent, and
    /// once it is answered) with the passes that follow it; resolves once durable.
    fn record_location(
        &self,
        group: usize,
        fix: LocationFix,
        passes: Vec<Pass>,
    ) -> oneshot::Receiver<Result<(), String>>;
}

/// One request of a group: the operations sent together under one MS-RequestId.
#[derive(Debug, Clone, PartialEq)]
pub struct Pass {
    pub request_id: Uuid,
    pub operations: Vec<usize>,
    /// This request may have gone out already: in this run before a resume, or in an earlier
    /// run whose unanswered request this one carries. Without a definitive answer it may be
    /// applied, so a give-up in this run leaves it *unanswered* (re-sent under its ID next run).
    pub sent_before: bool,
}

/// One group to send: its open operations, as the requests (passes) the journal recorded.
#[derive(Debug, Clone)]
pub struct GroupWork {
    /// The group's index in the run.
    pub group: usize,
    pub request: Group,
    pub passes: Vec<Pass>,
    /// Attempts made for this group before a resume; counting continues from here.
    pub previous_attempts: u32,
    /// The usage location its rows give, and a fix recorded before a resume.
    pub location: LocationWork,
}

impl GroupWork {
    /// The work left of a group: its operations without a definitive outcome, as the passes
    /// (operations sharing a recorded request ID) they were being sent in; `None` when none
    /// is left. The pass under the group's own request ID (`own_request_id`) goes last: the
    /// others re-send requests an earlier run left without an answer, and those must be
    /// answered before the same license is asked for again.
    pub fn open(
        group: usize,
        request: Group,
        outcomes: &[Option<OperationOutcome>],
        send_ids: &[Uuid],
        own_request_id: Option<Uuid>,
    ) -> Option<GroupWork> {
        let mut passes: Vec<Pass> = Vec::new();
        let mut previous_attempts = 0;
        for (op, (outcome, &request_id)) in outcomes.iter().zip(send_ids).enumerate() {
            if outcome
                .as_ref()
                .is_some_and(|o| o.status != OperationStatus::Pending)
            {
                continue;
            }
            previous_attempts = previous_attempts.max(outcome.as_ref().map_or(0, |o| o.attempts));
            match passes.iter_mut().find(|p| p.request_id == request_id) {
                Some(pass) => pass.operations.push(op),
                None => passes.push(Pass {
                    request_id,
                    operations: vec![op],
                    // Set below, once the group's earlier attempts are known.
                    sent_before: false,
                }),
            }
        }
        passes.sort_by_key(|pass| Some(pass.request_id) == own_request_id);
        for pass in &mut passes {
            // A pass under another ID than the group's own carries an earlier run's request
            // (or a split made after an answer, which counts as an earlier attempt too).
            pass.sent_before = previous_attempts > 0 || Some(pass.request_id) != own_request_id;
        }
        (!passes.is_empty()).then_some(GroupWork {
            group,
            request,
            passes,
            previous_attempts,
            location: LocationWork::default(),
        })
    }

    pub fn operations(&self) -> impl Iterator<Item = usize> + '_ {
        self.passes
            .iter()
            .flat_map(|p| p.operations.iter().copied())
    }
}

/// How the engine's part of the run ended; the outcomes went to the [`Recorder`].
#[derive(Debug)]
pub struct EngineReport {
    pub stats: StatsSnapshot,
    pub completion: Completion,
    /// How to make a run like this faster, when the pool's own size held it back.
    pub advice: Option<String>,
}

/// Why a customer gets no more requests.
#[derive(Debug, Clone)]
struct CustomerBlock {
    http_status: Option<u16>,
    error_code: Option<String>,
    message: String,
}

struct Shared {
    calls: Arc<Dispatcher>,
    queue: Mutex<Lanes>,
    recorder: Arc<dyn Recorder>,
    observer: Arc<dyn Observer>,
    abort_reason: Mutex<Option<String>>,
    blocked: Mutex<HashMap<Uuid, CustomerBlock>>,
    /// One permit per request the pool may have in flight now.
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// Stops the run: no new group starts, waits end, open operations stay pending.
    fn abort(&self, reason: String) {
        let mut current = self.abort_reason.lock().expect("abort lock");
        if current.is_none() {
            tracing::error!("aborting the run: {reason}");
            *current = Some(reason);
        }
        self.calls.stop.cancel();
    }

    fn customer_block(&self, customer: Uuid) -> Option<CustomerBlock> {
        self.blocked
            .lock()
            .expect("block lock")
            .get(&customer)
            .cloned()
    }

    fn block_customer(&self, customer: Uuid, block: CustomerBlock) {
        self.blocked
            .lock()
            .expect("block lock")
            .insert(customer, block);
    }
}

/// Counts definitive group outcomes and trips the failure threshold (SPEC §7).
#[derive(Default)]
struct FailureRatio {
    definitive: u64,
    failed: u64,
    codes: HashMap<String, u64>,
}

impl FailureRatio {
    /// Returns the abort reason once the threshold is passed.
    fn observe(
        &mut self,
        outcomes: &[(usize, OperationOutcome)],
        settings: &EngineSettings,
    ) -> Option<String> {
        if outcomes
            .iter()
            .any(|(_, o)| o.status == OperationStatus::Pending)
        {
            return None;
        }
        self.definitive += 1;
        if let Some((_, bad)) = outcomes
            .iter()
            .find(|(_, o)| o.status == OperationStatus::Failed)
        {
            self.failed += 1;
            let key = bad.error_code.clone().unwrap_or_else(|| {
                bad.http_status
                    .map_or("no response".into(), |s| format!("HTTP {s}"))
            });
            *self.codes.entry(key).or_default() += 1;
        }
        let over = self.definitive >= settings.failure_ratio_min_groups.max(1)
            && self.failed as f64 / self.definitive as f64 > settings.max_failure_ratio;
        over.then(|| {
            let (top, count) = self
                .codes
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(k, n)| (k.clone(), *n))
                .unwrap_or_default();
            format!(
                "failure threshold reached: {} of {} groups failed (more than {:.0}%); most common: {top} ({count}). \
                 Fix the cause and run the same command again to finish the pending rows",
                self.failed,
                self.definitive,
                settings.max_failure_ratio * 100.0
            )
        })
    }
}

/// Runs the work through the pool. Once `calls.stop` is cancelled (signal or abort), no new
/// group starts and requests already sent are allowed to finish.
pub async fn execute(
    calls: Arc<Dispatcher>,
    work: Work,
    observer: Arc<dyn Observer>,
    recorder: Arc<dyn Recorder>,
) -> EngineReport {
    // Requests in flight are permits: as many as the pool's size, which only grows. A worker
    // holds one while it works on a group, and gives it back while it waits out a 429 (its
    // call waits, the pool need not): so there are workers to spare, twice the most the pool
    // may have, each waiting for a permit until the work is done.
    let most_in_flight = (calls.settings.concurrency.max as u64)
        .min(work.groups)
        .max(1) as usize;
    let workers = (most_in_flight * 2).min(work.groups.max(1) as usize);
    let total_groups = work.groups;
    // The calls already answered (the subscribed-SKU reads) tell the latency before the first
    // write does: the pool starts at its size for that, not at 8 (no slow start).
    calls.pacer.writes_begin();
    let known = calls.stats.snapshot();
    let mut pool_size = calls
        .settings
        .pool_size(known.mean_latency.or(known.mean_read_latency))
        .min(most_in_flight);
    let drained = CancellationToken::new();
    let shared = Arc::new(Shared {
        queue: Mutex::new(Lanes::new(work)),
        calls,
        recorder,
        observer,
        abort_reason: Mutex::new(None),
        blocked: Mutex::new(HashMap::new()),
        in_flight: Arc::new(tokio::sync::Semaphore::new(pool_size)),
    });

    let (results_tx, mut results) = mpsc::unbounded_channel();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let shared = Arc::clone(&shared);
        let results_tx = results_tx.clone();
        let drained = drained.clone();
        let supervisor = Arc::clone(&shared);
        let worker = tokio::spawn(async move {
            while !shared.calls.stop.is_cancelled() {
                let mut permit = tokio::select! {
                    permit = Arc::clone(&shared.in_flight).acquire_owned() => match permit {
                        Ok(permit) => Some(permit),
                        Err(_) => return,
                    },
                    _ = drained.cancelled() => return,
                    _ = shared.calls.stop.cancelled() => return,
                };
                let next = shared
                    .queue
                    .lock()
                    .expect("queue lock")
                    .next(&shared.calls.pacer);
                let work = match next {
                    Ok(Some(work)) => work,
                    Ok(None) => {
                        drained.cancel();
                        break;
                    }
                    Err(error) => {
                        shared.abort(format!(
                            "cannot read the run's groups from the journal: {error}"
                        ));
                        break;
                    }
                };
                let outcomes = worker::run_group(&shared, &work, &mut permit).await;
                drop(permit);
                let operations = &work.request.operations;
                let settled_rows = outcomes
                    .iter()
                    .filter(|(_, o)| o.status != OperationStatus::Pending)
                    .map(|(op, _)| operations[*op].row_count)
                    .sum();
                if results_tx
                    .send((work.group, settled_rows, outcomes))
                    .is_err()
                {
                    break;
                }
            }
        });
        // A worker that panics loses only its group's answer (the group stays open, with its
        // recorded request ID): the run stops at once, as an abort, and can be resumed.
        handles.push(tokio::spawn(async move {
            if let Err(error) = worker.await
                && error.is_panic()
            {
                let payload = error.into_panic();
                supervisor.abort(crate::panic::abort_reason("a worker", payload.as_ref()));
            }
        }));
    }
    drop(results_tx);

    let mut ratio = FailureRatio::default();
    // Only a pool that sizes itself grows past its size for 3,000/min at the measured
    // latency, and never past what the ceiling itself needs there.
    let grows_while_busy = !shared.calls.settings.concurrency.is_fixed();
    let mut growth = PoolGrowth::new(tokio::time::Instant::now(), &shared.calls.stats());
    let mut groups_left = total_groups;
    shared.calls.pacer.work_left(groups_left);
    while let Some((group, settled_rows, outcomes)) = results.recv().await {
        shared.observer.group_finished(settled_rows);
        groups_left = groups_left.saturating_sub(1);
        shared.calls.pacer.work_left(groups_left);
        if let Some(reason) = ratio.observe(&outcomes, &shared.calls.settings) {
            shared.abort(reason);
        }
        shared.recorder.record(group, outcomes);
        let latency = shared.calls.stats.snapshot().mean_latency;
        let wanted = shared
            .calls
            .settings
            .pool_for_pace(shared.calls.pacer.paced_rate(), latency, most_in_flight)
            .min(most_in_flight);
        if wanted > pool_size {
            tracing::debug!(
                "the pool grows to {wanted} requests in flight: calls take {:.2} s on average, \
                 paced at {:.0}/min",
                latency.unwrap_or_default().as_secs_f64(),
                shared.calls.pacer.paced_rate().unwrap_or_default() * 60.0
            );
            shared.in_flight.add_permits(wanted - pool_size);
            pool_size = wanted;
        }
        let stats = shared.calls.stats();
        let most = latency.map_or(most_in_flight, |latency| {
            EngineSettings::in_flight_needed(shared.calls.settings.requests_per_minute, latency)
                .min(most_in_flight)
        });
        if grows_while_busy
            && let Some(grown) = growth.grown(tokio::time::Instant::now(), &stats, pool_size, most)
        {
            tracing::debug!(
                "the pool grows to {grown} requests in flight: it was busy and the API throttled none"
            );
            shared.in_flight.add_permits(grown - pool_size);
            pool_size = grown;
        }
    }
    for handle in handles {
        let _ = handle.await;
    }

    let reason = shared.abort_reason.lock().expect("abort lock").clone();
    let completion = match reason {
        Some(reason) => Completion::Aborted(reason),
        None if shared.calls.stop.is_cancelled() => Completion::Interrupted,
        None => Completion::Finished,
    };
    let stats = shared.calls.stats();
    // Only a run that kept the whole pool busy, and was not slowed by the API's quota, shows
    // that the pool's size was the limit.
    let pool = pool_size;
    let advice = stats
        .mean_latency
        .filter(|_| stats.throttled == 0 && stats.requests >= 4 * pool as u64)
        .and_then(|latency| shared.calls.settings.concurrency_advice(pool, latency));
    if let Some(advice) = &advice {
        tracing::warn!("{advice}");
    }
    EngineReport {
        stats,
        completion,
        advice,
    }
}

#[cfg(test)]
mod tests {
    use super::pool::tests::settings;
    use super::*;

    /// Which passes of a stored group may have gone out already (and so, given up on, stay
    /// unanswered): all of them after a resume; in a new run, only those carrying an earlier
    /// run's request, not the group's own.
    #[test]
    fn a_pass_was_sent_before_after_a_resume_or_when_it_carries_an_earlier_request() {
        let operation = |sku: u128| crate::plan::Operation {
            sku_id: Uuid::from_u128(sku),
            action: crate::input::Action::Assign,
            excluded_plans: Vec::new(),
            first_row: 0,
            row_count: 1,
        };
        let group = Group {
            customer_id: Uuid::from_u128(1),
            user: "émilie@contoso.example".into(),
            license_group: crate::input::LicenseGroup::Group1,
            operations: vec![operation(10), operation(11)],
        };
        let (own, earlier) = (Uuid::from_u128(100), Uuid::from_u128(200));
        let pending = |attempts| {
            Some(OperationOutcome {
                attempts,
                ..OperationOutcome::unsent(OperationStatus::Pending, "")
            })
        };
        let sent_before = |outcomes: &[Option<OperationOutcome>]| {
            let work = GroupWork::open(0, group.clone(), outcomes, &[earlier, own], Some(own))
                .expect("open work");
            work.passes
                .iter()
                .map(|p| (p.request_id, p.sent_before))
                .collect::<Vec<_>>()
        };
        // A new run: the carried request first, marked; the group's own request last, not.
        assert_eq!(sent_before(&[None, None]), [(earlier, true), (own, false)]);
        // A resumed run whose group made attempts: both may be applied.
        assert_eq!(
            sent_before(&[pending(0), pending(2)]),
            [(earlier, true), (own, true)]
        );
    }

    /// The failure threshold (SPEC §7): more than `max_failure_ratio` of the definitive groups
    /// failed, once `failure_ratio_min_groups` have an answer; the message names the most
    /// common error and how often it came.
    #[test]
    fn the_failure_threshold_trips_past_the_ratio_and_names_the_commonest_error() {
        let settings = settings(3000, Concurrency::fixed(8));
        let failed = |code: &str| {
            vec![(
                0,
                OperationOutcome {
                    error_code: Some(code.into()),
                    ..OperationOutcome::unsent(OperationStatus::Failed, "no")
                },
            )]
        };
        let succeeded = vec![(0, OperationOutcome::unsent(OperationStatus::Succeeded, ""))];
        let mut ratio = FailureRatio::default();
        // 100 groups, exactly half failed: not more than 50%.
        for i in 0..100 {
            let outcome = if i % 2 == 0 {
                failed(if i % 4 == 0 { "60012" } else { "800002" })
            } else {
                succeeded.clone()
            };
            assert_eq!(ratio.observe(&outcome, &settings), None, "group {i}");
        }
        // One more failure: 51 of 101.
        let reason = ratio
            .observe(&failed("60012"), &settings)
            .expect("past the ratio");
        assert!(reason.contains("51 of 101 groups failed"), "{reason}");
        assert!(reason.contains("most common: 60012 (26)"), "{reason}");
        // Pending outcomes are not counted.
        let mut fresh = FailureRatio::default();
        let pending = vec![(0, OperationOutcome::pending("later"))];
        assert_eq!(fresh.observe(&pending, &settings), None);
        assert_eq!(fresh.definitive, 0);
    }
}
