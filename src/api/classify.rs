//! What a Partner Center answer means for the engine: SPEC §5 as one pure function.

use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::models::{self, ErrorBody};

/// The engine's reading of one response.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// 201/200: the change is applied; warnings as `code: message`.
    Succeeded { warnings: Vec<String> },
    /// 429: wait at least this long, slow the whole pool, retry with the same request ID.
    /// `None`: neither a `Retry-After` nor the body said how long (the engine backs off).
    Throttled { retry_after: Option<Duration> },
    /// 408/5xx/timeout/reset: back off and retry with the same request ID.
    Transient,
    /// 401: refresh the token once and retry.
    Unauthorized,
    /// 900316: the credential is the wrong kind; every call would fail, so abort the run.
    WrongCredential,
    /// 403: this customer refuses us; fail its rows and send it nothing more.
    CustomerForbidden,
    /// 404 60003: the customer does not exist for this partner.
    CustomerNotFound,
    /// 404 60002: the user does not exist.
    UserNotFound,
    /// 400 60012: out of seats, for the SKU named in `data` when it is named.
    SeatsExhausted { sku: Option<Uuid> },
    /// 400 whose description says the user has an invalid usage location (the code is not
    /// documented, so the description decides): give the user one, then send again.
    UsageLocationMissing,
    /// Any other 4xx: the group's rows fail.
    Rejected,
}

/// How Partner Center words a refusal for a missing usage location ("License assignment
/// cannot be done for user with invalid usage location."), matched without case.
const INVALID_USAGE_LOCATION: &str = "invalid usage location";

/// A classified response: the verdict plus what the report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub verdict: Verdict,
    pub error_code: Option<String>,
    pub message: String,
}

const GDAP_HINT: &str = "the partner needs one of the GDAP roles License Administrator, \
                         User Administrator or Directory Writers for this customer";

/// Classifies an HTTP response by status, `Retry-After` header and body.
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> Classified {
    if matches!(status, 200 | 201) {
        let value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        return Classified {
            verdict: Verdict::Succeeded {
                warnings: models::license_warnings(&value),
            },
            error_code: None,
            message: String::new(),
        };
    }
    let error = ErrorBody::parse(body);
    let code = error.code.clone();
    let description = error.description.clone().unwrap_or_default();
    let detail = |label: &str| -> String {
        let code_part = code
            .as_deref()
            .map(|c| format!(", code {c}"))
            .unwrap_or_default();
        if description.is_empty() {
            format!("{label} (HTTP {status}{code_part})")
        } else {
            format!("{label} (HTTP {status}{code_part}): {description}")
        }
    };
    let (verdict, message) = match (status, code.as_deref()) {
        (429, _) => {
            let wait = retry_after_delay(retry_after, &description);
            let told = match wait {
                Some(wait) => format!("throttled, retry after {}s", wait.as_secs_f64().ceil()),
                None => "throttled, no wait given".to_string(),
            };
            (Verdict::Throttled { retry_after: wait }, detail(&told))
        }
        // Renewing cannot help: a renewed token carries the claims of the same sign-in.
        (401, Some("900421")) => (
            Verdict::WrongCredential,
            detail(
                "multi-factor authentication required: since 2026 Partner Center refuses App+User \
                 tokens without an MFA claim, and a renewed token has the same claims; consent \
                 again signing in with MFA (README, section Credentials) and store the new refresh \
                 token",
            ),
        ),
        (401, _) => (Verdict::Unauthorized, detail("access token rejected")),
        (_, Some("900316")) => (
            Verdict::WrongCredential,
            detail(
                "the credential is not an App+User token, which license calls require (secure application model)",
            ),
        ),
        (403, Some("900309")) => (
            Verdict::CustomerForbidden,
            detail(
                "blocked by the customer's Conditional Access policies; nothing more is sent to this customer",
            ),
        ),
        (403, _) => (
            Verdict::CustomerForbidden,
            detail(&format!(
                "forbidden: {GDAP_HINT}; nothing more is sent to this customer"
            )),
        ),
        (404, Some("60003")) => (Verdict::CustomerNotFound, detail("tenant not found")),
        (404, Some("60002")) => (Verdict::UserNotFound, detail("user not found")),
        (400, Some("60012")) => (
            Verdict::SeatsExhausted {
                sku: error.data.iter().find_map(|d| sku_in_quota_message(d)),
            },
            detail("out of licenses; buy more seats and run again"),
        ),
        (400, _) if description.to_lowercase().contains(INVALID_USAGE_LOCATION) => (
            Verdict::UsageLocationMissing,
            detail("the user has no usage location"),
        ),
        (408 | 500 | 502 | 503 | 504, _) => (Verdict::Transient, detail("temporary server error")),
        (500..=599, _) if !matches!(status, 501 | 505) => {
            (Verdict::Transient, detail("temporary server error"))
        }
        _ => (Verdict::Rejected, detail("rejected")),
    };
    Classified {
        verdict,
        error_code: code,
        message,
    }
}

