//! One group's life ([`GroupRun`]): its open operations sent pass by pass (a pass = the
//! operations that share one request ID) through the call path, and each end mapped (SPEC §5)
//! to outcomes, new passes, customer blocks or a run abort: `send` (one pass), `give_up`
//! (retries ran out), `answered` (a definitive answer), `finish` (pending for the rest).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::call::{Attempt, CallEnd, CallKind, sleep_unless_stopped};
use super::location::{LocationChoice, LocationFix};
use super::{CustomerBlock, GroupWork, Pass, Shared};
use crate::api::Exchange;
use crate::api::classify::Verdict;
use crate::api::models::LicenseUpdateRequest;
use crate::country::UsageLocation;
use crate::input::Action;
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
    durable(shared, shared.recorder.begin_passes(group, passes, settled)).await
}

/// Whether what the journal was given is committed; if not, the run aborts.
async fn durable(
    shared: &Shared,
    committed: tokio::sync::oneshot::Receiver<Result<(), String>>,
) -> bool {
    match committed.await {
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

/// Records the group's usage-location fix as it now stands, and the passes that follow it,
/// before the PATCH (or the passes) go out; `false` (and the run aborts) when it cannot be.
async fn record_location(
    shared: &Shared,
    group: usize,
    fix: LocationFix,
    passes: Vec<Pass>,
) -> bool {
    durable(shared, shared.recorder.record_location(group, fix, passes)).await
}

/// Why the run aborts on a credential refusal (`message`: the answer's, for 900316/900421).
fn credential_abort(verdict: &Verdict, message: String) -> String {
    if *verdict == Verdict::Unauthorized {
        "the API refused a freshly renewed access token (HTTP 401 twice); check that \
         the app registration has Partner Center API permission and the consent is valid"
            .into()
    } else {
        message
    }
}

fn new_pass(operations: Vec<usize>) -> Pass {
    Pass {
        request_id: Uuid::new_v4(),
        operations,
        sent_before: false,
    }
}

/// What a group sends: a pass's LicenseUpdate, or the PATCH that gives its user a usage
/// location.
enum Request<'a> {
    Update(&'a LicenseUpdateRequest),
    Location(&'a UsageLocation),
}

/// One request on the wire under its request ID, for the group's customer.
struct Sending<'a> {
    shared: &'a Shared,
    group: &'a Group,
    request: Request<'a>,
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
        let client = &self.shared.calls.client;
        let (customer, user, id) = (group.customer_id, &group.user, self.request_id);
        let exchange = match self.request {
            Request::Update(body) => {
                client
                    .send_license_update(customer, user, body, id, token)
                    .await
            }
            Request::Location(location) => {
                client
                    .set_usage_location(customer, user, location, id, token)
                    .await
            }
        };
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
    let mut run = GroupRun {
        shared,
        work,
        outcomes: vec![None; work.request.operations.len()],
        passes: work.passes.iter().cloned().collect(),
        attempts: work.previous_attempts,
        last: LastExchange::default(),
        unanswered: Vec::new(),
        location: work.location.fix.clone(),
    };
    // A fix recorded before a resume and not answered goes out first, under its own ID.
    if let Some(fix) = work.location.fix.clone().filter(|fix| !fix.answered)
        && run.set_location(fix, permit).await == Flow::Stop
    {
        return run.finish();
    }
    while let Some(pass) = run.passes.pop_front() {
        if run.send(pass, permit).await == Flow::Stop {
            break;
        }
    }
    run.finish()
}

/// One group being sent: what is known so far of each of its operations.
struct GroupRun<'a> {
    shared: &'a Shared,
    work: &'a GroupWork,
    outcomes: Vec<Option<OperationOutcome>>,
    /// The requests still to send, in order.
    passes: VecDeque<Pass>,
    attempts: u32,
    last: LastExchange,
    /// The licenses (SKU, action) of passes that ended without a definitive answer: a later
    /// pass that asks for one of them again must not go out under another request ID while
    /// the first one's outcome is unknown (SPEC §8).
    unanswered: Vec<(Uuid, Action)>,
    /// The usage location given to the user (or being given): once per group.
    location: Option<LocationFix>,
}

/// After a pass: on with the next one, or the run stops (what is open stays pending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Next,
    Stop,
}

