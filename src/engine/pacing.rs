//! Pacing: a `governor` ceiling of `requests_per_minute` across the whole pool (burst of one, so
//! requests are spread, not bunched), pauses that hold workers while a Retry-After runs, and
//! allowances learned from the API's throttling — pool-wide, or per customer lane once the API
//! shows that it limits per partner+customer pair.
//!
//! Learning: a short Retry-After (under [`WINDOW_LIKE`]) means a token bucket that refills
//! continuously. Between two throttle events the bucket went from empty to empty, so the
//! answers between them divided by the time between them is its refill rate; the pool (or the
//! lane) then paces just below it and probes upwards while no 429 comes. A long Retry-After
//! means a fixed window: nothing is learned, the window is used in a burst and waited out.
//!
//! Scope: Partner Center limits per partner, or per partner+customer pair, and does not say
//! which. The pacer starts pool-wide: a 429 pauses every worker (SPEC §5). When two throttle
//! events in a row come from the same customer, nobody else was throttled during them and
//! other customers were answered in between, the limit is the pair's: from then on a 429
//! pauses and teaches only that customer's lane, and the other customers go on. When, while a
//! lane is paused, another customer is throttled before anything else was answered, the limit
//! is the partner's after all, and the whole pool waits again.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A Retry-After at least this long comes from a fixed window, not a token bucket.
pub const WINDOW_LIKE: Duration = Duration::from_secs(3);
/// Pace this far below the learned refill rate, so the bucket never runs dry.
const MARGIN: f64 = 0.99;
/// Without a 429 for this long, try 1% more.
const PROBE_AFTER: Duration = Duration::from_secs(5);

/// Whose allowance a 429 spends, as far as the pacer has learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One allowance for the whole partner: a 429 pauses the whole pool.
    Partner,
    /// One allowance per partner+customer pair: a 429 pauses that customer's lane only.
    Customer,
}

pub struct Pacer {
    ceiling: DefaultDirectRateLimiter,
    state: Mutex<Pacing>,
}

/// A pause and a learned rate: the pool's, or one customer lane's.
struct Allowance {
    paused_until: Option<Instant>,
    /// Requests per second the API allows, once learned.
    learned_rate: Option<f64>,
    next_slot: Instant,
    answered_since_event: u64,
    last_event: Option<Instant>,
    last_probe: Instant,
}

impl Allowance {
    fn new(now: Instant) -> Self {
        Allowance {
            paused_until: None,
            learned_rate: None,
            next_slot: now,
            answered_since_event: 0,
            last_event: None,
            last_probe: now,
        }
    }

