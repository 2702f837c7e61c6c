//! Operator output: `tracing` logs (text or JSON, `RUST_LOG` respected) routed through
//! `tracing-indicatif` so log lines never tear the progress bar, and the bar itself
//! (rows done/total, rate, ETA, retries, throttling waits), hidden when stderr is no terminal.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressState, ProgressStyle};
use tracing::Span;
use tracing_indicatif::IndicatifLayer;
use tracing_indicatif::filter::{IndicatifFilter, hide_indicatif_span_fields};
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::engine::Observer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `verbosity`: -1 quiet, 0 normal, 1 debug, 2+ trace.
pub fn init_logging(format: LogFormat, verbosity: i8) {
    let default = match verbosity {
        i8::MIN..=-1 => "error",
        0 => "warn,license_batch=info",
        1 => "warn,license_batch=debug",
        _ => "info,license_batch=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    match format {
        LogFormat::Json => {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_writer(std::io::stderr),
                )
                .try_init();
        }
        LogFormat::Text => {
            let indicatif = IndicatifLayer::new()
                .with_span_field_formatter(hide_indicatif_span_fields(DefaultFields::new()));
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_target(false)
                        .with_ansi(std::io::stderr().is_terminal())
                        .with_writer(indicatif.get_stderr_writer()),
                )
                .with(indicatif.with_filter(IndicatifFilter::new(false)))
                .try_init();
        }
    }
}

/// The run's progress bar, fed by the engine.
/// Rows per second as a person reads it: whole numbers from 10 up, one decimal below.
fn rate_text(per_sec: f64) -> String {
    match per_sec {
        r if !r.is_finite() || r <= 0.0 => "0/s".to_string(),
        r if r >= 10.0 => format!("{r:.0}/s"),
        r => format!("{r:.1}/s"),
    }
}

pub struct ProgressBar {
    span: Span,
    retries: AtomicU64,
    throttled: AtomicU64,
    throttle_wait_ms: AtomicU64,
}

impl ProgressBar {
    pub fn start(total_rows: u64, already_done: u64) -> ProgressBar {
        let span = tracing::info_span!("run", indicatif.pb_show = tracing::field::Empty);
        span.pb_set_style(
            &ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows ({rate}, ETA {eta}) {msg}",
            )
            .expect("valid template")
            // indicatif's `{per_sec}` prints four decimals (`12.2873/s`).
            .with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = out.write_str(&rate_text(state.per_sec()));
            }),
        );
        span.pb_set_length(total_rows);
        span.pb_set_position(already_done);
        span.pb_start();
        ProgressBar {
            span,
            retries: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            throttle_wait_ms: AtomicU64::new(0),
        }
    }

    fn refresh_message(&self) {
        let retries = self.retries.load(Ordering::Relaxed);
        let throttled = self.throttled.load(Ordering::Relaxed);
        let waited = self.throttle_wait_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        self.span.pb_set_message(&format!(
            "retries {retries}, 429s {throttled} (waits {waited:.0}s)"
        ));
    }
}

impl Observer for ProgressBar {
    fn group_finished(&self, rows: u64) {
        self.span.pb_inc(rows);
    }

    fn retrying(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        self.refresh_message();
    }

    fn throttled(&self, wait: Duration) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        self.throttle_wait_ms
            .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
        self.refresh_message();
    }
}

#[cfg(test)]
mod tests {
    use super::rate_text;

    #[test]
    fn the_rate_reads_like_a_rate() {
        assert_eq!(rate_text(12.2873), "12/s");
        assert_eq!(rate_text(3.06), "3.1/s");
        assert_eq!(rate_text(0.0), "0/s");
        assert_eq!(rate_text(f64::NAN), "0/s");
        assert_eq!(rate_text(1234.4), "1234/s");
    }
}
