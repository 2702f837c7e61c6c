//! Flags resolved with the config file and the environment into [`RunOptions`] and a
//! connection: file < environment < flags.

use super::*;

pub(super) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Settings and target from the connection arguments: file < env < `overrides`.
pub(super) fn resolve_connection(
    connect: &ConnectArgs,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &Overrides,
) -> Result<(Settings, Target), Error> {
    let file = match &connect.config {
        Some(path) => config::load_file(path)?,
        None => FileConfig::default(),
    };
    let settings = Settings::resolve(file, env, overrides)?;
    let target = if connect.sandbox {
        let scenario = match &connect.sandbox_scenario {
            Some(path) => Scenario::load(path).map_err(Error::Sandbox)?,
            None => Scenario::default(),
        };
        Target::Sandbox(Box::new(scenario))
    } else {
        Target::Configured
    };
    Ok((settings, target))
}

/// Resolves raw `run` arguments: file < env < flags.
pub fn resolve_run(
    args: &RunArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunOptions, Error> {
    let overrides = Overrides {
        requests_per_minute: args.requests_per_minute,
        concurrency: args.concurrency,
        state_file: args.state.clone(),
        preflight: args.preflight,
        insights: args.no_insights.then_some(false),
        summary_file: args.summary_json.clone(),
        metrics_file: args.metrics_file.clone(),
        max_changes: args.max_changes,
        max_removals: args.max_removals,
    };
    let (settings, target) = resolve_connection(&args.connect, env, &overrides)?;
    let mut opts = RunOptions::new(&args.input, settings);
    opts.report = args.report.clone();
    opts.secrets = EnvSecrets::from_env(env);
    opts.target = target;
    opts.dry_run = args.dry_run;
    opts.fresh = args.fresh;
    opts.resend = args.resend;
    opts.confirmed = args.yes;
    opts.delimiter = args.delimiter;
    opts.sheet = args.sheet.clone();
    opts.progress =
        args.output.log_format == LogFormat::Text && !args.output.quiet && !args.dry_run;
    Ok(opts)
}

/// Connects for a read-only command (`insights`, `verify`).
pub(super) async fn connect_for(connect: &ConnectArgs) -> Result<Connection, Error> {
    let (settings, target) = resolve_connection(connect, &process_env, &Overrides::default())?;
    crate::run::connect(
        &settings,
        &EnvSecrets::from_env(&process_env),
        &target,
        CancellationToken::new(),
    )
    .await
}
