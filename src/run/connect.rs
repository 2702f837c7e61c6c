//! Connecting: credentials from the environment and settings (or the in-process sandbox), the
//! client and the dispatcher every call of a run goes through, and the key under which "done"
//! is remembered.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Target;
use crate::api::auth::{Credentials, RefreshGrant, TokenProvider};
use crate::api::{ApiClient, http_client};
use crate::config::{EnvSecrets, Settings};
use crate::engine::{Dispatcher, EngineSettings};
use crate::error::Error;
use crate::sandbox::Sandbox;
use crate::secret::Secret;

/// A live connection to an API target: the dispatcher every call goes through, and the key
/// under which "done" is remembered.
pub struct Connection {
    pub calls: Arc<Dispatcher>,
    pub target: String,
    /// Keeps the in-process sandbox alive while connected.
    _sandbox: Option<Sandbox>,
}

/// Resolves credentials (or starts the in-process sandbox) and builds the dispatcher.
pub async fn connect(
    settings: &Settings,
    secrets: &EnvSecrets,
    target: &Target,
    stop: CancellationToken,
) -> Result<Connection, Error> {
    let mut settings = settings.clone();
    let (credentials, target, sandbox) = match target {
        Target::Configured => (
            credentials(&settings, secrets)?,
            target_key(&settings),
            None,
        ),
        Target::Sandbox(scenario) => {
            let sandbox = Sandbox::start(
                scenario.as_ref().clone(),
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            )
            .await
            .map_err(Error::Sandbox)?;
            tracing::info!("sandbox listening on {}", sandbox.url);
            settings.api.base_url = sandbox.url.clone();
            // Each sandbox world is its own target: a rehearsal never marks anything done for
            // a real API, nor for another scenario.
            let target = format!("sandbox (built-in, scenario {})", scenario.fingerprint());
            (
                Credentials::RefreshToken(sandbox.credentials()),
                target,
                Some(sandbox),
            )
        }
    };
    let http = http_client(settings.api.timeout);
    let tokens = Arc::new(TokenProvider::new(http.clone(), credentials).with_retry(settings.retry));
    let client = Arc::new(ApiClient::new(http, &settings.api, tokens));
    // A child token: a signal (the caller's token) stops the calls; an abort of this run stops
    // them too but leaves the caller's token alone.
    Ok(Connection {
        calls: Arc::new(Dispatcher::new(
            client,
            EngineSettings::from(&settings),
            stop.child_token(),
        )),
        target,
        _sandbox: sandbox,
    })
}

/// "Done" is keyed by the API target: base URL and partner tenant.
fn target_key(settings: &Settings) -> String {
    format!(
        "{} tenant={}",
        settings.api.base_url,
        settings
            .auth
            .tenant_id
            .as_deref()
            .unwrap_or("(from access token)")
    )
}

/// Credentials from the environment and settings; what is missing is named (exit 2).
pub fn credentials(settings: &Settings, secrets: &EnvSecrets) -> Result<Credentials, Error> {
    if let Some(token) = &secrets.access_token {
        return Ok(Credentials::AccessToken(token.clone()));
    }
    // A configured refresh-token file wins when it holds a token: it carries the latest
    // rotation, which the environment cannot.
    let from_file = match &settings.auth.refresh_token_file {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Credentials(format!(
                    "cannot read auth.refresh_token_file {}: {e}",
                    path.display()
                ))
            })?;
            let text = text.trim();
            (!text.is_empty()).then(|| Secret::new(text))
        }
        _ => None,
    };
    let refresh_token = from_file.or_else(|| secrets.refresh_token.clone());
    let mut missing = Vec::new();
    if refresh_token.is_none() {
        missing.push("LICENSE_BATCH_REFRESH_TOKEN (or auth.refresh_token_file)");
    }
    if secrets.client_secret.is_none() {
        missing.push("LICENSE_BATCH_CLIENT_SECRET");
    }
    if settings.auth.tenant_id.is_none() {
        missing.push("auth.tenant_id (or LICENSE_BATCH_TENANT_ID)");
    }
    if settings.auth.client_id.is_none() {
        missing.push("auth.client_id (or LICENSE_BATCH_CLIENT_ID)");
    }
    match (
        refresh_token,
        &settings.auth.tenant_id,
        &settings.auth.client_id,
    ) {
        (Some(refresh_token), Some(tenant_id), Some(client_id)) if missing.is_empty() => {
            Ok(Credentials::RefreshToken(RefreshGrant {
                authority: settings.auth.authority.clone(),
                tenant_id: tenant_id.clone(),
                endpoint: settings.auth.token_endpoint,
                client_id: client_id.clone(),
                client_secret: secrets.client_secret.clone(),
                refresh_token,
                persist_to: settings.auth.refresh_token_file.clone(),
            }))
        }
        _ => Err(Error::Credentials(format!(
            "set {}; or give a ready token in LICENSE_BATCH_ACCESS_TOKEN; or rehearse with --sandbox \
             (README, section Credentials)",
            missing.join(", ")
        ))),
    }
}
