//! The reads: subscribed SKUs, a user's licenses, deployment insights.

use super::*;

/// The license groups a read asks for: `licenseGroupIds=Group1&licenseGroupIds=Group2`;
/// without the parameter the API returns group1 only.
pub(super) fn asked_groups(query: Option<&str>) -> BTreeSet<LicenseGroup> {
    let asked: BTreeSet<LicenseGroup> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| k.eq_ignore_ascii_case("licenseGroupIds"))
        .filter_map(|(_, v)| LicenseGroup::parse(v))
        .collect();
    if asked.is_empty() {
        BTreeSet::from([LicenseGroup::Group1])
    } else {
        asked
    }
}

pub(super) fn product_sku_json(s: &SubscribedSku) -> Value {
    json!({"id": s.id, "name": s.name, "skuPartNumber": s.part_number, "targetType": "User",
           "licenseGroupId": s.license_group.as_str()})
}

pub(super) fn service_plans_json(s: &SubscribedSku) -> Vec<Value> {
    catalog::find(&SkuRef::Id(s.id))
        .map(|c| c.service_plans())
        .unwrap_or_default()
        .iter()
        .map(|p| {
            json!({"displayName": p.display_name, "serviceName": p.service_name, "id": p.id,
                        "capabilityStatus": "Enabled", "targetType": "User"})
        })
        .collect()
}

pub(super) fn collection(items: Vec<Value>) -> Value {
    json!({"totalCount": items.len(), "items": items, "attributes": {"objectType": "Collection"}})
}

/// Runs the token and customer checks of a read, then `answer` on the customer.
pub(super) fn read_answer(
    state: &Shared,
    headers: &HeaderMap,
    customer_text: &str,
    license_call: bool,
    answer: impl FnOnce(&Customer) -> Result<Value, Answer>,
) -> Response {
    let mut state = state.lock().expect("sandbox lock");
    let result = check_token(&state, headers, license_call)
        .and_then(|()| check_customer(&mut state, customer_text))
        .and_then(|id| answer(state.customers.get(&id).expect("checked above")));
    let (status, body) = match result {
        Ok(body) => (200, body),
        Err(Answer { status, body, .. }) => (status, body),
    };
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

/// Reads take the scenario's `read_latency_ms`, as the real API's take time too.
pub(super) async fn read_delay(state: &Shared) {
    let delay = state
        .lock()
        .expect("sandbox lock")
        .scenario
        .faults
        .read_latency_ms;
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

pub(super) async fn subscribed_skus(
    State(state): State<Shared>,
    Path(customer): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    read_delay(&state).await;
    let groups = asked_groups(uri.query());
    read_answer(&state, &headers, &customer, true, |c| {
        let items = c
            .skus
            .iter()
            .filter(|s| groups.contains(&s.license_group))
            .map(|s| {
                json!({"availableUnits": s.total.saturating_sub(s.consumed), "activeUnits": s.total,
                       "consumedUnits": s.consumed, "suspendedUnits": 0, "totalUnits": s.total,
                       "warningUnits": 0, "capabilityStatus": "Enabled",
                       "productSku": product_sku_json(s), "servicePlans": service_plans_json(s),
                       "attributes": {"objectType": "SubscribedSku"}})
            })
            .collect();
        Ok(collection(items))
    })
}

pub(super) async fn user_licenses(
    State(state): State<Shared>,
    Path((customer, user)): Path<(String, String)>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    read_delay(&state).await;
    let groups = asked_groups(uri.query());
    read_answer(&state, &headers, &customer, true, |c| {
        check_user(c, &user)?;
        let held = c
            .assigned
            .get(&user.to_lowercase())
            .cloned()
            .unwrap_or_default();
        let items = c
            .skus
            .iter()
            .filter(|s| held.contains(&s.id) && groups.contains(&s.license_group))
            .map(|s| {
                json!({"servicePlans": service_plans_json(s), "productSku": product_sku_json(s),
                            "attributes": {"objectType": "License"}})
            })
            .collect();
        Ok(collection(items))
    })
}

pub(super) async fn deployment_insights(
    State(state): State<Shared>,
    Path(customer): Path<String>,
    headers: HeaderMap,
) -> Response {
    read_delay(&state).await;
    let processed = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    read_answer(&state, &headers, &customer, false, |c| {
        let items = c
            .skus
            .iter()
            .filter(|s| s.consumed > 0)
            .map(|s| {
                json!({"customerName": c.name, "productName": s.name.to_uppercase(),
                       "licensesDeployed": s.consumed, "licensesSold": s.total,
                       "deploymentPercent": (s.consumed as f64 / s.total.max(1) as f64 * 10000.0).round() / 100.0,
                       "processedDateTime": processed, "serviceName": "o365", "channel": "reseller",
                       "attributes": {"objectType": "CustomerLicensesDeploymentInsights"}})
            })
            .collect();
        Ok(collection(items))
    })
}
