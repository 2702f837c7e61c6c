//! The worker pool: takes groups from the plan, sends each as one LicenseUpdate through the
//! pacer, retries with the same request ID, and turns every answer into per-operation outcomes.
//! Customer-level refusals stop traffic to that customer; credential failures abort the run.

pub mod pacing;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api::classify::Verdict;
use crate::api::models::LicenseUpdateRequest;
use crate::api::{ApiClient, Exchange};
use crate::config::Settings;
use crate::plan::Group;
use crate::summary::Completion;
use pacing::Pacer;

/// Where an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationStatus {
    Succeeded,
    Failed,
    /// No definitive answer: the run was aborted or interrupted first.
    Pending,
}

/// The outcome of one operation (a SKU for a user), shared by all rows that asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationOutcome {
    pub status: OperationStatus,
    pub http_status: Option<u16>,
    pub error_code: Option<String>,
    pub message: String,
    /// HTTP attempts made for the group in this run.
    pub attempts: u32,
    pub request_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub finished_at: Option<SystemTime>,
    pub warnings: Vec<String>,
}

impl OperationOutcome {
    pub fn pending(message: impl Into<String>) -> Self {
        OperationOutcome {
            status: OperationStatus::Pending,
            http_status: None,
            error_code: None,
            message: message.into(),
            attempts: 0,
            request_id: None,
            correlation_id: None,
            finished_at: None,
            warnings: Vec::new(),
        }
    }
}

/// What the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub requests_per_minute: u32,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub max_elapsed: Duration,
    pub min_retry_delay: Duration,
    pub max_failure_ratio: f64,
    pub failure_ratio_min_groups: u64,
}

impl From<&Settings> for EngineSettings {
    fn from(s: &Settings) -> Self {
        EngineSettings {
            requests_per_minute: s.limits.requests_per_minute,
            concurrency: s.limits.concurrency,
            max_attempts: s.retry.max_attempts,
            max_elapsed: s.retry.max_elapsed,
            min_retry_delay: s.retry.min_delay,
            max_failure_ratio: s.run.max_failure_ratio,
            failure_ratio_min_groups: s.run.failure_ratio_min_groups,
        }
    }
}

/// Live notifications for the progress display.
pub trait Observer: Send + Sync {
    fn group_finished(&self, _rows: u64, _operations: &[OperationOutcome]) {}
    fn retrying(&self) {}
    fn throttled(&self, _wait: Duration) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// Counters of the whole run.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    pub token_renewals_after_401: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
    pub token_renewals_after_401: u64,
}

impl Stats {
    fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            token_renewals_after_401: self.token_renewals_after_401.load(Ordering::Relaxed),
        }
    }
}

/// The engine's result: an outcome for every operation of every group.
#[derive(Debug)]
pub struct EngineReport {
    /// `outcomes[group][operation]`, parallel to the plan.
    pub outcomes: Vec<Vec<OperationOutcome>>,
    pub stats: StatsSnapshot,
    pub completion: Completion,
}

/// Why a customer gets no more requests.
#[derive(Debug, Clone)]
struct CustomerBlock {
    http_status: Option<u16>,
    error_code: Option<String>,
    message: String,
}

struct Shared {
    groups: Arc<Vec<Group>>,
    client: Arc<ApiClient>,
    settings: EngineSettings,
    pacer: Pacer,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
    abort_reason: Mutex<Option<String>>,
    blocked: Mutex<HashMap<Uuid, CustomerBlock>>,
    next_group: AtomicUsize,
    stats: Stats,
}

impl Shared {
    /// Stops the run: no new group starts, waits end, remaining operations stay pending.
    fn abort(&self, reason: String) {
        let mut current = self.abort_reason.lock().expect("abort lock");
        if current.is_none() {
            tracing::error!("aborting the run: {reason}");
            *current = Some(reason);
        }
        self.stop.cancel();
    }

    fn customer_block(&self, customer: Uuid) -> Option<CustomerBlock> {
        self.blocked
            .lock()
            .expect("block lock")
            .get(&customer)
            .cloned()
    }

    fn retry_policy(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.settings.min_retry_delay)
            .with_max_delay(Duration::from_secs(60))
            .with_max_times(self.settings.max_attempts.saturating_sub(1) as usize)
            .with_total_delay(Some(self.settings.max_elapsed))
    }
}

