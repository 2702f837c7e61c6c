//! Configuration: the TOML file, environment variables and defaults, resolved into [`Settings`].
//!
//! Precedence (SPEC §2): flags > environment > file > defaults. Flags and the env vars that
//! mirror them are applied by the CLI layer through [`Overrides`]; this module knows nothing of
//! the command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use crate::country::UsageLocation;
use crate::secret::Secret;

/// `run.max_removals` when not set: a sheet removing more licenses than this needs `--yes`.
pub const DEFAULT_MAX_REMOVALS: u64 = 50;

/// The limits of the guard (SPEC §13) a new run's plan is held against; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardLimits {
    /// License changes (assigns and removals) a run may send.
    pub max_changes: u64,
    /// Licenses a run may remove.
    pub max_removals: u64,
}

/// A configuration that cannot be used: which key or file, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What the seat preflight does about a shortage (`run.preflight`, `--preflight`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PreflightMode {
    /// Report it and send anyway; the API decides.
    #[default]
    Warn,
    /// Send only what fits; the excess rows are `skipped`.
    Strict,
}

/// The body the end-of-run notification posts (`notify.format`, SPEC §13).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// The summary JSON itself.
    #[default]
    Json,
    /// A Teams message with an Adaptive Card (a Teams workflow's "post to a channel" webhook).
    Teams,
    /// A Slack incoming webhook's `{"text": …}`.
    Slack,
}

/// Which runs notify (`notify.on`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    Always,
    /// Only a run whose exit code is not 0.
    #[default]
    Problems,
}

pub const DEFAULT_BASE_URL: &str = "https://api.partnercenter.microsoft.com";
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// The whole configuration as the file spells it; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub retry: RetrySection,
    #[serde(default)]
    pub run: RunSection,
    #[serde(default)]
    pub notify: NotifySection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    pub webhook_url_file: Option<PathBuf>,
    pub format: Option<NotifyFormat>,
    pub on: Option<NotifyOn>,
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub base_url: Option<String>,
    pub timeout_secs: Option<u64>,
    pub locale: Option<String>,
    pub kick_instant_on: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub authority: Option<String>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub token_endpoint: Option<TokenEndpoint>,
    pub refresh_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub requests_per_minute: Option<u32>,
    pub concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    pub max_attempts: Option<u32>,
    pub max_elapsed_secs: Option<u64>,
    pub min_delay_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub state_file: Option<PathBuf>,
    pub preflight: Option<PreflightMode>,
    pub insights: Option<bool>,
    pub max_failure_ratio: Option<f64>,
    pub failure_ratio_min_groups: Option<u64>,
    pub default_usage_location: Option<String>,
    pub summary_file: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
    pub max_changes: Option<u64>,
    pub max_removals: Option<u64>,
}

/// Which token endpoint of the authority the refresh-token grant goes to (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenEndpoint {
    V1,
    V2,
}

/// Values given on the command line (or the env vars clap maps onto them); `None` = not given.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub requests_per_minute: Option<u32>,
    pub concurrency: Option<usize>,
    pub state_file: Option<PathBuf>,
    pub preflight: Option<PreflightMode>,
    /// `Some(false)` for `--no-insights`.
    pub insights: Option<bool>,
    pub summary_file: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
    pub max_changes: Option<u64>,
    pub max_removals: Option<u64>,
}

/// The resolved configuration every lower layer works from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api: ApiSettings,
    pub auth: AuthSettings,
    pub limits: Limits,
    pub retry: RetrySettings,
    pub notify: NotifySettings,
    pub run: RunSettings,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub base_url: Url,
    pub timeout: Duration,
    pub locale: String,
    pub kick_instant_on: bool,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub authority: Url,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub token_endpoint: TokenEndpoint,
    pub refresh_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub requests_per_minute: u32,
    pub concurrency: Concurrency,
}

/// How many license updates may be in flight at once (`limits.concurrency`).
///
/// Set by the operator, it is exactly that many. Not set, the pool starts at the SPEC's 8 and
/// grows with the latency it measures to what the ceiling needs (Little's law: ceiling ×
/// seconds per call), up to [`Concurrency::MAX`]: the ceiling, not the pool, stays what
/// limits the pace, also when requests_per_minute is raised without thinking of the pool
/// (how far it grows: `engine::EngineSettings::pool_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// In flight at the start of a run, and for the reads before it.
    pub initial: usize,
    /// The most the pool grows to; `initial` when the operator set it.
    pub max: usize,
}

impl Concurrency {
    /// The start when nothing is set (SPEC §7).
    pub const DEFAULT: usize = 8;
    /// The most a pool may have in flight, set or grown.
    pub const MAX: usize = 256;

