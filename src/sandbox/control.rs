//! Control and ground truth over HTTP: `/sandbox/record` (the dump), `/sandbox/wait`, and the
//! webhook sink `/sandbox/webhook` that end-of-run notifications can be pointed at.

use super::*;

pub(super) fn customer_entry(
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

pub(super) fn dump_state(state: &SandboxState) -> Value {
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
        "patches": state.patches,
        "webhooks": state.webhooks,
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

/// The webhook sink: records what a notification posts (JSON, or the text as it came) and
/// answers 200, as Teams' and Slack's webhooks do.
pub(super) async fn webhook(State(state): State<Shared>, body: String) -> StatusCode {
    let posted = serde_json::from_str(&body).unwrap_or(Value::String(body));
    state.lock().expect("sandbox lock").webhooks.push(posted);
    StatusCode::OK
}

pub(super) async fn dump(State(state): State<Shared>) -> Json<Value> {
    Json(dump_state(&state.lock().expect("sandbox lock")))
}

#[derive(serde::Deserialize)]
pub(super) struct WaitQuery {
    #[serde(default)]
    requests: u64,
    #[serde(default)]
    tokens: u64,
    #[serde(default)]
    patches: u64,
    #[serde(default = "default_wait_secs")]
    timeout_secs: u64,
}

pub(super) fn default_wait_secs() -> u64 {
    60
}

/// `GET /sandbox/wait?requests=N&tokens=M&patches=P`: answers once the counts are reached (for tests that
/// drive a separate process), 408 after `timeout_secs`.
pub(super) async fn wait(
    State(state): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<WaitQuery>,
) -> Response {
    let mut progress = state.lock().expect("sandbox lock").progress.subscribe();
    let reached = tokio::time::timeout(
        Duration::from_secs(q.timeout_secs),
        progress.wait_for(|p| {
            p.requests >= q.requests && p.token_requests >= q.tokens && p.patches >= q.patches
        }),
    )
    .await
    .map(|r| r.map(|p| *p));
    match reached {
        Ok(Ok(p)) => Json(p).into_response(),
        _ => (StatusCode::REQUEST_TIMEOUT, Json(*progress.borrow())).into_response(),
    }
}