/// Runs every group through the pool. `stop` is the interrupt: once cancelled, no new group
/// starts and requests already sent are allowed to finish.
pub async fn execute(
    groups: Arc<Vec<Group>>,
    client: Arc<ApiClient>,
    settings: EngineSettings,
    observer: Arc<dyn Observer>,
    stop: CancellationToken,
) -> EngineReport {
    let group_count = groups.len();
    let shared = Arc::new(Shared {
        pacer: Pacer::new(settings.requests_per_minute),
        groups,
        client,
        observer,
        stop,
        abort_reason: Mutex::new(None),
        blocked: Mutex::new(HashMap::new()),
        next_group: AtomicUsize::new(0),
        stats: Stats::default(),
        settings,
    });

    let (results_tx, mut results) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for _ in 0..shared.settings.concurrency.min(group_count.max(1)) {
        let shared = Arc::clone(&shared);
        let results_tx = results_tx.clone();
        workers.push(tokio::spawn(async move {
            loop {
                if shared.stop.is_cancelled() {
                    break;
                }
                let index = shared.next_group.fetch_add(1, Ordering::Relaxed);
                if index >= shared.groups.len() {
                    break;
                }
                let outcomes = run_group(&shared, index).await;
                if results_tx.send((index, outcomes)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(results_tx);

    let mut outcomes: Vec<Option<Vec<OperationOutcome>>> = vec![None; group_count];
    let (mut definitive, mut failed) = (0u64, 0u64);
    let mut failure_codes: HashMap<String, u64> = HashMap::new();
    while let Some((index, group_outcomes)) = results.recv().await {
        let rows = shared.groups[index]
            .operations
            .iter()
            .map(|op| op.rows.len() as u64)
            .sum();
        shared.observer.group_finished(rows, &group_outcomes);
        let statuses: Vec<_> = group_outcomes.iter().map(|o| o.status).collect();
        if !statuses.contains(&OperationStatus::Pending) {
            definitive += 1;
            if let Some(bad) = group_outcomes
                .iter()
                .find(|o| o.status == OperationStatus::Failed)
            {
                failed += 1;
                let key = bad.error_code.clone().unwrap_or_else(|| {
                    bad.http_status
                        .map_or("no response".into(), |s| format!("HTTP {s}"))
                });
                *failure_codes.entry(key).or_default() += 1;
            }
        }
        if definitive >= shared.settings.failure_ratio_min_groups
            && definitive > 0
            && failed as f64 / definitive as f64 > shared.settings.max_failure_ratio
        {
            let (top, count) = failure_codes
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(k, n)| (k.clone(), *n))
                .unwrap_or_default();
            shared.abort(format!(
                "failure threshold reached: {failed} of {definitive} groups failed (more than {:.0}%); \
                 most common: {top} ({count}). Fix the cause and run again to finish the pending rows",
                shared.settings.max_failure_ratio * 100.0
            ));
        }
        outcomes[index] = Some(group_outcomes);
    }
    for worker in workers {
        let _ = worker.await;
    }

    let reason = shared.abort_reason.lock().expect("abort lock").clone();
    let completion = match reason {
        Some(reason) => Completion::Aborted(reason),
        None if shared.stop.is_cancelled() => Completion::Interrupted,
        None => Completion::Finished,
    };
    let not_started = match &completion {
        Completion::Finished => "not sent",
        _ => "not sent: the run stopped first; run the same command again to finish it",
    };
    let outcomes = outcomes
        .into_iter()
        .zip(shared.groups.iter())
        .map(|(o, g)| {
            o.unwrap_or_else(|| vec![OperationOutcome::pending(not_started); g.operations.len()])
        })
        .collect();
    EngineReport {
        outcomes,
        stats: shared.stats.snapshot(),
        completion,
    }
}

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
        }
    }
}

/// Sleeps unless the run stops first; `false` when stopped.
async fn sleep_unless_stopped(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.cancelled() => false,
    }
}

async fn run_group(shared: &Shared, index: usize) -> Vec<OperationOutcome> {
    let group = &shared.groups[index];
    let operations = &group.operations;
    let mut outcomes: Vec<Option<OperationOutcome>> = vec![None; operations.len()];
    let mut remaining: Vec<usize> = (0..operations.len()).collect();
    let mut attempts = 0u32;
    let mut last = LastExchange::default();
    let fill = |outcomes: &mut Vec<Option<OperationOutcome>>,
                which: &[usize],
                outcome: OperationOutcome| {
        for &i in which {
            outcomes[i] = Some(outcome.clone());
        }
    };

    // Each pass sends the operations still open under one request ID. A new pass (new ID, new
    // payload) starts only after a definitive answer, as the API's idempotency rules require.
    'request: while !remaining.is_empty() {
        let request_id = Uuid::new_v4();
        let body = LicenseUpdateRequest::for_operations(remaining.iter().map(|&i| &operations[i]));
        let started = Instant::now();
        let mut backoff = shared.retry_policy().build();
        let mut renewed_after_401 = false;
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
                };
                fill(&mut outcomes, &remaining, outcome);
                break 'request;
            }
            if !shared.pacer.admit(&shared.stop).await {
                break 'request;
            }
            let token = match shared.client.tokens.token().await {
                Ok(token) => token,
                Err(error) => {
                    shared.abort(error.to_string());
                    break 'request;
                }
            };
            let exchange = shared
                .client
                .send_license_update(group.customer_id, &group.user, &body, request_id, &token)
                .await;
            attempts += 1;
            shared.stats.requests.fetch_add(1, Ordering::Relaxed);
            last.record(request_id, &exchange);
            let message = exchange.classified.message.clone();
            tracing::debug!(
                customer = %group.customer_id, user = %group.user, %request_id,
                status = ?exchange.http_status, "{}", if message.is_empty() { "ok" } else { &message }
            );
            let verdict = exchange.classified.verdict;
            if verdict != Verdict::Unauthorized {
                renewed_after_401 = false;
            }
            match verdict {
                Verdict::Succeeded { warnings } => {
                    let mut outcome =
                        last.outcome(OperationStatus::Succeeded, attempts, String::new());
                    outcome.warnings = warnings;
                    fill(&mut outcomes, &remaining, outcome);
                    break 'request;
                }
                Verdict::Throttled { retry_after } => {
                    shared.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    shared.observer.throttled(retry_after);
                    tracing::info!("throttled (429): the whole pool waits {retry_after:?}");
                    shared.pacer.pause_for(retry_after);
                    if started.elapsed() + retry_after > shared.settings.max_elapsed {
                        let text = format!(
                            "gave up after {attempts} attempts in {}s (retry.max_elapsed_secs): {message}",
                            started.elapsed().as_secs()
                        );
                        fill(
                            &mut outcomes,
                            &remaining,
                            last.outcome(OperationStatus::Failed, attempts, text),
                        );
                        break 'request;
                    }
                }
                Verdict::Transient => match backoff.next() {
                    Some(wait) if started.elapsed() + wait <= shared.settings.max_elapsed => {
                        shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                        shared.observer.retrying();
                        if !sleep_unless_stopped(wait, &shared.stop).await {
                            break 'request;
                        }
                    }
                    _ => {
                        let text = format!("gave up after {attempts} attempts: {message}");
                        fill(
                            &mut outcomes,
                            &remaining,
                            last.outcome(OperationStatus::Failed, attempts, text),
                        );
                        break 'request;
                    }
                },
                Verdict::Unauthorized if !renewed_after_401 => {
                    renewed_after_401 = true;
                    shared
                        .stats
                        .token_renewals_after_401
                        .fetch_add(1, Ordering::Relaxed);
                    if let Err(error) = shared.client.tokens.renew_after_rejection(&token).await {
                        shared.abort(error.to_string());
                        break 'request;
                    }
                }
                Verdict::Unauthorized => {
                    shared.abort(
                        "the API refused a freshly renewed access token (HTTP 401 twice); check that \
                         the app registration has Partner Center API permission and the consent is valid"
                            .into(),
                    );
                    break 'request;
                }
                Verdict::WrongCredential => {
                    shared.abort(message);
                    break 'request;
                }
                Verdict::CustomerForbidden | Verdict::CustomerNotFound => {
                    shared.blocked.lock().expect("block lock").insert(
                        group.customer_id,
                        CustomerBlock {
                            http_status: exchange.http_status,
                            error_code: exchange.classified.error_code.clone(),
                            message: message.clone(),
                        },
                    );
                    fill(
                        &mut outcomes,
                        &remaining,
                        last.outcome(OperationStatus::Failed, attempts, message),
                    );
                    break 'request;
                }
                Verdict::UserNotFound | Verdict::Rejected => {
                    fill(
                        &mut outcomes,
                        &remaining,
                        last.outcome(OperationStatus::Failed, attempts, message),
                    );
                    break 'request;
                }
                Verdict::SeatsExhausted { sku } => {
                    let named = sku.and_then(|sku| {
                        remaining.iter().position(|&i| operations[i].sku_id == sku)
                    });
                    match named {
                        // Only the named SKU is short: fail it, re-send the rest as a new request.
                        Some(position) if remaining.len() > 1 => {
                            let op = remaining.remove(position);
                            let text = format!("{message} (SKU {})", operations[op].sku_id);
                            outcomes[op] =
                                Some(last.outcome(OperationStatus::Failed, attempts, text));
                            continue 'request;
                        }
                        _ => {
                            fill(
                                &mut outcomes,
                                &remaining,
                                last.outcome(OperationStatus::Failed, attempts, message),
                            );
                            break 'request;
                        }
                    }
                }
            }
        }
    }

    let pending_message = if last.request_id.is_some() {
        format!(
            "no definitive answer before the run stopped (last: {})",
            if last.message.is_empty() {
                "none"
            } else {
                &last.message
            }
        )
    } else {
        "not sent: the run stopped first; run the same command again to finish it".into()
    };
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                last.outcome(OperationStatus::Pending, attempts, pending_message.clone())
            })
        })
        .collect()
}
