//! App+User access tokens: the refresh-token grant of the secure application model (v1 or v2
//! endpoint), cached and renewed ahead of expiry, one renewal at a time for all workers; a
//! token call that meets a blip is tried again, an answer that refuses is not.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::Url;
use serde_json::Value;
use tokio::sync::Mutex;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::{RetrySettings, TokenEndpoint};
use crate::secret::Secret;

const PARTNER_CENTER_RESOURCE: &str = "https://api.partnercenter.microsoft.com";
const PARTNER_CENTER_SCOPE: &str =
    "https://api.partnercenter.microsoft.com/user_impersonation offline_access";

/// Where access tokens come from.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `LICENSE_BATCH_ACCESS_TOKEN`: used as is; cannot be refreshed.
    AccessToken(Secret),
    RefreshToken(RefreshGrant),
}

#[derive(Debug, Clone)]
pub struct RefreshGrant {
    pub authority: Url,
    pub tenant_id: String,
    pub endpoint: TokenEndpoint,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub refresh_token: Secret,
    /// Where a rotated refresh token is written back (`auth.refresh_token_file`), so a nightly
    /// job never falls off the refresh token's lifetime.
    pub persist_to: Option<PathBuf>,
}

impl RefreshGrant {
    pub fn token_url(&self) -> Url {
        let mut url = self.authority.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("authority is an http(s) URL");
            path.pop_if_empty().push(&self.tenant_id).push("oauth2");
            if self.endpoint == TokenEndpoint::V2 {
                path.push("v2.0");
            }
            path.push("token");
        }
        url
    }
}

/// Why no token could be had; every variant carries advice for the operator and no secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("the token endpoint refused the refresh token ({error}): {advice}")]
    Refused { error: String, advice: String },
    #[error("cannot get an access token from {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "the access token from LICENSE_BATCH_ACCESS_TOKEN was rejected (expired or revoked) and \
         cannot be refreshed; supply a new one, or configure the refresh-token grant instead"
    )]
    CannotRefresh,
}

/// Why one grant gave no token.
enum GrantFailure {
    /// No usable answer (no connection, a timeout, a 5xx, a 429): worth another try.
    Transient {
        error: AuthError,
        retry_after: Option<Duration>,
    },
    /// The endpoint answered: the credentials are what is wrong.
    Definitive(AuthError),
}

struct Cached {
    token: Secret,
    renew_at: Instant,
}

struct State {
    cached: Option<Cached>,
    /// The refresh token in use; Azure AD may rotate it on every grant.
    refresh_token: Option<Secret>,
}

/// Hands out access tokens to every worker.
pub struct TokenProvider {
    http: reqwest::Client,
    credentials: Credentials,
    state: Mutex<State>,
    /// How a token call that met a blip (no answer, 5xx, 429) is tried again; one try unless
    /// [`TokenProvider::with_retry`] says more.
    retry: RetrySettings,
}

impl TokenProvider {
    pub fn new(http: reqwest::Client, credentials: Credentials) -> Self {
        let (cached, refresh_token) = match &credentials {
            Credentials::AccessToken(token) => (
                Some(Cached {
                    token: token.clone(),
                    renew_at: far_future(),
                }),
                None,
            ),
            Credentials::RefreshToken(grant) => (None, Some(grant.refresh_token.clone())),
        };
        TokenProvider {
            http,
            credentials,
            state: Mutex::new(State {
                cached,
                refresh_token,
            }),
            retry: RetrySettings {
                max_attempts: 1,
                max_elapsed: Duration::ZERO,
                min_delay: Duration::ZERO,
            },
        }
    }

    /// Token calls that meet a blip — the connection refused or reset, a timeout, a 5xx, a 429
    /// — are tried again under the API calls' bounded policy (attempts, total time, a backoff
    /// from `min_delay` doubling with jitter, never sooner than a Retry-After). A definitive
    /// answer (`invalid_grant`, `invalid_client`, an AADSTS code) still stops at once.
    pub fn with_retry(mut self, retry: RetrySettings) -> Self {
        self.retry = retry;
        self
    }

    /// Where the tokens come from, for `check`: a ready token, or the refresh-token grant
    /// with its endpoint (no secret in it).
    pub fn source(&self) -> String {
        match &self.credentials {
            Credentials::AccessToken(_) => {
                "a ready access token (LICENSE_BATCH_ACCESS_TOKEN)".into()
            }
            Credentials::RefreshToken(grant) => format!(
                "the refresh-token grant, {} endpoint ({})",
                match grant.endpoint {
                    TokenEndpoint::V1 => "v1",
                    TokenEndpoint::V2 => "v2",
                },
                grant.token_url()
            ),
        }
    }

