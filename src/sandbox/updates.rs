//! `licenseupdates`: validation, seats, idempotent replay by MS-RequestId, faults, and the
//! record of every call.

use super::*;

/// Reads `LicensesToAssign`/`LicensesToRemove` (PascalCase or camelCase) as SKU IDs.
pub(super) fn requested_skus(body: &Value) -> Option<(Vec<Uuid>, Vec<Uuid>)> {
    let list = |pascal: &str, camel: &str| -> Option<Vec<Value>> {
        match body.get(pascal).or_else(|| body.get(camel)) {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => Some(items.clone()),
            Some(_) => None,
        }
    };
    let assign = list("LicensesToAssign", "licensesToAssign")?
        .iter()
        .map(|a| {
            a.get("SkuId")
                .or_else(|| a.get("skuId"))
                .and_then(Value::as_str)
                .and_then(|s| Uuid::try_parse(s).ok())
        })
        .collect::<Option<Vec<_>>>()?;
    let remove = list("LicensesToRemove", "licensesToRemove")?
        .iter()
        .map(|r| r.as_str().and_then(|s| Uuid::try_parse(s).ok()))
        .collect::<Option<Vec<_>>>()?;
    Some((assign, remove))
}

/// (SKU, excluded plan) pairs of `LicensesToAssign`.
pub(super) fn excluded_plans(body: &Value) -> Vec<(Uuid, Uuid)> {
    let assign = body
        .get("LicensesToAssign")
        .or_else(|| body.get("licensesToAssign"));
    let Some(Value::Array(items)) = assign else {
        return Vec::new();
    };
    let uuid = |v: &Value| v.as_str().and_then(|s| Uuid::try_parse(s).ok());
    items
        .iter()
        .filter_map(|a| {
            let sku = a.get("SkuId").or_else(|| a.get("skuId")).and_then(uuid)?;
            let plans = a
                .get("ExcludedPlans")
                .or_else(|| a.get("excludedPlans"))?
                .as_array()?;
            Some(
                plans
                    .iter()
                    .filter_map(uuid)
                    .map(move |p| (sku, p))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect()
}

pub(super) async fn license_update(
    State(state): State<Shared>,
    Path((customer, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let arrived_at = SystemTime::now();
    let (_in_flight, latency, charged_on_arrival) = {
        let mut s = state.lock().expect("sandbox lock");
        let in_flight = s.in_flight.enter();
        let latency = s.scenario.faults.latency_ms.map(|mean| s.latency(mean));
        // A gateway counts the call as it arrives, and answers a 429 at once.
        let on_arrival = s
            .scenario
            .throttle
            .as_ref()
            .is_some_and(|t| t.charge == scenario::Charge::OnArrival);
        let charged = on_arrival.then(|| s.charge_quota_exact(&customer));
        (in_flight, latency, charged)
    };
    if let Some(ms) = latency.filter(|_| !matches!(charged_on_arrival, Some(Some(_)))) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let request_id = header("ms-requestid");
    let body_json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let Reply {
        answer,
        hold_ms: hold,
        reset,
    } = record_and_answer(
        &state,
        &customer,
        &user,
        &headers,
        request_id.clone(),
        body_json,
        Arrival {
            at: arrived_at,
            charged: charged_on_arrival,
        },
    );
    if reset {
        // Drop the connection without a byte of answer, as a reset does. `resume_unwind` ends
        // this connection's task without running the panic hook (nothing is printed), and the
        // state lock is no longer held.
        std::panic::resume_unwind(Box::new("sandbox: simulated connection reset"));
    }
    // Applied already: a client that gives up or dies now has changed the tenant without
    // hearing of it, and must resend under the same request ID.
    if let Some(ms) = hold {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut response = (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(answer.body),
    )
        .into_response();
    for (name, value) in answer.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert("ms-requestid", id);
    }
    response
}

/// When a licenseupdates call arrived, and what a gateway charged it on arrival (`None` when
/// the quota is charged after the latency).
pub(super) struct Arrival {
    pub(super) at: SystemTime,
    pub(super) charged: Option<Option<f64>>,
}

/// The answer to a licenseupdates call, and how to deliver it.
pub(super) struct Reply {
    pub(super) answer: Answer,
    /// Hold the answer back this long (it was applied already).
    pub(super) hold_ms: Option<u64>,
    /// Drop the connection instead of answering.
    pub(super) reset: bool,
}

/// Answers a licenseupdates call under the lock and records it; returns the answer, how long to
/// hold it back, and whether to drop the connection instead.
pub(super) fn record_and_answer(
    state: &Shared,
    customer: &str,
    user: &str,
    headers: &HeaderMap,
    request_id: Option<String>,
    body_json: Value,
    arrival: Arrival,
) -> Reply {
    let Arrival {
        at: arrived_at,
        charged: charged_on_arrival,
    } = arrival;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let mut state = state.lock().expect("sandbox lock");
    let mut record = RecordedRequest {
        at: SystemTime::now(),
        arrived_at,
        customer: customer.to_string(),
        user: user.to_string(),
        request_id: request_id.clone(),
        correlation_id: header("ms-correlationid"),
        body: body_json.clone(),
        status: 0,
        replay: false,
        applied: false,
        fault: None,
        retry_after: None,
    };
    let mut answer = answer_license_update(
        &mut state,
        customer,
        user,
        headers,
        &body_json,
        &mut record,
        charged_on_arrival,
    );
    record.status = answer.status;
    record.retry_after = answer.retry_after();
    if answer.definitive
        && let Some(id) = &request_id
        && !record.replay
    {
        state.idempotency.insert(
            id.clone(),
            Stored {
                fingerprint: fingerprint(customer, user, &body_json),
                status: answer.status,
                body: answer.body.clone(),
            },
        );
    }
    if record.applied
        && let Some(id) = &request_id
    {
        let change = fingerprint(customer, user, &body_json);
        match state.applied_changes.get(&change) {
            Some(earlier) if earlier != id => {
                state.violations.new_request_id_for_applied_change += 1
            }
            Some(_) => {}
            None => {
                state.applied_changes.insert(change, id.clone());
            }
        }
    }
    let faults = state.scenario.faults.clone();
    let mut hold = faults.answer_delay_ms;
    match record.fault {
        // Applied and stored for replay above; only the answer is lost or late.
        Some("apply-then-503") if record.applied => {
            answer.status = 503;
            answer.body = json!({"code": 503, "description": "The service is temporarily unavailable (sandbox fault, after applying)."});
        }
        Some("apply-then-timeout") if record.applied => {
            hold = Some(faults.hold_secs.unwrap_or(5) * 1000);
        }
        _ => {}
    }
    let reset = record.fault == Some("reset");
    record.status = if reset { 0 } else { answer.status };
    state.requests.push(record);
    state.progress.send_modify(|p| p.requests += 1);
    Reply {
        answer,
        hold_ms: hold,
        reset,
    }
}

/// What makes two licenseupdates calls the same request: customer, user and body, with the
/// license lists taken as sets (a request that names the same licenses in another order asks
/// for the same change).
pub(super) fn fingerprint(customer: &str, user: &str, body: &Value) -> String {
    let mut body = body.clone();
    if let Value::Object(fields) = &mut body {
        for (_, value) in fields.iter_mut() {
            if let Value::Array(items) = value {
                items.sort_by_cached_key(Value::to_string);
            }
        }
    }
    format!(
        "{}|{}|{}",
        customer.to_lowercase(),
        user.to_lowercase(),
        body
    )
}

/// The customer must exist (60003) and accept us (900309 Conditional Access, 403 GDAP role).
pub(super) fn check_customer(
    state: &mut SandboxState,
    customer_text: &str,
) -> Result<Uuid, Answer> {
    let not_found = || Answer::definitive(404, error_body(60003, "Tenant not found.", None));
    let customer_id = Uuid::try_parse(customer_text).map_err(|_| not_found())?;
    let permissive = state.permissive;
    let customer =
        customer_entry(&mut state.customers, permissive, customer_id).ok_or_else(not_found)?;
    if customer.conditional_access_blocked {
        return Err(Answer::definitive(
            403,
            error_body(
                900309,
                "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance. Learn more at https://learn.microsoft.com/azure/active-directory/conditional-access/concept-conditional-access-users-groups.",
                None,
            ),
        ));
    }
    if customer.missing_gdap_role {
        return Err(Answer::definitive(
            403,
            json!({"description": "Forbidden: the caller does not have a role that permits license management for this customer.", "source": "PartnerFD"}),
        ));
    }
    Ok(customer_id)
}

/// [`check_customer`], then [`check_user`].
pub(super) fn check_customer_and_user(
    state: &mut SandboxState,
    customer_text: &str,
    user: &str,
) -> Result<Uuid, Answer> {
    let customer_id = check_customer(state, customer_text)?;
    let customer = state
        .customers
        .get(&customer_id)
        .expect("check_customer ensured it");
    check_user(customer, user)?;
    Ok(customer_id)
}

/// The user must exist in the customer's tenant (60002).
pub(super) fn check_user(customer: &Customer, user: &str) -> Result<(), Answer> {
    if customer
        .users
        .as_ref()
        .is_some_and(|users| !users.contains(&user.to_lowercase()))
    {
        return Err(Answer::definitive(
            404,
            error_body(60002, "User object Id is not found.", None),
        ));
    }
    Ok(())
}

/// `charged_on_arrival`: the quota was charged when the call arrived (a gateway), with this
/// result; `None`: charge it now.
pub(super) fn answer_license_update(
    state: &mut SandboxState,
    customer_text: &str,
    user: &str,
    headers: &HeaderMap,
    body: &Value,
    record: &mut RecordedRequest,
    charged_on_arrival: Option<Option<f64>>,
) -> Answer {
    if let Err(answer) = check_token(state, headers, true) {
        return answer;
    }

    state.calls += 1;
    let call = state.calls;
    let faults = state.scenario.faults.clone();
    if faults
        .throttle_every
        .is_some_and(|n| n > 0 && call.is_multiple_of(n))
    {
        let wait = faults.retry_after_secs.unwrap_or(1);
        return Answer::throttled(wait);
    }
    if faults
        .transient_every
        .is_some_and(|n| n > 0 && call.is_multiple_of(n))
    {
        let status = faults.transient_status.unwrap_or(503);
        record.fault = Some("transient");
        return Answer::transient(status);
    }

    let quota = match charged_on_arrival {
        Some(charged) => charged,
        None => state.charge_quota_exact(customer_text),
    };
    if let Some(wait) = quota {
        record.fault = Some("quota");
        return state.quota_answer(wait);
    }
    let storm = match (faults.storm_after, faults.storm_length) {
        (Some(after), Some(length)) => call > after && call <= after + length,
        _ => false,
    };
    if storm {
        let wait = faults.retry_after_secs.unwrap_or(1);
        record.fault = Some("429-storm");
        return Answer::throttled(wait);
    }
    let draw = state.draw();
    let mut bound = faults.transient_rate;
    if draw < bound {
        let status = [500, 502, 503][(call % 3) as usize];
        record.fault = Some("transient");
        return Answer::transient(status);
    }
    bound += faults.reset_rate;
    if draw < bound {
        record.fault = Some("reset");
        return Answer::passing(0, Value::Null);
    }
    bound += faults.apply_then_503_rate;
    if draw < bound {
        record.fault = Some("apply-then-503");
    } else if draw < bound + faults.apply_then_timeout_rate {
        record.fault = Some("apply-then-timeout");
    }

    if let Ok(id) = Uuid::try_parse(customer_text)
        && let Some(c) = state.customers.get_mut(&id)
    {
        c.calls += 1;
        if c.blocked_after_requests.is_some_and(|n| c.calls > n) {
            c.conditional_access_blocked = true;
        }
    }

    let request_id = record.request_id.clone();
    match request_id.as_deref().map(Uuid::try_parse) {
        None => state.violations.missing_request_id += 1,
        Some(Err(_)) => state.violations.malformed_request_id += 1,
        Some(Ok(_)) => {}
    }
    if let Some(id) = &request_id
        && let Some(stored) = state.idempotency.get(id)
    {
        if stored.fingerprint == fingerprint(customer_text, user, body) {
            record.replay = true;
            return Answer::definitive(stored.status, stored.body.clone());
        }
        state.violations.request_id_reused_with_other_body += 1;
        return Answer::passing(
            409,
            error_body(
                409,
                "MS-RequestId was already used for a different request (sandbox rule).",
                None,
            ),
        );
    }

    let customer_id = match check_customer_and_user(state, customer_text, user) {
        Ok(id) => id,
        Err(answer) => return answer,
    };
    let customer = state
        .customers
        .get_mut(&customer_id)
        .expect("checked above");
    let user_key = user.to_lowercase();
    let Some((assign, remove)) = requested_skus(body) else {
        return Answer::definitive(
            400,
            error_body(
                60000,
                "The request body is not a LicenseUpdate (sandbox rule).",
                None,
            ),
        );
    };
    let mut groups = BTreeSet::new();
    for sku in assign.iter().chain(&remove) {
        match customer.skus.iter().find(|s| s.id == *sku) {
            Some(s) => {
                groups.insert(s.license_group);
            }
            None => {
                return Answer::definitive(
                    400,
                    error_body(
                        60011,
                        &format!(
                            "The SKU {sku} is not subscribed by this customer (sandbox rule)."
                        ),
                        None,
                    ),
                );
            }
        }
    }
    // Excluded plans must belong to their SKU (known for catalog SKUs). The API answers such a
    // request with a 400 that names no SKU.
    for (sku, plan) in excluded_plans(body) {
        let known = catalog::find(&SkuRef::Id(sku))
            .map(|c| c.service_plans())
            .unwrap_or_default();
        if !known.is_empty() && !known.iter().any(|p| p.id == plan) {
            return Answer::definitive(
                400,
                error_body(
                    60014,
                    &format!(
                        "The service plan {plan} cannot be excluded: it is not part of the requested licenses (sandbox rule)."
                    ),
                    None,
                ),
            );
        }
    }
    if groups.len() > 1 {
        state.violations.mixed_license_groups += 1;
        return Answer::definitive(
            400,
            error_body(
                60013,
                "Licenses of more than one license group cannot be assigned in one request (sandbox rule).",
                None,
            ),
        );
    }
    let customer = state
        .customers
        .get_mut(&customer_id)
        .expect("check_customer ensured it");
    if !assign.is_empty()
        && customer.without_usage_location.contains(&user_key)
        && !customer.usage_locations.contains_key(&user_key)
    {
        return usage_location_refusal();
    }
    let held = customer
        .assigned
        .get(&user_key)
        .cloned()
        .unwrap_or_default();
    for sku in &assign {
        let s = customer
            .skus
            .iter()
            .find(|s| s.id == *sku)
            .expect("checked above");
        if !held.contains(sku) && s.consumed >= s.total {
            let data = format!(
                "LicenseQuotaExceededException : Subscription with Account {customer_id} and SKU {sku} does not have any available licenses left."
            );
            return Answer::definitive(
                400,
                error_body(
                    60012,
                    "We are sorry, it looks like you have run out of licenses. Buy more licenses, and then try again.",
                    Some(vec![data]),
                ),
            );
        }
    }
    let mut warnings = Vec::new();
    let held = customer.assigned.entry(user_key.clone()).or_default();
    // Per SKU: whether it is assigned (true) or removed, and whether that changed anything.
    let mut changes = Vec::new();
    for sku in &assign {
        let s = customer
            .skus
            .iter_mut()
            .find(|s| s.id == *sku)
            .expect("checked above");
        let changed = held.insert(*sku);
        if changed {
            s.consumed += 1;
        }
        changes.push((*sku, true, changed));
        if let Some((code, message)) = &s.warning {
            warnings.push(json!({"code": code, "message": message, "servicePlans": []}));
        }
    }
    for sku in &remove {
        let changed = held.remove(sku);
        if changed && let Some(s) = customer.skus.iter_mut().find(|s| s.id == *sku) {
            s.consumed = s.consumed.saturating_sub(1);
        }
        changes.push((*sku, false, changed));
    }
    let request_id = record.request_id.clone().unwrap_or_default();
    let excluded = excluded_plans(body);
    for (sku, assigned, changed) in changes {
        let key = (customer_id, user_key.clone(), sku);
        let plans: BTreeSet<Uuid> = excluded
            .iter()
            .filter(|(s, _)| *s == sku && assigned)
            .map(|&(_, plan)| plan)
            .collect();
        // Other excluded plans for a license the user holds are a change of their own.
        let repeated = state
            .last_change
            .get(&key)
            .is_some_and(|(was_assign, was_plans, by)| {
                *was_assign == assigned && *was_plans == plans && *by != request_id
            });
        if !changed && repeated {
            state
                .violations
                .license_change_repeated_under_new_request_id += 1;
        } else {
            state
                .last_change
                .insert(key, (assigned, plans, request_id.clone()));
        }
    }
    record.applied = true;
    let assigned: Vec<Value> = assign.iter().map(|s| json!({"skuId": s})).collect();
    Answer::definitive(
        201,
        json!({
            "licensesToAssign": assigned,
            "licensesToRemove": remove,
            "licenseWarnings": warnings,
            "attributes": {"objectType": "LicenseUpdate"}
        }),
    )
}
