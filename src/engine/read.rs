//! Reads (subscribed SKUs, a user's licenses, deployment insights): one [`Dispatcher::call`]
//! each, like the license updates, and why a read gave no answer.

use std::sync::Arc;

use reqwest::Url;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Dispatcher;
use super::call::{Attempt, CallEnd, CallKind};
use crate::api::classify::Verdict;
use crate::api::{ApiClient, Exchange};
use crate::secret::Secret;

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
        let mut reading = Reading {
            client: &self.client,
            url,
            body: None,
        };
        let called = self.call(CallKind::Read, &mut reading).await;
        let failure = |kind| match &called.last {
            Some(exchange) => ReadFailure {
                kind,
                http_status: exchange.http_status,
                error_code: exchange.classified.error_code.clone(),
                message: exchange.classified.message.clone(),
            },
            None => ReadFailure::new(kind, "the run is stopping".into()),
        };
        match called.end {
            CallEnd::Answered(Verdict::Succeeded { .. }) => Ok(reading.body.unwrap_or(Value::Null)),
            CallEnd::Answered(Verdict::Unauthorized | Verdict::WrongCredential) => {
                Err(failure(ReadFailureKind::Credential))
            }
            CallEnd::Answered(Verdict::CustomerForbidden | Verdict::CustomerNotFound) => {
                Err(failure(ReadFailureKind::Customer))
            }
            CallEnd::Answered(_) | CallEnd::ThrottledOut { .. } | CallEnd::TransientOut => {
                Err(failure(ReadFailureKind::Unavailable))
            }
            CallEnd::Stopped => Err(failure(ReadFailureKind::Stopped)),
            CallEnd::NoToken(error) => Err(ReadFailure::new(
                ReadFailureKind::Credential,
                error.to_string(),
            )),
            CallEnd::Held(never) => match never {},
        }
    }
}

/// A GET and the body of its last answer.
struct Reading<'a> {
    client: &'a ApiClient,
    url: Url,
    body: Option<Value>,
}

impl Attempt for Reading<'_> {
    type Hold = std::convert::Infallible;

    fn lane(&self) -> Option<uuid::Uuid> {
        None
    }

    async fn send(&mut self, token: &Secret) -> Exchange {
        let (exchange, body) = self.client.get_json(self.url.clone(), token).await;
        self.body = body;
        exchange
    }
}