/// Reads `Retry-After` (seconds or an HTTP date); falls back to the body's
/// "Try again in N seconds"; `None` when neither says.
pub fn retry_after_delay(header: Option<&str>, message: &str) -> Option<Duration> {
    if let Some(h) = header.map(str::trim) {
        if let Ok(secs) = h.parse::<f64>()
            && secs.is_finite()
            && secs >= 0.0
        {
            return Some(Duration::from_secs_f64(secs.min(3600.0)));
        }
        if let Ok(when) = httpdate::parse_http_date(h) {
            return Some(
                when.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .min(Duration::from_secs(3600)),
            );
        }
    }
    message
        .split("Try again in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| Duration::from_secs_f64(n.min(3600.0)))
}

/// Finds the SKU in "Subscription with Account … and SKU <guid> does not have …".
fn sku_in_quota_message(data: &str) -> Option<Uuid> {
    let after = data.split("SKU ").nth(1)?;
    // `get`, not indexing: `None` (no GUID) when byte 36 is past the end or inside a character.
    Uuid::try_parse(after.get(..36)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(status: u16, body: &str) -> Verdict {
        classify(status, None, body.as_bytes()).verdict
    }

    #[test]
    fn success_carries_warnings() {
        let c = classify(
            201,
            None,
            br#"{"licensesToAssign":[],"licenseWarnings":[{"code":"W1","message":"m"}]}"#,
        );
        assert_eq!(
            c.verdict,
            Verdict::Succeeded {
                warnings: vec!["W1: m".into()]
            }
        );
        assert_eq!(verdict(200, ""), Verdict::Succeeded { warnings: vec![] });
    }

    #[test]
    fn throttling_honours_retry_after_then_the_body() {
        let body =
            br#"{"statusCode":429,"message":"Rate limit is exceeded. Try again in 7 seconds."}"#;
        let c = classify(429, Some("3"), body);
        assert_eq!(
            c.verdict,
            Verdict::Throttled {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(c.message.contains("Rate limit is exceeded"));
        let c = classify(429, None, body);
        assert_eq!(
            c.verdict,
            Verdict::Throttled {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        let in_two = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
        let Verdict::Throttled {
            retry_after: Some(retry_after),
        } = classify(429, Some(&in_two), b"").verdict
        else {
            panic!()
        };
        assert!(retry_after <= Duration::from_secs(3) && retry_after >= Duration::from_secs(1));
        // A fraction of a second, as a gateway may say it.
        assert_eq!(
            classify(429, Some("0.25"), b"").verdict,
            Verdict::Throttled {
                retry_after: Some(Duration::from_millis(250))
            }
        );
    }

    #[test]
    fn a_429_that_says_no_wait_leaves_the_wait_to_the_engine() {
        let body = br#"{"statusCode":429,"message":"Rate limit is exceeded."}"#;
        let c = classify(429, None, body);
        assert_eq!(c.verdict, Verdict::Throttled { retry_after: None });
        assert!(c.message.contains("no wait given"), "{}", c.message);
        assert_eq!(
            classify(429, None, b"").verdict,
            Verdict::Throttled { retry_after: None }
        );
    }

    #[test]
    fn transient_statuses() {
        for status in [408, 500, 502, 503, 504] {
            assert_eq!(verdict(status, ""), Verdict::Transient, "{status}");
        }
        // Any other 5xx is the server's trouble too, but for the two that say the request
        // itself cannot be served (not implemented, HTTP version).
        for status in [507, 520, 599] {
            assert_eq!(verdict(status, ""), Verdict::Transient, "{status}");
        }
        assert_eq!(verdict(501, ""), Verdict::Rejected);
        assert_eq!(verdict(505, ""), Verdict::Rejected);
    }

    #[test]
    fn a_body_wait_that_is_not_a_number_of_seconds_is_no_wait() {
        for n in ["-5", "inf", "NaN", "soon"] {
            let message = format!("Rate limit is exceeded. Try again in {n} seconds.");
            assert_eq!(retry_after_delay(None, &message), None, "{n}");
        }
        let message = "Rate limit is exceeded. Try again in 2.5 seconds.";
        assert_eq!(
            retry_after_delay(None, message),
            Some(Duration::from_millis(2500))
        );
    }

    #[test]
    fn auth_and_credential_errors() {
        assert_eq!(verdict(401, ""), Verdict::Unauthorized);
        let c = classify(400, None, br#"{"code":900316,"description":"Partner token is not allowed in license management calls.","source":"PartnerFD"}"#);
        assert_eq!(c.verdict, Verdict::WrongCredential);
        assert_eq!(c.error_code.as_deref(), Some("900316"));
        // MFA not in the token: no renewal (it would have the same claims), the fix named.
        let c = classify(
            401,
            None,
            br#"{"code":900421,"description":"MFA required"}"#,
        );
        assert_eq!(c.verdict, Verdict::WrongCredential);
        assert_eq!(c.error_code.as_deref(), Some("900421"));
        assert!(
            c.message.contains("multi-factor") && c.message.contains("consent again"),
            "{}",
            c.message
        );
        assert_eq!(verdict(401, r#"{"code":900420}"#), Verdict::Unauthorized);
    }

    #[test]
    fn customer_level_refusals() {
        let c = classify(403, None, br#"{"code":900309,"description":"Access has been blocked by Conditional Access policies."}"#);
        assert_eq!(c.verdict, Verdict::CustomerForbidden);
        // The advice is the tool's own (the description may say anything, or nothing), and it
        // is not the GDAP advice of other 403s: the fix is the customer's policy, not a role.
        let c = classify(403, None, br#"{"code":900309,"description":"Forbidden"}"#);
        assert!(c.message.contains("Conditional Access"), "{}", c.message);
        assert!(
            !c.message.contains("License Administrator"),
            "{}",
            c.message
        );
        let c = classify(403, None, br#"{"code":3,"description":"Forbidden"}"#);
        assert_eq!(c.verdict, Verdict::CustomerForbidden);
        assert!(c.message.contains("License Administrator"), "{}", c.message);
        assert_eq!(
            verdict(404, r#"{"code":60003,"description":"Tenant not found"}"#),
            Verdict::CustomerNotFound
        );
        assert_eq!(
            verdict(
                404,
                r#"{"code":"60002","description":"User object Id is not found"}"#
            ),
            Verdict::UserNotFound
        );
    }

    #[test]
    fn quota_exceeded_names_the_sku_from_data() {
        let body = br#"{"code":60012,"description":"out","data":["LicenseQuotaExceededException : Subscription with Account 0c39d6d5-c70d-4c55-bc02-f620844f3fd1 and SKU f8a1db68-be16-40ed-86d5-cb42ce701560 does not have any available licenses left."],"source":"PartnerFD"}"#;
        assert_eq!(
            verdict(400, std::str::from_utf8(body).unwrap()),
            Verdict::SeatsExhausted {
                sku: Some("f8a1db68-be16-40ed-86d5-cb42ce701560".parse().unwrap())
            }
        );
        assert_eq!(
            verdict(400, r#"{"code":60012}"#),
            Verdict::SeatsExhausted { sku: None }
        );
    }

    /// Recognised by the description, whatever the code (it is not documented), or none.
    #[test]
    fn a_missing_usage_location_is_known_by_its_description() {
        let description = "License assignment cannot be done for user with invalid usage location.";
        for body in [
            format!(r#"{{"code":600041,"description":"{description}","source":"PartnerFD"}}"#),
            format!(r#"{{"description":"{}"}}"#, description.to_uppercase()),
        ] {
            let c = classify(400, None, body.as_bytes());
            assert_eq!(c.verdict, Verdict::UsageLocationMissing, "{body}");
            assert!(c.message.contains(description) || c.message.contains("LICENSE ASSIGNMENT"));
        }
        // Another 400, or the same words with another status, is not it.
        assert_eq!(
            verdict(400, r#"{"description":"invalid usage"}"#),
            Verdict::Rejected
        );
        assert_eq!(
            verdict(403, &format!(r#"{{"description":"{description}"}}"#)),
            Verdict::CustomerForbidden
        );
    }

    #[test]
    fn other_client_errors_are_permanent_with_code_and_description() {
        let c = classify(400, None, br#"{"code":"60011","description":"bad sku"}"#);
        assert_eq!(c.verdict, Verdict::Rejected);
        assert_eq!(c.message, "rejected (HTTP 400, code 60011): bad sku");
        assert_eq!(verdict(409, ""), Verdict::Rejected);
    }
}
