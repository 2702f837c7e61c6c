//! The sandbox scenario (JSON or TOML): customers, users, subscribed SKUs with seats, and faults.
//! Without one, the sandbox is permissive: every customer and user exists and every catalog SKU
//! has plenty of seats (SPEC §2).

use std::path::Path;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Whether customers not listed exist too (with every catalog SKU). Default: true when no
    /// customers are listed, false otherwise.
    pub permissive: Option<bool>,
    #[serde(default)]
    pub auth: AuthScenario,
    #[serde(default)]
    pub faults: Faults,
    /// A hidden quota, as Partner Center enforces one (unpublished, per partner or per
    /// partner and customer).
    pub throttle: Option<Throttle>,
    #[serde(default)]
    pub customers: Vec<CustomerScenario>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthScenario {
    /// Lifetime the token endpoint announces in `expires_in` (default 3600).
    pub token_lifetime_secs: Option<u64>,
    /// Tokens stop working this long after issue, whatever `expires_in` said (revocation).
    pub revoke_tokens_after_secs: Option<u64>,
    /// The first N access tokens issued are dead on arrival (401), as after a revocation.
    #[serde(default)]
    pub revoke_first_tokens: u64,
    /// The token endpoint answers only after this long.
    pub token_delay_ms: Option<u64>,
    /// Only the first N token calls are delayed (all when not set): a test can hold the first
    /// run at its token, kill it there without a race, and let the next runs go.
    pub token_delay_calls: Option<u64>,
    /// The first N token calls fail the way a blip does: `token_failure` says how.
    #[serde(default)]
    pub fail_first_tokens: u64,
    /// How those calls fail: a status (502, 503, 429 with `Retry-After: 1`) or `0`, the
    /// connection dropped without an answer. Default 502.
    pub token_failure: Option<u16>,
    /// Every licenseupdates call answers 401.
    #[serde(default)]
    pub reject_all_tokens: bool,
    /// Every licenseupdates call answers 400 code 900316 (a partner-only token).
    #[serde(default)]
    pub partner_token: bool,
    /// Every call, reads and writes alike, answers 401 code 900421: the token carries no MFA
    /// claim (its refresh token came from a consent signed in without MFA).
    #[serde(default)]
    pub mfa_required: bool,
}

/// The shape of the sandbox's latency around its mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencySpread {
    /// `latency_ms` ± up to `latency_jitter_ms`, every value equally likely.
    #[default]
    Uniform,
    /// Log-normal with mean `latency_ms` and standard deviation `latency_jitter_ms`: most
    /// calls a little faster than the mean, a long tail of slow ones, as real services answer.
    Lognormal,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Every Nth licenseupdates call answers 429.
    pub throttle_every: Option<u64>,
    /// Retry-After of those 429s (default 1).
    pub retry_after_secs: Option<u64>,
    /// Every Nth licenseupdates call answers `transient_status` before applying anything.
    pub transient_every: Option<u64>,
    /// Default 503.
    pub transient_status: Option<u16>,
    /// Added before every licenseupdates call is processed.
    pub latency_ms: Option<u64>,
    /// Added after a licenseupdates call was processed (applied), before the answer leaves.
    pub answer_delay_ms: Option<u64>,
    /// Added before every read (subscribed SKUs, a user's licenses, insights) is answered.
    pub read_latency_ms: Option<u64>,
    /// `latency_ms` varies by this much: uniformly up to it either way, or as the standard
    /// deviation of a log-normal latency (see `latency_spread`).
    pub latency_jitter_ms: Option<u64>,
    /// How the latency varies around `latency_ms` (its mean).
    #[serde(default)]
    pub latency_spread: LatencySpread,
    /// Seed of the random faults below, so a scenario repeats.
    pub seed: Option<u64>,
    /// Share of calls answered 500/502/503 before anything is applied.
    #[serde(default)]
    pub transient_rate: f64,
    /// Share of calls whose connection is dropped, without an answer, before anything is applied.
    #[serde(default)]
    pub reset_rate: f64,
    /// Share of calls applied, then answered 503 (a retry under the same request ID replays the
    /// success).
    #[serde(default)]
    pub apply_then_503_rate: f64,
    /// Share of calls applied, then answered only after `hold_secs` (past the client's timeout).
    #[serde(default)]
    pub apply_then_timeout_rate: f64,
    /// How long an apply-then-timeout call holds its answer (default 5).
    pub hold_secs: Option<u64>,
    /// A 429 storm: after this many calls …
    pub storm_after: Option<u64>,
    /// … this many calls in a row answer 429 (with `retry_after_secs`).
    pub storm_length: Option<u64>,
    /// A user PATCH is applied, then answered only after this long …
    pub patch_answer_delay_ms: Option<u64>,
    /// … for the first N PATCHes only (all when not set): a test can kill the client while
    /// its first PATCH is applied but unanswered, and let the next run through.
    pub patch_answer_delay_calls: Option<u64>,
}

/// How the quota is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThrottleMode {
    /// Refills continuously at `per_minute`; holds up to `burst`. Retry-After: the time to the
    /// next token, in whole seconds (at least 1).
    Bucket,
    /// `per_minute` calls per fixed `window_secs` window (API Management style). Retry-After:
    /// the seconds left in the window.
    Window,
}

