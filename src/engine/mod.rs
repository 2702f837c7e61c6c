//! The worker pool: takes the open groups of a run from the customers in turn (skipping a
//! customer that waits out its own Retry-After, see [`pacing`]), sends each as one
//! LicenseUpdate through the pacer (see [`worker`]), and hands every outcome to the
//! [`Recorder`] (the journal). Unless the operator fixed its size, the pool grows with the
//! latency it measures to what the ceiling needs ([`EngineSettings::pool_size`]).
//! Customer-level refusals stop traffic to that customer; credential failures and the failure
//! threshold abort the run, leaving what is not finished pending for a resume.

mod call;
pub mod pacing;
mod read;
mod worker;

pub use call::{Dispatcher, Stats, StatsSnapshot};
pub use read::{ReadFailure, ReadFailureKind};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Concurrency, Settings};
use crate::outcome::Completion;
use crate::outcome::{OperationOutcome, OperationStatus};
use crate::plan::Group;
use pacing::Pacer;

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
        })
    }

    pub fn operations(&self) -> impl Iterator<Item = usize> + '_ {
        self.passes
            .iter()
            .flat_map(|p| p.operations.iter().copied())
    }
}

/// The most requests per minute a pool that sizes itself grows for (see
/// [`EngineSettings::pool_size`]).
///
/// Why a bound below the ceiling: until the API answers 429 its quota is unknown, and every
/// request in flight when a quota runs out comes back 429. With the ceiling far above the
/// quota and fast calls (0.1 s), a pool grown for the ceiling had ~100 in flight and drew a
/// 429 on 5% of its calls (the quota cases of docs/BENCHMARKS.md); the SPEC's 8 drew 0.2%.
/// 3,000/min is where both hold: it needs no more than 8 for calls up to 0.1 s, and reaches
/// 3,000/min for the slow calls of Partner Center (0.3–1 s). A pool set by the operator is
/// not bounded by it.
pub const GROWS_FOR_PER_MINUTE: u32 = 3000;

impl EngineSettings {
    /// Little's law: to keep a pace of `per_minute`, calls that take `latency` each need
    /// `per_minute / 60 × latency` of them in flight on average; half as many again, because
    /// the number in flight varies around its mean (more so with a long tail of slow calls:
    /// with a fifth more, log-normal 0.5 s calls kept 91% of the ceiling's pace).
    fn in_flight_needed(per_minute: u32, latency: Duration) -> usize {
        let needed = per_minute as f64 / 60.0 * latency.as_secs_f64() * 1.5;
        needed.ceil().min(u32::MAX as f64) as usize
    }

    /// The pool's size for the mean latency measured so far: the operator's number, or what
    /// the ceiling (at most [`GROWS_FOR_PER_MINUTE`]) needs at that latency, between the start
    /// and the most (see [`Concurrency`]). Workers beyond what the API's quota allows only
    /// wait in the pacer.
    pub fn pool_size(&self, mean_latency: Option<Duration>) -> usize {
        let Concurrency { initial, max } = self.concurrency;
        let per_minute = self.requests_per_minute.min(GROWS_FOR_PER_MINUTE);
        mean_latency.map_or(initial, |latency| {
            Self::in_flight_needed(per_minute, latency).clamp(initial, max)
        })
    }

    /// When `pool` calls in flight that take `latency` each (they carry at most `pool /
    /// latency` per second) could not keep the ceiling's pace, the pool and not the API set
    /// it: the advice names the concurrency that would reach the ceiling. Nothing to advise
    /// when the pool is already as large as it may be.
    pub fn concurrency_advice(&self, pool: usize, latency: Duration) -> Option<String> {
        let ceiling = self.requests_per_minute as f64 / 60.0;
        let carried = pool as f64 / latency.as_secs_f64().max(1e-6);
        if carried >= ceiling * 0.95 || pool >= Concurrency::MAX {
            return None;
        }
        let needed =
            Self::in_flight_needed(self.requests_per_minute, latency).min(Concurrency::MAX);
        Some(format!(
            "the pool set the pace, not the API: {pool} requests in flight at {:.2} s each carry at \
             most {:.0}/min of the {}/min ceiling; --concurrency {needed} (limits.concurrency) \
             would reach it",
            latency.as_secs_f64(),
            carried * 60.0,
            self.requests_per_minute
        ))
    }
}

