//! An answer of the simulated API before it is delivered (status, headers, body, and whether a
//! retry under the same request ID is answered from the idempotency store), and the error
//! bodies of the reference pages.

use super::*;

/// An answer of the simulated API, before delivery.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: Value,
    /// Stored under its request ID and replayed to a retry (the API resets a request ID after
    /// a definitive answer); 429s, 5xx and 401s are answered afresh.
    pub(super) definitive: bool,
}

impl Answer {
    /// A definitive answer: a retry under the same request ID gets it again.
    pub(super) fn definitive(status: u16, body: Value) -> Self {
        Answer {
            status,
            headers: Vec::new(),
            body,
            definitive: true,
        }
    }

    /// An answer a retry under the same request ID does not get again (it is sent afresh).
    pub(super) fn passing(status: u16, body: Value) -> Self {
        Answer {
            definitive: false,
            ..Answer::definitive(status, body)
        }
    }

    pub(super) fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A 429 as the API words it, with `Retry-After: wait`.
    pub(super) fn throttled(wait: u64) -> Self {
        Answer::passing(
            429,
            json!({"statusCode": 429, "message": format!("Rate limit is exceeded. Try again in {wait} seconds.")}),
        )
        .with_header("retry-after", wait.to_string())
    }

    /// A transient failure (5xx) of the sandbox's fault model: nothing applied.
    pub(super) fn transient(status: u16) -> Self {
        Answer::passing(
            status,
            json!({"code": status, "description": "The service is temporarily unavailable (sandbox fault)."}),
        )
    }

    /// The `Retry-After` it carries, in seconds (a fraction with the `exact` style).
    pub(super) fn retry_after(&self) -> Option<f64> {
        self.headers
            .iter()
            .find(|(name, _)| *name == "retry-after")
            .and_then(|(_, value)| value.parse().ok())
    }
}

/// The error body of the reference pages: code, description, source, and `data` when given.
pub(super) fn error_body(code: u64, description: &str, data: Option<Vec<String>>) -> Value {
    let mut body = json!({"code": code, "description": description, "source": "PartnerFD"});
    if let Some(data) = data {
        body["data"] = json!(data);
    }
    body
}