/// Whose calls share a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThrottleScope {
    #[default]
    Partner,
    Customer,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    pub mode: ThrottleMode,
    #[serde(default)]
    pub per: ThrottleScope,
    /// Bucket: the refill rate; window: the calls allowed per window.
    pub per_minute: u64,
    /// Bucket capacity (default: one second's worth), independent of the rate: from 1 to
    /// minutes of refill.
    pub burst: Option<u64>,
    /// Window length (default 60).
    pub window_secs: Option<u64>,
    /// Where the windows start counting (default `start`, the sandbox's start). `first_call`:
    /// from the first call the quota counts, so a client's first window is always whole,
    /// however long it took to get there.
    #[serde(default)]
    pub window_from: WindowFrom,
    /// How the wait is told (default `up`).
    #[serde(default)]
    pub retry_after: RetryAfterStyle,
    /// The wait of `retry_after = "constant"`, whatever the quota says (e.g. 1, or the 57 of
    /// Partner Center's throttling guidance).
    pub retry_after_constant_secs: Option<u64>,
    /// The rate changes during the run: from `at_secs` after the sandbox started, `per_minute`
    /// is this entry's (the last entry whose time has come).
    #[serde(default)]
    pub schedule: Vec<RateChange>,
    /// When a call spends the quota (default `after_latency`).
    #[serde(default)]
    pub charge: Charge,
}

/// Where fixed windows are counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowFrom {
    #[default]
    Start,
    FirstCall,
}

/// How a 429 tells its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryAfterStyle {
    /// `Retry-After` in whole seconds, rounded up (at least 1), and the same N in the body.
    #[default]
    Up,
    /// `Retry-After` with the exact fraction of a second (`0.02`).
    Exact,
    /// Always `retry_after_constant_secs`, whatever the quota needs.
    Constant,
    /// No header; the body's "Try again in N seconds" (rounded up) only.
    BodyOnly,
    /// Neither header nor N: `{"statusCode":429,"message":"Rate limit is exceeded."}`.
    Absent,
}

/// A change of the quota's rate during a run.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateChange {
    pub at_secs: f64,
    pub per_minute: u64,
}

/// When a call is counted against the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Charge {
    /// When the service processes it, after the call's latency (the 429 comes that late).
    #[default]
    AfterLatency,
    /// On arrival, as an API gateway in front of the service does: a 429 is answered at once.
    OnArrival,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerScenario {
    pub id: Uuid,
    pub name: Option<String>,
    /// Answers 403 code 900309 (Conditional Access) to every call.
    #[serde(default)]
    pub conditional_access_blocked: bool,
    /// Turns Conditional-Access-blocked after this many licenseupdates calls to it.
    pub blocked_after_requests: Option<u64>,
    /// With `throttle.per = "customer"`: this customer's own quota per minute (the API's
    /// limits differ per partner+customer pair and are not published).
    pub quota_per_minute: Option<u64>,
    /// Answers 403 as when the partner lacks the GDAP role for this customer.
    #[serde(default)]
    pub missing_gdap_role: bool,
    /// Users (object IDs or UPNs) that exist; omitted = every user exists.
    pub users: Option<Vec<String>>,
    /// Users (object IDs or UPNs) that have no usage location: an assignment to them is
    /// refused (400, "… invalid usage location.") until a PATCH of the user gives them one.
    #[serde(default)]
    pub users_without_usage_location: Vec<String>,
    /// The partner may assign licenses here but not update users (a GDAP role such as License
    /// Administrator without User Administrator): a user PATCH answers 403.
    #[serde(default)]
    pub missing_user_admin_role: bool,
    /// Subscribed SKUs; omitted = every catalog SKU with plenty of seats.
    pub skus: Option<Vec<SkuScenario>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SkuScenario {
    /// SKU ID, part number or product name of the built-in catalog, or a new SKU ID.
    pub sku: String,
    pub name: Option<String>,
    pub part_number: Option<String>,
    pub license_group: Option<String>,
    /// Seats bought (default 1000).
    pub total: Option<u64>,
    /// Seats already in use by users outside the sheet (default 0).
    #[serde(default)]
    pub consumed: u64,
    /// A license warning returned when this SKU is assigned.
    pub warning: Option<WarningScenario>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WarningScenario {
    pub code: String,
    pub message: String,
}

impl Scenario {
    /// Reads a scenario: `.json` as JSON, anything else as TOML.
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read scenario {}: {e}", path.display()))?;
        let parsed = if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|e| format!("scenario {}: {}", path.display(), e.trim_end()))
    }

    /// A short fingerprint of the scenario: each sandbox world is its own API target, so a
    /// rehearsal with one scenario never makes rows look done for another.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_string(self).expect("scenarios serialise");
        // A hex digest is ASCII: byte 12 is a character boundary.
        crate::journal::content_hash(json.as_bytes())[..12].to_string()
    }

    pub fn is_permissive(&self) -> bool {
        self.permissive.unwrap_or(self.customers.is_empty())
    }
}
