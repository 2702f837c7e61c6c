//! The exact request on the wire, checked against the documentation's example
//! (../shared/reference/assign-licenses-to-a-user.md) with a scripted server.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use license_batch::RunOptions;
use license_batch::config::{FileConfig, Overrides, Settings};
use license_batch::secret::Secret;
use serde_json::json;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DOC_CUSTOMER: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";
const DOC_USER: &str = "554526aa-cf5e-46fa-95df-98dbc55d8a1e";
const DOC_SKU: &str = "f8a1db68-be16-40ed-86d5-cb42ce701560";

fn settings(server: &MockServer, file: &str) -> Settings {
    let env = |name: &str| (name == "LICENSE_BATCH_API_BASE_URL").then(|| server.uri());
    let file: FileConfig = toml::from_str(file).unwrap();
    Settings::resolve(file, &env, &Overrides::default()).unwrap()
}

async fn run_one_row(server: &MockServer, user: &str, file_config: &str) -> Vec<wiremock::Request> {
    let dir = tempfile::tempdir().unwrap();
    let input = common::write_csv(
        dir.path(),
        "doc.csv",
        "customer_id,user_id,sku",
        &[format!("{DOC_CUSTOMER},{user},{DOC_SKU}")],
    );
    let mut settings = settings(server, file_config);
    settings.run.state_file = dir.path().join("state.sqlite");
    let mut opts = RunOptions::new(&input, settings);
    opts.secrets.access_token = Some(Secret::new("doc-access-token"));
    let summary = license_batch::run(opts).await.unwrap();
    assert_eq!(
        summary.count(license_batch::outcome::RowStatus::Succeeded),
        1,
        "{summary}"
    );
    posts(server).await
}

/// The documentation's row, and options that send it to `server` with a ready access token.
fn doc_row_options(
    server: &MockServer,
    dir: &std::path::Path,
    file_config: &str,
) -> (std::path::PathBuf, RunOptions) {
    let input = common::write_csv(
        dir,
        "doc.csv",
        "customer_id,user_id,sku",
        &[format!("{DOC_CUSTOMER},{DOC_USER},{DOC_SKU}")],
    );
    let mut settings = settings(server, file_config);
    settings.run.state_file = dir.join("state.sqlite");
    let mut opts = RunOptions::new(&input, settings);
    opts.secrets.access_token = Some(Secret::new("t"));
    (input, opts)
}

/// The license updates the server received (the tenant read before them is a GET).
async fn posts(server: &MockServer) -> Vec<wiremock::Request> {
    let all = server.received_requests().await.unwrap();
    all.into_iter()
        .filter(|r| r.method.as_str() == "POST")
        .collect()
}

/// Every license update answered with the documentation's success.
async fn answer_posts_with_doc_success(server: &MockServer) {
    Mock::given(method("POST"))
        .respond_with(doc_success())
        .mount(server)
        .await;
}

fn doc_success() -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "licensesToAssign": [{"skuId": DOC_SKU}],
        "licenseWarnings": [],
        "attributes": {"objectType": "LicenseUpdate"}
    }))
}

#[tokio::test]
async fn the_request_matches_the_documented_example() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!(
            "/v1/customers/{DOC_CUSTOMER}/users/{DOC_USER}/licenseupdates"
        )))
        .respond_with(doc_success())
        .expect(1)
        .mount(&server)
        .await;
    let requests = run_one_row(&server, DOC_USER, "").await;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.url.query(), None);
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("header {name} missing"))
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(header("authorization"), "Bearer doc-access-token");
    assert_eq!(header("accept"), "application/json");
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("x-locale"), "en-US");
    assert_eq!(
        header("ms-partnercenter-application"),
        format!("license-batch/{}", env!("CARGO_PKG_VERSION"))
    );
    let request_id = Uuid::parse_str(&header("ms-requestid")).unwrap();
    let correlation_id = Uuid::parse_str(&header("ms-correlationid")).unwrap();
    assert_ne!(request_id, correlation_id);

    // The body of the documentation's request example, field for field.
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        json!({
            "LicensesToAssign": [{"ExcludedPlans": null, "SkuId": DOC_SKU}],
            "LicensesToRemove": null,
            "LicenseWarnings": null,
            "Attributes": {"ObjectType": "LicenseUpdate"}
        })
    );
    // And in the documented key order.
    let text = String::from_utf8(request.body.clone()).unwrap();
    let order: Vec<usize> = [
        "LicensesToAssign",
        "LicensesToRemove",
        "LicenseWarnings",
        "Attributes",
    ]
    .iter()
    .map(|k| text.find(k).unwrap())
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
}

