//! The Partner Center client: builds the exact request of SPEC §4 (URL, headers, body), sends
//! it, and classifies the answer. Transport failures come back as transient verdicts.

pub mod auth;
pub mod classify;
pub mod models;

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use uuid::Uuid;

use crate::config::ApiSettings;
use crate::country::UsageLocation;
use crate::secret::Secret;
use auth::TokenProvider;
use classify::{Classified, Verdict};
use models::LicenseUpdateRequest;

const BOTH_LICENSE_GROUPS: &str = "licenseGroupIds=Group1&licenseGroupIds=Group2";

/// The value of `MS-PartnerCenter-Application`.
pub const APPLICATION: &str = concat!("license-batch/", env!("CARGO_PKG_VERSION"));

/// One HTTP exchange as the engine and the report see it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// `None` when no response arrived (timeout, reset, refused connection).
    pub http_status: Option<u16>,
    pub correlation_id: Uuid,
    pub classified: Classified,
}

pub struct ApiClient {
    http: reqwest::Client,
    base_url: Url,
    locale: String,
    kick_instant_on: bool,
    pub tokens: Arc<TokenProvider>,
}

/// The HTTP client every call shares: rustls, bounded timeouts, our user agent.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(APPLICATION)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .expect("the TLS backend initialises")
}

impl ApiClient {
    pub fn new(http: reqwest::Client, settings: &ApiSettings, tokens: Arc<TokenProvider>) -> Self {
        ApiClient {
            http,
            base_url: settings.base_url.clone(),
            locale: settings.locale.clone(),
            kick_instant_on: settings.kick_instant_on,
            tokens,
        }
    }

    /// `{base}/v1/customers/{customer}/users/{user}/licenseupdates`, with the user as one
    /// percent-encoded path segment, so no user ID can reach another endpoint.
    pub fn license_update_url(&self, customer: Uuid, user: &str) -> Url {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .expect("base URL is http(s)")
            .pop_if_empty()
            .extend([
                "v1",
                "customers",
                &customer.to_string(),
                "users",
                user,
                "licenseupdates",
            ]);
        if self.kick_instant_on {
            url.set_query(Some("isKickInstantOn=true"));
        }
        url
    }

    fn customer_url(&self, customer: Uuid, rest: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .expect("base URL is http(s)")
            .pop_if_empty()
            .extend(["v1", "customers", &customer.to_string()])
            .extend(rest);
        url
    }

    /// Subscribed SKUs of both license groups (the repeated parameter is the documented form;
    /// without it the API returns group1 only).
    pub fn subscribed_skus_url(&self, customer: Uuid) -> Url {
        let mut url = self.customer_url(customer, &["subscribedskus"]);
        url.set_query(Some(BOTH_LICENSE_GROUPS));
        url
    }

    /// The licenses a user holds, in both license groups.
    pub fn user_licenses_url(&self, customer: Uuid, user: &str) -> Url {
        let mut url = self.customer_url(customer, &["users", user, "licenses"]);
        url.set_query(Some(BOTH_LICENSE_GROUPS));
        url
    }

    /// Licenses deployed vs sold per product (deployment insights).
    pub fn deployment_insights_url(&self, customer: Uuid) -> Url {
        self.customer_url(customer, &["analytics", "licenses", "deployment"])
    }

    /// Sends `request` with the headers every Partner Center call carries (SPEC §4) and reads
    /// the answer: status, `Retry-After` and body, or the status (if any) and the error.
    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        request_id: Uuid,
        correlation_id: Uuid,
        token: &Secret,
    ) -> Result<(u16, Option<String>, Vec<u8>), (Option<u16>, reqwest::Error)> {
        let response = request
            .bearer_auth(token.expose())
            .header("Accept", "application/json")
            .header("MS-RequestId", request_id.to_string())
            .header("MS-CorrelationId", correlation_id.to_string())
            .header("MS-PartnerCenter-Application", APPLICATION)
            .header("X-Locale", &self.locale)
            .send()
            .await
            .map_err(|error| (None, error))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = response
            .bytes()
            .await
            .map_err(|error| (Some(status), error))?;
        Ok((status, retry_after, body.to_vec()))
    }

    /// One GET (a read; its request ID is new every time); the JSON body comes back on success.
    pub async fn get_json(
        &self,
        url: Url,
        token: &Secret,
    ) -> (Exchange, Option<serde_json::Value>) {
        let correlation_id = Uuid::new_v4();
        match self
            .call(self.http.get(url), Uuid::new_v4(), correlation_id, token)
            .await
        {
            Ok((status, retry_after, body)) => {
                let exchange = Exchange {
                    http_status: Some(status),
                    correlation_id,
                    classified: classify::classify(status, retry_after.as_deref(), &body),
                };
                (exchange, serde_json::from_slice(&body).ok())
            }
            Err((_, error)) => (transport_failure(correlation_id, &error), None),
        }
    }

    /// "Update user accounts for a customer" with only the usage location (SPEC §5), under the
    /// given request ID: `PATCH …/v1/customers/{customer}/users/{user}`.
    pub async fn set_usage_location(
        &self,
        customer: Uuid,
        user: &str,
        location: &UsageLocation,
        request_id: Uuid,
        token: &Secret,
    ) -> Exchange {
        let request = self
            .http
            .patch(self.customer_url(customer, &["users", user]))
            .json(&models::UsageLocationUpdate::new(location));
        self.write(request, request_id, token).await
    }

    /// Sends one LicenseUpdate with the given request ID and a fresh correlation ID.
    pub async fn send_license_update(
        &self,
        customer: Uuid,
        user: &str,
        body: &LicenseUpdateRequest,
        request_id: Uuid,
        token: &Secret,
    ) -> Exchange {
        let request = self
            .http
            .post(self.license_update_url(customer, user))
            .json(body);
        self.write(request, request_id, token).await
    }

    /// One write under `request_id` and a fresh correlation ID, its answer classified.
    async fn write(
        &self,
        request: reqwest::RequestBuilder,
        request_id: Uuid,
        token: &Secret,
    ) -> Exchange {
        let correlation_id = Uuid::new_v4();
        match self.call(request, request_id, correlation_id, token).await {
            Ok((status, retry_after, answer)) => Exchange {
                http_status: Some(status),
                correlation_id,
                classified: classify::classify(status, retry_after.as_deref(), &answer),
            },
            // The status arrived but the body did not: for a success the change is applied;
            // otherwise treat it like a lost answer and retry with the same request ID.
            Err((Some(status @ (200 | 201)), _)) => Exchange {
                http_status: Some(status),
                correlation_id,
                classified: classify::classify(status, None, b""),
            },
            Err((_, error)) => transport_failure(correlation_id, &error),
        }
    }
}

fn transport_failure(correlation_id: Uuid, error: &reqwest::Error) -> Exchange {
    let what = if error.is_timeout() {
        "no answer before the timeout"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "connection failed"
    };
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    Exchange {
        http_status: None,
        correlation_id,
        classified: Classified {
            verdict: Verdict::Transient,
            error_code: None,
            message: format!("{what}: {cause}"),
        },
    }
}
