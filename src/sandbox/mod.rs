//! The built-in Partner Center simulator (axum): the token endpoint and `licenseupdates` as the
//! reference pages describe them, incl. their error bodies, seats that run out, idempotent
//! replay by MS-RequestId, throttling and faults from a [`Scenario`]. It keeps a ground-truth
//! record of every request and of what it applied, for tests and for `sandbox --dump`.
//!
//! Codes the reference pages do not give are the simulator's own choice and say so in their
//! description: 60011 (SKU not subscribed), 60013 (license groups mixed), 409 (request ID reused
//! with another body); 600041 is its code for the usage-location refusal, whose description is
//! Partner Center's and whose code is not documented.
//! Besides: the user PATCH that sets a usage location (`users`).

mod answer;
mod control;
mod quota;
mod reads;
pub mod scenario;
mod state;
mod token;
mod updates;
mod users;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use reqwest::Url;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::auth::RefreshGrant;
use crate::config::TokenEndpoint;
use crate::input::{LicenseGroup, SkuRef};
use crate::plan::catalog;
use crate::secret::Secret;
use answer::*;
use control::*;
use reads::*;
pub use scenario::Scenario;
pub use state::TokenGrant;
use state::*;
use token::*;
use updates::*;
pub use users::RecordedPatch;
use users::*;

pub const TENANT_ID: &str = "sandbox-partner.onmicrosoft.com";
pub const CLIENT_ID: &str = "00000000-5a4d-4b0c-8000-000000000001";
pub const CLIENT_SECRET: &str = "sandbox-client-secret";
pub const REFRESH_TOKEN: &str = "sandbox-refresh-token";
const PLENTY: u64 = 1_000_000;

/// One licenseupdates call as the sandbox saw it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    /// When the call was answered (after the scenario's latency); the record is in this order.
    #[serde(with = "humantime_serde_compat")]
    pub at: SystemTime,
    /// When the call arrived, before its latency: `at - arrived_at` is the latency the client
    /// saw, and a call that arrived before another's `at` was sent before that answer left.
    #[serde(with = "humantime_serde_compat")]
    pub arrived_at: SystemTime,
    pub customer: String,
    pub user: String,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    pub body: Value,
    pub status: u16,
    /// Answered from the idempotency store: nothing was applied again.
    pub replay: bool,
    /// This call changed the tenant.
    pub applied: bool,
    /// The fault injected into this call, if any.
    pub fault: Option<&'static str>,
    /// The Retry-After of a 429, in seconds (as sent; absent when the header was).
    pub retry_after: Option<f64>,
}

mod humantime_serde_compat {
    use std::time::SystemTime;
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
    }
}

/// Protocol rules the client broke.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Violations {
    pub missing_request_id: u64,
    pub malformed_request_id: u64,
    pub request_id_reused_with_other_body: u64,
    pub mixed_license_groups: u64,
    /// A change already applied under one request ID arrived again under another.
    pub new_request_id_for_applied_change: u64,
    /// A license change (assign or remove of one SKU for one user) that a request of the
    /// client already made was asked for again under another request ID, with nothing in
    /// between that undid it: the client lost track of an applied request (on the real API a
    /// second remove is an error). `--resend` does this on purpose.
    pub license_change_repeated_under_new_request_id: u64,
}

type Shared = Arc<Mutex<SandboxState>>;