    /// A token that is not about to expire. Holding the lock while renewing makes concurrent
    /// callers wait for the one renewal instead of each starting their own.
    pub async fn token(&self) -> Result<Secret, AuthError> {
        let mut state = self.state.lock().await;
        if let Some(cached) = &state.cached
            && Instant::now() < cached.renew_at
        {
            return Ok(cached.token.clone());
        }
        self.renew(&mut state).await
    }

    /// Called after a 401 with the token that was refused: renews unless another worker
    /// already did, so a burst of 401s costs one renewal.
    pub async fn renew_after_rejection(&self, rejected: &Secret) -> Result<Secret, AuthError> {
        let mut state = self.state.lock().await;
        if let Some(cached) = &state.cached
            && cached.token != *rejected
            && Instant::now() < cached.renew_at
        {
            return Ok(cached.token.clone());
        }
        self.renew(&mut state).await
    }

    async fn renew(&self, state: &mut State) -> Result<Secret, AuthError> {
        let Credentials::RefreshToken(grant) = &self.credentials else {
            return Err(AuthError::CannotRefresh);
        };
        let started = Instant::now();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(Duration::from_secs(60))
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempt = 1;
        loop {
            let (error, retry_after) = match self.grant_once(grant, state).await {
                Ok(token) => return Ok(token),
                Err(GrantFailure::Definitive(error)) => return Err(error),
                Err(GrantFailure::Transient { error, retry_after }) => (error, retry_after),
            };
            let backoff = delays.next().unwrap_or(self.retry.min_delay);
            let wait = retry_after.map_or(backoff, |told| told.max(backoff));
            if attempt >= self.retry.max_attempts
                || started.elapsed() + wait > self.retry.max_elapsed
            {
                return Err(error);
            }
            tracing::warn!(
                attempt,
                "the token endpoint did not answer usably ({error}); trying again in {wait:?}"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One refresh-token grant: a token, or why not — a blip worth another try, or an answer.
    async fn grant_once(
        &self,
        grant: &RefreshGrant,
        state: &mut State,
    ) -> Result<Secret, GrantFailure> {
        let refresh_token = state
            .refresh_token
            .clone()
            .unwrap_or_else(|| grant.refresh_token.clone());
        let url = grant.token_url();
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "refresh_token"),
            ("client_id", &grant.client_id),
            ("refresh_token", refresh_token.expose()),
        ];
        if let Some(secret) = &grant.client_secret {
            form.push(("client_secret", secret.expose()));
        }
        match grant.endpoint {
            TokenEndpoint::V1 => {
                form.push(("resource", PARTNER_CENTER_RESOURCE));
                form.push(("scope", "openid"));
            }
            TokenEndpoint::V2 => form.push(("scope", PARTNER_CENTER_SCOPE)),
        }
        let unreachable = |reason: String| AuthError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let transient = |error: AuthError, retry_after: Option<Duration>| GrantFailure::Transient {
            error,
            retry_after,
        };
        let response = self
            .http
            .post(url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| transient(unreachable(without_url(&e)), None))?;
        let status = response.status();
        // A gateway's 5xx page, or a throttle: the endpoint is there, its answer is not one.
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|secs| secs.is_finite() && *secs >= 0.0)
                .map(Duration::from_secs_f64);
            let body = response.text().await.unwrap_or_default();
            let first_line = body
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect::<String>();
            return Err(transient(
                unreachable(format!("HTTP {}: {first_line}", status.as_u16())),
                retry_after,
            ));
        }
        let body: Value = response.json().await.map_err(|e| {
            let error = unreachable(format!(
                "HTTP {status}, unreadable answer: {}",
                without_url(&e)
            ));
            match status.is_success() {
                // Cut off while the answer was read: a blip.
                true => transient(error, None),
                false => GrantFailure::Definitive(error),
            }
        })?;
        if !status.is_success() {
            return Err(GrantFailure::Definitive(refusal(&body, status.as_u16())));
        }
        let access = body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                GrantFailure::Definitive(unreachable(format!(
                    "HTTP {status} without an access_token"
                )))
            })?;
        // expires_in is a string in v1 and a number in v2.
        let lifetime = match body.get("expires_in") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(3600));
        if let Some(rotated) = body.get("refresh_token").and_then(Value::as_str)
            && !rotated.is_empty()
            && rotated != refresh_token.expose()
        {
            let rotated = Secret::new(rotated);
            if let Some(path) = &grant.persist_to {
                // A failed write costs nothing now (the new token is in memory) but would make
                // the next run start from the old token: say so loudly.
                match write_private_atomically(path, rotated.expose()) {
                    Ok(()) => tracing::info!("rotated refresh token saved to {}", path.display()),
                    Err(error) => tracing::error!(
                        "cannot save the rotated refresh token to {}: {error}; the next run uses the old one",
                        path.display()
                    ),
                }
            }
            state.refresh_token = Some(rotated);
        }
        let token = Secret::new(access);
        state.cached = Some(Cached {
            token: token.clone(),
            renew_at: Instant::now() + lifetime - renewal_margin(lifetime),
        });
        tracing::debug!(lifetime_secs = lifetime.as_secs(), "access token renewed");
        Ok(token)
    }
}

