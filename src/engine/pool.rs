//! The pool's size: what the ceiling needs at the latency measured (Little's law), the
//! advice when a fixed pool held the pace back, and the growth of a pool that sizes itself
//! while it is busy and the API throttles none of its calls.

use std::time::Duration;

use super::{EngineSettings, StatsSnapshot};
use crate::config::Concurrency;

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
    pub(super) fn in_flight_needed(per_minute: u32, latency: Duration) -> usize {
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

    /// The pool a pace learned from the API's 429s needs at `latency` (when it is more than
    /// [`EngineSettings::pool_size`] gives), never more than the ceiling needs there nor
    /// `most`.
    ///
    /// Why: the pool is sized for at most [`GROWS_FOR_PER_MINUTE`] while the quota is unknown,
    /// and grows past it only while nothing is throttled. A quota above that which the pacer has
    /// learned (a rate that rose mid-run to 6,000/min, whose occasional 429s stop the growth)
    /// was then carried by 8 calls of 0.1 s: 80/s of its 100/s. Once the pacer paces, a larger
    /// pool does not send more: its extra workers wait for the pacer's slots, so the calls in
    /// flight stay what the pace needs, not what the pool holds.
    pub fn pool_for_pace(
        &self,
        paced_per_second: Option<f64>,
        latency: Option<Duration>,
        most: usize,
    ) -> usize {
        if self.concurrency.is_fixed() {
            return self.pool_size(latency);
        }
        let for_ceiling = self.pool_size(latency);
        let (Some(rate), Some(latency)) = (paced_per_second, latency) else {
            return for_ceiling;
        };
        let per_minute = (rate * 60.0).min(self.requests_per_minute as f64) as u32;
        let for_pace = Self::in_flight_needed(per_minute, latency)
            .min(Self::in_flight_needed(self.requests_per_minute, latency))
            .min(most);
        for_ceiling.max(for_pace)
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
pub(super) struct PoolGrowth {
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

    pub(super) fn new(now: tokio::time::Instant, stats: &StatsSnapshot) -> Self {
        PoolGrowth {
            since: now,
            answered: stats.answered,
            throttled: stats.throttled,
        }
    }

    /// The pool's new size, when the watch that just ended shows it held the pace back;
    /// never more than `most`.
    pub(super) fn grown(
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn a_learned_pace_above_what_the_pool_carries_sizes_the_pool() {
        let grows = settings(60_000, Concurrency::growing());
        let latency = Some(Duration::from_millis(100));
        // Unknown quota: sized for 3,000/min at 0.1 s, 8.
        assert_eq!(grows.pool_for_pace(None, latency, 200), 8);
        // Paced at 100/s: 100 × 0.1 × 1.5 = 15 in flight.
        assert_eq!(grows.pool_for_pace(Some(100.0), latency, 200), 15);
        // A pace below what the pool carries does not shrink it; `most` bounds it.
        assert_eq!(grows.pool_for_pace(Some(10.0), latency, 200), 8);
        assert_eq!(grows.pool_for_pace(Some(100.0), latency, 12), 12);
        // Never past what the ceiling needs: 600/min at 0.1 s is 2 (the pool's least is 8).
        let low_ceiling = settings(600, Concurrency::growing());
        assert_eq!(low_ceiling.pool_for_pace(Some(100.0), latency, 200), 8);
        // A pool the operator fixed stays as it is.
        let fixed = settings(60_000, Concurrency::fixed(4));
        assert_eq!(fixed.pool_for_pace(Some(100.0), latency, 200), 4);
    }

    pub(in crate::engine) fn settings(
        requests_per_minute: u32,
        concurrency: Concurrency,
    ) -> EngineSettings {
        EngineSettings {
            requests_per_minute,
            concurrency,
            max_attempts: 8,
            max_elapsed: Duration::from_secs(900),
            min_retry_delay: Duration::from_millis(500),
            max_failure_ratio: 0.5,
            failure_ratio_min_groups: 100,
            default_usage_location: None,
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
}
