//! One call under the run's policy, for writes and reads alike: admitted by the pacer, sent
//! with the current token, waited and sent again after a 429 (never sooner than its
//! Retry-After) and after a transient error (backoff, the same request), one token renewal
//! after a 401; it returns the answer that ended it and the attempts it took. Also what every
//! call of a run shares ([`Dispatcher`]) and the run's counters ([`Stats`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::EngineSettings;
use super::pacing::Pacer;
use crate::api::auth::AuthError;
use crate::api::classify::Verdict;
use crate::api::{ApiClient, Exchange};
use crate::secret::Secret;

/// Counters of the whole run.
#[derive(Debug, Default)]
pub struct Stats {
    /// License updates sent (every attempt).
    pub requests: AtomicU64,
    /// Reads (subscribed SKUs, licenses, insights), every attempt.
    pub reads: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    /// License updates that got an answer, and the time they took together.
    answered: AtomicU64,
    answer_micros: AtomicU64,
    /// The same for reads.
    reads_answered: AtomicU64,
    read_micros: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub reads: u64,
    pub retries: u64,
    pub throttled: u64,
    /// License updates that got an answer of any kind (429s included).
    pub answered: u64,
    /// Mean time a license update took to be answered.
    pub mean_latency: Option<Duration>,
    /// Mean time a read took to be answered.
    pub mean_read_latency: Option<Duration>,
}

/// Which counters a call's attempts go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallKind {
    /// A license update.
    Write,
    /// A GET (subscribed SKUs, a user's licenses, deployment insights).
    Read,
}

impl Stats {
    /// One attempt of `kind`, answered after `took` (`None`: no answer arrived).
    fn attempted(&self, kind: CallKind, took: Option<Duration>) {
        let (sent, answered, micros) = match kind {
            CallKind::Write => (&self.requests, &self.answered, &self.answer_micros),
            CallKind::Read => (&self.reads, &self.reads_answered, &self.read_micros),
        };
        sent.fetch_add(1, Ordering::Relaxed);
        if let Some(took) = took {
            answered.fetch_add(1, Ordering::Relaxed);
            micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        }
    }

    pub(super) fn snapshot(&self) -> StatsSnapshot {
        let answered = self.answered.load(Ordering::Relaxed);
        let reads_answered = self.reads_answered.load(Ordering::Relaxed);
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            answered,
            mean_latency: (answered > 0).then(|| {
                Duration::from_micros(self.answer_micros.load(Ordering::Relaxed) / answered)
            }),
            mean_read_latency: (reads_answered > 0).then(|| {
                Duration::from_micros(self.read_micros.load(Ordering::Relaxed) / reads_answered)
            }),
        }
    }
}

/// What every call of a run shares: the client, the pacer (one ceiling and one Retry-After
/// pause for reads and writes alike), the retry policy, the interrupt, and the counters.
pub struct Dispatcher {
    pub client: Arc<ApiClient>,
    pub settings: EngineSettings,
    pub(super) pacer: Pacer,
    /// Cancelled by SIGINT/SIGTERM or an abort: no new call starts.
    pub stop: CancellationToken,
    pub(super) stats: Stats,
}

/// What a caller of [`Dispatcher::call`] does that the policy does not decide.
pub(super) trait Attempt {
    /// Why the call may not go out (checked before every attempt): a refusal learnt from
    /// another call, say.
    type Hold;

    /// The pacer's lane: the customer of a write; `None` for the reads, which go first.
    fn lane(&self) -> Option<Uuid>;

    /// `Some` ends the call before its next attempt is sent.
    fn hold(&self) -> Option<Self::Hold> {
        None
    }

    /// Sends one attempt with `token`; keeps what it needs of the answer (a body, say).
    async fn send(&mut self, token: &Secret) -> Exchange;

    /// Waits out a 429's `wait`; `false` when the run stopped first. The writes give their
    /// place in the pool back while they wait.
    async fn wait_throttled(&mut self, wait: Duration, stop: &CancellationToken) -> bool {
        sleep_unless_stopped(wait, stop).await
    }

    /// Told after a 429, before the wait.
    fn throttled(&self, _wait: Duration) {}

    /// Told before a transient error's retry.
    fn retrying(&self) {}
}

/// How a call ended.
#[derive(Debug)]
pub(super) enum CallEnd<H> {
    /// An answer the caller acts on: a success, or one that sending again cannot change
    /// (a 401 after the renewal among them). Its verdict is the last exchange's.
    Answered(Verdict),
    /// Told to wait (429) past `retry.max_elapsed_secs`, `after` the call began.
    ThrottledOut { after: Duration },
    /// Transient errors until the retries ran out.
    TransientOut,
    /// [`Attempt::hold`] said no before an attempt.
    Held(H),
    /// The run stopped: before an attempt, or during a wait.
    Stopped,
    /// No token to send with: the credentials failed.
    NoToken(AuthError),
}

/// A call's end and what led there.
#[derive(Debug)]
pub(super) struct Called<H> {
    pub end: CallEnd<H>,
    /// Attempts sent by this call.
    pub attempts: u32,
    /// The last attempt's exchange; `None` when none was sent.
    pub last: Option<Exchange>,
    /// Whether an attempt may have reached the service without a definitive answer (a
    /// timeout, a reset, a 5xx, then retried). A 429 says only that *its* attempt was not
    /// processed.
    pub maybe_applied: bool,
}

