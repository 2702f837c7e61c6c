//! The built-in Partner Center simulator (axum): the token endpoint and `licenseupdates` as the
//! reference pages describe them, incl. their error bodies, seats that run out, idempotent
//! replay by MS-RequestId, throttling and faults from a [`Scenario`]. It keeps a ground-truth
//! record of every request and of what it applied, for tests and for `sandbox --dump`.
//!
//! Codes the reference pages do not give are the simulator's own choice and say so in their
//! description: 60011 (SKU not subscribed), 60013 (license groups mixed), 409 (request ID reused
//! with another body).

pub mod scenario;

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
pub use scenario::Scenario;

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

#[derive(Debug, Clone)]
struct SubscribedSku {
    id: Uuid,
    name: String,
    part_number: String,
    license_group: LicenseGroup,
    total: u64,
    consumed: u64,
    warning: Option<(String, String)>,
}

#[derive(Debug, Clone)]
struct Customer {
    name: String,
    conditional_access_blocked: bool,
    blocked_after_requests: Option<u64>,
    /// This pair's own quota per minute, with a per-customer throttle.
    quota_per_minute: Option<u64>,
    calls: u64,
    missing_gdap_role: bool,
    users: Option<HashSet<String>>,
    skus: Vec<SubscribedSku>,
    assigned: HashMap<String, BTreeSet<Uuid>>,
}

impl Customer {
    fn with_catalog(name: String) -> Customer {
        Customer {
            name,
            conditional_access_blocked: false,
            blocked_after_requests: None,
            quota_per_minute: None,
            calls: 0,
            missing_gdap_role: false,
            users: None,
            skus: catalog::BUILTIN
                .iter()
                .map(|s| SubscribedSku {
                    id: s.uuid(),
                    name: s.name.into(),
                    part_number: s.part_number.into(),
                    license_group: s.license_group,
                    total: PLENTY,
                    consumed: 0,
                    warning: None,
                })
                .collect(),
            assigned: HashMap::new(),
        }
    }

    /// The customers a scenario defines, by ID.
    fn all_of(scenario: &Scenario) -> Result<HashMap<Uuid, Customer>, String> {
        scenario
            .customers
            .iter()
            .map(|c| Ok((c.id, Customer::from_scenario(c)?)))
            .collect()
    }

    fn from_scenario(c: &scenario::CustomerScenario) -> Result<Customer, String> {
        let mut customer =
            Customer::with_catalog(c.name.clone().unwrap_or_else(|| c.id.to_string()));
        customer.conditional_access_blocked = c.conditional_access_blocked;
        customer.blocked_after_requests = c.blocked_after_requests;
        customer.quota_per_minute = c.quota_per_minute;
        customer.missing_gdap_role = c.missing_gdap_role;
        customer.users = c
            .users
            .as_ref()
            .map(|u| u.iter().map(|u| u.trim().to_lowercase()).collect());
        if let Some(skus) = &c.skus {
            customer.skus = skus.iter().map(subscribed_sku).collect::<Result<_, _>>()?;
        }
        Ok(customer)
    }
}

fn subscribed_sku(s: &scenario::SkuScenario) -> Result<SubscribedSku, String> {
    let reference = match Uuid::try_parse(s.sku.trim()) {
        Ok(id) => SkuRef::Id(id),
        Err(_) => SkuRef::Name(s.sku.clone()),
    };
    let known = catalog::find(&reference);
    let id = match (&reference, known) {
        (_, Some(k)) => k.uuid(),
        (SkuRef::Id(id), None) => *id,
        (SkuRef::Name(n), None) => {
            return Err(format!(
                "scenario SKU {n:?} is not in the catalog; give its GUID"
            ));
        }
    };
    let license_group = match &s.license_group {
        Some(g) => LicenseGroup::parse(g)
            .ok_or_else(|| format!("license_group {g:?}: use group1 or group2"))?,
        None => known.map_or(LicenseGroup::Group1, |k| k.license_group),
    };
    Ok(SubscribedSku {
        id,
        name: s
            .name
            .clone()
            .or(known.map(|k| k.name.to_string()))
            .unwrap_or_else(|| id.to_string()),
        part_number: s
            .part_number
            .clone()
            .or(known.map(|k| k.part_number.to_string()))
            .unwrap_or_default(),
        license_group,
        total: s.total.unwrap_or(1000),
        consumed: s.consumed,
        warning: s
            .warning
            .as_ref()
            .map(|w| (w.code.clone(), w.message.clone())),
    })
}

/// A change a request made to one license of one user: assigned (true, with its excluded
/// plans) or removed, and that request's ID.
type LicenseChange = (bool, BTreeSet<Uuid>, String);

struct Stored {
    fingerprint: String,
    status: u16,
    body: Value,
}