/// Grows a pool that sizes itself when its own size, not the API, holds the pace back.
///
/// Why: while no quota is known the pool is sized for at most [`GROWS_FOR_PER_MINUTE`], which
/// is too small for a quota above it (a bucket that stores a minute of calls, a rate that
/// rises mid-run: 8 calls of 0.1 s carry 80/s however much the API would take). Each watch
/// ([`PoolGrowth::WATCH`]) in which the pool was busy — answers came in at nearly what its
/// calls in flight can carry — and not one call was throttled, it grows by a step. A 429
/// stops the growth for that watch: from then on the pacer, not the pool, sets the pace, and
/// the pool only needs to carry it.
#[derive(Debug)]
struct PoolGrowth {
    since: tokio::time::Instant,
    answered: u64,
    throttled: u64,
}

impl PoolGrowth {
    /// How long the pool is watched before it may grow. Two seconds, not one: a bucket that
    /// holds one second of refill is spent before the first watch ends (its 429 stops the
    /// growth), so the pool meets it at its start and draws no more 429s than before.
    const WATCH: Duration = Duration::from_secs(2);
    /// The share of what the pool can carry that counts as busy.
    const BUSY: f64 = 0.8;
    /// A step, not a factor: every call in flight when a stored burst runs out comes back 429,
    /// and the pool a factor has reached by then is many times what the refill needs (×1.5
    /// each watch: 93 in flight and 6% 429s on the `bucket-60s` shape of docs/BENCHMARKS.md).
    const STEP: usize = 4;

    fn new(now: tokio::time::Instant, stats: &StatsSnapshot) -> Self {
        PoolGrowth {
            since: now,
            answered: stats.answered,
            throttled: stats.throttled,
        }
    }

