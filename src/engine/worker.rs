//! One group's life: send its open operations pass by pass (a pass = the operations that share
//! one request ID), retry a pass with the same ID, and map each answer (SPEC §5) to outcomes,
//! new passes, customer blocks or a run abort.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::call::{Attempt, CallEnd, CallKind, sleep_unless_stopped};
use super::{CustomerBlock, GroupWork, Pass, Shared};
use crate::api::Exchange;
use crate::api::classify::Verdict;
use crate::api::models::LicenseUpdateRequest;
use crate::outcome::{OperationOutcome, OperationStatus};
use crate::plan::Group;
use crate::secret::Secret;

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

/// One pass on the wire: its body under its request ID, for the group's customer.
struct Sending<'a> {
    shared: &'a Shared,
    group: &'a Group,
    body: &'a LicenseUpdateRequest,
    request_id: Uuid,
    /// The group's place among the requests in flight.
    permit: &'a mut Option<OwnedSemaphorePermit>,
}

impl Attempt for Sending<'_> {
    type Hold = CustomerBlock;

    fn lane(&self) -> Option<Uuid> {
        Some(self.group.customer_id)
    }

    /// Another call of this customer was refused for the customer as a whole.
    fn hold(&self) -> Option<CustomerBlock> {
        self.shared.customer_block(self.group.customer_id)
    }

    async fn send(&mut self, token: &Secret) -> Exchange {
        let group = self.group;
        let exchange = self
            .shared
            .calls
            .client
            .send_license_update(
                group.customer_id,
                &group.user,
                self.body,
                self.request_id,
                token,
            )
            .await;
        let message = &exchange.classified.message;
        tracing::debug!(
            customer = %group.customer_id, user = %group.user, request_id = %self.request_id,
            status = ?exchange.http_status, "{}", if message.is_empty() { "ok" } else { message }
        );
        exchange
    }

    /// Waits without holding a place in the pool: the permit goes back while it sleeps and is
    /// taken again after.
    async fn wait_throttled(&mut self, wait: Duration, stop: &CancellationToken) -> bool {
        drop(self.permit.take());
        if !sleep_unless_stopped(wait, stop).await {
            return false;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            again = Arc::clone(&self.shared.in_flight).acquire_owned() => {
                *self.permit = again.ok();
                self.permit.is_some()
            }
        }
    }

    fn throttled(&self, wait: Duration) {
        self.shared.observer.throttled(wait);
        tracing::info!(customer = %self.group.customer_id, "throttled (429): waiting {wait:?}");
    }

    fn retrying(&self) {
        self.shared.observer.retrying();
    }
}

/// The outcome of a pass not sent (again) because its customer refused another call.
/// `unanswered`: an attempt before the block may have been applied.
fn blocked(
    block: &CustomerBlock,
    last: &LastExchange,
    attempts: u32,
    unanswered: bool,
) -> OperationOutcome {
    OperationOutcome {
        http_status: block.http_status,
        error_code: block.error_code.clone(),
        unanswered,
        ..last.outcome(
            OperationStatus::Failed,
            attempts,
            format!("not sent: {}", block.message),
        )
    }
}

/// Sends one group; returns an outcome for each of its open operations. `permit`: its place
/// among the requests in flight, given back while it waits out a 429.
pub(super) async fn run_group(
    shared: &Shared,
    work: &GroupWork,
    permit: &mut Option<OwnedSemaphorePermit>,
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
        let mut sending = Sending {
            shared,
            group,
            body: &body,
            request_id,
            permit,
        };
        let called = shared.calls.call(CallKind::Write, &mut sending).await;
        attempts += called.attempts;
        if let Some(exchange) = &called.last {
            last.record(request_id, exchange);
        }
        // Sent before (before a resume, or in the earlier run whose request this pass carries),
        // or retried here after a transient error: a give-up leaves the request without a
        // definitive answer.
        let maybe_applied = sent_before || called.maybe_applied;
        let message = last.message.clone();
        let failed = |last: &LastExchange, text: String| {
            last.outcome(OperationStatus::Failed, attempts, text)
        };
        let verdict = match called.end {
            CallEnd::Answered(verdict) => verdict,
            CallEnd::ThrottledOut { after } => {
                let text = format!(
                    "gave up after {attempts} attempts in {}s (retry.max_elapsed_secs): {message}",
                    after.as_secs()
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
            CallEnd::TransientOut => {
                let text = format!("gave up after {attempts} attempts: {message}");
                unanswered.extend(remaining.iter().map(license));
                let outcome = OperationOutcome {
                    unanswered: true,
                    ..failed(&last, text)
                };
                settle(&mut outcomes, &remaining, outcome);
                continue 'pass;
            }
            CallEnd::Held(block) => {
                let outcome = blocked(&block, &last, attempts, maybe_applied);
                settle(&mut outcomes, &remaining, outcome);
                continue 'pass;
            }
            CallEnd::NoToken(error) => {
                shared.abort(error.to_string());
                break 'pass;
            }
            CallEnd::Stopped => break 'pass,
        };
        match verdict {
            Verdict::Succeeded { warnings } => {
                let mut outcome = last.outcome(OperationStatus::Succeeded, attempts, String::new());
                outcome.warnings = warnings;
                settle(&mut outcomes, &remaining, outcome);
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
                        http_status: last.http_status,
                        error_code: last.error_code.clone(),
                        message: message.clone(),
                    },
                );
                settle(&mut outcomes, &remaining, failed(&last, message));
            }
            Verdict::SeatsExhausted { sku } => {
                let named =
                    sku.and_then(|sku| remaining.iter().position(|&i| operations[i].sku_id == sku));
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
            }
            // A 400 the API does not attribute to one SKU: send each SKU on its own, so every
            // row gets its own true outcome.
            Verdict::Rejected if last.http_status == Some(400) && remaining.len() > 1 => {
                let singles: Vec<Pass> = remaining.iter().map(|&op| new_pass(vec![op])).collect();
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
            }
            Verdict::UserNotFound | Verdict::Rejected => {
                settle(&mut outcomes, &remaining, failed(&last, message));
            }
            // The call ends on these only by its retries running out (above).
            Verdict::Throttled { .. } | Verdict::Transient => {
                settle(&mut outcomes, &remaining, failed(&last, message));
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
