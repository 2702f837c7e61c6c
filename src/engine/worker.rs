//! One group's life: send its open operations pass by pass (a pass = the operations that share
//! one request ID), retry a pass with the same ID, and map each answer (SPEC §5) to outcomes,
//! new passes, customer blocks or a run abort.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{CustomerBlock, GroupWork, Pass, Shared};
use crate::api::Exchange;
use crate::api::classify::Verdict;
use crate::api::models::LicenseUpdateRequest;
use crate::outcome::{OperationOutcome, OperationStatus};

/// What the group's last request looked like, for the report.
#[derive(Default)]
struct LastExchange {
    http_status: Option<u16>,
    error_code: Option<String>,
    message: String,
    request_id: Option<Uuid>,
    correlation_id: Option<Uuid>,
}

impl LastExchange {
    fn record(&mut self, request_id: Uuid, exchange: &Exchange) {
        self.http_status = exchange.http_status;
        self.error_code = exchange.classified.error_code.clone();
        self.message = exchange.classified.message.clone();
        self.request_id = Some(request_id);
        self.correlation_id = Some(exchange.correlation_id);
    }

    fn outcome(&self, status: OperationStatus, attempts: u32, message: String) -> OperationOutcome {
        OperationOutcome {
            status,
            http_status: self.http_status,
            error_code: self.error_code.clone(),
            message,
            attempts,
            request_id: self.request_id,
            correlation_id: self.correlation_id,
            finished_at: (status != OperationStatus::Pending).then(SystemTime::now),
            warnings: Vec::new(),
            unanswered: false,
        }
    }
}

/// Sleeps unless the run stops first; `false` when stopped.
async fn sleep_unless_stopped(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Records new passes (and the outcomes that made them necessary) before any of them is sent;
/// `false` (and the run aborts) when the journal cannot be written.
async fn begin_passes(
    shared: &Shared,
    group: usize,
    passes: Vec<Pass>,
    settled: Vec<(usize, OperationOutcome)>,
) -> bool {
    match shared.recorder.begin_passes(group, passes, settled).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            shared.abort(format!("cannot write the journal: {error}"));
            false
        }
        Err(_) => {
            shared.abort("the journal writer stopped".into());
            false
        }
    }
}

fn new_pass(operations: Vec<usize>) -> Pass {
    Pass {
        request_id: Uuid::new_v4(),
        operations,
        sent_before: false,
    }
}

