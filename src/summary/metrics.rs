//! The run's figures for node_exporter's textfile collector (SPEC §13, `--metrics-file`), in
//! the Prometheus text format, encoded by `prometheus-client` rather than by hand.

use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::RunSummary;
use crate::outcome::RowStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

fn gauge(value: f64) -> Gauge<f64, AtomicU64> {
    let gauge = Gauge::<f64, AtomicU64>::default();
    gauge.set(value);
    gauge
}

fn count(value: u64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

/// The text of the metrics file: every metric with `# HELP` and `# TYPE`, every row status
/// (zeros included), so an alert on `license_batch_rows{status="failed"}` always has a value.
pub fn metrics_text(summary: &RunSummary, exit_code: u8, finished_at: SystemTime) -> String {
    let mut registry = Registry::with_prefix("license_batch");
    let timestamp = finished_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    registry.register(
        "last_run_timestamp_seconds",
        "When the last run ended (Unix time)",
        gauge(timestamp),
    );
    registry.register(
        "last_run_exit_code",
        "Exit code of the last run (0 all succeeded, 1 some not, 2 nothing sent, 3 aborted, 130 interrupted)",
        count(u64::from(exit_code)),
    );
    registry.register(
        "last_run_duration_seconds",
        "How long the last run took",
        gauge(summary.elapsed.as_secs_f64()),
    );
    let rows = Family::<StatusLabel, Gauge>::default();
    for status in RowStatus::ALL {
        rows.get_or_create(&StatusLabel {
            status: status.as_str().into(),
        })
        .set(i64::try_from(summary.count(status)).unwrap_or(i64::MAX));
    }
    registry.register("rows", "Rows of the last run's sheet by status", rows);
    let requests = Family::<KindLabel, Gauge>::default();
    for (kind, value) in [
        ("license_update", summary.stats.requests),
        ("read", summary.stats.reads),
    ] {
        requests
            .get_or_create(&KindLabel { kind: kind.into() })
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }
    registry.register("requests", "Requests the last run sent, by kind", requests);
    registry.register(
        "retries",
        "Requests the last run sent again (after a 429, a transient error or a renewal)",
        count(summary.stats.retries),
    );
    registry.register(
        "throttled",
        "Answers 429 the last run got",
        count(summary.stats.throttled),
    );
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::summary::json::tests::a_night;

    /// The value of the sample `name` (with its labels, as written) in `text`.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }

    #[test]
    fn every_metric_of_the_spec_is_there_with_its_help_and_type() {
        let finished_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let text = metrics_text(&a_night(), 1, finished_at);
        for name in [
            "last_run_timestamp_seconds",
            "last_run_exit_code",
            "last_run_duration_seconds",
            "rows",
            "requests",
            "retries",
            "throttled",
        ] {
            let name = format!("license_batch_{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            assert!(
                text.contains(&format!("# TYPE {name} gauge")),
                "{name}:\n{text}"
            );
        }
        assert_eq!(
            sample(&text, "license_batch_last_run_timestamp_seconds"),
            Some(1_796_000_000.0)
        );
        assert_eq!(sample(&text, "license_batch_last_run_exit_code"), Some(1.0));
        assert_eq!(
            sample(&text, "license_batch_last_run_duration_seconds"),
            Some(61.25)
        );
        for (status, rows) in [
            ("succeeded", 40.0),
            ("failed", 2.0),
            ("invalid", 1.0),
            ("skipped", 0.0),
            ("pending", 0.0),
        ] {
            let name = format!("license_batch_rows{{status=\"{status}\"}}");
            assert_eq!(sample(&text, &name), Some(rows), "{name}:\n{text}");
        }
        assert_eq!(
            sample(&text, "license_batch_requests{kind=\"license_update\"}"),
            Some(44.0)
        );
        assert_eq!(
            sample(&text, "license_batch_requests{kind=\"read\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "license_batch_retries"), Some(3.0));
        assert_eq!(sample(&text, "license_batch_throttled"), Some(2.0));
    }
}