struct SandboxState {
    scenario: Scenario,
    permissive: bool,
    customers: HashMap<Uuid, Customer>,
    /// Issued access tokens and when each stops working.
    tokens: HashMap<String, Instant>,
    refresh_tokens: HashSet<String>,
    issued: u64,
    calls: u64,
    requests: Vec<RecordedRequest>,
    idempotency: HashMap<String, Stored>,
    violations: Violations,
    /// Counters that tests and `/sandbox/wait` can await.
    progress: watch::Sender<Progress>,
    /// splitmix64 state of the seeded faults.
    rng: u64,
    /// Quota state per partner ("") or customer: bucket tokens and last refill, or window
    /// number and calls in it.
    quotas: HashMap<String, (f64, Instant)>,
    started: Instant,
    /// Applied changes (customer, user, operations) and the request ID that applied them.
    applied_changes: HashMap<String, String>,
    /// Per (customer, user, SKU): the last change a request made to it.
    last_change: HashMap<(Uuid, String, Uuid), LicenseChange>,
    in_flight: Arc<InFlight>,
    grants: Vec<TokenGrant>,
    /// When the quota first counted a call (the origin of `window_from = "first_call"`).
    first_charge: Option<Instant>,
}

/// An access token the token endpoint issued: when, from which endpoint, valid how long.
#[derive(Debug, Clone, Serialize)]
pub struct TokenGrant {
    #[serde(with = "humantime_serde_compat")]
    pub at: SystemTime,
    /// `"v1"` (`/oauth2/token`) or `"v2"` (`/oauth2/v2.0/token`).
    pub endpoint: &'static str,
    /// The lifetime the answer stated (`expires_in`); a revoked token stops sooner.
    pub lifetime_secs: u64,
}

