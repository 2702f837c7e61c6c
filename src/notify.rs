//! The end-of-run notification of SPEC §13: one POST to a webhook (the summary JSON, a Teams
//! Adaptive Card message, or a Slack text), retried with backoff and bounded in time, so a dead
//! webhook never holds a nightly run open; what happens to it never changes the exit code. The
//! webhook URL carries the channel's signature: it is a [`Secret`], and no message names it.

use std::path::Path;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::{Value, json};

use crate::config::{NotifyFormat, NotifyOn, NotifySettings};
use crate::secret::Secret;
use crate::summary::{RunEnd, RunSummary, rfc3339, summary_json};

/// One try's limit (or the whole bound, when shorter): a webhook that accepts the connection
/// and never answers.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ATTEMPTS: usize = 4;

/// How a run ended, as the notification tells it.
pub enum Ending<'a> {
    /// The run planned (finished, aborted, interrupted): its summary.
    Planned {
        summary: &'a RunSummary,
        end: RunEnd<'a>,
    },
    /// Stopped before anything was sent (exit 2, 130): the error's text.
    Stopped {
        input: &'a Path,
        message: String,
        exit_code: u8,
        finished_at: SystemTime,
    },
}

impl Ending<'_> {
    fn exit_code(&self) -> u8 {
        match self {
            Ending::Planned { end, .. } => end.exit_code,
            Ending::Stopped { exit_code, .. } => *exit_code,
        }
    }

    /// The summary JSON of SPEC §13, or for a run stopped before planning, the same frame with
    /// `"outcome": "not_started"` and the error.
    fn document(&self) -> Value {
        match self {
            Ending::Planned { summary, end } => summary_json(summary, *end),
            Ending::Stopped {
                input,
                message,
                exit_code,
                finished_at,
            } => json!({
                "version": 1,
                "run": null,
                "outcome": "not_started",
                "exit_code": exit_code,
                "error": message,
                "finished_at": rfc3339(*finished_at),
                "input": input.display().to_string(),
            }),
        }
    }
}

/// Whether a run that ends with `exit_code` is notified (`notify.on`).
pub fn wanted(settings: &NotifySettings, exit_code: u8) -> bool {
    settings.webhook.is_some()
        && match settings.on {
            NotifyOn::Always => true,
            NotifyOn::Problems => exit_code != 0,
        }
}

/// The body posted for `ending` in `format`.
pub fn body(format: NotifyFormat, ending: &Ending<'_>) -> Value {
    let document = ending.document();
    match format {
        NotifyFormat::Json => document,
        NotifyFormat::Slack => json!({ "text": lines(&document).join("\n") }),
        NotifyFormat::Teams => teams_card(&document),
    }
}

/// The title: what happened to which sheet.
fn title(document: &Value) -> String {
    let outcome = document["outcome"].as_str().unwrap_or("?");
    let input = document["input"].as_str().unwrap_or("?");
    let code = &document["exit_code"];
    match outcome {
        "not_started" => format!("license-batch: {input} was not run (exit {code})"),
        outcome => format!("license-batch: {input} {outcome} (exit {code})"),
    }
}

/// The figures a person reads: rows by status, requests, top errors, the report's path.
fn facts(document: &Value) -> Vec<(String, String)> {
    let mut facts = Vec::new();
    if let Some(error) = document["error"].as_str() {
        facts.push(("error".to_string(), error.to_string()));
        return facts;
    }
    let rows = &document["rows"];
    let statuses = ["succeeded", "failed", "invalid", "skipped", "pending"];
    facts.push((
        "rows".to_string(),
        format!(
            "{} in all: {}",
            rows["total"],
            statuses
                .iter()
                .map(|status| format!("{} {status}", rows[*status]))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    let requests = &document["requests"];
    facts.push((
        "requests".to_string(),
        format!(
            "{} license updates, {} reads, {} retries, {} throttled",
            requests["license_updates"],
            requests["reads"],
            requests["retries"],
            requests["throttled"]
        ),
    ));
    if let Some(errors) = document["top_errors"].as_array()
        && !errors.is_empty()
    {
        let text = errors
            .iter()
            .take(5)
            .map(|e| {
                let code = e["code"].as_str().unwrap_or("?");
                match e["message"].as_str().filter(|m| !m.is_empty()) {
                    Some(message) => format!("{code} × {} ({message})", e["count"]),
                    None => format!("{code} × {}", e["count"]),
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        facts.push(("top errors".to_string(), text));
    }
    if let Some(report) = document["report"].as_str() {
        facts.push(("report".to_string(), report.to_string()));
    }
    facts
}

fn lines(document: &Value) -> Vec<String> {
    let mut lines = vec![title(document)];
    lines.extend(
        facts(document)
            .into_iter()
            .map(|(name, value)| format!("{name}: {value}")),
    );
    lines
}

/// A Teams message carrying an Adaptive Card: the title, then the facts.
fn teams_card(document: &Value) -> Value {
    let facts: Vec<Value> = facts(document)
        .into_iter()
        .map(|(title, value)| json!({ "title": title, "value": value }))
        .collect();
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {
                        "type": "TextBlock",
                        "text": title(document),
                        "weight": "Bolder",
                        "size": "Medium",
                        "wrap": true,
                    },
                    { "type": "FactSet", "facts": facts },
                ],
            },
        }],
    })
}

/// Why a notification was not delivered; never names the URL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotifyError {
    #[error("the webhook refused it: HTTP {0}")]
    Refused(u16),
    #[error("no answer from the webhook after {attempts} tries: {reason}")]
    Unanswered { attempts: usize, reason: String },
    #[error("the webhook did not take it within {0:?}")]
    OutOfTime(Duration),
}