/// How far the clients have got; awaitable through [`Sandbox::wait_for`] and `/sandbox/wait`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Progress {
    /// licenseupdates calls answered (or being answered) so far.
    pub requests: u64,
    /// Token endpoint calls received so far.
    pub token_requests: u64,
    /// User PATCHes received so far (recorded before they are answered).
    #[serde(default)]
    pub patches: u64,
}

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    pub url: Url,
    state: Arc<Mutex<SandboxState>>,
    shutdown: CancellationToken,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Sandbox {
    /// Starts the simulator on `addr` (port 0 picks a free one).
    pub async fn start(scenario: Scenario, addr: SocketAddr) -> Result<Sandbox, String> {
        let customers = Customer::all_of(&scenario)?;
        let state = Arc::new(Mutex::new(SandboxState::new(scenario, customers)));
        let app = Router::new()
            .route("/{tenant}/oauth2/token", post(token_v1))
            .route("/{tenant}/oauth2/v2.0/token", post(token_v2))
            .route(
                "/v1/customers/{customer}/users/{user}/licenseupdates",
                post(license_update),
            )
            .route(
                "/v1/customers/{customer}/subscribedskus",
                get(subscribed_skus),
            )
            .route(
                "/v1/customers/{customer}/users/{user}/licenses",
                get(user_licenses),
            )
            .route(
                "/v1/customers/{customer}/analytics/licenses/deployment",
                get(deployment_insights),
            )
            .route(
                "/v1/customers/{customer}/users/{user}",
                axum::routing::patch(update_user),
            )
            .route("/sandbox/record", get(dump))
            .route("/sandbox/webhook", post(webhook))
            .route("/sandbox/wait", get(wait))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(Sandbox {
            url: Url::parse(&format!("http://{local}/")).expect("loopback URL"),
            state,
            shutdown,
        })
    }

    /// Resolves once at least `requests` licenseupdates calls and `token_requests` token calls
    /// have arrived.
    pub async fn wait_for(&self, requests: u64, token_requests: u64) -> Progress {
        let mut progress = self
            .state
            .lock()
            .expect("sandbox lock")
            .progress
            .subscribe();
        let reached = progress
            .wait_for(|p| p.requests >= requests && p.token_requests >= token_requests)
            .await
            .map(|p| *p);
        reached.unwrap_or_default()
    }

    /// Buys seats: sets a subscribed SKU's total.
    pub fn set_seats(&self, customer: Uuid, sku: Uuid, total: u64) {
        let mut state = self.state.lock().expect("sandbox lock");
        if let Some(s) = state
            .customers
            .get_mut(&customer)
            .and_then(|c| c.skus.iter_mut().find(|s| s.id == sku))
        {
            s.total = total;
        }
    }

    /// Makes every user of `customer` exist (or only `users`).
    pub fn set_users(&self, customer: Uuid, users: Option<Vec<String>>) {
        let mut state = self.state.lock().expect("sandbox lock");
        if let Some(c) = state.customers.get_mut(&customer) {
            c.users = users.map(|u| u.iter().map(|u| u.to_lowercase()).collect());
        }
    }

    /// Revokes every access token issued so far (the next call with one answers 401).
    pub fn revoke_issued_tokens(&self) {
        let mut state = self.state.lock().expect("sandbox lock");
        let now = Instant::now();
        state.tokens.values_mut().for_each(|until| *until = now);
    }

    /// Answers 401 to every call while on.
    pub fn set_reject_all_tokens(&self, on: bool) {
        self.state
            .lock()
            .expect("sandbox lock")
            .scenario
            .auth
            .reject_all_tokens = on;
    }

    /// Replaces the faults of the scenario from the next call on (a night with other luck).
    pub fn set_faults(&self, faults: scenario::Faults) {
        self.state.lock().expect("sandbox lock").scenario.faults = faults;
    }

    /// Turns the "partner token" fault (400 900316 on every call) on or off.
    pub fn set_partner_token(&self, on: bool) {
        self.state
            .lock()
            .expect("sandbox lock")
            .scenario
            .auth
            .partner_token = on;
    }

    /// Turns the MFA enforcement (401 900421 on every call) on or off: off is the operator who
    /// consented again with MFA.
    pub fn set_mfa_required(&self, on: bool) {
        self.state
            .lock()
            .expect("sandbox lock")
            .scenario
            .auth
            .mfa_required = on;
    }

    /// The refresh-token grant that the sandbox's token endpoint accepts.
    pub fn credentials(&self) -> RefreshGrant {
        RefreshGrant {
            authority: self.url.clone(),
            tenant_id: TENANT_ID.into(),
            endpoint: TokenEndpoint::V1,
            client_id: CLIENT_ID.into(),
            client_secret: Some(Secret::new(CLIENT_SECRET)),
            refresh_token: Secret::new(REFRESH_TOKEN),
            persist_to: None,
        }
    }

    /// Every licenseupdates call so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().expect("sandbox lock").requests.clone()
    }

    /// What was posted to the webhook sink so far, in arrival order.
    pub fn webhooks(&self) -> Vec<Value> {
        self.state.lock().expect("sandbox lock").webhooks.clone()
    }

    /// Every user PATCH so far, in arrival order.
    pub fn patches(&self) -> Vec<RecordedPatch> {
        self.state.lock().expect("sandbox lock").patches.clone()
    }

    /// A user's usage location: set by a PATCH, `None` for a user the scenario gave none and
    /// nobody PATCHed, `Some("")` for users the scenario did not name (they have one).
    pub fn usage_location(&self, customer: Uuid, user: &str) -> Option<String> {
        let state = self.state.lock().expect("sandbox lock");
        let customer = state.customers.get(&customer)?;
        let user = user.to_lowercase();
        match customer.usage_locations.get(&user) {
            Some(location) => Some(location.clone()),
            None if customer.without_usage_location.contains(&user) => None,
            None => Some(String::new()),
        }
    }

    /// The most licenseupdates calls that were being answered at the same time.
    pub fn most_in_flight(&self) -> usize {
        let state = self.state.lock().expect("sandbox lock");
        state.in_flight.most.load(Ordering::SeqCst)
    }

    pub fn violations(&self) -> Violations {
        self.state.lock().expect("sandbox lock").violations.clone()
    }

    /// The SKUs a user holds now (ground truth).
    pub fn licenses(&self, customer: Uuid, user: &str) -> BTreeSet<Uuid> {
        let state = self.state.lock().expect("sandbox lock");
        state
            .customers
            .get(&customer)
            .and_then(|c| c.assigned.get(&user.to_lowercase()))
            .cloned()
            .unwrap_or_default()
    }

    /// How many access tokens the token endpoint has issued.
    pub fn tokens_issued(&self) -> u64 {
        self.state.lock().expect("sandbox lock").issued
    }

    /// Every access token the token endpoint issued, in order.
    pub fn token_grants(&self) -> Vec<TokenGrant> {
        self.state.lock().expect("sandbox lock").grants.clone()
    }

    /// Changes a customer's Conditional Access block while running.
    pub fn set_conditional_access_blocked(&self, customer: Uuid, blocked: bool) {
        let mut state = self.state.lock().expect("sandbox lock");
        let permissive = state.permissive;
        if let Some(c) = customer_entry(&mut state.customers, permissive, customer) {
            c.conditional_access_blocked = blocked;
        }
    }

    /// Removes a license behind the tool's back.
    pub fn revoke_license(&self, customer: Uuid, user: &str, sku: Uuid) {
        let mut state = self.state.lock().expect("sandbox lock");
        if let Some(c) = state.customers.get_mut(&customer)
            && let Some(held) = c.assigned.get_mut(&user.to_lowercase())
            && held.remove(&sku)
            && let Some(s) = c.skus.iter_mut().find(|s| s.id == sku)
        {
            s.consumed = s.consumed.saturating_sub(1);
        }
        // Undone behind the client's back: assigning it again is a change of its own.
        state
            .last_change
            .remove(&(customer, user.to_lowercase(), sku));
    }

    /// The ground truth as JSON (served at `/sandbox/record`).
    pub fn dump(&self) -> Value {
        dump_state(&self.state.lock().expect("sandbox lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(throttle: &str) -> SandboxState {
        let scenario: Scenario = toml::from_str(throttle).unwrap();
        let customers = Customer::all_of(&scenario).unwrap();
        SandboxState::new(scenario, customers)
    }

    /// How a spent bucket tells its wait, for each style: header and body.
    #[test]
    fn a_429_tells_its_wait_as_the_scenario_says() {
        let told = |style: &str| {
            let mut s = state(&format!(
                "[throttle]\nmode = \"bucket\"\nper_minute = 600\nburst = 1\n{style}"
            ));
            assert_eq!(s.charge_quota_exact("a"), None);
            let wait = s.charge_quota_exact("a").expect("spent");
            assert!(wait > 0.0 && wait <= 0.1, "{wait}");
            let answer = s.quota_answer(wait);
            assert_eq!((answer.status, answer.definitive), (429, false));
            let header = answer.headers.first().map(|(_, v)| v.clone());
            (header, answer.body["message"].as_str().unwrap().to_string())
        };
        let in_body = |n: u64| format!("Rate limit is exceeded. Try again in {n} seconds.");
        assert_eq!(told(""), (Some("1".into()), in_body(1)));
        let (exact, _) = told("retry_after = \"exact\"");
        let exact: f64 = exact.unwrap().parse().unwrap();
        assert!(exact > 0.0 && exact <= 0.1, "{exact}");
        assert_eq!(
            told("retry_after = \"constant\"\nretry_after_constant_secs = 57"),
            (Some("57".into()), in_body(57))
        );
        assert_eq!(told("retry_after = \"body_only\""), (None, in_body(1)));
        assert_eq!(
            told("retry_after = \"absent\""),
            (None, "Rate limit is exceeded.".into())
        );
    }

    #[test]
    fn a_bucket_holds_what_the_scenario_says_and_its_rate_follows_the_schedule() {
        for burst in [1_u64, 5, 3000] {
            let mut s = state(&format!(
                "[throttle]\nmode = \"bucket\"\nper_minute = 60\nburst = {burst}\n"
            ));
            let passed = (0..burst + 10)
                .take_while(|_| s.charge_quota_exact("a").is_none())
                .count();
            assert_eq!(passed as u64, burst, "a full bucket of {burst}");
        }
        // 60/min at first, 6,000/min from 10 s on: 20 s in, a second of refill is 100 calls.
        let mut s = state(
            "[throttle]\nmode = \"bucket\"\nper_minute = 60\nburst = 1000\n\
             schedule = [{ at_secs = 10, per_minute = 6000 }]\n",
        );
        // All at one instant: no refill between the calls, however slow the machine.
        let now = Instant::now();
        s.started = now - Duration::from_secs(20);
        while s.charge_quota_at("a", now).is_none() {}
        let wait = s.charge_quota_at("a", now).unwrap();
        assert!(
            (wait - 0.01).abs() < 0.005,
            "the next token in 1/100 s: {wait}"
        );
    }

    /// Mean, standard deviation and median of 20,000 latencies of `faults`.
    fn latencies(faults: &str) -> (f64, f64, f64) {
        let mut s = state(&format!("[faults]\n{faults}"));
        let mut draws: Vec<f64> = (0..20_000).map(|_| s.latency(500) as f64).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let variance = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        draws.sort_by(f64::total_cmp);
        (mean, variance.sqrt(), draws[draws.len() / 2])
    }

    #[test]
    fn latency_spreads_uniformly_or_log_normally_around_its_mean() {
        // Uniform ±300: standard deviation 300/√3, symmetric.
        let (mean, sd, median) = latencies("latency_jitter_ms = 300\n");
        assert!((490.0..510.0).contains(&mean), "{mean}");
        assert!((163.0..183.0).contains(&sd), "{sd}");
        assert!((480.0..520.0).contains(&median), "{median}");
        // Log-normal, sd 300: same mean, the given spread, and a tail: the median is below
        // the mean (exp(mu) = 500 / sqrt(1.36) = 429).
        let (mean, sd, median) =
            latencies("latency_jitter_ms = 300\nlatency_spread = \"lognormal\"\n");
        assert!((485.0..515.0).contains(&mean), "{mean}");
        assert!((270.0..330.0).contains(&sd), "{sd}");
        assert!((415.0..445.0).contains(&median), "{median}");
        // Without a spread both are the mean itself.
        let (_, sd, median) = latencies("latency_spread = \"lognormal\"\n");
        assert_eq!((sd.round(), median), (0.0, 500.0));
    }

    #[test]
    fn a_token_bucket_allows_its_burst_then_asks_for_the_next_token() {
        let mut s = state("[throttle]\nmode = \"bucket\"\nper_minute = 60\nburst = 2\n");
        assert_eq!(s.charge_quota("a"), None);
        assert_eq!(s.charge_quota("a"), None);
        assert_eq!(s.charge_quota("a"), Some(1));
    }

    #[test]
    fn a_fixed_window_answers_the_seconds_left_and_can_be_per_customer() {
        let mut s = state(
            "[throttle]\nmode = \"window\"\nper = \"customer\"\nper_minute = 2\nwindow_secs = 60\n",
        );
        assert_eq!(s.charge_quota("a"), None);
        assert_eq!(s.charge_quota("a"), None);
        let wait = s.charge_quota("a").unwrap();
        assert!((59..=60).contains(&wait), "{wait}");
        assert_eq!(
            s.charge_quota("b"),
            None,
            "another customer has its own quota"
        );
    }

    #[test]
    fn a_customer_can_have_its_own_quota() {
        let a = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";
        let mut s = state(&format!(
            "[throttle]\nmode = \"bucket\"\nper = \"customer\"\nper_minute = 60\nburst = 1\n\
             [[customers]]\nid = \"{a}\"\nquota_per_minute = 6000\n"
        ));
        assert_eq!(s.charge_quota("b"), None);
        assert_eq!(
            s.charge_quota("b"),
            Some(1),
            "the default quota: 1 per second"
        );
        assert_eq!(s.charge_quota(&a.to_uppercase()), None);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            s.charge_quota(a),
            None,
            "100 per second refills within 20 ms"
        );
    }
}