/// A remove is the documented LicenseUpdate with `licensesToRemove` (string[], SKU IDs) set and
/// nothing to assign, byte for byte.
#[tokio::test]
async fn a_remove_sends_the_sku_in_licenses_to_remove_byte_for_byte() {
    let server = MockServer::start().await;
    answer_posts_with_doc_success(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let input = common::write_csv(
        dir.path(),
        "doc.csv",
        "customer_id,user_id,sku,action",
        &[format!("{DOC_CUSTOMER},{DOC_USER},{DOC_SKU},remove")],
    );
    let mut settings = settings(&server, "");
    settings.run.state_file = dir.path().join("state.sqlite");
    let mut opts = RunOptions::new(&input, settings);
    opts.secrets.access_token = Some(Secret::new("t"));
    license_batch::run(opts).await.unwrap();
    let requests = posts(&server).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(
        String::from_utf8(requests[0].body.clone()).unwrap(),
        format!(
            "{{\"LicensesToAssign\":null,\"LicensesToRemove\":[\"{DOC_SKU}\"],\"LicenseWarnings\":null,\"Attributes\":{{\"ObjectType\":\"LicenseUpdate\"}}}}"
        )
    );
}

#[tokio::test]
async fn user_principal_names_are_one_encoded_path_segment() {
    let server = MockServer::start().await;
    answer_posts_with_doc_success(&server).await;
    let guest = "Ada_contoso.com#EXT#@fabrikam.onmicrosoft.com";
    let requests = run_one_row(&server, guest, "").await;
    let url = &requests[0].url;
    assert_eq!(
        url.path(),
        format!(
            "/v1/customers/{DOC_CUSTOMER}/users/Ada_contoso.com%23EXT%23@fabrikam.onmicrosoft.com/licenseupdates"
        )
    );
    assert_eq!(url.fragment(), None);
}

#[tokio::test]
async fn kick_instant_on_and_locale_come_from_the_config() {
    let server = MockServer::start().await;
    answer_posts_with_doc_success(&server).await;
    let requests = run_one_row(
        &server,
        DOC_USER,
        "[api]\nkick_instant_on = true\nlocale = \"de-DE\"\n",
    )
    .await;
    assert_eq!(requests[0].url.query(), Some("isKickInstantOn=true"));
    assert_eq!(requests[0].headers.get("x-locale").unwrap(), "de-DE");
}

#[tokio::test]
async fn a_201_with_a_lenient_body_still_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201).set_body_string(
                "{\"LicenseWarnings\":[{\"Code\":12,\"Message\":\"m\"}],\"extra\":1}",
            ),
        )
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (input, opts) = doc_row_options(&server, dir.path(), "");
    license_batch::run(opts).await.unwrap();
    let report = common::read_report(&common::report_path(&input));
    assert_eq!(report[0]["result_status"], "succeeded");
    assert_eq!(report[0]["result_http_status"], "201");
    assert_eq!(report[0]["result_warnings"], "12: m");
    assert_eq!(posts(&server).await.len(), 1, "a success is not sent again");
}

#[tokio::test]
async fn a_timeout_is_retried_with_the_same_request_id() {
    let server = MockServer::start().await;
    // The first answer comes after the client's timeout; the retry is answered at once.
    Mock::given(method("POST"))
        .respond_with(doc_success().set_delay(std::time::Duration::from_secs(3)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(doc_success())
        .with_priority(2)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (input, opts) = doc_row_options(
        &server,
        dir.path(),
        "[api]\ntimeout_secs = 1\n[retry]\nmin_delay_ms = 10\n",
    );
    let summary = license_batch::run(opts).await.unwrap();
    assert_eq!(summary.stats.retries, 1);
    let requests = posts(&server).await;
    assert_eq!(requests.len(), 2);
    let ids: Vec<_> = requests
        .iter()
        .map(|r| r.headers.get("ms-requestid").unwrap().clone())
        .collect();
    assert_eq!(
        ids[0], ids[1],
        "the retry after a timeout reuses the request ID"
    );
    let correlations: Vec<_> = requests
        .iter()
        .map(|r| r.headers.get("ms-correlationid").unwrap().clone())
        .collect();
    assert_ne!(
        correlations[0], correlations[1],
        "a new correlation ID for every call"
    );
    let report = common::read_report(&common::report_path(&input));
    assert_eq!(report[0]["result_status"], "succeeded");
    assert_eq!(report[0]["result_attempts"], "2");
}

#[tokio::test]
async fn the_tenant_read_asks_for_both_license_groups_with_the_repeated_parameter() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/customers/{DOC_CUSTOMER}/subscribedskus")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"totalCount": 1, "items": [{
            "availableUnits": 5, "totalUnits": 5, "consumedUnits": 0,
            "productSku": {"id": DOC_SKU, "name": "Power BI Pro", "skuPartNumber": "POWER_BI_PRO", "licenseGroupId": "group1"},
            "servicePlans": []}]})))
        .expect(1)
        .mount(&server)
        .await;
    answer_posts_with_doc_success(&server).await;
    run_one_row(&server, DOC_USER, "").await;
    let all = server.received_requests().await.unwrap();
    let read = all.iter().find(|r| r.method.as_str() == "GET").unwrap();
    assert_eq!(
        read.url.query(),
        Some("licenseGroupIds=Group1&licenseGroupIds=Group2")
    );
    assert_eq!(
        read.headers.get("authorization").unwrap(),
        "Bearer doc-access-token"
    );
    assert!(read.headers.get("ms-correlationid").is_some());
}

