//! Reads (subscribed SKUs, a user's licenses, deployment insights): paced by the same pacer as
//! the license updates, retried on 429 and transient errors, one token renewal on a 401.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use backon::BackoffBuilder;
use reqwest::Url;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Dispatcher;
use crate::api::classify::Verdict;

/// Why a read gave no answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ReadFailure {
    pub kind: ReadFailureKind,
    pub http_status: Option<u16>,
    pub error_code: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFailureKind {
    /// The customer refuses us or does not exist (403, 404 60003): nothing should be sent to it.
    Customer,
    /// The credential is unusable (token refused, 900316, 401 twice): every call would fail.
    Credential,
    /// Retries ran out, or another answer: the data is just not available now.
    Unavailable,
    /// The run is stopping.
    Stopped,
}

impl ReadFailure {
    fn new(kind: ReadFailureKind, message: String) -> Self {
        ReadFailure {
            kind,
            http_status: None,
            error_code: None,
            message,
        }
    }
}

impl Dispatcher {
    /// GETs every URL, as many at once as the pool starts with (`limits.concurrency`); results in input order.
    pub async fn read_all<K: Send + 'static>(
        self: &Arc<Self>,
        items: Vec<(K, Url)>,
    ) -> Vec<(K, Result<Value, ReadFailure>)> {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.initial));
        let mut reads = JoinSet::new();
        for (index, (key, url)) in items.into_iter().enumerate() {
            let calls = Arc::clone(self);
            let slots = Arc::clone(&slots);
            reads.spawn(async move {
                let _slot = slots
                    .acquire_owned()
                    .await
                    .expect("the semaphore stays open");
                (index, key, calls.read(url).await)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = reads.join_next().await {
            results.push(joined.expect("read tasks do not panic"));
        }
        results.sort_by_key(|(index, _, _)| *index);
        results
            .into_iter()
            .map(|(_, key, result)| (key, result))
            .collect()
    }

    /// GETs `url`, following the same rules as every other call of the run.
    pub async fn read(&self, url: Url) -> Result<Value, ReadFailure> {
        let started = Instant::now();
        let mut backoff = self.retry_policy().build();
        let mut untold = self.untold_throttle_backoff();
        let mut renewed_after_401 = false;
        loop {
            if !self.pacer.admit(None, &self.stop).await {
                return Err(ReadFailure::new(
                    ReadFailureKind::Stopped,
                    "the run is stopping".into(),
                ));
            }
            let token = self
                .client
                .tokens
                .token()
                .await
                .map_err(|e| ReadFailure::new(ReadFailureKind::Credential, e.to_string()))?;
            let sent_at = tokio::time::Instant::now();
            let (exchange, body) = self.client.get_json(url.clone(), &token).await;
            self.stats.reads.fetch_add(1, Ordering::Relaxed);
            let classified = exchange.classified;
            let failure = |kind| ReadFailure {
                kind,
                http_status: exchange.http_status,
                error_code: classified.error_code.clone(),
                message: classified.message.clone(),
            };
            if exchange.http_status.is_some() {
                self.stats.read_answered(sent_at.elapsed());
            }
            if exchange.http_status.is_some()
                && !matches!(classified.verdict, Verdict::Throttled { .. })
            {
                self.pacer.answered(None, sent_at);
            }
            match classified.verdict {
                Verdict::Succeeded { .. } => return Ok(body.unwrap_or(Value::Null)),
                Verdict::Throttled { retry_after } => {
                    let retry_after = retry_after
                        .or_else(|| untold.next())
                        .unwrap_or(std::time::Duration::from_secs(60));
                    self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    self.pacer.throttled(None, sent_at, retry_after);
                    if started.elapsed() + retry_after > self.settings.max_elapsed {
                        return Err(failure(ReadFailureKind::Unavailable));
                    }
                    // This call waits what it was told, from the answer on; the pool is slowed
                    // by the pacer.
                    tokio::select! {
                        biased;
                        _ = self.stop.cancelled() => return Err(failure(ReadFailureKind::Stopped)),
                        _ = tokio::time::sleep(retry_after) => {}
                    }
                }
                Verdict::Transient => match backoff.next() {
                    Some(wait) if started.elapsed() + wait <= self.settings.max_elapsed => {
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::select! {
                            biased;
                            _ = self.stop.cancelled() => return Err(failure(ReadFailureKind::Stopped)),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    _ => return Err(failure(ReadFailureKind::Unavailable)),
                },
                Verdict::Unauthorized if !renewed_after_401 => {
                    renewed_after_401 = true;
                    self.client
                        .tokens
                        .renew_after_rejection(&token)
                        .await
                        .map_err(|e| {
                            ReadFailure::new(ReadFailureKind::Credential, e.to_string())
                        })?;
                }
                Verdict::Unauthorized | Verdict::WrongCredential => {
                    return Err(failure(ReadFailureKind::Credential));
                }
                Verdict::CustomerForbidden | Verdict::CustomerNotFound => {
                    return Err(failure(ReadFailureKind::Customer));
                }
                Verdict::UserNotFound | Verdict::SeatsExhausted { .. } | Verdict::Rejected => {
                    return Err(failure(ReadFailureKind::Unavailable));
                }
            }
        }
    }
}
