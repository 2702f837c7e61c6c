//! Pool-wide pacing: a `governor` ceiling of `requests_per_minute` with a burst of one (requests
//! spread, not bunched), a pause gate that holds every worker while a Retry-After runs, and an
//! allowance learned from the API's throttling.
//!
//! Learning: a short Retry-After (under [`WINDOW_LIKE`]) means a token bucket that refills
//! continuously. Between two throttle events the bucket went from empty to empty, so the
//! answers between them divided by the time between them is its refill rate; the pool then
//! paces just below it and probes upwards while no 429 comes. A long Retry-After means a fixed
//! window: nothing is learned, the pool uses the window in a burst and waits for its end.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A Retry-After at least this long comes from a fixed window, not a token bucket.
pub const WINDOW_LIKE: Duration = Duration::from_secs(3);
/// Pace this far below the learned refill rate, so the bucket never runs dry.
const MARGIN: f64 = 0.99;
/// Without a 429 for this long, try 1% more.
const PROBE_AFTER: Duration = Duration::from_secs(5);

pub struct Pacer {
    ceiling: DefaultDirectRateLimiter,
    state: Mutex<State>,
}

struct State {
    paused_until: Option<Instant>,
    /// Requests per second the API allows, once learned.
    learned_rate: Option<f64>,
    next_slot: Instant,
    answered_since_event: u64,
    last_event: Option<Instant>,
    last_probe: Instant,
}

impl State {
    fn extend_pause(&mut self, until: Instant) {
        if self.paused_until.is_none_or(|current| current < until) {
            self.paused_until = Some(until);
        }
    }
}

impl Pacer {
    pub fn new(requests_per_minute: u32) -> Self {
        let period = Duration::from_secs(60) / requests_per_minute.max(1);
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .expect("period is positive")
            .allow_burst(NonZeroU32::MIN);
        let now = Instant::now();
        Pacer {
            ceiling: RateLimiter::direct(quota),
            state: Mutex::new(State {
                paused_until: None,
                learned_rate: None,
                next_slot: now,
                answered_since_event: 0,
                last_event: None,
                last_probe: now,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("pacer lock")
    }

    /// A request was answered (anything but a 429): it used the API's allowance.
    pub fn answered(&self) {
        self.state().answered_since_event += 1;
    }

    /// A 429: pauses the whole pool for `retry_after` and learns from it (see the module docs).
    pub fn throttled(&self, retry_after: Duration) {
        let now = Instant::now();
        let mut state = self.state();
        // 429s of requests that were already in flight belong to the same event.
        let new_event = state.paused_until.is_none_or(|until| until <= now);
        state.extend_pause(now + retry_after);
        if !new_event {
            return;
        }
        if retry_after < WINDOW_LIKE
            && let Some(last) = state.last_event
        {
            let seconds = now.duration_since(last).as_secs_f64();
            if seconds >= 0.5 && state.answered_since_event > 0 {
                let rate = state.answered_since_event as f64 / seconds * MARGIN;
                tracing::info!(
                    "the API allows about {:.0} requests/minute; pacing at that",
                    rate * 60.0
                );
                state.learned_rate = Some(rate);
            }
        }
        state.last_event = Some(now);
        state.last_probe = now;
        state.answered_since_event = 0;
    }

    /// How long the pool is still paused, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        self.state()
            .paused_until
            .map(|until| until.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    /// The next slot under the learned allowance, if one is learned.
    fn learned_slot(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.state();
        let mut rate = state.learned_rate?;
        if now.duration_since(state.last_probe) >= PROBE_AFTER {
            rate *= 1.01;
            state.learned_rate = Some(rate);
            state.last_probe = now;
        }
        let slot = state.next_slot.max(now);
        state.next_slot = slot + Duration::from_secs_f64(1.0 / rate);
        Some(slot)
    }

    /// Waits until this worker may send: no pause running, a slot under the ceiling and under
    /// the learned allowance. Returns `false` when `stop` fires first.
    pub async fn admit(&self, stop: &CancellationToken) -> bool {
        loop {
            // `biased`: when both are ready, the stop wins (select! would otherwise pick one at
            // random and let a call through after a signal).
            while let Some(left) = self.paused_for() {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(left) => {}
                }
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return false,
                _ = self.ceiling.until_ready() => {}
            }
            if let Some(slot) = self.learned_slot() {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep_until(slot) => {}
                }
            }
            // A 429 may have paused the pool while we waited for the slot.
            if self.paused_for().is_none() {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pause_extends_but_never_shortens() {
        let pacer = Pacer::new(60_000);
        pacer.throttled(Duration::from_secs(5));
        pacer.throttled(Duration::from_secs(1));
        let left = pacer.paused_for().unwrap();
        assert!(left > Duration::from_secs(4), "{left:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn admit_waits_out_a_pause() {
        let pacer = Pacer::new(60_000);
        let stop = CancellationToken::new();
        pacer.throttled(Duration::from_secs(3));
        let before = Instant::now();
        assert!(pacer.admit(&stop).await);
        assert!(before.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_refill_rate_is_learned_between_two_throttle_events() {
        let pacer = Pacer::new(1_000_000);
        pacer.throttled(Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..100 {
            pacer.answered();
        }
        pacer.throttled(Duration::from_secs(1));
        let learned = pacer.state().learned_rate.unwrap();
        assert!((learned - 50.0 * MARGIN).abs() < 0.5, "{learned}");
        // 429s of requests in flight during the pause are the same event: nothing changes.
        pacer.throttled(Duration::from_secs(1));
        assert_eq!(pacer.state().learned_rate, Some(learned));
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_teaches_no_rate() {
        let pacer = Pacer::new(1_000_000);
        pacer.throttled(Duration::from_secs(40));
        tokio::time::advance(Duration::from_secs(41)).await;
        pacer.answered();
        pacer.throttled(Duration::from_secs(40));
        assert_eq!(pacer.state().learned_rate, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_learned_rate_spaces_the_slots() {
        let pacer = Pacer::new(1_000_000);
        pacer.state().learned_rate = Some(10.0);
        let stop = CancellationToken::new();
        let before = Instant::now();
        for _ in 0..5 {
            assert!(pacer.admit(&stop).await);
        }
        assert!(
            before.elapsed() >= Duration::from_millis(400),
            "{:?}",
            before.elapsed()
        );
    }

    #[tokio::test]
    async fn a_stopped_run_is_never_admitted_even_with_a_free_slot() {
        let pacer = Pacer::new(60_000);
        let stop = CancellationToken::new();
        stop.cancel();
        for _ in 0..100 {
            assert!(!pacer.admit(&stop).await);
        }
    }

    #[tokio::test]
    async fn stop_ends_the_wait() {
        let pacer = Pacer::new(1);
        let stop = CancellationToken::new();
        pacer.throttled(Duration::from_secs(3600));
        stop.cancel();
        assert!(!pacer.admit(&stop).await);
    }
}