/// Posts `body` to `webhook`: retried on no answer, 429 and 5xx with exponential backoff, at
/// most [`MAX_ATTEMPTS`] tries, all within `bound`.
pub async fn deliver(webhook: &Secret, body: &Value, bound: Duration) -> Result<(), NotifyError> {
    let attempt_timeout = ATTEMPT_TIMEOUT.min(bound);
    match tokio::time::timeout(bound, deliver_unbounded(webhook, body, attempt_timeout)).await {
        Ok(result) => result,
        Err(_) => Err(NotifyError::OutOfTime(bound)),
    }
}

async fn deliver_unbounded(
    webhook: &Secret,
    body: &Value,
    attempt_timeout: Duration,
) -> Result<(), NotifyError> {
    let http = reqwest::Client::builder()
        .timeout(attempt_timeout)
        .build()
        .map_err(|e| NotifyError::Unanswered {
            attempts: 0,
            reason: e.without_url().to_string(),
        })?;
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(4))
        .with_jitter()
        .with_max_times(MAX_ATTEMPTS - 1)
        .build();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let reason = match http.post(webhook.expose()).json(body).send().await {
            Ok(answer) if answer.status().is_success() => return Ok(()),
            Ok(answer)
                if answer.status().is_server_error()
                    || answer.status() == reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                format!("HTTP {}", answer.status().as_u16())
            }
            Ok(answer) => return Err(NotifyError::Refused(answer.status().as_u16())),
            // reqwest's message names the URL; the URL is the secret.
            Err(error) => error.without_url().to_string(),
        };
        match delays.next() {
            Some(delay) => {
                tracing::debug!(
                    "notification try {attempts} failed ({reason}); again in {delay:?}"
                );
                tokio::time::sleep(delay).await;
            }
            None => return Err(NotifyError::Unanswered { attempts, reason }),
        }
    }
}

/// Notifies the end of a run when `settings` ask for it; says on stderr (and in the log) when it
/// could not. Never fails: the exit code stays the run's.
pub async fn notify(settings: &NotifySettings, ending: Ending<'_>) {
    if !wanted(settings, ending.exit_code()) {
        return;
    }
    let Some(webhook) = &settings.webhook else {
        return;
    };
    let payload = body(settings.format, &ending);
    match deliver(webhook, &payload, settings.timeout).await {
        Ok(()) => tracing::info!("notification sent to the webhook"),
        Err(error) => {
            tracing::warn!("the notification was not delivered: {error}");
            eprintln!("license-batch: warning: the notification was not delivered: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::a_night;

    fn planned(summary: &RunSummary) -> Ending<'_> {
        Ending::Planned {
            summary,
            end: RunEnd {
                input: Path::new("sheets/Émilie.csv"),
                exit_code: 1,
                // Before the night's 61 s elapsed: the start would be before 1970.
                finished_at: SystemTime::UNIX_EPOCH,
            },
        }
    }

    #[test]
    fn problems_only_notifies_a_night_that_did_not_end_in_0() {
        let mut settings = NotifySettings {
            webhook: Some(Secret::new("https://hooks.example/secret")),
            format: NotifyFormat::Json,
            on: NotifyOn::Problems,
            timeout: Duration::from_secs(1),
        };
        assert!(!wanted(&settings, 0));
        assert!(wanted(&settings, 1));
        assert!(wanted(&settings, 2));
        settings.on = NotifyOn::Always;
        assert!(wanted(&settings, 0));
        settings.webhook = None;
        assert!(!wanted(&settings, 1), "no webhook, no notification");
    }

    #[test]
    fn each_format_carries_the_counts_the_top_error_and_the_report() {
        let summary = a_night();
        let json = body(NotifyFormat::Json, &planned(&summary));
        assert_eq!(json["rows"]["failed"], 2);
        assert_eq!(json["exit_code"], 1);
        let slack = body(NotifyFormat::Slack, &planned(&summary));
        let text = slack["text"].as_str().unwrap();
        for needle in [
            "sheets/Émilie.csv finished (exit 1)",
            "43 in all: 40 succeeded, 2 failed, 1 invalid, 0 skipped, 0 pending",
            "44 license updates",
            "60012 × 2 (out of licenses",
            "report: sheets/Émilie.report.csv",
        ] {
            assert!(text.contains(needle), "{needle} not in {text}");
        }
        let teams = body(NotifyFormat::Teams, &planned(&summary));
        assert_eq!(teams["type"], "message");
        let attachment = &teams["attachments"][0];
        assert_eq!(
            attachment["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &attachment["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        let facts = card["body"][1]["facts"].as_array().unwrap();
        let fact = |name: &str| {
            facts
                .iter()
                .find(|f| f["title"] == name)
                .map(|f| f["value"].as_str().unwrap().to_string())
        };
        assert_eq!(fact("report").as_deref(), Some("sheets/Émilie.report.csv"));
        assert!(fact("top errors").unwrap().contains("60012 × 2"));
    }

    #[test]
    fn a_run_stopped_before_planning_says_why() {
        let ending = Ending::Stopped {
            input: Path::new("tonight.csv"),
            message: "the guard stopped this run: …".into(),
            exit_code: 2,
            finished_at: SystemTime::UNIX_EPOCH,
        };
        let slack = body(NotifyFormat::Slack, &ending);
        let text = slack["text"].as_str().unwrap();
        assert!(text.contains("tonight.csv was not run (exit 2)"), "{text}");
        assert!(text.contains("error: the guard stopped this run"), "{text}");
        let json = body(NotifyFormat::Json, &ending);
        assert_eq!(json["outcome"], "not_started");
    }
}
