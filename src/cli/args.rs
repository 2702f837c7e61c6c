//! clap's raw arguments: the commands and their flags, as parsed (resolved in [`super::resolve`]).

use super::*;

#[derive(Debug, Parser)]
#[command(
    name = "license-batch",
    version,
    about = "Bulk-assign Microsoft 365 licenses through the Partner Center API from a CSV sheet",
    after_help = "Examples:\n  license-batch run samples/onboarding.csv --sandbox\n  license-batch run onboarding.csv --config /etc/license-batch/config.toml\n  license-batch sandbox --listen 127.0.0.1:8080 --scenario samples/sandbox-scenario.toml"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Assign or remove the licenses a CSV asks for, and write a per-row report.
    #[command(
        after_help = "Examples:\n  license-batch run samples/onboarding.csv --sandbox\n  license-batch run samples/onboarding.csv --sandbox --sandbox-scenario samples/sandbox-scenario.toml\n  LICENSE_BATCH_REFRESH_TOKEN=… LICENSE_BATCH_CLIENT_SECRET=… license-batch run onboarding.csv --config config.toml\n\nExit codes: 0 all rows succeeded; 1 some failed, invalid or skipped; 2 nothing sent (usage, config, input, credentials); 3 aborted, re-run to resume; 130 interrupted."
    )]
    Run(RunArgs),
    /// Validate, resolve against the tenants, group and preflight a sheet; send nothing.
    #[command(
        after_help = "Examples:\n  license-batch plan samples/onboarding.csv --sandbox --sandbox-scenario samples/sandbox-scenario.toml\n  license-batch plan onboarding.csv --config config.toml --preflight strict\n\nWithout credentials the plan is made offline: names come from the built-in catalog, seats are not checked.\nExit codes: 0 everything would be sent; 1 rows are invalid, refused, skipped or short of seats; 2 bad usage or input."
    )]
    Plan(RunArgs),
    /// Licenses deployed vs sold per product of some customers (deployment insights).
    #[command(
        after_help = "Examples:\n  license-batch insights 7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90 --config config.toml\n  license-batch insights 7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90 --output insights.csv --config config.toml"
    )]
    Insights(InsightsArgs),
    /// Check a report against the licenses users hold now; lists every row that disagrees.
    #[command(
        after_help = "Example:\n  license-batch verify onboarding.report.csv --config config.toml\n\nExit codes: 0 every checked row agrees; 1 some rows disagree or could not be checked; 2 bad usage or input."
    )]
    Verify(VerifyArgs),
    /// Prove before the night that the credentials work and every customer is reachable; writes nothing.
    #[command(
        after_help = "Examples:\n  license-batch check samples/onboarding.csv --sandbox\n  license-batch check onboarding.csv --config config.toml\n  license-batch check --customer 7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90 --config config.toml\n\nExit codes: 0 the token works, shows MFA, and every customer is reachable; 1 some customers are not reachable, or the token shows no MFA; 2 the credentials are unusable (or bad usage, unreadable input)."
    )]
    Check(CheckArgs),
    /// Show the recent runs recorded in the journal and their row counts.
    #[command(
        after_help = "Example:\n  license-batch status --state /var/lib/license-batch/state.sqlite"
    )]
    Status(StatusArgs),
    /// Rewrite a run's report from the journal.
    #[command(
        after_help = "Examples:\n  license-batch report            # the latest run, to its report path\n  license-batch report --run 12 --output run12.csv"
    )]
    Report(ReportArgs),
    /// Run the built-in Partner Center simulator as a server.
    #[command(
        after_help = "Examples:\n  license-batch sandbox --listen 127.0.0.1:8080 --scenario samples/sandbox-scenario.toml\n  license-batch sandbox --seed 7 --transient-rate 0.15 --reset-rate 0.05 --apply-then-503-rate 0.05 --dump truth.json"
    )]
    Sandbox(SandboxArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The onboarding sheet: CSV (UTF-8; `,` or `;` separated) or a workbook (.xlsx, .xlsm,
    /// .xlsb, .xls, .ods).
    pub input: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Journal file (SQLite). Default: license-batch.state.sqlite in the working directory.
    #[arg(long, env = "LICENSE_BATCH_STATE_FILE", value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Where to write the report; `.xlsx` writes a workbook, anything else CSV. Default:
    /// <input stem>.report.csv next to the input (.report.xlsx for a workbook).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Validate and plan, print the plan, send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Start a new run even if an unfinished run of this input exists in the journal.
    #[arg(long)]
    pub fresh: bool,
    /// Send every row again, also those already done in earlier runs (starts a new run).
    #[arg(long)]
    pub resend: bool,
    /// On a seat shortage: `warn` sends anyway (the API decides), `strict` skips the excess rows.
    #[arg(long, value_enum, value_name = "MODE")]
    pub preflight: Option<PreflightMode>,
    /// Do not fetch deployment insights for the summary.
    #[arg(long)]
    pub no_insights: bool,
    /// Client-side ceiling of requests per minute across the pool.
    #[arg(long, env = "LICENSE_BATCH_REQUESTS_PER_MINUTE", value_name = "N")]
    pub requests_per_minute: Option<u32>,
    /// Requests in flight at once (1–256). Not set: starts at 8 and grows with the measured
    /// latency to what the ceiling (at most 3,000/min) needs.
    #[arg(long, env = "LICENSE_BATCH_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<usize>,
    /// Also write the summary as JSON (SPEC §13) to FILE, atomically, at the end of the run.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Also write the run's figures in Prometheus text format to FILE (node_exporter's textfile
    /// collector), atomically, at the end of the run.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// The most license changes (assigns and removals) a new run may send; more: nothing is
    /// sent, exit 2, unless --yes. 0 = no limit (the default).
    #[arg(long, value_name = "N")]
    pub max_changes: Option<u64>,
    /// The most licenses a new run may remove; more: nothing is sent, exit 2, unless --yes.
    /// 0 = no limit. Default: 50.
    #[arg(long, value_name = "N")]
    pub max_removals: Option<u64>,
    /// Send a plan that goes over --max-changes or --max-removals all the same.
    #[arg(long)]
    pub yes: bool,
    /// Force the CSV delimiter (`,` or `;`) instead of detecting it.
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
    /// The worksheet to read from a spreadsheet input (.xlsx, .xlsm, .xlsb, .xls, .ods).
    /// Default: the first one.
    #[arg(long, value_name = "NAME")]
    pub sheet: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Which API to talk to: the config file's (and environment's), or the built-in sandbox.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Config file (TOML); see config.example.toml.
    #[arg(long, env = "LICENSE_BATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use the built-in simulator in this process; no credentials needed.
    #[arg(long)]
    pub sandbox: bool,
    /// Scenario for --sandbox (JSON or TOML): customers, users, seats, faults.
    #[arg(long, value_name = "FILE", requires = "sandbox")]
    pub sandbox_scenario: Option<PathBuf>,
}

