//! The hidden quota (token bucket or fixed window, per partner or per pair, on a schedule), how
//! a spent quota tells its wait, and the seeded latency and fault draws.

use super::*;

impl SandboxState {
    /// Charges one call against the hidden quota; `Some(retry_after_secs)`, rounded up to whole
    /// seconds, when it is spent.
    #[cfg(test)]
    pub(super) fn charge_quota(&mut self, customer: &str) -> Option<u64> {
        self.charge_quota_exact(customer)
            .map(|wait| (wait.ceil() as u64).max(1))
    }

    /// Charges one call against the hidden quota; `Some(seconds until a call would pass)`
    /// when it is spent.
    pub(super) fn charge_quota_exact(&mut self, customer: &str) -> Option<f64> {
        self.charge_quota_at(customer, Instant::now())
    }

    /// [`Self::charge_quota_exact`] at the moment `now` (tests charge many calls at one instant).
    pub(super) fn charge_quota_at(&mut self, customer: &str, now: Instant) -> Option<f64> {
        let throttle = self.scenario.throttle.clone()?;
        let elapsed = now.saturating_duration_since(self.started).as_secs_f64();
        // The partner's rate as scheduled now (the last change whose time has come).
        let scheduled = throttle
            .schedule
            .iter()
            .rfind(|change| change.at_secs <= elapsed)
            .map_or(throttle.per_minute, |change| change.per_minute);
        let (key, per_minute) = match throttle.per {
            scenario::ThrottleScope::Partner => (String::new(), scheduled),
            scenario::ThrottleScope::Customer => {
                let own = Uuid::try_parse(customer)
                    .ok()
                    .and_then(|id| self.customers.get(&id))
                    .and_then(|c| c.quota_per_minute);
                (customer.to_lowercase(), own.unwrap_or(scheduled))
            }
        };
        let per_second = per_minute as f64 / 60.0;
        match throttle.mode {
            scenario::ThrottleMode::Bucket => {
                let capacity = throttle.burst.unwrap_or((per_second.ceil() as u64).max(1)) as f64;
                let (tokens, last) = self.quotas.entry(key).or_insert((capacity, now));
                *tokens =
                    (*tokens + now.duration_since(*last).as_secs_f64() * per_second).min(capacity);
                *last = now;
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    None
                } else {
                    Some((1.0 - *tokens) / per_second)
                }
            }
            scenario::ThrottleMode::Window => {
                let length = throttle.window_secs.unwrap_or(60).max(1);
                let origin = match throttle.window_from {
                    scenario::WindowFrom::Start => self.started,
                    scenario::WindowFrom::FirstCall => *self.first_charge.get_or_insert(now),
                };
                let elapsed = now.duration_since(origin).as_secs_f64();
                let window = (elapsed / length as f64).floor();
                // (calls counted, a moment inside the window they were counted in)
                let (count, marker) = self.quotas.entry(key).or_insert((0.0, now));
                let current = marker.duration_since(origin).as_secs_f64() / length as f64;
                if current.floor() != window {
                    *count = 0.0;
                    *marker = now;
                }
                if *count < per_minute as f64 {
                    *count += 1.0;
                    None
                } else {
                    Some((window + 1.0) * length as f64 - elapsed)
                }
            }
        }
    }

    /// The 429 of a spent quota, its wait told as the scenario's throttle tells it; `exact`:
    /// the seconds until a call would pass.
    pub(super) fn quota_answer(&self, exact: f64) -> Answer {
        use scenario::RetryAfterStyle;
        let style = self
            .scenario
            .throttle
            .as_ref()
            .map(|t| (t.retry_after, t.retry_after_constant_secs));
        let whole = (exact.ceil() as u64).max(1);
        let (header, told) = match style.unwrap_or((RetryAfterStyle::Up, None)) {
            (RetryAfterStyle::Up, _) => (Some(whole.to_string()), Some(whole)),
            (RetryAfterStyle::Exact, _) => (Some(format!("{exact:.3}")), Some(whole)),
            (RetryAfterStyle::Constant, constant) => {
                let n = constant.unwrap_or(1);
                (Some(n.to_string()), Some(n))
            }
            (RetryAfterStyle::BodyOnly, _) => (None, Some(whole)),
            (RetryAfterStyle::Absent, _) => (None, None),
        };
        let message = match told {
            Some(n) => format!("Rate limit is exceeded. Try again in {n} seconds."),
            None => "Rate limit is exceeded.".to_string(),
        };
        let answer = Answer::passing(429, json!({"statusCode": 429, "message": message}));
        match header {
            Some(header) => answer.with_header("retry-after", header),
            None => answer,
        }
    }

    pub(super) fn latency(&mut self, mean: u64) -> u64 {
        let spread = self.scenario.faults.latency_jitter_ms.unwrap_or(0) as f64;
        let mean = mean as f64;
        let ms = match self.scenario.faults.latency_spread {
            scenario::LatencySpread::Uniform => mean + (self.draw() * 2.0 - 1.0) * spread,
            scenario::LatencySpread::Lognormal if mean > 0.0 => {
                // ln X ~ N(mu, sigma²) with E[X] = mean and sd[X] = spread.
                let sigma2 = (1.0 + (spread / mean).powi(2)).ln();
                let mu = mean.ln() - sigma2 / 2.0;
                // Box-Muller; 1 - draw is in (0, 1], so the logarithm is finite.
                let normal = (-2.0 * (1.0 - self.draw()).ln()).sqrt()
                    * (std::f64::consts::TAU * self.draw()).cos();
                (mu + sigma2.sqrt() * normal).exp()
            }
            scenario::LatencySpread::Lognormal => 0.0,
        };
        ms.max(0.0).round() as u64
    }

    /// A uniform draw in [0, 1) from the scenario's seed (splitmix64).
    pub(super) fn draw(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}