/// Waits out the Retry-After of a throttled call without holding a place in the pool: the
/// permit goes back while it sleeps and is taken again after. `false` when the run stops.
async fn wait_throttled(
    shared: &Shared,
    wait: Duration,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> bool {
    drop(permit.take());
    if !sleep_unless_stopped(wait, &shared.calls.stop).await {
        return false;
    }
    tokio::select! {
        biased;
        _ = shared.calls.stop.cancelled() => false,
        again = std::sync::Arc::clone(&shared.in_flight).acquire_owned() => {
            *permit = again.ok();
            permit.is_some()
        }
    }
}

/// Sends one group; returns an outcome for each of its open operations. `permit`: its place
/// among the requests in flight, given back while it waits out a 429.
pub(super) async fn run_group(
    shared: &Shared,
    work: &GroupWork,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> Vec<(usize, OperationOutcome)> {
    let group = &work.request;
    let operations = &group.operations;
    let mut outcomes: Vec<Option<OperationOutcome>> = vec![None; operations.len()];
    let mut passes: VecDeque<Pass> = work.passes.iter().cloned().collect();
    let mut attempts = work.previous_attempts;
    let mut last = LastExchange::default();
    let settle = |outcomes: &mut Vec<Option<OperationOutcome>>,
                  which: &[usize],
                  outcome: OperationOutcome| {
        for &i in which {
            outcomes[i] = Some(outcome.clone());
        }
    };
    // The licenses (SKU, action) of passes that ended without a definitive answer: a later
    // pass that asks for one of them again must not go out under another request ID while
    // the first one's outcome is unknown (SPEC §8).
    let mut unanswered: Vec<(Uuid, crate::input::Action)> = Vec::new();

    // `continue 'pass`: this pass has its answer, go on with the next one.
    // `break 'pass`: the run stops; what is open stays pending.
    'pass: while let Some(Pass {
        request_id,
        operations: mut remaining,
        sent_before,
    }) = passes.pop_front()
    {
        let license = |&i: &usize| (operations[i].sku_id, operations[i].action);
        if remaining.iter().any(|i| unanswered.contains(&license(i))) {
            let outcome = OperationOutcome {
                // Sent before (before a resume, or by an earlier run), it may be applied.
                unanswered: sent_before,
                ..last.outcome(
                    OperationStatus::Failed,
                    attempts,
                    "not sent: an earlier request for this license got no answer; the next run \
                     sends that request again first"
                        .into(),
                )
            };
            settle(&mut outcomes, &remaining, outcome);
            continue 'pass;
        }
        let body = LicenseUpdateRequest::for_operations(remaining.iter().map(|&i| &operations[i]));
        let started = Instant::now();
        let mut backoff = shared.calls.retry_policy().build();
        let mut untold = shared.calls.untold_throttle_backoff();
        let mut renewed_after_401 = false;
        // Whether an attempt may have reached the service (a timeout, a reset, a 5xx), here,
        // before a resume or in the earlier run whose request this pass carries: a give-up then
        // leaves the request without a definitive answer. A 429 says only that *its* attempt
        // was not processed.
        let mut maybe_applied = sent_before;
        loop {
            if let Some(block) = shared.customer_block(group.customer_id) {
                let outcome = OperationOutcome {
                    status: OperationStatus::Failed,
                    http_status: block.http_status,
                    error_code: block.error_code,
                    message: format!("not sent: {}", block.message),
                    attempts,
                    request_id: last.request_id,
                    correlation_id: last.correlation_id,
                    finished_at: Some(SystemTime::now()),
                    warnings: Vec::new(),
                    // An attempt before the block may have been applied.
                    unanswered: maybe_applied,
                };
                settle(&mut outcomes, &remaining, outcome);
                continue 'pass;
            }
            if !shared
                .calls
                .pacer
                .admit(Some(group.customer_id), &shared.calls.stop)
                .await
            {
                break 'pass;
            }
            let token = match shared.calls.client.tokens.token().await {
                Ok(token) => token,
                Err(error) => {
                    shared.abort(error.to_string());
                    break 'pass;
                }
            };
            let sent_at = tokio::time::Instant::now();
            let exchange = shared
                .calls
                .client
                .send_license_update(group.customer_id, &group.user, &body, request_id, &token)
                .await;
            attempts += 1;
            shared.calls.stats.requests.fetch_add(1, Ordering::Relaxed);
            last.record(request_id, &exchange);
            let message = exchange.classified.message.clone();
            tracing::debug!(
                customer = %group.customer_id, user = %group.user, %request_id,
                status = ?exchange.http_status, "{}", if message.is_empty() { "ok" } else { &message }
            );
            let failed = |last: &LastExchange, text: String| {
                last.outcome(OperationStatus::Failed, attempts, text)
            };
            let verdict = exchange.classified.verdict;
            if exchange.http_status.is_some() {
                shared.calls.stats.answered(sent_at.elapsed());
                if !matches!(verdict, Verdict::Throttled { .. }) {
                    shared
                        .calls
                        .pacer
                        .answered(Some(group.customer_id), sent_at);
                }
            }
            if verdict != Verdict::Unauthorized {
                renewed_after_401 = false;
            }
            match verdict {
                Verdict::Succeeded { warnings } => {
                    let mut outcome =
                        last.outcome(OperationStatus::Succeeded, attempts, String::new());
                    outcome.warnings = warnings;
                    settle(&mut outcomes, &remaining, outcome);
                    continue 'pass;
                }
                Verdict::Throttled { retry_after } => {
                    let retry_after = retry_after
                        .or_else(|| untold.next())
                        .unwrap_or(Duration::from_secs(60));
                    shared.calls.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    shared.observer.throttled(retry_after);
                    tracing::info!(customer = %group.customer_id, "throttled (429): waiting {retry_after:?}");
                    shared
                        .calls
                        .pacer
                        .throttled(Some(group.customer_id), sent_at, retry_after);
                    if started.elapsed() + retry_after > shared.calls.settings.max_elapsed {
                        let text = format!(
                            "gave up after {attempts} attempts in {}s (retry.max_elapsed_secs): {message}",
                            started.elapsed().as_secs()
                        );
                        let outcome = OperationOutcome {
                            unanswered: maybe_applied,
                            ..failed(&last, text)
                        };
                        if maybe_applied {
                            unanswered.extend(remaining.iter().map(license));
                        }
                        settle(&mut outcomes, &remaining, outcome);
                        continue 'pass;
                    }
                    // Never sooner than told: from when the answer came (the API counts from
                    // when it answered, which is later than the call was sent).
                    if !wait_throttled(shared, retry_after, permit).await {
                        break 'pass;
                    }
                }
                Verdict::Transient => match backoff.next() {
                    Some(wait) if started.elapsed() + wait <= shared.calls.settings.max_elapsed => {
                        maybe_applied = true;
                        shared.calls.stats.retries.fetch_add(1, Ordering::Relaxed);
                        shared.observer.retrying();
                        if !sleep_unless_stopped(wait, &shared.calls.stop).await {
                            break 'pass;
                        }
                    }
                    _ => {
                        let text = format!("gave up after {attempts} attempts: {message}");
                        unanswered.extend(remaining.iter().map(license));
                        let outcome = OperationOutcome {
                            unanswered: true,
                            ..failed(&last, text)
                        };
                        settle(&mut outcomes, &remaining, outcome);
                        continue 'pass;
                    }
                },
                Verdict::Unauthorized if !renewed_after_401 => {
                    renewed_after_401 = true;
                    if let Err(error) = shared
                        .calls
                        .client
                        .tokens
                        .renew_after_rejection(&token)
                        .await
                    {
                        shared.abort(error.to_string());
                        break 'pass;
                    }
                }
                Verdict::Unauthorized | Verdict::WrongCredential => {
                    // The answer spent this request ID (the docs reset it after any response):
                    // a resumed run gets a new one, recorded before it could be used.
                    begin_passes(
                        shared,
                        work.group,
                        vec![new_pass(remaining.clone())],
                        Vec::new(),
                    )
                    .await;
                    shared.abort(if verdict == Verdict::Unauthorized {
                        "the API refused a freshly renewed access token (HTTP 401 twice); check that \
                         the app registration has Partner Center API permission and the consent is valid"
                            .into()
                    } else {
                        message
                    });
                    break 'pass;
                }
                Verdict::CustomerForbidden | Verdict::CustomerNotFound => {
                    shared.block_customer(
                        group.customer_id,
                        CustomerBlock {
                            http_status: exchange.http_status,
                            error_code: exchange.classified.error_code.clone(),
                            message: message.clone(),
                        },
                    );
                    settle(&mut outcomes, &remaining, failed(&last, message));
                    continue 'pass;
                }
                Verdict::SeatsExhausted { sku } => {
                    let named = sku.and_then(|sku| {
                        remaining.iter().position(|&i| operations[i].sku_id == sku)
                    });
                    match named {
                        // Only the named SKU is short: fail it, re-send the rest as a new request.
                        Some(position) if remaining.len() > 1 => {
                            let op = remaining.remove(position);
                            let outcome =
                                failed(&last, format!("{message} (SKU {})", operations[op].sku_id));
                            outcomes[op] = Some(outcome.clone());
                            let rest = new_pass(remaining);
                            if !begin_passes(
                                shared,
                                work.group,
                                vec![rest.clone()],
                                vec![(op, outcome)],
                            )
                            .await
                            {
                                break 'pass;
                            }
                            passes.push_front(rest);
                        }
                        _ => settle(&mut outcomes, &remaining, failed(&last, message)),
                    }
                    continue 'pass;
                }
                // A 400 the API does not attribute to one SKU: send each SKU on its own, so every
                // row gets its own true outcome.
                Verdict::Rejected if exchange.http_status == Some(400) && remaining.len() > 1 => {
                    let singles: Vec<Pass> =
                        remaining.iter().map(|&op| new_pass(vec![op])).collect();
                    if !begin_passes(shared, work.group, singles.clone(), Vec::new()).await {
                        break 'pass;
                    }
                    tracing::info!(
                        customer = %group.customer_id, user = %group.user,
                        "HTTP 400 for {} SKUs together; sending them one by one", remaining.len()
                    );
                    for single in singles.into_iter().rev() {
                        passes.push_front(single);
                    }
                    continue 'pass;
                }
                Verdict::UserNotFound | Verdict::Rejected => {
                    settle(&mut outcomes, &remaining, failed(&last, message));
                    continue 'pass;
                }
            }
        }
    }

    let pending_message = if last.request_id.is_some() {
        let last_answer = if last.message.is_empty() {
            "none"
        } else {
            &last.message
        };
        format!(
            "no definitive answer before the run stopped (last: {last_answer}); run the same command again to resume"
        )
    } else {
        "not sent: the run stopped first; run the same command again to resume".into()
    };
    work.operations()
        .map(|op| {
            let outcome = outcomes[op].take().unwrap_or_else(|| {
                last.outcome(OperationStatus::Pending, attempts, pending_message.clone())
            });
            (op, outcome)
        })
        .collect()
}
