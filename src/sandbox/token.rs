//! The token endpoints (v1 and v2) and the check of a call's access token.

use super::*;

/// Counts the token call, applies the scenario's token delay, then answers.
pub(super) async fn token(
    state: Shared,
    form: HashMap<String, String>,
    endpoint: TokenEndpoint,
) -> Response {
    let (delay, failure) = {
        let s = state.lock().expect("sandbox lock");
        s.progress.send_modify(|p| p.token_requests += 1);
        let call = s.progress.borrow().token_requests;
        let auth = &s.scenario.auth;
        let failure = (call <= auth.fail_first_tokens).then(|| auth.token_failure.unwrap_or(502));
        let delay = auth
            .token_delay_ms
            .filter(|_| auth.token_delay_calls.is_none_or(|first| call <= first));
        (delay, failure)
    };
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    match failure {
        Some(status) => token_blip(status),
        None => issue_token(State(state), Form(form), endpoint),
    }
}

/// A token call that fails the way an outage does: a gateway's HTML 5xx page, a 429 with a
/// Retry-After, or (status 0) a connection dropped without an answer.
fn token_blip(status: u16) -> Response {
    match StatusCode::from_u16(status) {
        Ok(StatusCode::TOO_MANY_REQUESTS) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(json!({"error": "temporarily_unavailable",
                "error_description": "AADSTS90055: The request was throttled."})),
        )
            .into_response(),
        Ok(status) if status.as_u16() >= 100 => (
            status,
            [("content-type", "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response(),
        // No status: the connection is dropped without a byte of answer, as the license
        // updates' reset does (`resume_unwind` ends the connection's task quietly).
        _ => std::panic::resume_unwind(Box::new("sandbox: simulated token connection reset")),
    }
}

pub(super) async fn token_v1(
    State(state): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    token(state, form, TokenEndpoint::V1).await
}

pub(super) async fn token_v2(
    State(state): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    token(state, form, TokenEndpoint::V2).await
}

pub(super) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

pub(super) fn issue_token(
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
    // Shaped like Azure AD's: a JWT whose claims `check` reads (unsigned: its signature part
    // is the sandbox's own marker, which the no-secret tests look for).
    let claims = json!({
        "aud": "https://api.partnercenter.microsoft.com",
        "scp": "user_impersonation",
        "amr": if state.scenario.auth.mfa_required { json!(["pwd"]) } else { json!(["pwd", "mfa"]) },
        "exp": SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + lifetime,
        "iss": "license-batch sandbox",
    });
    let access = format!(
        "{}.{}.sandbox-access-{}-{}",
        jwt_part(&json!({"alg": "none", "typ": "JWT"})),
        jwt_part(&claims),
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

/// One base64url part of a JWT.
fn jwt_part(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

pub(super) fn unauthorized() -> Answer {
    Answer::passing(
        401,
        json!({"code": 401, "description": "Unauthorized: the access token is missing, expired or revoked."}),
    )
    .with_header("www-authenticate", "Bearer".into())
}

/// The bearer token must be one the sandbox issued and still valid; license calls also fail
/// with 900316 while the scenario plays a partner-only token.
pub(super) fn check_token(
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
    if state.scenario.auth.mfa_required {
        // The code is the one partners report; the API's wording is not documented.
        return Err(Answer::passing(
            401,
            error_body(
                900421,
                "Multi-factor authentication is required: the access token carries no MFA claim (sandbox wording).",
                None,
            ),
        ));
    }
    if license_call && state.scenario.auth.partner_token {
        return Err(Answer::passing(
            400,
            error_body(
                900316,
                "Partner token is not allowed in license management calls. Please call with Partner Access Token. To learn more, see https://learn.microsoft.com/partner-center/developer/enable-secure-app-model#get-access-token",
                None,
            ),
        ));
    }
    Ok(())
}
