//! `license-batch check` (SPEC §12): proves before the night that the credentials work and that
//! every customer of a sheet is reachable, writing nothing — the access token obtained and
//! described from its claims (read without verifying it, never printed), then each customer's
//! subscribed SKUs read like every read of a run, with what to do about a refusal.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use uuid::Uuid;

use crate::engine::{Dispatcher, ReadFailure, ReadFailureKind};
use crate::error::{Error, exit_code};

/// What the access token says of itself (its JWT claims); `None` where it says nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenFacts {
    /// Where it came from: a ready token, or the refresh-token grant and its endpoint.
    pub source: String,
    pub expires_at: Option<SystemTime>,
    pub audience: Option<String>,
    pub scopes: Option<String>,
    /// Whether `amr` lists `mfa`; `None` when the token has no `amr` (or is not a JWT).
    pub mfa: Option<bool>,
    /// The token is not a JWT: nothing could be read from it.
    pub opaque: bool,
}

impl TokenFacts {
    /// Reads the claims of `token` (the middle part of a JWT, base64url) without verifying
    /// its signature: only to describe it.
    pub fn read(source: String, token: &str) -> TokenFacts {
        let claims = token
            .split('.')
            .nth(1)
            .filter(|_| token.split('.').count() == 3)
            .and_then(|part| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(part.trim_end_matches('='))
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .filter(serde_json::Value::is_object);
        let Some(claims) = claims else {
            return TokenFacts {
                source,
                opaque: true,
                ..TokenFacts::default()
            };
        };
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(String::from);
        TokenFacts {
            source,
            expires_at: claims
                .get("exp")
                .and_then(serde_json::Value::as_u64)
                .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            // `aud` may be a list; `scp` is a space-separated string.
            audience: text("aud").or_else(|| {
                claims.get("aud").and_then(|v| v.as_array()).map(|all| {
                    all.iter()
                        .filter_map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            }),
            scopes: text("scp"),
            mfa: claims
                .get("amr")
                .and_then(|v| v.as_array())
                .map(|methods| methods.iter().any(|m| m.as_str() == Some("mfa"))),
            opaque: false,
        }
    }
}

/// What the read of a customer's subscribed SKUs showed.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    /// Answered: the customer can be licensed tonight.
    Reachable { subscribed_skus: usize },
    /// Refused or unreadable: the failure, what it means, and what to do.
    Refused {
        failure: ReadFailure,
        meaning: String,
        advice: String,
    },
}

/// The result of `check`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub token: TokenFacts,
    pub customers: Vec<(Uuid, Access)>,
}

impl CheckReport {
    /// Credentials refused on a customer's read: every call of a run would fail.
    pub fn credentials_unusable(&self) -> bool {
        self.customers.iter().any(|(_, access)| {
            matches!(access, Access::Refused { failure, .. } if failure.kind == ReadFailureKind::Credential)
        })
    }