/// Answers with its template and notes when each request arrived: wiremock keeps no arrival
/// times, and "never sooner than told" is a statement about them.
struct Timed {
    template: ResponseTemplate,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl wiremock::Respond for Timed {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        self.arrivals.lock().unwrap().push(Instant::now());
        self.template.clone()
    }
}

#[tokio::test]
async fn a_throttled_read_is_retried_after_retry_after() {
    let server = MockServer::start().await;
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("GET"))
        .respond_with(Timed {
            template: ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .set_body_json(json!({"statusCode": 429, "message": "Rate limit is exceeded. Try again in 1 seconds."})),
            arrivals: Arc::clone(&arrivals),
        })
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(Timed {
            template: ResponseTemplate::new(200)
                .set_body_json(json!({"totalCount": 0, "items": []})),
            arrivals: Arc::clone(&arrivals),
        })
        .with_priority(2)
        .mount(&server)
        .await;
    answer_posts_with_doc_success(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let (input, opts) = doc_row_options(&server, dir.path(), "");
    license_batch::run(opts).await.unwrap();
    let all = server.received_requests().await.unwrap();
    let gets: Vec<_> = all.iter().filter(|r| r.method.as_str() == "GET").collect();
    assert_eq!(gets.len(), 2, "the read was retried");
    // Never sooner than told: the retry arrived at least the Retry-After after the 429.
    let arrivals = arrivals.lock().unwrap().clone();
    let gap = arrivals[1] - arrivals[0];
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    // The tenant said it subscribes nothing: the row is invalid and nothing is written.
    assert!(all.iter().all(|r| r.method.as_str() == "GET"));
    let report = common::read_report(&common::report_path(&input));
    assert_eq!(report[0]["result_status"], "invalid");
    assert!(report[0]["result_message"].contains("not among this customer's subscriptions"));
}

/// A read answered 503 is retried (with backoff, within `retry.max_elapsed_secs`), and the run
/// goes on with its answer; a second 503 after the retries ran out would leave the tenant
/// unread.
#[tokio::test]
async fn a_read_answered_503_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"totalCount": 0, "items": []})),
        )
        .with_priority(2)
        .mount(&server)
        .await;
    answer_posts_with_doc_success(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let (input, opts) = doc_row_options(&server, dir.path(), "[retry]\nmin_delay_ms = 10\n");
    license_batch::run(opts).await.unwrap();
    let all = server.received_requests().await.unwrap();
    let gets = all.iter().filter(|r| r.method.as_str() == "GET").count();
    assert_eq!(gets, 2, "the read was retried once");
    // Its answer was used: the tenant subscribes nothing, so the row is invalid (not failed
    // for an unread tenant).
    let report = common::read_report(&common::report_path(&input));
    assert_eq!(report[0]["result_status"], "invalid", "{report:?}");
}

/// A read told to wait longer than `retry.max_elapsed_secs` gives up at once instead of
/// sleeping past the run's bound for one call.
#[tokio::test]
async fn a_read_told_to_wait_past_max_elapsed_gives_up() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "120")
                .set_body_json(json!({"statusCode": 429, "message": "Rate limit is exceeded. Try again in 120 seconds."})),
        )
        .mount(&server)
        .await;
    answer_posts_with_doc_success(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, opts) = doc_row_options(&server, dir.path(), "[retry]\nmax_elapsed_secs = 60\n");
    let run = tokio::time::timeout(Duration::from_secs(30), license_batch::run(opts)).await;
    assert!(run.is_ok(), "the read waited instead of giving up");
    let all = server.received_requests().await.unwrap();
    let mut paths: Vec<String> = all
        .iter()
        .filter(|r| r.method.as_str() == "GET")
        .map(|r| r.url.path().to_string())
        .collect();
    let reads = paths.len();
    paths.sort();
    paths.dedup();
    assert_eq!(
        paths.len(),
        reads,
        "no read retried after a wait it may not make: {paths:?}"
    );
}

/// `retry.max_elapsed_secs` bounds a call's retries including the time its attempts take: with
/// answers that take 0.6 s and a bound of 1 s, the second attempt (sent at 0.6 s) is the last
/// — a third would start past the bound — although the backoff's own waits (10 ms, 20 ms, …)
/// and `retry.max_attempts` would allow many more.
#[tokio::test]
async fn transient_retries_stop_at_max_elapsed_counting_the_time_attempts_take() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(503)
                .set_delay(Duration::from_millis(600))
                .set_body_json(json!({"code": 503, "description": "Service unavailable"})),
        )
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (input, opts) = doc_row_options(
        &server,
        dir.path(),
        "[retry]\nmin_delay_ms = 10\nmax_elapsed_secs = 1\nmax_attempts = 10\n",
    );
    license_batch::run(opts).await.unwrap();
    let sent = posts(&server).await.len();
    assert!(
        (1..=2).contains(&sent),
        "{sent} attempts within a 1 s bound of 0.6 s answers"
    );
    let report = common::read_report(&common::report_path(&input));
    assert_eq!(report[0]["result_status"], "failed");
    assert_eq!(report[0]["result_attempts"], sent.to_string());
}