/// licenseupdates calls being answered now, and the most there were at once. Atomics rather
/// than the state's lock: a call ends in a drop, also while a simulated reset unwinds, and a
/// lock taken there would be poisoned.
#[derive(Debug, Default)]
struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl InFlight {
    /// Counts a call as in flight until the guard drops (its answer leaves, or the client gave
    /// up and the handler was dropped).
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        InFlightGuard(Arc::clone(self))
    }
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SandboxState {
    fn new(scenario: Scenario, customers: HashMap<Uuid, Customer>) -> Self {
        SandboxState {
            permissive: scenario.is_permissive(),
            rng: scenario.faults.seed.unwrap_or(0x5EED),
            scenario,
            customers,
            tokens: HashMap::new(),
            refresh_tokens: HashSet::from([REFRESH_TOKEN.to_string()]),
            issued: 0,
            calls: 0,
            requests: Vec::new(),
            idempotency: HashMap::new(),
            violations: Violations::default(),
            progress: watch::Sender::new(Progress::default()),
            quotas: HashMap::new(),
            started: Instant::now(),
            applied_changes: HashMap::new(),
            last_change: HashMap::new(),
            in_flight: Arc::default(),
            grants: Vec::new(),
            first_charge: None,
        }
    }

    /// Charges one call against the hidden quota; `Some(retry_after_secs)`, rounded up to whole
    /// seconds, when it is spent.
    #[cfg(test)]
    fn charge_quota(&mut self, customer: &str) -> Option<u64> {
        self.charge_quota_exact(customer)
            .map(|wait| (wait.ceil() as u64).max(1))
    }

    /// Charges one call against the hidden quota; `Some(seconds until a call would pass)`
    /// when it is spent.
    fn charge_quota_exact(&mut self, customer: &str) -> Option<f64> {
        self.charge_quota_at(customer, Instant::now())
    }

    /// [`Self::charge_quota_exact`] at the moment `now` (tests charge many calls at one instant).
    fn charge_quota_at(&mut self, customer: &str, now: Instant) -> Option<f64> {
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
    fn quota_answer(&self, exact: f64) -> Answer {
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
        (
            429,
            header.map(|h| ("retry-after", h)).into_iter().collect(),
            json!({"statusCode": 429, "message": message}),
            false,
        )
    }

    fn latency(&mut self, mean: u64) -> u64 {
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
    fn draw(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How far the clients have got; awaitable through [`Sandbox::wait_for`] and `/sandbox/wait`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Progress {
    /// licenseupdates calls answered (or being answered) so far.
    pub requests: u64,
    /// Token endpoint calls received so far.
    pub token_requests: u64,
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
            .route("/sandbox/record", get(dump))
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

fn customer_entry(
    customers: &mut HashMap<Uuid, Customer>,
    permissive: bool,
    id: Uuid,
) -> Option<&mut Customer> {
    if permissive {
        Some(
            customers
                .entry(id)
                .or_insert_with(|| Customer::with_catalog(id.to_string())),
        )
    } else {
        customers.get_mut(&id)
    }
}

fn dump_state(state: &SandboxState) -> Value {
    let applied: Vec<Value> = state
        .customers
        .iter()
        .flat_map(|(id, c)| {
            c.assigned
                .iter()
                .map(move |(user, skus)| json!({"customer": id, "user": user, "skus": skus}))
        })
        .collect();
    json!({
        "requests": state.requests,
        "token_requests": state.progress.borrow().token_requests,
        "token_grants": state.grants,
        "violations": state.violations,
        "licenses": applied,
        "seats": state.customers.iter().map(|(id, c)| json!({
            "customer": id, "name": c.name,
            "skus": c.skus.iter().map(|s| json!({
                "id": s.id, "name": s.name, "partNumber": s.part_number,
                "licenseGroup": s.license_group.as_str(), "total": s.total, "consumed": s.consumed
            })).collect::<Vec<_>>()
        })).collect::<Vec<_>>(),
    })
}

type Shared = Arc<Mutex<SandboxState>>;

async fn dump(State(state): State<Shared>) -> Json<Value> {
    Json(dump_state(&state.lock().expect("sandbox lock")))
}

#[derive(serde::Deserialize)]
struct WaitQuery {
    #[serde(default)]
    requests: u64,
    #[serde(default)]
    tokens: u64,
    #[serde(default = "default_wait_secs")]
    timeout_secs: u64,
}

fn default_wait_secs() -> u64 {
    60
}

/// `GET /sandbox/wait?requests=N&tokens=M`: answers once the counts are reached (for tests that
/// drive a separate process), 408 after `timeout_secs`.
async fn wait(
    State(state): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<WaitQuery>,
) -> Response {
    let mut progress = state.lock().expect("sandbox lock").progress.subscribe();
    let reached = tokio::time::timeout(
        Duration::from_secs(q.timeout_secs),
        progress.wait_for(|p| p.requests >= q.requests && p.token_requests >= q.tokens),
    )
    .await
    .map(|r| r.map(|p| *p));
    match reached {
        Ok(Ok(p)) => Json(p).into_response(),
        _ => (StatusCode::REQUEST_TIMEOUT, Json(*progress.borrow())).into_response(),
    }
}

/// Counts the token call, applies the scenario's token delay, then answers.
async fn token(state: Shared, form: HashMap<String, String>, endpoint: TokenEndpoint) -> Response {
    let delay = {
        let s = state.lock().expect("sandbox lock");
        s.progress.send_modify(|p| p.token_requests += 1);
        let call = s.progress.borrow().token_requests;
        let auth = &s.scenario.auth;
        auth.token_delay_ms
            .filter(|_| auth.token_delay_calls.is_none_or(|first| call <= first))
    };
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    issue_token(State(state), Form(form), endpoint)
}

async fn token_v1(
    State(state): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    token(state, form, TokenEndpoint::V1).await
}

async fn token_v2(
    State(state): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    token(state, form, TokenEndpoint::V2).await
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn issue_token(
    State(state): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
    endpoint: TokenEndpoint,
) -> Response {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("grant_type") != "refresh_token" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if field("client_id") != CLIENT_ID {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
        );
    }
    if field("client_secret") != CLIENT_SECRET {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    let scope_ok = match endpoint {
        TokenEndpoint::V1 => field("resource") == "https://api.partnercenter.microsoft.com",
        TokenEndpoint::V2 => {
            field("scope").contains("https://api.partnercenter.microsoft.com/user_impersonation")
        }
    };
    if !scope_ok {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            "AADSTS500011: The resource principal was not found.",
        );
    }
    let mut state = state.lock().expect("sandbox lock");
    if !state.refresh_tokens.contains(field("refresh_token")) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "AADSTS700082: The refresh token has expired due to inactivity.",
        );
    }
    state.issued += 1;
    let lifetime = state.scenario.auth.token_lifetime_secs.unwrap_or(3600);
    let valid_for = if state.issued <= state.scenario.auth.revoke_first_tokens {
        0
    } else {
        state
            .scenario
            .auth
            .revoke_tokens_after_secs
            .unwrap_or(lifetime)
    };
    let access = format!(
        "sandbox-access-{}-{}",
        state.issued,
        Uuid::new_v4().simple()
    );
    let rotated = format!("sandbox-refresh-{}", Uuid::new_v4().simple());
    state.tokens.insert(
        access.clone(),
        Instant::now() + Duration::from_secs(valid_for),
    );
    state.refresh_tokens.insert(rotated.clone());
    state.grants.push(TokenGrant {
        at: SystemTime::now(),
        endpoint: match endpoint {
            TokenEndpoint::V1 => "v1",
            TokenEndpoint::V2 => "v2",
        },
        lifetime_secs: lifetime,
    });
    let expires_in = match endpoint {
        TokenEndpoint::V1 => json!(lifetime.to_string()),
        TokenEndpoint::V2 => json!(lifetime),
    };
    Json(json!({"token_type": "Bearer", "expires_in": expires_in,
                "access_token": access, "refresh_token": rotated}))
    .into_response()
}

fn error_body(code: u64, description: &str, data: Option<Vec<String>>) -> Value {
    let mut body = json!({"code": code, "description": description, "source": "PartnerFD"});
    if let Some(data) = data {
        body["data"] = json!(data);
    }
    body
}

/// Reads `LicensesToAssign`/`LicensesToRemove` (PascalCase or camelCase) as SKU IDs.
fn requested_skus(body: &Value) -> Option<(Vec<Uuid>, Vec<Uuid>)> {
    let list = |pascal: &str, camel: &str| -> Option<Vec<Value>> {
        match body.get(pascal).or_else(|| body.get(camel)) {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => Some(items.clone()),
            Some(_) => None,
        }
    };
    let assign = list("LicensesToAssign", "licensesToAssign")?
        .iter()
        .map(|a| {
            a.get("SkuId")
                .or_else(|| a.get("skuId"))
                .and_then(Value::as_str)
                .and_then(|s| Uuid::try_parse(s).ok())
        })
        .collect::<Option<Vec<_>>>()?;
    let remove = list("LicensesToRemove", "licensesToRemove")?
        .iter()
        .map(|r| r.as_str().and_then(|s| Uuid::try_parse(s).ok()))
        .collect::<Option<Vec<_>>>()?;
    Some((assign, remove))
}

/// (SKU, excluded plan) pairs of `LicensesToAssign`.
fn excluded_plans(body: &Value) -> Vec<(Uuid, Uuid)> {
    let assign = body
        .get("LicensesToAssign")
        .or_else(|| body.get("licensesToAssign"));
    let Some(Value::Array(items)) = assign else {
        return Vec::new();
    };
    let uuid = |v: &Value| v.as_str().and_then(|s| Uuid::try_parse(s).ok());
    items
        .iter()
        .filter_map(|a| {
            let sku = a.get("SkuId").or_else(|| a.get("skuId")).and_then(uuid)?;
            let plans = a
                .get("ExcludedPlans")
                .or_else(|| a.get("excludedPlans"))?
                .as_array()?;
            Some(
                plans
                    .iter()
                    .filter_map(uuid)
                    .map(move |p| (sku, p))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect()
}

async fn license_update(
    State(state): State<Shared>,
    Path((customer, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let arrived_at = SystemTime::now();
    let (_in_flight, latency, charged_on_arrival) = {
        let mut s = state.lock().expect("sandbox lock");
        let in_flight = s.in_flight.enter();
        let latency = s.scenario.faults.latency_ms.map(|mean| s.latency(mean));
        // A gateway counts the call as it arrives, and answers a 429 at once.
        let on_arrival = s
            .scenario
            .throttle
            .as_ref()
            .is_some_and(|t| t.charge == scenario::Charge::OnArrival);
        let charged = on_arrival.then(|| s.charge_quota_exact(&customer));
        (in_flight, latency, charged)
    };
    if let Some(ms) = latency.filter(|_| !matches!(charged_on_arrival, Some(Some(_)))) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let request_id = header("ms-requestid");
    let body_json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let Reply {
        status,
        headers: extra_headers,
        body: answer,
        hold_ms: hold,
        reset,
    } = record_and_answer(
        &state,
        &customer,
        &user,
        &headers,
        request_id.clone(),
        body_json,
        Arrival {
            at: arrived_at,
            charged: charged_on_arrival,
        },
    );
    if reset {
        // Drop the connection without a byte of answer, as a reset does. `resume_unwind` ends
        // this connection's task without running the panic hook (nothing is printed), and the
        // state lock is no longer held.
        std::panic::resume_unwind(Box::new("sandbox: simulated connection reset"));
    }
    // Applied already: a client that gives up or dies now has changed the tenant without
    // hearing of it, and must resend under the same request ID.
    if let Some(ms) = hold {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(answer),
    )
        .into_response();
    for (name, value) in extra_headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert("ms-requestid", id);
    }
    response
}

/// When a licenseupdates call arrived, and what a gateway charged it on arrival (`None` when
/// the quota is charged after the latency).
struct Arrival {
    at: SystemTime,
    charged: Option<Option<f64>>,
}

/// The answer to a licenseupdates call, and how to deliver it.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
    /// Hold the answer back this long (it was applied already).
    hold_ms: Option<u64>,
    /// Drop the connection instead of answering.
    reset: bool,
}

/// Answers a licenseupdates call under the lock and records it; returns the answer, how long to
/// hold it back, and whether to drop the connection instead.
fn record_and_answer(
    state: &Shared,
    customer: &str,
    user: &str,
    headers: &HeaderMap,
    request_id: Option<String>,
    body_json: Value,
    arrival: Arrival,
) -> Reply {
    let Arrival {
        at: arrived_at,
        charged: charged_on_arrival,
    } = arrival;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let mut state = state.lock().expect("sandbox lock");
    let mut record = RecordedRequest {
        at: SystemTime::now(),
        arrived_at,
        customer: customer.to_string(),
        user: user.to_string(),
        request_id: request_id.clone(),
        correlation_id: header("ms-correlationid"),
        body: body_json.clone(),
        status: 0,
        replay: false,
        applied: false,
        fault: None,
        retry_after: None,
    };
    let (status, extra_headers, answer, definitive) = answer_license_update(
        &mut state,
        customer,
        user,
        headers,
        &body_json,
        &mut record,
        charged_on_arrival,
    );
    record.status = status;
    record.retry_after = extra_headers
        .iter()
        .find(|(name, _)| *name == "retry-after")
        .and_then(|(_, value)| value.parse().ok());
    if definitive
        && let Some(id) = &request_id
        && !record.replay
    {
        state.idempotency.insert(
            id.clone(),
            Stored {
                fingerprint: fingerprint(customer, user, &body_json),
                status,
                body: answer.clone(),
            },
        );
    }
    if record.applied
        && let Some(id) = &request_id
    {
        let change = fingerprint(customer, user, &body_json);
        match state.applied_changes.get(&change) {
            Some(earlier) if earlier != id => {
                state.violations.new_request_id_for_applied_change += 1
            }
            Some(_) => {}
            None => {
                state.applied_changes.insert(change, id.clone());
            }
        }
    }
    let faults = state.scenario.faults.clone();
    let mut hold = faults.answer_delay_ms;
    let (mut status, mut answer) = (status, answer);
    match record.fault {
        // Applied and stored for replay above; only the answer is lost or late.
        Some("apply-then-503") if record.applied => {
            status = 503;
            answer = json!({"code": 503, "description": "The service is temporarily unavailable (sandbox fault, after applying)."});
        }
        Some("apply-then-timeout") if record.applied => {
            hold = Some(faults.hold_secs.unwrap_or(5) * 1000);
        }
        _ => {}
    }
    let reset = record.fault == Some("reset");
    record.status = if reset { 0 } else { status };
    state.requests.push(record);
    state.progress.send_modify(|p| p.requests += 1);
    Reply {
        status,
        headers: extra_headers,
        body: answer,
        hold_ms: hold,
        reset,
    }
}

/// What makes two licenseupdates calls the same request: customer, user and body, with the
/// license lists taken as sets (a request that names the same licenses in another order asks
/// for the same change).
fn fingerprint(customer: &str, user: &str, body: &Value) -> String {
    let mut body = body.clone();
    if let Value::Object(fields) = &mut body {
        for (_, value) in fields.iter_mut() {
            if let Value::Array(items) = value {
                items.sort_by_cached_key(Value::to_string);
            }
        }
    }
    format!(
        "{}|{}|{}",
        customer.to_lowercase(),
        user.to_lowercase(),
        body
    )
}

type Answer = (u16, Vec<(&'static str, String)>, Value, bool);

/// The license groups a read asks for: `licenseGroupIds=Group1&licenseGroupIds=Group2`;
/// without the parameter the API returns group1 only.
fn asked_groups(query: Option<&str>) -> BTreeSet<LicenseGroup> {
    let asked: BTreeSet<LicenseGroup> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| k.eq_ignore_ascii_case("licenseGroupIds"))
        .filter_map(|(_, v)| LicenseGroup::parse(v))
        .collect();
    if asked.is_empty() {
        BTreeSet::from([LicenseGroup::Group1])
    } else {
        asked
    }
}

fn product_sku_json(s: &SubscribedSku) -> Value {
    json!({"id": s.id, "name": s.name, "skuPartNumber": s.part_number, "targetType": "User",
           "licenseGroupId": s.license_group.as_str()})
}

fn service_plans_json(s: &SubscribedSku) -> Vec<Value> {
    catalog::find(&SkuRef::Id(s.id))
        .map(|c| c.service_plans())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            json!({"displayName": p.display_name, "serviceName": p.service_name, "id": p.id,
                        "capabilityStatus": "Enabled", "targetType": "User"})
        })
        .collect()
}

fn collection(items: Vec<Value>) -> Value {
    json!({"totalCount": items.len(), "items": items, "attributes": {"objectType": "Collection"}})
}

/// Runs the token and customer checks of a read, then `answer` on the customer.
fn read_answer(
    state: &Shared,
    headers: &HeaderMap,
    customer_text: &str,
    license_call: bool,
    answer: impl FnOnce(&Customer) -> Result<Value, Answer>,
) -> Response {
    let mut state = state.lock().expect("sandbox lock");
    let result = check_token(&state, headers, license_call)
        .and_then(|()| check_customer(&mut state, customer_text))
        .and_then(|id| answer(state.customers.get(&id).expect("checked above")));
    let (status, body) = match result {
        Ok(body) => (200, body),
        Err((status, _, body, _)) => (status, body),
    };
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

/// Reads take the scenario's `read_latency_ms`, as the real API's take time too.
async fn read_delay(state: &Shared) {
    let delay = state
        .lock()
        .expect("sandbox lock")
        .scenario
        .faults
        .read_latency_ms;
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn subscribed_skus(
    State(state): State<Shared>,
    Path(customer): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    read_delay(&state).await;
    let groups = asked_groups(uri.query());
    read_answer(&state, &headers, &customer, true, |c| {
        let items = c
            .skus
            .iter()
            .filter(|s| groups.contains(&s.license_group))
            .map(|s| {
                json!({"availableUnits": s.total.saturating_sub(s.consumed), "activeUnits": s.total,
                       "consumedUnits": s.consumed, "suspendedUnits": 0, "totalUnits": s.total,
                       "warningUnits": 0, "capabilityStatus": "Enabled",
                       "productSku": product_sku_json(s), "servicePlans": service_plans_json(s),
                       "attributes": {"objectType": "SubscribedSku"}})
            })
            .collect();
        Ok(collection(items))
    })
}

async fn user_licenses(
    State(state): State<Shared>,
    Path((customer, user)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    read_delay(&state).await;
    let groups = asked_groups(uri.query());
    read_answer(&state, &headers, &customer, true, |c| {
        check_user(c, &user)?;
        let held = c
            .assigned
            .get(&user.to_lowercase())
            .cloned()
            .unwrap_or_default();
        let items = c
            .skus
            .iter()
            .filter(|s| held.contains(&s.id) && groups.contains(&s.license_group))
            .map(|s| {
                json!({"servicePlans": service_plans_json(s), "productSku": product_sku_json(s),
                            "attributes": {"objectType": "License"}})
            })
            .collect();
        Ok(collection(items))
    })
}

async fn deployment_insights(
    State(state): State<Shared>,
    Path(customer): Path<String>,
    headers: HeaderMap,
) -> Response {
    read_delay(&state).await;
    let processed = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    read_answer(&state, &headers, &customer, false, |c| {
        let items = c
            .skus
            .iter()
            .filter(|s| s.consumed > 0)
            .map(|s| {
                json!({"customerName": c.name, "productName": s.name.to_uppercase(),
                       "licensesDeployed": s.consumed, "licensesSold": s.total,
                       "deploymentPercent": (s.consumed as f64 / s.total.max(1) as f64 * 10000.0).round() / 100.0,
                       "processedDateTime": processed, "serviceName": "o365", "channel": "reseller",
                       "attributes": {"objectType": "CustomerLicensesDeploymentInsights"}})
            })
            .collect();
        Ok(collection(items))
    })
}

fn unauthorized() -> Answer {
    (
        401,
        vec![("www-authenticate", "Bearer".into())],
        json!({"code": 401, "description": "Unauthorized: the access token is missing, expired or revoked."}),
        false,
    )
}

/// The bearer token must be one the sandbox issued and still valid; license calls also fail
/// with 900316 while the scenario plays a partner-only token.
fn check_token(
    state: &SandboxState,
    headers: &HeaderMap,
    license_call: bool,
) -> Result<(), Answer> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let valid = state
        .tokens
        .get(bearer)
        .is_some_and(|until| Instant::now() < *until);
    if !valid || state.scenario.auth.reject_all_tokens {
        return Err(unauthorized());
    }
    if license_call && state.scenario.auth.partner_token {
        return Err((
            400,
            vec![],
            error_body(
                900316,
                "Partner token is not allowed in license management calls. Please call with Partner Access Token. To learn more, see https://learn.microsoft.com/partner-center/developer/enable-secure-app-model#get-access-token",
                None,
            ),
            false,
        ));
    }
    Ok(())
}

/// The customer must exist (60003) and accept us (900309 Conditional Access, 403 GDAP role).
fn check_customer(state: &mut SandboxState, customer_text: &str) -> Result<Uuid, Answer> {
    let not_found = || {
        (
            404,
            vec![],
            error_body(60003, "Tenant not found.", None),
            true,
        )
    };
    let customer_id = Uuid::try_parse(customer_text).map_err(|_| not_found())?;
    let permissive = state.permissive;
    let customer =
        customer_entry(&mut state.customers, permissive, customer_id).ok_or_else(not_found)?;
    if customer.conditional_access_blocked {
        return Err((
            403,
            vec![],
            error_body(
                900309,
                "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance. Learn more at https://learn.microsoft.com/azure/active-directory/conditional-access/concept-conditional-access-users-groups.",
                None,
            ),
            true,
        ));
    }
    if customer.missing_gdap_role {
        return Err((
            403,
            vec![],
            json!({"description": "Forbidden: the caller does not have a role that permits license management for this customer.", "source": "PartnerFD"}),
            true,
        ));
    }
    Ok(customer_id)
}

/// The user must exist in the customer's tenant (60002).
fn check_user(customer: &Customer, user: &str) -> Result<(), Answer> {
    if customer
        .users
        .as_ref()
        .is_some_and(|users| !users.contains(&user.to_lowercase()))
    {
        return Err((
            404,
            vec![],
            error_body(60002, "User object Id is not found.", None),
            true,
        ));
    }
    Ok(())
}

/// `charged_on_arrival`: the quota was charged when the call arrived (a gateway), with this
/// result; `None`: charge it now.
fn answer_license_update(
    state: &mut SandboxState,
    customer_text: &str,
    user: &str,
    headers: &HeaderMap,
    body: &Value,
    record: &mut RecordedRequest,
    charged_on_arrival: Option<Option<f64>>,
) -> Answer {
    if let Err(answer) = check_token(state, headers, true) {
        return answer;
    }

    state.calls += 1;
    let call = state.calls;
    let faults = state.scenario.faults.clone();
    if faults
        .throttle_every
        .is_some_and(|n| n > 0 && call.is_multiple_of(n))
    {
        let wait = faults.retry_after_secs.unwrap_or(1);
        return (
            429,
            vec![("retry-after", wait.to_string())],
            json!({"statusCode": 429, "message": format!("Rate limit is exceeded. Try again in {wait} seconds.")}),
            false,
        );
    }
    if faults
        .transient_every
        .is_some_and(|n| n > 0 && call.is_multiple_of(n))
    {
        let status = faults.transient_status.unwrap_or(503);
        record.fault = Some("transient");
        return (
            status,
            vec![],
            json!({"code": status, "description": "The service is temporarily unavailable (sandbox fault)."}),
            false,
        );
    }

    let quota = match charged_on_arrival {
        Some(charged) => charged,
        None => state.charge_quota_exact(customer_text),
    };
    if let Some(wait) = quota {
        record.fault = Some("quota");
        return state.quota_answer(wait);
    }
    let storm = match (faults.storm_after, faults.storm_length) {
        (Some(after), Some(length)) => call > after && call <= after + length,
        _ => false,
    };
    if storm {
        let wait = faults.retry_after_secs.unwrap_or(1);
        record.fault = Some("429-storm");
        return (
            429,
            vec![("retry-after", wait.to_string())],
            json!({"statusCode": 429, "message": format!("Rate limit is exceeded. Try again in {wait} seconds.")}),
            false,
        );
    }
    let draw = state.draw();
    let mut bound = faults.transient_rate;
    if draw < bound {
        let status = [500, 502, 503][(call % 3) as usize];
        record.fault = Some("transient");
        return (
            status,
            vec![],
            json!({"code": status, "description": "The service is temporarily unavailable (sandbox fault)."}),
            false,
        );
    }
    bound += faults.reset_rate;
    if draw < bound {
        record.fault = Some("reset");
        return (0, vec![], Value::Null, false);
    }
    bound += faults.apply_then_503_rate;
    if draw < bound {
        record.fault = Some("apply-then-503");
    } else if draw < bound + faults.apply_then_timeout_rate {
        record.fault = Some("apply-then-timeout");
    }

    if let Ok(id) = Uuid::try_parse(customer_text)
        && let Some(c) = state.customers.get_mut(&id)
    {
        c.calls += 1;
        if c.blocked_after_requests.is_some_and(|n| c.calls > n) {
            c.conditional_access_blocked = true;
        }
    }

    let request_id = record.request_id.clone();
    match request_id.as_deref().map(Uuid::try_parse) {
        None => state.violations.missing_request_id += 1,
        Some(Err(_)) => state.violations.malformed_request_id += 1,
        Some(Ok(_)) => {}
    }
    if let Some(id) = &request_id
        && let Some(stored) = state.idempotency.get(id)
    {
        if stored.fingerprint == fingerprint(customer_text, user, body) {
            record.replay = true;
            return (stored.status, vec![], stored.body.clone(), true);
        }
        state.violations.request_id_reused_with_other_body += 1;
        return (
            409,
            vec![],
            error_body(
                409,
                "MS-RequestId was already used for a different request (sandbox rule).",
                None,
            ),
            false,
        );
    }

    let customer_id = match check_customer(state, customer_text) {
        Ok(id) => id,
        Err(answer) => return answer,
    };
    let customer = state
        .customers
        .get_mut(&customer_id)
        .expect("check_customer ensured it");
    if let Err(answer) = check_user(customer, user) {
        return answer;
    }
    let user_key = user.to_lowercase();
    let Some((assign, remove)) = requested_skus(body) else {
        return (
            400,
            vec![],
            error_body(
                60000,
                "The request body is not a LicenseUpdate (sandbox rule).",
                None,
            ),
            true,
        );
    };
    let mut groups = BTreeSet::new();
    for sku in assign.iter().chain(&remove) {
        match customer.skus.iter().find(|s| s.id == *sku) {
            Some(s) => {
                groups.insert(s.license_group);
            }
            None => {
                return (
                    400,
                    vec![],
                    error_body(
                        60011,
                        &format!(
                            "The SKU {sku} is not subscribed by this customer (sandbox rule)."
                        ),
                        None,
                    ),
                    true,
                );
            }
        }
    }
    // Excluded plans must belong to their SKU (known for catalog SKUs). The API answers such a
    // request with a 400 that names no SKU.
    for (sku, plan) in excluded_plans(body) {
        let known = catalog::find(&SkuRef::Id(sku))
            .map(|c| c.service_plans())
            .unwrap_or_default();
        if !known.is_empty() && !known.iter().any(|p| p.id == plan) {
            return (
                400,
                vec![],
                error_body(
                    60014,
                    &format!(
                        "The service plan {plan} cannot be excluded: it is not part of the requested licenses (sandbox rule)."
                    ),
                    None,
                ),
                true,
            );
        }
    }
    if groups.len() > 1 {
        state.violations.mixed_license_groups += 1;
        return (
            400,
            vec![],
            error_body(
                60013,
                "Licenses of more than one license group cannot be assigned in one request (sandbox rule).",
                None,
            ),
            true,
        );
    }
    let customer = state
        .customers
        .get_mut(&customer_id)
        .expect("check_customer ensured it");
    let held = customer
        .assigned
        .get(&user_key)
        .cloned()
        .unwrap_or_default();
    for sku in &assign {
        let s = customer
            .skus
            .iter()
            .find(|s| s.id == *sku)
            .expect("checked above");
        if !held.contains(sku) && s.consumed >= s.total {
            let data = format!(
                "LicenseQuotaExceededException : Subscription with Account {customer_id} and SKU {sku} does not have any available licenses left."
            );
            return (
                400,
                vec![],
                error_body(
                    60012,
                    "We are sorry, it looks like you have run out of licenses. Buy more licenses, and then try again.",
                    Some(vec![data]),
                ),
                true,
            );
        }
    }
    let mut warnings = Vec::new();
    let held = customer.assigned.entry(user_key.clone()).or_default();
    // Per SKU: whether it is assigned (true) or removed, and whether that changed anything.
    let mut changes = Vec::new();
    for sku in &assign {
        let s = customer
            .skus
            .iter_mut()
            .find(|s| s.id == *sku)
            .expect("checked above");
        let changed = held.insert(*sku);
        if changed {
            s.consumed += 1;
        }
        changes.push((*sku, true, changed));
        if let Some((code, message)) = &s.warning {
            warnings.push(json!({"code": code, "message": message, "servicePlans": []}));
        }
    }
    for sku in &remove {
        let changed = held.remove(sku);
        if changed && let Some(s) = customer.skus.iter_mut().find(|s| s.id == *sku) {
            s.consumed = s.consumed.saturating_sub(1);
        }
        changes.push((*sku, false, changed));
    }
    let request_id = record.request_id.clone().unwrap_or_default();
    let excluded = excluded_plans(body);
    for (sku, assigned, changed) in changes {
        let key = (customer_id, user_key.clone(), sku);
        let plans: BTreeSet<Uuid> = excluded
            .iter()
            .filter(|(s, _)| *s == sku && assigned)
            .map(|&(_, plan)| plan)
            .collect();
        // Other excluded plans for a license the user holds are a change of their own.
        let repeated = state
            .last_change
            .get(&key)
            .is_some_and(|(was_assign, was_plans, by)| {
                *was_assign == assigned && *was_plans == plans && *by != request_id
            });
        if !changed && repeated {
            state
                .violations
                .license_change_repeated_under_new_request_id += 1;
        } else {
            state
                .last_change
                .insert(key, (assigned, plans, request_id.clone()));
        }
    }
    record.applied = true;
    let assigned: Vec<Value> = assign.iter().map(|s| json!({"skuId": s})).collect();
    (
        201,
        vec![],
        json!({
            "licensesToAssign": assigned,
            "licensesToRemove": remove,
            "licenseWarnings": warnings,
            "attributes": {"objectType": "LicenseUpdate"}
        }),
        true,
    )
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
            let (status, headers, body, _) = s.quota_answer(wait);
            assert_eq!(status, 429);
            let header = headers.first().map(|(_, v)| v.clone());
            (header, body["message"].as_str().unwrap().to_string())
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