    /// SPEC §12: 2 when the credentials are unusable, 1 when a customer is not reachable or
    /// the token shows no MFA, else 0.
    pub fn exit_code(&self) -> u8 {
        let unreachable = self
            .customers
            .iter()
            .any(|(_, access)| matches!(access, Access::Refused { .. }));
        if self.credentials_unusable() {
            exit_code::NOTHING_SENT
        } else if unreachable || self.token.mfa == Some(false) {
            exit_code::SOME_NOT_SUCCEEDED
        } else {
            exit_code::ALL_SUCCEEDED
        }
    }
}

/// What a refused read means and what to do about it, by its code.
fn meaning_and_advice(failure: &ReadFailure) -> (String, &'static str) {
    let (meaning, advice) = match (failure.http_status, failure.error_code.as_deref()) {
        (_, Some("900309")) => (
            "blocked by the customer's Conditional Access policies",
            "ask the customer's admin to exclude the app (or your sign-in location) from the policy",
        ),
        (_, Some("60003")) => (
            "tenant not found",
            "no such customer for this partner: check the customer ID",
        ),
        (_, Some("900421")) => (
            "multi-factor authentication required: the token carries no MFA claim",
            "consent again signing in with MFA and store the new refresh token (README, section Credentials)",
        ),
        (_, Some("900316")) => (
            "an app-only (partner) token, which license calls refuse",
            "use the App+User refresh token (README, section Credentials)",
        ),
        (Some(401), _) => (
            "the access token is refused",
            "check the app's Partner Center permission and the consent (README, section Credentials)",
        ),
        (Some(403), _) => (
            "forbidden: no role that permits license management for this customer",
            "grant your GDAP relationship with this customer the License Administrator or User Administrator role",
        ),
        _ => (
            "",
            "run check again later; a run now would leave these rows failed",
        ),
    };
    let meaning = if meaning.is_empty() {
        failure.message.clone()
    } else {
        meaning.to_string()
    };
    (meaning, advice)
}

/// Obtains a token and describes it, then reads the subscribed SKUs of `customers`.
/// `Err` when no token can be had at all.
pub async fn check(
    calls: &Arc<Dispatcher>,
    customers: BTreeSet<Uuid>,
) -> Result<CheckReport, Error> {
    let tokens = &calls.client.tokens;
    let token = tokens
        .token()
        .await
        .map_err(|error| Error::Auth(error.to_string()))?;
    let facts = TokenFacts::read(tokens.source(), token.expose());
    let reads = customers
        .into_iter()
        .map(|customer| (customer, calls.client.subscribed_skus_url(customer)))
        .collect();
    let customers = calls
        .read_all(reads)
        .await
        .into_iter()
        .map(|(customer, result)| {
            let access = match result {
                Ok(body) => Access::Reachable {
                    subscribed_skus: body
                        .get("items")
                        .and_then(|items| items.as_array())
                        .map_or(0, Vec::len),
                },
                Err(failure) => {
                    let (meaning, advice) = meaning_and_advice(&failure);
                    Access::Refused {
                        failure,
                        meaning,
                        advice: advice.to_string(),
                    }
                }
            };
            (customer, access)
        })
        .collect();
    Ok(CheckReport {
        token: facts,
        customers,
    })
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = &self.token;
        writeln!(f, "token: obtained from {}", token.source)?;
        if token.opaque {
            writeln!(
                f,
                "  not a JWT: its expiry, audience, scopes and MFA cannot be read"
            )?;
        } else {
            let or_unknown = |value: &Option<String>| {
                value.clone().unwrap_or_else(|| "(not in the token)".into())
            };
            let expiry = token
                .expires_at
                .map_or("(not in the token)".to_string(), |at| {
                    humantime::format_rfc3339_seconds(at).to_string()
                });
            writeln!(f, "  expires:  {expiry}")?;
            writeln!(f, "  audience: {}", or_unknown(&token.audience))?;
            writeln!(f, "  scopes:   {}", or_unknown(&token.scopes))?;
            writeln!(
                f,
                "  MFA:      {}",
                match token.mfa {
                    Some(true) => "yes (amr lists mfa)",
                    Some(false) =>
                        "NO: amr does not list mfa; since 2026 Partner Center refuses such App+User \
                         calls (401 code 900421): consent again signing in with MFA",
                    None => "(no amr claim)",
                }
            )?;
        }
        if self.customers.is_empty() {
            return writeln!(f, "customers: none given (an input sheet or --customer ID)");
        }
        let reachable = self
            .customers
            .iter()
            .filter(|(_, a)| matches!(a, Access::Reachable { .. }))
            .count();
        writeln!(
            f,
            "customers: {reachable} of {} reachable",
            self.customers.len()
        )?;
        for (customer, access) in &self.customers {
            match access {
                Access::Reachable { subscribed_skus } => writeln!(
                    f,
                    "  {customer}  reachable ({subscribed_skus} subscribed SKU{})",
                    if *subscribed_skus == 1 { "" } else { "s" }
                )?,
                Access::Refused {
                    failure,
                    meaning,
                    advice,
                } => {
                    let status = failure
                        .http_status
                        .map_or("no answer".to_string(), |s| format!("HTTP {s}"));
                    let code = failure
                        .error_code
                        .as_deref()
                        .map(|c| format!(", code {c}"))
                        .unwrap_or_default();
                    writeln!(
                        f,
                        "  {customer}  REFUSED ({status}{code}): {meaning}. What to do: {advice}"
                    )?
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let part = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.signature",
            part(&serde_json::json!({"alg": "RS256"})),
            part(&claims)
        )
    }

    #[test]
    fn a_token_is_described_from_its_claims_and_an_opaque_one_says_so() {
        let facts = TokenFacts::read(
            "here".into(),
            &jwt(
                serde_json::json!({"aud": "https://api.partnercenter.microsoft.com",
                "scp": "user_impersonation", "amr": ["pwd", "mfa"], "exp": 1_800_000_000u64,
                "name": "Łukasz Émilie 日本語"}),
            ),
        );
        assert_eq!(facts.mfa, Some(true));
        assert_eq!(facts.scopes.as_deref(), Some("user_impersonation"));
        assert_eq!(
            facts.audience.as_deref(),
            Some("https://api.partnercenter.microsoft.com")
        );
        assert_eq!(
            facts.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        );
        let no_mfa = TokenFacts::read(
            "".into(),
            &jwt(serde_json::json!({"amr": ["pwd"], "aud": ["a", "b"]})),
        );
        assert_eq!(
            (no_mfa.mfa, no_mfa.audience.as_deref()),
            (Some(false), Some("a b"))
        );
        let no_amr = TokenFacts::read("".into(), &jwt(serde_json::json!({"aud": "x"})));
        assert_eq!((no_amr.mfa, no_amr.opaque), (None, false));
        for opaque in ["sandbox-access-1", "a.b", "a.!!!.c", "e30.e30", "x.WzFd.y"] {
            assert!(TokenFacts::read("".into(), opaque).opaque, "{opaque}");
        }
    }
}