    /// Set by the operator (flag, environment or file): this many, never more.
    pub fn fixed(in_flight: usize) -> Self {
        Concurrency {
            initial: in_flight,
            max: in_flight,
        }
    }

    /// Not set: starts at [`Concurrency::DEFAULT`], grows with the latency up to
    /// [`Concurrency::MAX`].
    pub fn growing() -> Self {
        Concurrency {
            initial: Self::DEFAULT,
            max: Self::MAX,
        }
    }

    pub fn is_fixed(&self) -> bool {
        self.initial == self.max
    }
}

impl std::fmt::Display for Concurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_fixed() {
            write!(f, "{}", self.initial)
        } else {
            write!(
                f,
                "{} growing with latency up to {}",
                self.initial, self.max
            )
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub max_elapsed: Duration,
    /// First backoff delay of a transient retry; doubles (with jitter) up to 60 s.
    pub min_delay: Duration,
}

#[derive(Debug, Clone)]
pub struct RunSettings {
    pub state_file: PathBuf,
    /// What a seat shortage found before sending does.
    pub preflight: PreflightMode,
    /// Fetch deployment insights of the customers a run touched, for the summary.
    pub insights: bool,
    pub max_failure_ratio: f64,
    pub failure_ratio_min_groups: u64,
    /// Given to a user the API refuses a license for lack of a usage location, when its rows
    /// give none (SPEC §5).
    pub default_usage_location: Option<UsageLocation>,
    /// The machine-readable summary of SPEC §13, written at the end of every run that planned.
    pub summary_file: Option<PathBuf>,
    /// The run's figures for node_exporter's textfile collector (Prometheus text format).
    pub metrics_file: Option<PathBuf>,
    /// The guard of SPEC §13: the most license changes, and removals, a new run may send
    /// without `--yes`; 0 = no limit.
    pub guard: GuardLimits,
}

/// The end-of-run notification (SPEC §13); no webhook: none.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// The webhook URL: it carries the channel's signature, so it is a secret (never printed).
    pub webhook: Option<Secret>,
    pub format: NotifyFormat,
    pub on: NotifyOn,
    /// The longest the notification may take, every try included (`notify.timeout_secs`).
    pub timeout: Duration,
}

/// Secrets read from the environment (never from flags or the config file, SPEC §6).
#[derive(Debug, Clone, Default)]
pub struct EnvSecrets {
    pub client_secret: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub access_token: Option<Secret>,
}

impl EnvSecrets {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty()).map(Secret::new);
        EnvSecrets {
            client_secret: get("LICENSE_BATCH_CLIENT_SECRET"),
            refresh_token: get("LICENSE_BATCH_REFRESH_TOKEN"),
            access_token: get("LICENSE_BATCH_ACCESS_TOKEN"),
        }
    }
}

/// Reads and parses a config file (TOML).
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        ConfigError(format!(
            "{}: {} (see config.example.toml for every key)",
            path.display(),
            e.to_string().trim_end()
        ))
    })
}