    /// The pool's new size, when the watch that just ended shows it held the pace back;
    /// never more than `most`.
    fn grown(
        &mut self,
        now: tokio::time::Instant,
        stats: &StatsSnapshot,
        pool: usize,
        most: usize,
    ) -> Option<usize> {
        let watched = now.saturating_duration_since(self.since);
        if watched < Self::WATCH {
            return None;
        }
        let answered = stats.answered.saturating_sub(self.answered);
        let throttled = stats.throttled.saturating_sub(self.throttled);
        *self = PoolGrowth::new(now, stats);
        let latency = stats.mean_latency?.as_secs_f64().max(1e-6);
        let carried = (answered - throttled.min(answered)) as f64 / watched.as_secs_f64();
        let could_carry = pool as f64 / latency;
        let busy = throttled == 0 && carried >= Self::BUSY * could_carry;
        let grown = (pool + Self::STEP).min(most);
        (busy && grown > pool).then_some(grown)
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

/// Where the engine takes its groups from: the journal, a page per customer at a time, so
/// the pool holds a few groups per customer rather than the whole run.
pub trait WorkSource: Send {
    /// Up to `limit` open groups of `customer` after those already returned; none when it
    /// has no more.
    fn next_of(&mut self, customer: Uuid, limit: usize) -> Result<Vec<GroupWork>, String>;
}

/// The work of a run: its customers with open groups (in the order they appear), how many
/// groups are open, and where to read them.
pub struct Work {
    pub customers: Vec<Uuid>,
    pub groups: u64,
    pub source: Box<dyn WorkSource>,
}

/// Groups a lane reads ahead of its workers.
const PAGE: usize = 64;

/// The open groups per customer, taken in turn from the customers that may send now, so a
/// customer waiting out its own Retry-After does not hold the workers (see [`pacing`]).
struct Lanes {
    /// In turn order; a lane goes to the back when a group is taken from it. A lane's queue
    /// is refilled from the source when it runs dry; a lane the source has nothing more for
    /// is dropped.
    lanes: VecDeque<(Uuid, VecDeque<GroupWork>)>,
    source: Box<dyn WorkSource>,
}

impl Lanes {
    fn new(work: Work) -> Self {
        Lanes {
            lanes: work
                .customers
                .into_iter()
                .map(|c| (c, VecDeque::new()))
                .collect(),
            source: work.source,
        }
    }

    /// The next group: from the first lane in turn that may send now, else from the one that
    /// may send soonest (its worker then waits in the pacer). `Err`: the source failed.
    fn next(&mut self, pacer: &Pacer) -> Result<Option<GroupWork>, String> {
        loop {
            let pick = if pacer.scope() == pacing::Scope::Customer {
                let now = tokio::time::Instant::now();
                let mut soonest: Option<(usize, tokio::time::Instant)> = None;
                for (index, (customer, _)) in self.lanes.iter().enumerate() {
                    let at = pacer.ready_at(*customer);
                    if at <= now {
                        soonest = Some((index, at));
                        break;
                    }
                    if soonest.is_none_or(|(_, best)| at < best) {
                        soonest = Some((index, at));
                    }
                }
                match soonest {
                    Some((index, _)) => index,
                    None => return Ok(None),
                }
            } else {
                0
            };
            let Some((customer, mut queue)) = self.lanes.remove(pick) else {
                return Ok(None);
            };
            if queue.is_empty() {
                queue.extend(self.source.next_of(customer, PAGE)?);
            }
            if let Some(work) = queue.pop_front() {
                self.lanes.push_back((customer, queue));
                return Ok(Some(work));
            }
        }
    }
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
    // The calls already answered (the subscribed-SKU reads) tell the latency before the first
    // write does: the pool starts at its size for that, not at 8 (no slow start).
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
    while let Some((group, settled_rows, outcomes)) = results.recv().await {
        shared.observer.group_finished(settled_rows);
        if let Some(reason) = ratio.observe(&outcomes, &shared.calls.settings) {
            shared.abort(reason);
        }
        shared.recorder.record(group, outcomes);
        let latency = shared.calls.stats.snapshot().mean_latency;
        let wanted = shared.calls.settings.pool_size(latency).min(most_in_flight);
        if wanted > pool_size {
            tracing::debug!(
                "the pool grows to {wanted} requests in flight: calls take {:.2} s on average",
                latency.unwrap_or_default().as_secs_f64()
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
    use super::*;

    fn settings(requests_per_minute: u32, concurrency: Concurrency) -> EngineSettings {
        EngineSettings {
            requests_per_minute,
            concurrency,
            max_attempts: 8,
            max_elapsed: Duration::from_secs(900),
            min_retry_delay: Duration::from_millis(500),
            max_failure_ratio: 0.5,
            failure_ratio_min_groups: 100,
        }
    }

    #[test]
    fn advice_when_the_pool_cannot_carry_the_ceiling_at_the_measured_latency() {
        // 8 in flight at 0.5 s carry 960/min of 3,000/min: 38 would reach it (25 and a half more).
        let fixed = settings(3000, Concurrency::fixed(8));
        let advice = fixed
            .concurrency_advice(8, Duration::from_millis(500))
            .unwrap();
        assert!(advice.contains("at most 960/min"), "{advice}");
        assert!(advice.contains("--concurrency 38 "), "{advice}");
        // The defaults (300/min, 8 in flight) carry up to 1.6 s per call.
        let defaults = settings(300, Concurrency::fixed(8));
        assert_eq!(
            defaults.concurrency_advice(8, Duration::from_millis(1500)),
            None
        );
        assert!(
            defaults
                .concurrency_advice(8, Duration::from_secs(2))
                .is_some()
        );
        // A pool that carries the ceiling exactly (8 at 1.6 s: 300/min) needs no advice.
        assert_eq!(
            defaults.concurrency_advice(8, Duration::from_millis(1600)),
            None
        );
        // Never more than the most a pool may have, and nothing to say when it has that.
        let advice = fixed
            .concurrency_advice(8, Duration::from_secs(10))
            .unwrap();
        assert!(advice.contains("--concurrency 256 "), "{advice}");
        assert_eq!(fixed.concurrency_advice(256, Duration::from_secs(10)), None);
    }

    #[test]
    fn a_pool_not_set_grows_to_what_the_ceiling_needs_at_the_measured_latency() {
        // What a pool of `size` calls that take `latency` each can carry, per second.
        let carries = |size: usize, latency: Duration| size as f64 / latency.as_secs_f64();
        let latencies = [20, 100, 300, 500, 1000, 2000, 10_000, 60_000].map(Duration::from_millis);
        for ceiling in [300, 3000, 60_000] {
            let growing = settings(ceiling, Concurrency::growing());
            assert_eq!(growing.pool_size(None), 8, "the SPEC's start");
            // While the quota is unknown the pool is sized for at most 3,000/min.
            let pace = ceiling.min(GROWS_FOR_PER_MINUTE) as f64 / 60.0;
            let mut before = 0;
            for latency in latencies {
                let size = growing.pool_size(Some(latency));
                assert!(size >= 8, "never below the start: {size} at {latency:?}");
                assert!(size <= Concurrency::MAX, "{size} at {latency:?}");
                assert!(
                    size >= before,
                    "slower calls never shrink it: {size} < {before}"
                );
                before = size;
                // It carries the pace (with room for the spread of latencies), unless it is
                // as large as a pool may be; and it is no larger than twice what that needs.
                if size < Concurrency::MAX {
                    assert!(
                        carries(size, latency) >= pace * 1.2,
                        "{ceiling}/min at {latency:?}: {size} carry {:.0}/s",
                        carries(size, latency)
                    );
                }
                if size > 8 {
                    assert!(
                        carries(size - 1, latency) < pace * 2.0,
                        "{ceiling}/min at {latency:?}: {size} is more than needed"
                    );
                }
            }
            // A minute per call: no pool carries 3,000/min, it stops at the most it may have.
            if ceiling >= 3000 {
                assert_eq!(
                    growing.pool_size(Some(Duration::from_secs(60))),
                    Concurrency::MAX
                );
            }
        }
        // Set by the operator: that many whatever the latency.
        let fixed = settings(3000, Concurrency::fixed(8));
        for latency in latencies {
            assert_eq!(fixed.pool_size(Some(latency)), 8);
        }
    }

    /// The counters after `answered` answers (of which `throttled` 429s) of calls that took
    /// `latency_ms` each.
    fn counted(answered: u64, throttled: u64, latency_ms: u64) -> StatsSnapshot {
        StatsSnapshot {
            answered,
            throttled,
            mean_latency: Some(Duration::from_millis(latency_ms)),
            ..StatsSnapshot::default()
        }
    }

    #[test]
    fn a_busy_pool_that_draws_no_429_grows_each_watch_and_stops_at_the_first_429() {
        let start = tokio::time::Instant::now();
        let watch = |n: u32| start + PoolGrowth::WATCH * n;
        let secs = PoolGrowth::WATCH.as_secs();
        let mut growth = PoolGrowth::new(start, &counted(0, 0, 100));
        // 8 calls of 0.1 s carry 80/s. Half a watch is not yet a verdict.
        assert_eq!(
            growth.grown(start + PoolGrowth::WATCH / 2, &counted(40, 0, 100), 8, 256),
            None
        );
        // A watch at 78/s, nothing throttled: the pool was what held the pace.
        let mut answered = 78 * secs;
        let grown = growth
            .grown(watch(1), &counted(answered, 0, 100), 8, 256)
            .unwrap();
        assert!(grown > 8, "{grown}");
        assert!(grown <= 12, "at most half again per watch: {grown}");
        // The bigger pool was busy too: it grows again, from its new size.
        answered += grown as u64 * 10 * secs;
        let again = growth
            .grown(watch(2), &counted(answered, 0, 100), grown, 256)
            .unwrap();
        assert!(again > grown, "{again} after {grown}");
        // One 429 in the watch: the quota, not the pool, is the limit now.
        answered += again as u64 * 10 * secs;
        assert_eq!(
            growth.grown(watch(3), &counted(answered, 1, 100), again, 256),
            None
        );
        // A pool that was not busy (the pacer held it back at 20/s) stays as it is.
        answered += 20 * secs;
        assert_eq!(
            growth.grown(watch(4), &counted(answered, 1, 100), again, 256),
            None
        );
    }

    /// The watch is a time, not a count of checks: a longer one (the pool was checked late)
    /// still shows a busy pool, and a pace of half what the pool carries over it is not busy.
    #[test]
    fn a_watch_is_judged_by_the_pace_over_its_whole_length() {
        let start = tokio::time::Instant::now();
        let long = PoolGrowth::WATCH * 2;
        let secs = long.as_secs();
        let mut busy = PoolGrowth::new(start, &counted(0, 0, 100));
        assert!(
            busy.grown(start + long, &counted(78 * secs, 0, 100), 8, 256)
                .is_some()
        );
        let mut idle = PoolGrowth::new(start, &counted(0, 0, 100));
        assert_eq!(
            idle.grown(start + long, &counted(40 * secs, 0, 100), 8, 256),
            None,
            "40/s of the 80/s that 8 calls of 0.1 s carry"
        );
    }

    #[test]
    fn a_pool_never_grows_past_the_most_it_may_have() {
        let start = tokio::time::Instant::now();
        let later = start + PoolGrowth::WATCH;
        let secs = PoolGrowth::WATCH.as_secs();
        let mut growth = PoolGrowth::new(start, &counted(0, 0, 100));
        assert_eq!(
            growth.grown(later, &counted(95 * secs, 0, 100), 10, 12),
            Some(12)
        );
        let mut full = PoolGrowth::new(start, &counted(0, 0, 100));
        assert_eq!(
            full.grown(later, &counted(120 * secs, 0, 100), 12, 12),
            None
        );
    }

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

    /// Two open groups for each customer, handed out once.
    struct TwoEach(HashMap<Uuid, Vec<GroupWork>>);

    impl WorkSource for TwoEach {
        fn next_of(&mut self, customer: Uuid, _limit: usize) -> Result<Vec<GroupWork>, String> {
            Ok(self.0.remove(&customer).unwrap_or_default())
        }
    }

    fn lanes_of(customers: &[Uuid]) -> Lanes {
        let work = |customer: Uuid, n: usize| GroupWork {
            group: n,
            request: Group {
                customer_id: customer,
                user: format!("łukasz{n}@fabrikam.example"),
                license_group: crate::input::LicenseGroup::Group1,
                operations: Vec::new(),
            },
            passes: Vec::new(),
            previous_attempts: 0,
        };
        let groups = customers
            .iter()
            .map(|&c| (c, vec![work(c, 0), work(c, 1)]))
            .collect();
        Lanes::new(Work {
            customers: customers.to_vec(),
            groups: 2 * customers.len() as u64,
            source: Box::new(TwoEach(groups)),
        })
    }

    /// Once the API limits per customer, a customer that waits out its own 429 does not hold
    /// up the others: their groups go first, in turn; of the waiting ones, the one whose
    /// wait ends soonest comes next.
    #[tokio::test(start_paused = true)]
    async fn lanes_that_wait_give_way_to_lanes_that_may_send() {
        let [a, b, c, d] = [0xA, 0xB, 0xC, 0xD].map(Uuid::from_u128);
        let pacer = pacing::Pacer::new(1_000_000);
        // A throttled twice on its own while B is answered: the limit is per customer.
        for _ in 0..2 {
            for _ in 0..10 {
                tokio::time::advance(Duration::from_millis(200)).await;
                pacer.answered(Some(a), tokio::time::Instant::now());
                pacer.answered(Some(b), tokio::time::Instant::now());
            }
            pacer.throttled(Some(a), tokio::time::Instant::now(), Duration::from_secs(1));
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let now = tokio::time::Instant::now;
        pacer.throttled(Some(a), now(), Duration::from_millis(2500));
        pacer.answered(Some(b), now());
        pacer.throttled(Some(d), now(), Duration::from_millis(1500));
        pacer.answered(Some(b), now());
        assert_eq!(pacer.scope(), pacing::Scope::Customer);

        let mut lanes = lanes_of(&[a, b, c, d]);
        let order: Vec<Uuid> = (0..8)
            .map(|_| lanes.next(&pacer).unwrap().unwrap().request.customer_id)
            .collect();
        assert_eq!(order[..4], [b, c, b, c], "the lanes that may send, in turn");
        assert_eq!(order[4], d, "then the wait that ends first: {order:?}");
        assert!(lanes.next(&pacer).unwrap().is_none());
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