impl GroupRun<'_> {
    fn license(&self, op: usize) -> (Uuid, Action) {
        let operation = &self.work.request.operations[op];
        (operation.sku_id, operation.action)
    }

    fn settle(&mut self, which: &[usize], outcome: OperationOutcome) {
        for &op in which {
            self.outcomes[op] = Some(outcome.clone());
        }
    }

    fn failed(&self, text: String) -> OperationOutcome {
        self.last
            .outcome(OperationStatus::Failed, self.attempts, text)
    }

    /// Sends one pass under the call policy and settles what its end says.
    async fn send(&mut self, pass: Pass, permit: &mut Option<OwnedSemaphorePermit>) -> Flow {
        let Pass {
            request_id,
            operations: remaining,
            sent_before,
        } = pass;
        if remaining
            .iter()
            .any(|&op| self.unanswered.contains(&self.license(op)))
        {
            let outcome = OperationOutcome {
                // Sent before (before a resume, or by an earlier run), it may be applied.
                unanswered: sent_before,
                ..self.failed(
                    "not sent: an earlier request for this license got no answer; the next run \
                     sends that request again first"
                        .into(),
                )
            };
            self.settle(&remaining, outcome);
            return Flow::Next;
        }
        let (shared, group) = (self.shared, &self.work.request);
        let body =
            LicenseUpdateRequest::for_operations(remaining.iter().map(|&op| &group.operations[op]));
        let mut sending = Sending {
            shared,
            group,
            request: Request::Update(&body),
            request_id,
            permit,
        };
        let called = shared.calls.call(CallKind::Write, &mut sending).await;
        self.attempts += called.attempts;
        if let Some(exchange) = &called.last {
            self.last.record(request_id, exchange);
        }
        // Sent before (before a resume, or in the earlier run whose request this pass carries),
        // or retried here after a transient error: a give-up leaves the request without a
        // definitive answer.
        let maybe_applied = sent_before || called.maybe_applied;
        let message = self.last.message.clone();
        match called.end {
            CallEnd::Answered(verdict) => return self.answered(remaining, verdict, permit).await,
            CallEnd::ThrottledOut { after } => {
                let text = format!(
                    "gave up after {} attempts in {}s (retry.max_elapsed_secs): {message}",
                    self.attempts,
                    after.as_secs()
                );
                self.give_up(&remaining, text, maybe_applied);
            }
            CallEnd::TransientOut => {
                let text = format!("gave up after {} attempts: {message}", self.attempts);
                self.give_up(&remaining, text, true);
            }
            CallEnd::Held(block) => {
                let outcome = blocked(&block, &self.last, self.attempts, maybe_applied);
                self.settle(&remaining, outcome);
            }
            CallEnd::NoToken(error) => {
                shared.abort(error.to_string());
                return Flow::Stop;
            }
            CallEnd::Stopped => return Flow::Stop,
        }
        Flow::Next
    }

    /// The retries ran out. `in_doubt`: an attempt may have been applied, so the request stays
    /// unanswered (its ID carried to the next run) and this run asks for its licenses no more.
    fn give_up(&mut self, remaining: &[usize], text: String, in_doubt: bool) {
        if in_doubt {
            let licenses: Vec<_> = remaining.iter().map(|&op| self.license(op)).collect();
            self.unanswered.extend(licenses);
        }
        let outcome = OperationOutcome {
            unanswered: in_doubt,
            ..self.failed(text)
        };
        self.settle(remaining, outcome);
    }

    /// What a definitive answer (SPEC §5) does to the pass's operations and to the passes left.
    async fn answered(
        &mut self,
        mut remaining: Vec<usize>,
        verdict: Verdict,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Flow {
        let (shared, work) = (self.shared, self.work);
        let group = &work.request;
        let message = self.last.message.clone();
        match verdict {
            Verdict::Succeeded { warnings } => {
                let note = match &self.location {
                    Some(fix) if fix.answered => format!(
                        "usage location set to {} (the API refused the license without one), \
                         then sent again",
                        fix.location
                    ),
                    _ => String::new(),
                };
                let outcome = OperationOutcome {
                    warnings,
                    ..self
                        .last
                        .outcome(OperationStatus::Succeeded, self.attempts, note)
                };
                self.settle(&remaining, outcome);
            }
            Verdict::Unauthorized | Verdict::WrongCredential => {
                // The answer spent this request ID (the docs reset it after any response):
                // a resumed run gets a new one, recorded before it could be used.
                begin_passes(shared, work.group, vec![new_pass(remaining)], Vec::new()).await;
                shared.abort(credential_abort(&verdict, message));
                return Flow::Stop;
            }
            Verdict::CustomerForbidden | Verdict::CustomerNotFound => {
                shared.block_customer(
                    group.customer_id,
                    CustomerBlock {
                        http_status: self.last.http_status,
                        error_code: self.last.error_code.clone(),
                        message: message.clone(),
                    },
                );
                let outcome = self.failed(message);
                self.settle(&remaining, outcome);
            }
            Verdict::SeatsExhausted { sku } => {
                let named = sku.and_then(|sku| {
                    remaining
                        .iter()
                        .position(|&op| group.operations[op].sku_id == sku)
                });
                match named {
                    // Only the named SKU is short: fail it, re-send the rest as a new request.
                    Some(position) if remaining.len() > 1 => {
                        let op = remaining.remove(position);
                        let outcome =
                            self.failed(format!("{message} (SKU {})", group.operations[op].sku_id));
                        self.outcomes[op] = Some(outcome.clone());
                        let rest = new_pass(remaining);
                        if !begin_passes(
                            shared,
                            work.group,
                            vec![rest.clone()],
                            vec![(op, outcome)],
                        )
                        .await
                        {
                            return Flow::Stop;
                        }
                        self.passes.push_front(rest);
                    }
                    _ => {
                        let outcome = self.failed(message);
                        self.settle(&remaining, outcome);
                    }
                }
            }
            // A 400 the API does not attribute to one SKU: send each SKU on its own, so every
            // row gets its own true outcome.
            Verdict::Rejected if self.last.http_status == Some(400) && remaining.len() > 1 => {
                let singles: Vec<Pass> = remaining.iter().map(|&op| new_pass(vec![op])).collect();
                if !begin_passes(shared, work.group, singles.clone(), Vec::new()).await {
                    return Flow::Stop;
                }
                tracing::info!(
                    customer = %group.customer_id, user = %group.user,
                    "HTTP 400 for {} SKUs together; sending them one by one", remaining.len()
                );
                for single in singles.into_iter().rev() {
                    self.passes.push_front(single);
                }
            }
            Verdict::UsageLocationMissing => {
                let default = shared.calls.settings.default_usage_location.as_ref();
                match work
                    .location
                    .choose(default, self.location.as_ref(), &message)
                {
                    LocationChoice::Fail(text) => {
                        let outcome = self.failed(text);
                        self.settle(&remaining, outcome);
                    }
                    LocationChoice::Give(location) => {
                        let fix = LocationFix {
                            location,
                            request_id: Uuid::new_v4(),
                            answered: false,
                        };
                        // The PATCH and the pass after it are recorded before either goes out.
                        let again = new_pass(remaining);
                        if !record_location(shared, work.group, fix.clone(), vec![again.clone()])
                            .await
                        {
                            return Flow::Stop;
                        }
                        self.passes.push_front(again);
                        return self.set_location(fix, permit).await;
                    }
                }
            }
            // The call ends on the last two only by its retries running out (above).
            Verdict::UserNotFound
            | Verdict::Rejected
            | Verdict::Throttled { .. }
            | Verdict::Transient => {
                let outcome = self.failed(message);
                self.settle(&remaining, outcome);
            }
        }
        Flow::Next
    }

    /// Sends the PATCH that gives the user `fix.location`, recorded before; on its success the
    /// passes queued go on, otherwise each of their operations fails saying why.
    async fn set_location(
        &mut self,
        mut fix: LocationFix,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Flow {
        let (shared, work) = (self.shared, self.work);
        self.location = Some(fix.clone());
        let mut sending = Sending {
            shared,
            group: &work.request,
            request: Request::Location(&fix.location),
            request_id: fix.request_id,
            permit,
        };
        let called = shared.calls.call(CallKind::Write, &mut sending).await;
        self.attempts += called.attempts;
        if let Some(exchange) = &called.last {
            self.last.record(fix.request_id, exchange);
        }
        let message = self.last.message.clone();
        let cannot =
            |why: &str| format!("cannot set the usage location to {}: {why}", fix.location);
        let text = match called.end {
            CallEnd::Answered(Verdict::Succeeded { .. }) => {
                fix.answered = true;
                self.location = Some(fix.clone());
                tracing::info!(
                    customer = %work.request.customer_id, user = %work.request.user,
                    "usage location set to {}", fix.location
                );
                return match record_location(shared, work.group, fix, Vec::new()).await {
                    true => Flow::Next,
                    false => Flow::Stop,
                };
            }
            CallEnd::Answered(verdict @ (Verdict::Unauthorized | Verdict::WrongCredential)) => {
                // The answer spent the PATCH's request ID: a resume sends it under a new one.
                let again = LocationFix {
                    request_id: Uuid::new_v4(),
                    ..fix
                };
                record_location(shared, work.group, again, Vec::new()).await;
                shared.abort(credential_abort(&verdict, message));
                return Flow::Stop;
            }
            // Setting a user's location needs more than assigning its licenses (User
            // Administrator or Directory Writers, not License Administrator): a 403 here says
            // nothing of the customer's other users.
            CallEnd::Answered(Verdict::CustomerForbidden) => cannot(&format!(
                "{message} (setting a usage location needs the GDAP role User Administrator or \
                 Directory Writers; or set it in the Microsoft 365 admin center)"
            )),
            CallEnd::Answered(Verdict::CustomerNotFound) => {
                shared.block_customer(
                    work.request.customer_id,
                    CustomerBlock {
                        http_status: self.last.http_status,
                        error_code: self.last.error_code.clone(),
                        message: message.clone(),
                    },
                );
                cannot(&message)
            }
            CallEnd::Answered(_) => cannot(&message),
            CallEnd::ThrottledOut { after } => cannot(&format!(
                "gave up after {} attempts in {}s (retry.max_elapsed_secs): {message}",
                self.attempts,
                after.as_secs()
            )),
            CallEnd::TransientOut => cannot(&format!(
                "gave up after {} attempts: {message}",
                self.attempts
            )),
            CallEnd::Held(block) => {
                for pass in std::mem::take(&mut self.passes) {
                    let outcome = blocked(&block, &self.last, self.attempts, pass.sent_before);
                    self.settle(&pass.operations, outcome);
                }
                return Flow::Next;
            }
            CallEnd::NoToken(error) => {
                shared.abort(error.to_string());
                return Flow::Stop;
            }
            CallEnd::Stopped => return Flow::Stop,
        };
        // Without the location every pass of this user would be refused again. A pass that
        // may have gone out before a resume stays unanswered (re-sent under its ID next run).
        let outcome = self.failed(text);
        for pass in std::mem::take(&mut self.passes) {
            let outcome = OperationOutcome {
                unanswered: pass.sent_before,
                ..outcome.clone()
            };
            self.settle(&pass.operations, outcome);
        }
        Flow::Next
    }

    /// An outcome for each of the group's open operations: what was settled, else pending.
    fn finish(mut self) -> Vec<(usize, OperationOutcome)> {
        let last = &self.last;
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
        self.work
            .operations()
            .map(|op| {
                let outcome = self.outcomes[op].take().unwrap_or_else(|| {
                    last.outcome(
                        OperationStatus::Pending,
                        self.attempts,
                        pending_message.clone(),
                    )
                });
                (op, outcome)
            })
            .collect()
    }
}