    fn paused_for(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .map(|until| until.saturating_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    fn extend_pause(&mut self, until: Instant) {
        if self.paused_until.is_none_or(|current| current < until) {
            self.paused_until = Some(until);
        }
    }

    /// Pauses for `retry_after` and learns from it; `true` when this 429 starts a new throttle
    /// event (429s of requests already in flight during a pause belong to the running one).
    /// `whose` names the allowance in the log, `None` keeps quiet.
    fn throttle(&mut self, now: Instant, retry_after: Duration, whose: Option<&str>) -> bool {
        let new_event = self.paused_until.is_none_or(|until| until <= now);
        self.extend_pause(now + retry_after);
        if !new_event {
            return false;
        }
        if retry_after < WINDOW_LIKE
            && let Some(last) = self.last_event
        {
            let seconds = now.duration_since(last).as_secs_f64();
            if seconds >= 0.5 && self.answered_since_event > 0 {
                let rate = self.answered_since_event as f64 / seconds * MARGIN;
                if let Some(whose) = whose {
                    tracing::info!(
                        "the API allows {whose} about {:.0} requests/minute; pacing at that",
                        rate * 60.0
                    );
                }
                self.learned_rate = Some(rate);
            }
        }
        self.last_event = Some(now);
        self.last_probe = now;
        self.answered_since_event = 0;
        true
    }

    /// The next slot under the learned rate, if one is learned; reserves it.
    fn reserve_slot(&mut self, now: Instant) -> Option<Instant> {
        let mut rate = self.learned_rate?;
        if now.duration_since(self.last_probe) >= PROBE_AFTER {
            rate *= 1.01;
            self.learned_rate = Some(rate);
            self.last_probe = now;
        }
        let interval = Duration::from_secs_f64(1.0 / rate);
        // A slot that no worker was waiting for is not lost (up to one interval back): the
        // rate is kept on average, not only while some worker happens to wait in `admit`.
        let slot = self.next_slot.max(now.checked_sub(interval).unwrap_or(now));
        self.next_slot = slot + interval;
        Some(slot)
    }

    /// When a request could go under this allowance, without reserving anything.
    fn ready_at(&self, now: Instant) -> Instant {
        let mut at = now.max(self.paused_until.unwrap_or(now));
        if self.learned_rate.is_some() {
            at = at.max(self.next_slot);
        }
        at
    }
}

/// The last throttle event of a customer: when, and what other customers' calls did around it.
struct EventMark {
    customer: Uuid,
    at: Instant,
    /// The Retry-After was a fixed window's.
    window_like: bool,
    /// Other customers' calls sent before it and answered (not 429) after it.
    others_answered_in_flight: u32,
    /// Other customers' calls sent after it and answered.
    others_answered_after: u32,
    /// Another customer was throttled during its pause.
    others_throttled: bool,
}

struct Pacing {
    scope: Scope,
    pool: Allowance,
    lanes: HashMap<Uuid, Allowance>,
    last_event: Option<EventMark>,
}

impl Pacing {
    fn lane(&mut self, customer: Uuid, now: Instant) -> &mut Allowance {
        self.lanes
            .entry(customer)
            .or_insert_with(|| Allowance::new(now))
    }

    fn answered(&mut self, lane: Option<Uuid>, sent_at: Instant, now: Instant) {
        self.pool.answered_since_event += 1;
        let Some(customer) = lane else { return };
        self.lane(customer, now).answered_since_event += 1;
        let Some(mark) = &mut self.last_event else {
            return;
        };
        if customer == mark.customer {
            return;
        }
        if sent_at < mark.at {
            mark.others_answered_in_flight += 1;
        } else {
            mark.others_answered_after += 1;
        }
        // A fixed window is waited out in one long pause, so the scope cannot wait for a
        // second event: the calls of other customers that were in flight with the throttled
        // one tell it. Under the partner's window they would have been throttled too.
        let per_pair = self.scope == Scope::Partner
            && mark.window_like
            && !mark.others_throttled
            && mark.others_answered_in_flight >= 2
            && self.pool.paused_for(now).is_some();
        if per_pair {
            let throttled = mark.customer;
            self.limit_per_customer(throttled);
        }
    }

    fn throttled(
        &mut self,
        lane: Option<Uuid>,
        sent_at: Instant,
        retry_after: Duration,
        now: Instant,
    ) {
        let Some(customer) = lane else {
            // A call for no customer in particular spends the partner's allowance.
            self.pool.throttle(now, retry_after, Some("this partner"));
            return;
        };
        let per_customer = self.scope == Scope::Customer;
        let lane_label = format!("customer {customer}");
        let lane = self.lane(customer, now);
        let lane_event = lane.throttle(now, retry_after, per_customer.then_some(&lane_label));
        match self.scope {
            Scope::Partner => {
                if !self.pool.throttle(now, retry_after, Some("this partner")) {
                    if let Some(mark) = &mut self.last_event
                        && mark.customer != customer
                    {
                        mark.others_throttled = true;
                    }
                    return;
                }
                // A bucket: the same customer throttled again, nobody else throttled, and
                // other customers answered in between.
                let per_pair = self.last_event.as_ref().is_some_and(|mark| {
                    mark.customer == customer
                        && !mark.others_throttled
                        && mark.others_answered_in_flight + mark.others_answered_after > 0
                });
                self.mark_event(customer, retry_after, now);
                if per_pair {
                    self.limit_per_customer(customer);
                }
            }
            Scope::Customer => {
                if !lane_event {
                    return;
                }
                // Another customer waits out its own 429, nothing sent to anyone else since
                // was answered, and a call sent since is throttled: the partner's limit.
                let partner_wide = self.last_event.as_ref().is_some_and(|mark| {
                    mark.customer != customer
                        && sent_at >= mark.at
                        && mark.others_answered_after == 0
                        && self
                            .lanes
                            .get(&mark.customer)
                            .is_some_and(|l| l.paused_for(now).is_some())
                });
                self.mark_event(customer, retry_after, now);
                if partner_wide {
                    tracing::info!(
                        "the API throttles per partner after all: the whole pool waits again"
                    );
                    self.scope = Scope::Partner;
                    self.pool.throttle(now, retry_after, Some("this partner"));
                }
            }
        }
    }

    /// From now on a 429 pauses and teaches only its customer's lane.
    fn limit_per_customer(&mut self, throttled: Uuid) {
        tracing::info!(
            "the API throttles per customer: customer {throttled} waits alone, the others go on"
        );
        self.scope = Scope::Customer;
        // The pool-wide pause and rate were this customer's; its lane keeps them.
        self.pool.paused_until = None;
        self.pool.learned_rate = None;
    }

    fn mark_event(&mut self, customer: Uuid, retry_after: Duration, now: Instant) {
        self.last_event = Some(EventMark {
            customer,
            at: now,
            window_like: retry_after >= WINDOW_LIKE,
            others_answered_in_flight: 0,
            others_answered_after: 0,
            others_throttled: false,
        });
    }

    /// The lane that applies to a call: the customer's once the limit is known to be per pair.
    fn lane_in_force(&self, lane: Option<Uuid>) -> Option<&Allowance> {
        lane.filter(|_| self.scope == Scope::Customer)
            .and_then(|customer| self.lanes.get(&customer))
    }

    fn paused_for(&self, lane: Option<Uuid>, now: Instant) -> Option<Duration> {
        let pool = self.pool.paused_for(now);
        let lane = self.lane_in_force(lane).and_then(|l| l.paused_for(now));
        pool.max(lane)
    }

    fn reserve_slot(&mut self, lane: Option<Uuid>, now: Instant) -> Option<Instant> {
        match lane.filter(|_| self.scope == Scope::Customer) {
            Some(customer) => self.lane(customer, now).reserve_slot(now),
            None => self.pool.reserve_slot(now),
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
            state: Mutex::new(Pacing {
                scope: Scope::Partner,
                pool: Allowance::new(now),
                lanes: HashMap::new(),
                last_event: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Pacing> {
        self.state.lock().expect("pacer lock")
    }

    /// Whether 429s are known to be counted per partner+customer pair.
    pub fn scope(&self) -> Scope {
        self.state().scope
    }

    /// A call (for `lane`'s customer, if any) sent at `sent_at` was answered with anything but
    /// a 429: it used the API's allowance.
    pub fn answered(&self, lane: Option<Uuid>, sent_at: Instant) {
        self.state().answered(lane, sent_at, Instant::now());
    }

    /// A 429 of a call sent at `sent_at`: pauses the whole pool, or only `lane` once the limit
    /// is known to be per customer, for `retry_after`, and learns from it (see the module docs).
    pub fn throttled(&self, lane: Option<Uuid>, sent_at: Instant, retry_after: Duration) {
        self.state()
            .throttled(lane, sent_at, retry_after, Instant::now());
    }

    /// How long a call for `lane` would still wait for a pause, if it would.
    pub fn paused_for(&self, lane: Option<Uuid>) -> Option<Duration> {
        self.state().paused_for(lane, Instant::now())
    }

    /// When a call for `customer` could go (pauses and learned slots; the ceiling aside): lets
    /// the pool pick work from a customer that may send now.
    pub fn ready_at(&self, customer: Uuid) -> Instant {
        let now = Instant::now();
        let state = self.state();
        let pool = state.pool.ready_at(now);
        match state.lane_in_force(Some(customer)) {
            Some(lane) => pool.max(lane.ready_at(now)),
            None => pool,
        }
    }

    /// Waits until a call for `lane` may go: no pause running, a slot under the ceiling and
    /// under the learned allowance. Returns `false` when `stop` fires first.
    pub async fn admit(&self, lane: Option<Uuid>, stop: &CancellationToken) -> bool {
        loop {
            // `biased`: when both are ready, the stop wins (select! would otherwise pick one at
            // random and let a call through after a signal).
            while let Some(left) = self.paused_for(lane) {
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
            let slot = self.state().reserve_slot(lane, Instant::now());
            if let Some(slot) = slot {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep_until(slot) => {}
                }
            }
            // A 429 may have paused the pool (or the lane) while we waited for the slot.
            if self.paused_for(lane).is_none() {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Uuid = Uuid::from_u128(0xA);
    const B: Uuid = Uuid::from_u128(0xB);
    const C: Uuid = Uuid::from_u128(0xC);

    #[tokio::test]
    async fn pause_extends_but_never_shortens() {
        let pacer = Pacer::new(60_000);
        pacer.throttled(None, Instant::now(), Duration::from_secs(5));
        pacer.throttled(None, Instant::now(), Duration::from_secs(1));
        let left = pacer.paused_for(None).unwrap();
        assert!(left > Duration::from_secs(4), "{left:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn admit_waits_out_a_pause() {
        let pacer = Pacer::new(60_000);
        let stop = CancellationToken::new();
        pacer.throttled(None, Instant::now(), Duration::from_secs(3));
        let before = Instant::now();
        assert!(pacer.admit(None, &stop).await);
        assert!(before.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_refill_rate_is_learned_between_two_throttle_events() {
        let pacer = Pacer::new(1_000_000);
        pacer.throttled(None, Instant::now(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..100 {
            pacer.answered(None, Instant::now());
        }
        pacer.throttled(None, Instant::now(), Duration::from_secs(1));
        let learned = pacer.state().pool.learned_rate.unwrap();
        assert!((learned - 50.0 * MARGIN).abs() < 0.5, "{learned}");
        // 429s of requests in flight during the pause are the same event: nothing changes.
        pacer.throttled(None, Instant::now(), Duration::from_secs(1));
        assert_eq!(pacer.state().pool.learned_rate, Some(learned));
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_teaches_no_rate() {
        let pacer = Pacer::new(1_000_000);
        pacer.throttled(None, Instant::now(), Duration::from_secs(40));
        tokio::time::advance(Duration::from_secs(41)).await;
        pacer.answered(None, Instant::now());
        pacer.throttled(None, Instant::now(), Duration::from_secs(40));
        assert_eq!(pacer.state().pool.learned_rate, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_learned_rate_spaces_the_slots() {
        let pacer = Pacer::new(1_000_000);
        pacer.state().pool.learned_rate = Some(10.0);
        let stop = CancellationToken::new();
        let before = Instant::now();
        for _ in 0..5 {
            assert!(pacer.admit(None, &stop).await);
        }
        assert!(
            before.elapsed() >= Duration::from_millis(400),
            "{:?}",
            before.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_nobody_waited_for_is_taken_late_not_lost() {
        let pacer = Pacer::new(1_000_000);
        pacer.state().pool.learned_rate = Some(10.0);
        let stop = CancellationToken::new();
        assert!(pacer.admit(None, &stop).await);
        // Nobody asks for 250 ms: the slot due at 100 ms is still there, the one at 200 ms
        // too; nothing earlier.
        tokio::time::advance(Duration::from_millis(250)).await;
        let before = Instant::now();
        assert!(pacer.admit(None, &stop).await);
        assert!(pacer.admit(None, &stop).await);
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert!(pacer.admit(None, &stop).await);
        assert_eq!(before.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_stopped_run_is_never_admitted_even_with_a_free_slot() {
        let pacer = Pacer::new(60_000);
        let stop = CancellationToken::new();
        stop.cancel();
        for _ in 0..100 {
            assert!(!pacer.admit(Some(A), &stop).await);
        }
    }

    #[tokio::test]
    async fn stop_ends_the_wait() {
        let pacer = Pacer::new(1);
        let stop = CancellationToken::new();
        pacer.throttled(None, Instant::now(), Duration::from_secs(3600));
        stop.cancel();
        assert!(!pacer.admit(None, &stop).await);
    }

    /// Two throttle events of A, with B answered in between: the limit is per pair.
    async fn learn_per_customer(pacer: &Pacer) {
        pacer.throttled(Some(A), Instant::now(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..10 {
            pacer.answered(Some(A), Instant::now());
            pacer.answered(Some(B), Instant::now());
        }
        pacer.throttled(Some(A), Instant::now(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_429_pauses_every_customer() {
        let pacer = Pacer::new(1_000_000);
        pacer.throttled(Some(A), Instant::now(), Duration::from_secs(1));
        assert_eq!(pacer.scope(), Scope::Partner);
        assert!(pacer.paused_for(Some(B)).is_some());
        assert!(pacer.ready_at(B) > Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn one_customer_throttled_again_while_others_are_answered_gets_its_own_lane() {
        let pacer = Pacer::new(1_000_000);
        learn_per_customer(&pacer).await;
        assert_eq!(pacer.scope(), Scope::Customer);
        assert!(pacer.paused_for(Some(A)).is_some());
        assert!(pacer.paused_for(Some(B)).is_none(), "B goes on");
        assert!(pacer.ready_at(B) <= Instant::now());
        assert!(pacer.ready_at(A) > Instant::now());
        // A's lane paces at A's rate: 10 answers in the 2 s between its events.
        let rate = pacer.state().lanes[&A].learned_rate.unwrap();
        assert!((rate - 5.0 * MARGIN).abs() < 0.1, "{rate}");
        assert_eq!(pacer.state().pool.learned_rate, None);

        let stop = CancellationToken::new();
        let before = Instant::now();
        assert!(pacer.admit(Some(B), &stop).await);
        assert_eq!(
            before.elapsed(),
            Duration::ZERO,
            "B is not held by A's pause"
        );
        assert!(pacer.admit(Some(A), &stop).await);
        assert!(before.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_throttled_customer_answered_says_nothing_about_the_scope() {
        let pacer = Pacer::new(1_000_000);
        pacer.throttled(Some(A), Instant::now(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..10 {
            pacer.answered(Some(A), Instant::now());
        }
        pacer.throttled(Some(A), Instant::now(), Duration::from_secs(1));
        assert_eq!(pacer.scope(), Scope::Partner);
    }

    #[tokio::test(start_paused = true)]
    async fn others_throttled_during_the_pause_keep_it_pool_wide() {
        let pacer = Pacer::new(1_000_000);
        pacer.throttled(Some(A), Instant::now(), Duration::from_secs(1));
        pacer.throttled(Some(B), Instant::now(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..10 {
            pacer.answered(Some(A), Instant::now());
            pacer.answered(Some(B), Instant::now());
        }
        pacer.throttled(Some(A), Instant::now(), Duration::from_secs(1));
        assert_eq!(pacer.scope(), Scope::Partner);
        assert!(pacer.paused_for(Some(B)).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_of_one_customer_is_told_by_the_calls_in_flight_with_it() {
        let pacer = Pacer::new(1_000_000);
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(50)).await;
        pacer.throttled(Some(A), sent, Duration::from_secs(40));
        assert_eq!(pacer.scope(), Scope::Partner, "one answer is not enough");
        pacer.answered(Some(B), sent);
        assert_eq!(pacer.scope(), Scope::Partner);
        pacer.answered(Some(C), sent);
        assert_eq!(pacer.scope(), Scope::Customer);
        assert!(pacer.paused_for(Some(B)).is_none());
        assert!(pacer.paused_for(Some(A)).unwrap() > Duration::from_secs(39));
    }

    #[tokio::test(start_paused = true)]
    async fn a_partner_window_throttles_the_calls_in_flight_too() {
        let pacer = Pacer::new(1_000_000);
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(50)).await;
        pacer.throttled(Some(A), sent, Duration::from_secs(40));
        pacer.throttled(Some(B), sent, Duration::from_secs(40));
        pacer.answered(Some(C), sent);
        pacer.answered(Some(C), sent);
        assert_eq!(pacer.scope(), Scope::Partner);
        assert!(pacer.paused_for(Some(C)).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn another_customer_throttled_before_anything_was_answered_means_partner_wide() {
        let pacer = Pacer::new(1_000_000);
        learn_per_customer(&pacer).await;
        assert_eq!(pacer.scope(), Scope::Customer);
        pacer.throttled(Some(B), Instant::now(), Duration::from_secs(1));
        assert_eq!(pacer.scope(), Scope::Partner);
        assert!(
            pacer.paused_for(Some(C)).is_some(),
            "the whole pool waits again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn another_customer_throttled_after_answers_keeps_the_lanes() {
        let pacer = Pacer::new(1_000_000);
        learn_per_customer(&pacer).await;
        pacer.answered(Some(C), Instant::now());
        pacer.throttled(Some(B), Instant::now(), Duration::from_secs(1));
        assert_eq!(pacer.scope(), Scope::Customer);
        assert!(pacer.paused_for(Some(B)).is_some());
        assert!(pacer.paused_for(Some(C)).is_none());
    }
}