/// Sleeps unless the run stops first; `false` when stopped.
pub(super) async fn sleep_unless_stopped(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

impl Dispatcher {
    pub fn new(client: Arc<ApiClient>, settings: EngineSettings, stop: CancellationToken) -> Self {
        Dispatcher {
            pacer: Pacer::new(settings.requests_per_minute),
            client,
            settings,
            stop,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The waits after 429s that say nothing of how long (no `Retry-After`, no "Try again in
    /// N seconds"): exponential with jitter from a second, up to a minute, for as long as
    /// `retry.max_elapsed_secs` allows.
    fn untold_throttle_backoff(&self) -> backon::ExponentialBackoff {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_secs(1).max(self.settings.min_retry_delay))
            .with_max_delay(Duration::from_secs(60))
            .without_max_times()
            .build()
    }

    fn retry_policy(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.settings.min_retry_delay)
            .with_max_delay(Duration::from_secs(60))
            .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
            .with_total_delay(Some(self.settings.max_elapsed))
    }

    /// Sends `attempt` until an answer ends it, under the pacing, token and retry policy
    /// (SPEC §5): every attempt carries the same request.
    pub(super) async fn call<A: Attempt>(
        &self,
        kind: CallKind,
        attempt: &mut A,
    ) -> Called<A::Hold> {
        let started = Instant::now();
        let mut backoff = self.retry_policy().build();
        let mut untold = self.untold_throttle_backoff();
        let mut renewed_after_401 = false;
        let mut called = Called {
            end: CallEnd::Stopped,
            attempts: 0,
            last: None,
            maybe_applied: false,
        };
        let lane = attempt.lane();
        let end = loop {
            if let Some(hold) = attempt.hold() {
                break CallEnd::Held(hold);
            }
            if !self.pacer.admit(lane, &self.stop).await {
                break CallEnd::Stopped;
            }
            let token = match self.client.tokens.token().await {
                Ok(token) => token,
                Err(error) => break CallEnd::NoToken(error),
            };
            let sent_at = tokio::time::Instant::now();
            let exchange = attempt.send(&token).await;
            called.attempts += 1;
            let answered = exchange.http_status.is_some();
            self.stats
                .attempted(kind, answered.then(|| sent_at.elapsed()));
            let verdict = exchange.classified.verdict.clone();
            called.last = Some(exchange);
            // A 429 tells the pacer more than that an answer came: `throttled` below.
            if answered && !matches!(verdict, Verdict::Throttled { .. }) {
                self.pacer.answered(lane, sent_at);
            }
            if verdict != Verdict::Unauthorized {
                renewed_after_401 = false;
            }
            match verdict {
                Verdict::Throttled { retry_after } => {
                    let retry_after = retry_after
                        .or_else(|| untold.next())
                        .unwrap_or(Duration::from_secs(60));
                    self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    attempt.throttled(retry_after);
                    self.pacer.throttled(lane, sent_at, retry_after);
                    if started.elapsed() + retry_after > self.settings.max_elapsed {
                        break CallEnd::ThrottledOut {
                            after: started.elapsed(),
                        };
                    }
                    // Never sooner than told: from when the answer came (the API counts from
                    // when it answered, which is later than the call was sent).
                    if !attempt.wait_throttled(retry_after, &self.stop).await {
                        break CallEnd::Stopped;
                    }
                }
                Verdict::Transient => match backoff.next() {
                    Some(wait) if started.elapsed() + wait <= self.settings.max_elapsed => {
                        called.maybe_applied = true;
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        attempt.retrying();
                        if !sleep_unless_stopped(wait, &self.stop).await {
                            break CallEnd::Stopped;
                        }
                    }
                    _ => break CallEnd::TransientOut,
                },
                Verdict::Unauthorized if !renewed_after_401 => {
                    renewed_after_401 = true;
                    if let Err(error) = self.client.tokens.renew_after_rejection(&token).await {
                        break CallEnd::NoToken(error);
                    }
                }
                answered => break CallEnd::Answered(answered),
            }
        };
        called.end = end;
        called
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mean latencies the pool is sized from: of license updates, and of reads apart; an
    /// attempt without an answer is counted as sent, not in the latency.
    #[test]
    fn the_mean_latency_is_the_mean_of_the_answers() {
        let stats = Stats::default();
        stats.attempted(CallKind::Read, Some(Duration::from_millis(100)));
        stats.attempted(CallKind::Read, Some(Duration::from_millis(300)));
        stats.attempted(CallKind::Write, Some(Duration::from_millis(50)));
        stats.attempted(CallKind::Write, None);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.mean_read_latency, Some(Duration::from_millis(200)));
        assert_eq!(snapshot.mean_latency, Some(Duration::from_millis(50)));
        assert_eq!(
            (snapshot.reads, snapshot.requests, snapshot.answered),
            (2, 2, 1)
        );
        assert_eq!(Stats::default().snapshot().mean_latency, None);
    }
}
