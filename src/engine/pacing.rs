//! Pool-wide pacing: a `governor` ceiling of `requests_per_minute` with a burst of one (requests
//! spread, not bunched), and a pause gate that holds every worker while a Retry-After runs.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct Pacer {
    limiter: DefaultDirectRateLimiter,
    paused_until: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(requests_per_minute: u32) -> Self {
        let period = Duration::from_secs(60) / requests_per_minute.max(1);
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .expect("period is positive")
            .allow_burst(NonZeroU32::MIN);
        Pacer {
            limiter: RateLimiter::direct(quota),
            paused_until: Mutex::new(None),
        }
    }

    /// Holds the whole pool for at least `wait` (a later end wins over an earlier one).
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().expect("pacer lock");
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// How long the pool is still paused, if it is.
    pub fn paused_for(&self) -> Option<Duration> {
        let paused = self.paused_until.lock().expect("pacer lock");
        paused
            .map(|until| until.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }

    /// Waits until this worker may send: no pause running and a slot under the ceiling.
    /// Returns `false` when `stop` fires first.
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
                _ = self.limiter.until_ready() => {}
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
        pacer.pause_for(Duration::from_secs(5));
        pacer.pause_for(Duration::from_secs(1));
        let left = pacer.paused_for().unwrap();
        assert!(left > Duration::from_secs(4), "{left:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn admit_waits_out_a_pause() {
        let pacer = Pacer::new(60_000);
        let stop = CancellationToken::new();
        pacer.pause_for(Duration::from_secs(3));
        let before = Instant::now();
        assert!(pacer.admit(&stop).await);
        assert!(before.elapsed() >= Duration::from_secs(3));
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
        pacer.pause_for(Duration::from_secs(3600));
        stop.cancel();
        assert!(!pacer.admit(&stop).await);
    }
}