/// What goes to stderr.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Only errors on stderr.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail on stderr (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl OutputArgs {
    pub(super) fn init_logging(&self) {
        let verbosity = if self.quiet { -1 } else { self.verbose as i8 };
        progress::init_logging(self.log_format, verbosity);
    }
}

#[derive(Debug, Args)]
pub struct InsightsArgs {
    /// Customer tenant IDs.
    #[arg(required = true, value_name = "CUSTOMER_ID")]
    pub customers: Vec<uuid::Uuid>,
    /// Write the table here instead of printing it: a workbook when the name ends in .xlsx,
    /// else CSV.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub log: OutputArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A sheet whose customers are checked (its valid rows').
    pub input: Option<PathBuf>,
    /// A customer to check as well (repeatable).
    #[arg(long = "customer", value_name = "CUSTOMER_ID")]
    pub customers: Vec<uuid::Uuid>,
    /// Force the CSV delimiter (`,` or `;`) instead of detecting it.
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
    /// The worksheet to read from a spreadsheet input (.xlsx, .xlsm, .xlsb, .xls, .ods).
    /// Default: the first one.
    #[arg(long, value_name = "NAME")]
    pub sheet: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub log: OutputArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A report written by `run`.
    pub report: PathBuf,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub log: OutputArgs,
}

/// The journal that `status` and `report` read.
#[derive(Debug, Args)]
pub struct JournalArg {
    /// Journal file. Default: license-batch.state.sqlite in the working directory.
    #[arg(
        long,
        env = "LICENSE_BATCH_STATE_FILE",
        value_name = "FILE",
        default_value = "license-batch.state.sqlite"
    )]
    pub state: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub journal: JournalArg,
    /// How many runs to list.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub journal: JournalArg,
    /// The run (see `status`). Default: the latest.
    #[arg(long)]
    pub run: Option<i64>,
    /// Where to write it. Default: the run's own report path.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on (loopback recommended).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Scenario file (JSON or TOML).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// When stopped (Ctrl-C, SIGTERM), write the ground truth (every request, what was
    /// applied, protocol violations) here as JSON.
    #[arg(long, value_name = "FILE")]
    pub dump: Option<PathBuf>,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Faults set on the command line; each overrides the scenario's value (docs/SANDBOX.md).
#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Seed of the random faults, so a night repeats.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share of calls answered 500/502/503 before applying (0–1).
    #[arg(long, value_name = "RATE")]
    pub transient_rate: Option<f64>,
    /// Share of calls whose connection is dropped before applying.
    #[arg(long, value_name = "RATE")]
    pub reset_rate: Option<f64>,
    /// Share of calls applied, then answered 503.
    #[arg(long, value_name = "RATE")]
    pub apply_then_503_rate: Option<f64>,
    /// Share of calls applied, then answered after --hold-secs.
    #[arg(long, value_name = "RATE")]
    pub apply_then_timeout_rate: Option<f64>,
    /// How long an apply-then-timeout answer is held.
    #[arg(long, value_name = "SECS")]
    pub hold_secs: Option<u64>,
    /// Latency added to every license update.
    #[arg(long, value_name = "MS")]
    pub latency_ms: Option<u64>,
    /// Lifetime of the access tokens the sandbox issues.
    #[arg(long, value_name = "SECS")]
    pub token_lifetime_secs: Option<u64>,
}

impl FaultArgs {
    pub(super) fn apply(&self, scenario: &mut Scenario) {
        let faults = &mut scenario.faults;
        faults.seed = self.seed.or(faults.seed);
        faults.transient_rate = self.transient_rate.unwrap_or(faults.transient_rate);
        faults.reset_rate = self.reset_rate.unwrap_or(faults.reset_rate);
        faults.apply_then_503_rate = self
            .apply_then_503_rate
            .unwrap_or(faults.apply_then_503_rate);
        faults.apply_then_timeout_rate = self
            .apply_then_timeout_rate
            .unwrap_or(faults.apply_then_timeout_rate);
        faults.hold_secs = self.hold_secs.or(faults.hold_secs);
        faults.latency_ms = self.latency_ms.or(faults.latency_ms);
        scenario.auth.token_lifetime_secs = self
            .token_lifetime_secs
            .or(scenario.auth.token_lifetime_secs);
    }
}

fn parse_delimiter(text: &str) -> Result<u8, String> {
    match text {
        "," | "comma" => Ok(b','),
        ";" | "semicolon" => Ok(b';'),
        "\\t" | "tab" => Ok(b'\t'),
        other => Err(format!("{other:?}: use ',' or ';' (or tab)")),
    }
}