/// Writes `content` to `path` through a temporary file in the same folder (mode 0600) and a
/// rename, so a crash never leaves a half-written token.
pub fn write_private_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    let line = format!("{content}\n");
    crate::paths::write_atomically(path, line.as_bytes(), crate::paths::Readers::Owner)
}

/// Renew a quarter of the lifetime early (at most five minutes), so no request leaves with a
/// token about to expire.
fn renewal_margin(lifetime: Duration) -> Duration {
    (lifetime / 4).min(Duration::from_secs(300))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// reqwest errors can print the URL; the token URL holds no secret, but keep messages short.
fn without_url(error: &reqwest::Error) -> String {
    let mut e: &dyn std::error::Error = error;
    let mut text = error.to_string();
    while let Some(source) = e.source() {
        text = source.to_string();
        e = source;
    }
    text
}

/// Turns an OAuth error answer into operator advice (AADSTS codes).
fn refusal(body: &Value, status: u16) -> AuthError {
    let error = body
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unknown_error")
        .to_string();
    let description = body
        .get("error_description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let aadsts = description
        .split_whitespace()
        .next()
        .filter(|w| w.starts_with("AADSTS"))
        .map(|w| w.trim_end_matches(':'))
        .unwrap_or("");
    let advice = match aadsts {
        "AADSTS700082" | "AADSTS70008" | "AADSTS700084" => {
            "the refresh token has expired; run the secure application model consent again \
             (an admin agent signs in with MFA) and store the new refresh token"
        }
        "AADSTS50173" | "AADSTS50132" | "AADSTS50133" | "AADSTS70043" => {
            "the refresh token was revoked (password change or session policy); run the \
             secure application model consent again and store the new refresh token"
        }
        "AADSTS7000215" | "AADSTS7000222" => {
            "the client secret is invalid or expired; create a new secret for the app \
             registration and set LICENSE_BATCH_CLIENT_SECRET"
        }
        "AADSTS700016" => {
            "the client_id is not an application in the partner tenant; check auth.client_id"
        }
        "AADSTS90002" | "AADSTS900023" => "the tenant is unknown; check auth.tenant_id",
        "AADSTS50076" | "AADSTS50079" | "AADSTS50158" => {
            "multi-factor authentication is required; consent again with MFA and store the new refresh token"
        }
        "AADSTS53003" => {
            "blocked by Conditional Access in the partner tenant; exclude the app or location from the policy"
        }
        "AADSTS65001" => {
            "the app has no consent for Partner Center; grant consent (secure application model)"
        }
        _ => "",
    };
    let advice = if advice.is_empty() {
        format!("HTTP {status}: {description}")
    } else {
        format!("{advice} ({description})")
    };
    AuthError::Refused { error, advice }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(endpoint: TokenEndpoint) -> RefreshGrant {
        RefreshGrant {
            authority: Url::parse("https://login.example/").unwrap(),
            tenant_id: "contoso.onmicrosoft.com".into(),
            endpoint,
            client_id: "app".into(),
            client_secret: Some(Secret::new("s3cret")),
            refresh_token: Secret::new("rt"),
            persist_to: None,
        }
    }

    #[test]
    fn token_urls_for_both_endpoints() {
        assert_eq!(
            grant(TokenEndpoint::V1).token_url().as_str(),
            "https://login.example/contoso.onmicrosoft.com/oauth2/token"
        );
        assert_eq!(
            grant(TokenEndpoint::V2).token_url().as_str(),
            "https://login.example/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
    }

    #[test]
    fn aadsts_codes_become_advice() {
        let body = serde_json::json!({"error": "invalid_grant",
            "error_description": "AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: x"});
        let err = refusal(&body, 400).to_string();
        assert!(
            err.contains("consent again") && err.contains("invalid_grant"),
            "{err}"
        );
        assert!(!err.contains("Trace ID"));
        let body = serde_json::json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."});
        assert!(
            refusal(&body, 401)
                .to_string()
                .contains("LICENSE_BATCH_CLIENT_SECRET")
        );
    }

    /// Each Entra code gets the advice that fixes it (and keeps its first line): a code whose
    /// advice disappeared would read as a bare "HTTP 400".
    const ADVICE: &[(&str, &str)] = &[
        ("AADSTS700082", "refresh token has expired"),
        ("AADSTS70008", "refresh token has expired"),
        ("AADSTS700084", "refresh token has expired"),
        ("AADSTS50173", "refresh token was revoked"),
        ("AADSTS50132", "refresh token was revoked"),
        ("AADSTS50133", "refresh token was revoked"),
        ("AADSTS70043", "refresh token was revoked"),
        ("AADSTS7000215", "LICENSE_BATCH_CLIENT_SECRET"),
        ("AADSTS7000222", "LICENSE_BATCH_CLIENT_SECRET"),
        ("AADSTS700016", "check auth.client_id"),
        ("AADSTS90002", "check auth.tenant_id"),
        ("AADSTS900023", "check auth.tenant_id"),
        ("AADSTS50076", "multi-factor authentication is required"),
        ("AADSTS50079", "multi-factor authentication is required"),
        ("AADSTS50158", "multi-factor authentication is required"),
        ("AADSTS53003", "Conditional Access"),
        ("AADSTS65001", "grant consent"),
    ];

    #[test]
    fn every_entra_code_gets_its_own_advice_and_keeps_the_description() {
        for &(code, advice) in ADVICE {
            let body = serde_json::json!({"error": "invalid_grant",
                "error_description": format!("{code}: Entra's own words.\r\nTrace ID: x")});
            let err = refusal(&body, 400).to_string();
            assert!(err.contains(advice), "{code}: {err}");
            assert!(
                err.contains(&format!("({code}: Entra's own words.)")),
                "{code}: {err}"
            );
            assert!(!err.contains("HTTP 400"), "{code}: {err}");
        }
        // An unknown code, or none: the status and the description as they came.
        for description in ["AADSTS99999: Something new.", "no code at all"] {
            let body =
                serde_json::json!({"error": "invalid_grant", "error_description": description});
            let err = refusal(&body, 400).to_string();
            assert!(err.contains(&format!("HTTP 400: {description}")), "{err}");
        }
    }

    #[test]
    fn every_code_of_the_readmes_table_is_one_the_tool_advises_on() {
        let readme = include_str!("../../README.md");
        let table_codes: Vec<&str> = readme
            .lines()
            .filter(|line| line.starts_with("| AADSTS"))
            .flat_map(|line| line.split(['|', '/', ':', ' ']))
            .filter(|word| word.starts_with("AADSTS"))
            .collect();
        assert!(table_codes.len() >= 10, "{table_codes:?}");
        for code in table_codes {
            assert!(
                ADVICE.iter().any(|&(known, _)| known == code),
                "the README names {code}, the tool gives no advice for it"
            );
        }
    }

    #[test]
    fn margin_is_a_quarter_capped_at_five_minutes() {
        assert_eq!(
            renewal_margin(Duration::from_secs(3600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            renewal_margin(Duration::from_secs(8)),
            Duration::from_secs(2)
        );
    }

    #[tokio::test]
    async fn a_static_token_cannot_be_renewed() {
        let provider = TokenProvider::new(
            reqwest::Client::new(),
            Credentials::AccessToken(Secret::new("at")),
        );
        let token = provider.token().await.unwrap();
        assert_eq!(token.expose(), "at");
        assert!(matches!(
            provider.renew_after_rejection(&token).await,
            Err(AuthError::CannotRefresh)
        ));
    }

    #[tokio::test]
    async fn a_static_token_is_never_renewed_before_it_is_rejected() {
        // A night is hours; a ready token is used until the API rejects it, never dropped as
        // "about to expire" on a clock of its own.
        let provider = TokenProvider::new(
            reqwest::Client::new(),
            Credentials::AccessToken(Secret::new("at")),
        );
        let state = provider.state.lock().await;
        let renew_at = state.cached.as_ref().unwrap().renew_at;
        assert!(renew_at > Instant::now() + Duration::from_secs(50 * 365 * 24 * 3600));
    }

    #[tokio::test]
    async fn an_unreachable_token_endpoint_says_why() {
        // A port nothing listens on: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut grant = grant(TokenEndpoint::V1);
        grant.authority = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let provider = TokenProvider::new(reqwest::Client::new(), Credentials::RefreshToken(grant));
        match provider.token().await {
            Err(AuthError::Unreachable { url, reason }) => {
                assert!(url.contains(&port.to_string()), "{url}");
                assert!(reason.to_lowercase().contains("refused"), "{reason}");
            }
            other => panic!("expected Unreachable, got {:?}", other.map(|_| "a token")),
        }
    }

    #[cfg(unix)]
    #[test]
    fn rotated_tokens_are_written_privately_and_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh-token");
        std::fs::write(&path, "old\n").unwrap();
        write_private_atomically(&path, "new-token").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new-token\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }
}