impl Settings {
    /// Layers defaults < file < environment < overrides and checks every value.
    pub fn resolve(
        file: FileConfig,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let env_or = |name: &str, file_value: Option<String>| env(name).or(file_value);

        let base_url = env_or("LICENSE_BATCH_API_BASE_URL", file.api.base_url)
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        let authority = env_or("LICENSE_BATCH_AUTH_AUTHORITY", file.auth.authority)
            .unwrap_or_else(|| DEFAULT_AUTHORITY.to_string());

        let requests_per_minute = overrides
            .requests_per_minute
            .or(file.limits.requests_per_minute)
            .unwrap_or(300);
        if requests_per_minute == 0 {
            return Err(ConfigError(
                "limits.requests_per_minute must be at least 1".into(),
            ));
        }
        let concurrency = match overrides.concurrency.or(file.limits.concurrency) {
            Some(set) if (1..=Concurrency::MAX).contains(&set) => Concurrency::fixed(set),
            Some(set) => {
                return Err(ConfigError(format!(
                    "limits.concurrency must be between 1 and {}, got {set}",
                    Concurrency::MAX
                )));
            }
            None => Concurrency::growing(),
        };
        let max_attempts = file.retry.max_attempts.unwrap_or(8);
        if max_attempts == 0 {
            return Err(ConfigError("retry.max_attempts must be at least 1".into()));
        }
        let max_failure_ratio = file.run.max_failure_ratio.unwrap_or(0.5);
        if !(0.0..=1.0).contains(&max_failure_ratio) {
            return Err(ConfigError(format!(
                "run.max_failure_ratio must be between 0 and 1, got {max_failure_ratio}"
            )));
        }
        let default_usage_location = match env_or(
            "LICENSE_BATCH_DEFAULT_USAGE_LOCATION",
            file.run.default_usage_location,
        ) {
            Some(text) if text.trim().is_empty() => None,
            Some(text) => Some(UsageLocation::parse(&text).map_err(|message| {
                ConfigError(format!(
                    "run.default_usage_location (or LICENSE_BATCH_DEFAULT_USAGE_LOCATION): {message}"
                ))
            })?),
            None => None,
        };
        // Like the refresh token, a file named in the config wins over the environment.
        let webhook = match &file.notify.webhook_url_file {
            Some(path) if !path.as_os_str().is_empty() => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!(
                        "cannot read notify.webhook_url_file {}: {e}",
                        path.display()
                    ))
                })?;
                Some(text.trim().to_string()).filter(|url| !url.is_empty())
            }
            _ => env("LICENSE_BATCH_WEBHOOK_URL").filter(|url| !url.trim().is_empty()),
        };
        if let Some(url) = &webhook
            && !matches!(Url::parse(url.trim()), Ok(u) if matches!(u.scheme(), "http" | "https"))
        {
            // The URL itself is not repeated: it is a secret.
            return Err(ConfigError(
                "the webhook URL (LICENSE_BATCH_WEBHOOK_URL or notify.webhook_url_file) is not an \
                 http(s) URL"
                    .into(),
            ));
        }
        let notify = NotifySettings {
            webhook: webhook.map(|url| Secret::new(url.trim())),
            format: file.notify.format.unwrap_or_default(),
            on: file.notify.on.unwrap_or_default(),
            timeout: match file.notify.timeout_secs.unwrap_or(15) {
                0 => return Err(ConfigError("notify.timeout_secs must be at least 1".into())),
                secs => Duration::from_secs(secs),
            },
        };
        let timeout_secs = file.api.timeout_secs.unwrap_or(30);
        if timeout_secs == 0 {
            return Err(ConfigError("api.timeout_secs must be at least 1".into()));
        }

        Ok(Settings {
            api: ApiSettings {
                base_url: parse_service_url("api.base_url", &base_url)?,
                timeout: Duration::from_secs(timeout_secs),
                locale: file.api.locale.unwrap_or_else(|| "en-US".into()),
                kick_instant_on: file.api.kick_instant_on.unwrap_or(false),
            },
            auth: AuthSettings {
                authority: parse_service_url("auth.authority", &authority)?,
                tenant_id: env_or("LICENSE_BATCH_TENANT_ID", file.auth.tenant_id),
                client_id: env_or("LICENSE_BATCH_CLIENT_ID", file.auth.client_id),
                token_endpoint: file.auth.token_endpoint.unwrap_or(TokenEndpoint::V1),
                refresh_token_file: file.auth.refresh_token_file,
            },
            limits: Limits {
                requests_per_minute,
                concurrency,
            },
            retry: RetrySettings {
                max_attempts,
                max_elapsed: Duration::from_secs(file.retry.max_elapsed_secs.unwrap_or(900)),
                min_delay: Duration::from_millis(file.retry.min_delay_ms.unwrap_or(1000)),
            },
            notify,
            run: RunSettings {
                state_file: overrides
                    .state_file
                    .clone()
                    .or(file.run.state_file)
                    .unwrap_or_else(|| PathBuf::from("license-batch.state.sqlite")),
                preflight: overrides
                    .preflight
                    .or(file.run.preflight)
                    .unwrap_or_default(),
                insights: overrides.insights.or(file.run.insights).unwrap_or(true),
                max_failure_ratio,
                failure_ratio_min_groups: file.run.failure_ratio_min_groups.unwrap_or(100),
                default_usage_location,
                summary_file: given_path(overrides.summary_file.clone(), file.run.summary_file),
                metrics_file: given_path(overrides.metrics_file.clone(), file.run.metrics_file),
                guard: GuardLimits {
                    max_changes: overrides.max_changes.or(file.run.max_changes).unwrap_or(0),
                    max_removals: overrides
                        .max_removals
                        .or(file.run.max_removals)
                        .unwrap_or(DEFAULT_MAX_REMOVALS),
                },
            },
        })
    }
}

/// A file the flag (else the config file) names; an empty name is none (SPEC §13's default).
fn given_path(flag: Option<PathBuf>, file: Option<PathBuf>) -> Option<PathBuf> {
    flag.or(file).filter(|path| !path.as_os_str().is_empty())
}

