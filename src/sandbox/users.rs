//! "Update user accounts for a customer" (`PATCH …/users/{user}`) as far as a license needs it:
//! the usage location. Validated as the reference page describes the body, recorded in the
//! ground truth, and remembered so the user's next assignment is no longer refused.

use super::*;

/// One user PATCH as the sandbox saw it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedPatch {
    #[serde(with = "humantime_serde_compat")]
    pub at: SystemTime,
    pub customer: String,
    pub user: String,
    pub request_id: Option<String>,
    pub body: Value,
    pub status: u16,
}

/// The refusal of an assignment to a user without a usage location: the description is the
/// one Partner Center gives; the code is not documented, so this one is the sandbox's own.
pub(super) fn usage_location_refusal() -> Answer {
    Answer::definitive(
        400,
        error_body(
            600041,
            "License assignment cannot be done for user with invalid usage location.",
            None,
        ),
    )
}

/// The usage location a PATCH body sets: two upper-case letters, with the CustomerUser
/// object type.
fn location_in(body: &Value) -> Result<String, Answer> {
    let bad = |why: &str| {
        Answer::definitive(
            400,
            error_body(400, &format!("{why} (sandbox rule)."), None),
        )
    };
    let location = body
        .get("usageLocation")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("The body must give usageLocation"))?;
    if location.len() != 2 || !location.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(
            "usageLocation must be a two-letter ISO 3166-1 country code in upper case",
        ));
    }
    if body
        .pointer("/attributes/objectType")
        .and_then(Value::as_str)
        != Some("CustomerUser")
    {
        return Err(bad("attributes.objectType must be CustomerUser"));
    }
    Ok(location.to_string())
}

fn answer_patch(
    state: &mut SandboxState,
    customer_text: &str,
    user: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Answer {
    if let Err(answer) = check_token(state, headers, true) {
        return answer;
    }
    let customer_id = match check_customer_and_user(state, customer_text, user) {
        Ok(id) => id,
        Err(answer) => return answer,
    };
    if state.customers[&customer_id].missing_user_admin_role {
        return Answer::definitive(
            403,
            json!({"description": "Forbidden: the caller does not have a role that permits updating users for this customer.", "source": "PartnerFD"}),
        );
    }
    let location = match location_in(body) {
        Ok(location) => location,
        Err(answer) => return answer,
    };
    state
        .customers
        .get_mut(&customer_id)
        .expect("checked above")
        .usage_locations
        .insert(user.to_lowercase(), location.clone());
    Answer::definitive(
        200,
        json!({"id": user, "userPrincipalName": user, "usageLocation": location,
               "attributes": {"objectType": "CustomerUser"}}),
    )
}

pub(super) async fn update_user(
    State(state): State<Shared>,
    Path((customer, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let (answer, hold) = {
        let mut state = state.lock().expect("sandbox lock");
        let answer = answer_patch(&mut state, &customer, &user, &headers, &body);
        state.patches.push(RecordedPatch {
            at: SystemTime::now(),
            customer: customer.clone(),
            user: user.clone(),
            request_id: headers
                .get("ms-requestid")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            body,
            status: answer.status,
        });
        let count = state.patches.len() as u64;
        state.progress.send_modify(|p| p.patches = count);
        let faults = &state.scenario.faults;
        let hold = faults.patch_answer_delay_ms.filter(|_| {
            faults
                .patch_answer_delay_calls
                .is_none_or(|first| count <= first)
        });
        (answer, hold)
    };
    // Applied already: a client that dies now has set the location without hearing of it.
    if let Some(ms) = hold {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(answer.body),
    )
        .into_response()
}