/// Parses a service URL; plain `http://` is accepted only for loopback hosts (SPEC §6).
pub fn parse_service_url(key: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value.trim())
        .map_err(|e| ConfigError(format!("{key} = {value:?} is not a URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(ConfigError(format!(
            "{key} = {value:?}: plain http:// is refused for non-loopback hosts; use https://"
        ))),
        other => Err(ConfigError(format!(
            "{key} = {value:?}: scheme {other:?} is not supported; use https://"
        ))),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = Settings::resolve(FileConfig::default(), &no_env, &Overrides::default()).unwrap();
        assert_eq!(
            s.api.base_url.as_str(),
            "https://api.partnercenter.microsoft.com/"
        );
        assert_eq!(s.limits.requests_per_minute, 300);
        // Not set: starts at 8 and grows with the latency.
        assert_eq!(s.limits.concurrency, Concurrency::growing());
        assert_eq!(s.limits.concurrency.initial, 8);
        assert!(!s.limits.concurrency.is_fixed());
        assert_eq!(s.retry.max_attempts, 8);
        assert_eq!(s.retry.max_elapsed, Duration::from_secs(900));
        assert_eq!(
            s.run.state_file,
            PathBuf::from("license-batch.state.sqlite")
        );
        assert_eq!(s.auth.token_endpoint, TokenEndpoint::V1);
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file: FileConfig = toml::from_str(
            "[api]\nbase_url = \"https://file.example\"\n[limits]\nrequests_per_minute = 10\nconcurrency = 2\n",
        )
        .unwrap();
        let env =
            |k: &str| (k == "LICENSE_BATCH_API_BASE_URL").then(|| "https://env.example".into());
        let overrides = Overrides {
            requests_per_minute: Some(99),
            ..Default::default()
        };
        let s = Settings::resolve(file, &env, &overrides).unwrap();
        assert_eq!(s.api.base_url.host_str(), Some("env.example"));
        assert_eq!(s.limits.requests_per_minute, 99);
        assert_eq!(s.limits.concurrency, Concurrency::fixed(2));
        let flag = Overrides {
            concurrency: Some(5),
            ..Default::default()
        };
        let file: FileConfig = toml::from_str("[limits]\nconcurrency = 2\n").unwrap();
        let s = Settings::resolve(file, &no_env, &flag).unwrap();
        assert_eq!(s.limits.concurrency, Concurrency::fixed(5));
    }

    #[test]
    fn a_default_usage_location_comes_from_the_file_or_the_environment_and_is_checked() {
        let file = |text: &str| toml::from_str::<FileConfig>(text).unwrap();
        let resolve = |file, env: &dyn Fn(&str) -> Option<String>| {
            Settings::resolve(file, env, &Overrides::default())
        };
        let from_file = resolve(file("[run]\ndefault_usage_location = \"nl\"\n"), &no_env);
        assert_eq!(
            from_file
                .unwrap()
                .run
                .default_usage_location
                .unwrap()
                .as_str(),
            "NL"
        );
        let env = |k: &str| (k == "LICENSE_BATCH_DEFAULT_USAGE_LOCATION").then(|| "JP".into());
        let from_env = resolve(file("[run]\ndefault_usage_location = \"NL\"\n"), &env);
        assert_eq!(
            from_env
                .unwrap()
                .run
                .default_usage_location
                .unwrap()
                .as_str(),
            "JP"
        );
        let unset = resolve(file("[run]\ndefault_usage_location = \"\"\n"), &no_env);
        assert_eq!(unset.unwrap().run.default_usage_location, None);
        let bad = resolve(
            file("[run]\ndefault_usage_location = \"Nederland\"\n"),
            &no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("run.default_usage_location"), "{bad}");
        assert!(bad.contains("two-letter country code"), "{bad}");
    }

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(parse_service_url("k", "http://127.0.0.1:8080").is_ok());
        assert!(parse_service_url("k", "http://localhost:1").is_ok());
        assert!(parse_service_url("k", "http://[::1]:1").is_ok());
        let err = parse_service_url("api.base_url", "http://api.example.com").unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
    }

    #[test]
    fn the_example_config_documents_only_real_keys_and_parses() {
        // Every key, commented or not, must be one the program reads.
        let example =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
                .unwrap();
        let uncommented: String = example
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|rest| rest.contains(" = "))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let file: FileConfig = toml::from_str(&uncommented).unwrap();
        let settings = Settings::resolve(file, &no_env, &Overrides::default()).unwrap();
        assert_eq!(settings.limits.concurrency, Concurrency::fixed(8));
        assert_eq!(settings.run.preflight, PreflightMode::Warn);
        assert!(
            settings.auth.refresh_token_file.is_some(),
            "the commented keys were read too"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[limits]\nrequests_per_minut = 5\n").unwrap();
        let err = load_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("c.toml") && err.contains("requests_per_minut"),
            "{err}"
        );
    }
}
