//! The throughput benchmarks of docs/BENCHMARKS.md: the real engine (journal on) against the
//! in-process sandbox with a hidden quota or latency. Requests, 429s, the busiest 10 s and the
//! calls in flight come from the sandbox's record; elapsed is the client's wall time of the
//! whole `run` (token, reads and planning included). A case whose groups were not all applied
//! and reported succeeded stops the bench.
//!
//!     cargo bench --bench throughput                 # every case (about ten minutes)
//!     cargo bench --bench throughput -- bucket       # cases whose name contains "bucket"
//!     LOG=1 cargo bench --bench throughput -- bucket # with what the engine logs (its pacing)

mod support;

use std::time::{Duration, Instant, SystemTime};

use license_batch::config::Overrides;
use license_batch::run;

struct Case {
    name: &'static str,
    groups: usize,
    scenario: &'static str,
    requests_per_minute: u32,
    /// `--concurrency`; `None`: not set (the pool grows with the latency).
    concurrency: Option<usize>,
    /// The rate the run cannot beat (per minute): the server quota or the client ceiling.
    limit_per_minute: f64,
    /// The sheet's groups go to this many customers in turn ([`customer`]).
    customers: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "quota-bucket",
        groups: 3000,
        scenario: "[throttle]\nmode = \"bucket\"\nper_minute = 3000\n[faults]\nlatency_ms = 100\nlatency_jitter_ms = 50\n",
        requests_per_minute: 60_000,
        concurrency: None,
        limit_per_minute: 3000.0,
        customers: 1,
    },
    Case {
        name: "quota-bucket-3-customers",
        groups: 3000,
        scenario: "[throttle]\nmode = \"bucket\"\nper_minute = 3000\n[faults]\nlatency_ms = 100\nlatency_jitter_ms = 50\n",
        requests_per_minute: 60_000,
        concurrency: None,
        limit_per_minute: 3000.0,
        customers: 3,
    },
    // A quota per partner+customer pair, and one customer with little of it: Contoso's 1,200
    // groups take 60 s at its 1,200/min; the other two customers' 2,400 fit in that time.
    Case {
        name: "quota-bucket-per-customer",
        groups: 3600,
        scenario: "permissive = true\n[throttle]\nmode = \"bucket\"\nper = \"customer\"\nper_minute = 60000\n[faults]\nlatency_ms = 100\nlatency_jitter_ms = 50\n[[customers]]\nid = \"7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90\"\nquota_per_minute = 1200\n",
        requests_per_minute: 60_000,
        concurrency: None,
        limit_per_minute: 3600.0,
        customers: 3,
    },
    Case {
        name: "quota-window",
        groups: 1500,
        scenario: "[throttle]\nmode = \"window\"\nper_minute = 1200\nwindow_secs = 60\n[faults]\nlatency_ms = 100\nlatency_jitter_ms = 50\n",
        requests_per_minute: 60_000,
        concurrency: None,
        limit_per_minute: 1200.0,
        customers: 1,
    },
    // A window per pair: Contoso gets 600 per 60 s window for its 900 groups (even-pacing
    // ideal 90 s); the other two customers' 1,800 must not wait for Contoso's window.
    Case {
        name: "quota-window-per-customer",
        groups: 2700,
        scenario: "permissive = true\n[throttle]\nmode = \"window\"\nper = \"customer\"\nper_minute = 60000\nwindow_secs = 60\n[faults]\nlatency_ms = 100\nlatency_jitter_ms = 50\n[[customers]]\nid = \"7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90\"\nquota_per_minute = 600\n",
        requests_per_minute: 60_000,
        concurrency: None,
        limit_per_minute: 1800.0,
        customers: 3,
    },
    Case {
        name: "ceiling",
        groups: 600,
        scenario: "[faults]\nlatency_ms = 20\n",
        requests_per_minute: 1200,
        concurrency: None,
        limit_per_minute: 1200.0,
        customers: 1,
    },
    Case {
        name: "latency-hiding-default",
        groups: 1500,
        scenario: "[faults]\nlatency_ms = 500\nlatency_jitter_ms = 200\n",
        requests_per_minute: 3000,
        concurrency: None,
        limit_per_minute: 3000.0,
        customers: 1,
    },
    Case {
        name: "latency-hiding-1s-default",
        groups: 1500,
        scenario: "[faults]\nlatency_ms = 1000\nlatency_jitter_ms = 300\n",
        requests_per_minute: 3000,
        concurrency: None,
        limit_per_minute: 3000.0,
        customers: 1,
    },
    Case {
        name: "latency-hiding-lognormal-default",
        groups: 1500,
        scenario: "[faults]\nlatency_ms = 500\nlatency_jitter_ms = 300\nlatency_spread = \"lognormal\"\n",
        requests_per_minute: 3000,
        concurrency: None,
        limit_per_minute: 3000.0,
        customers: 1,
    },
    Case {
        name: "latency-hiding-concurrency-40",
        groups: 1500,
        scenario: "[faults]\nlatency_ms = 500\nlatency_jitter_ms = 200\n",
        requests_per_minute: 3000,
        concurrency: Some(40),
        limit_per_minute: 3000.0,
        customers: 1,
    },
    Case {
        name: "overhead",
        groups: 20_000,
        scenario: "",
        requests_per_minute: 100_000_000,
        concurrency: Some(32),
        limit_per_minute: f64::INFINITY,
        customers: 1,
    },
];

/// CPU seconds (user + system) of this process so far, from /proc (Linux).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

async fn measure(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sheet.csv");
    support::write_sheet(&input, case.groups, case.customers);
    let sandbox = support::start_sandbox(case.scenario).await;
    let overrides = Overrides {
        requests_per_minute: Some(case.requests_per_minute),
        concurrency: case.concurrency,
        ..Default::default()
    };
    let opts = support::run_options(
        &sandbox,
        &input,
        &dir.path().join("state.sqlite"),
        overrides,
    );

    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let summary = run(opts).await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);

    let requests = sandbox.requests();
    let throttled = requests.iter().filter(|r| r.status == 429).count();
    let arrivals: Vec<SystemTime> = requests.iter().map(|r| r.at).collect();
    let mut most_in_10s = 0;
    let mut start = 0;
    for end in 0..arrivals.len() {
        while arrivals[end]
            .duration_since(arrivals[start])
            .unwrap_or_default()
            >= Duration::from_secs(10)
        {
            start += 1;
        }
        most_in_10s = most_in_10s.max(end - start + 1);
    }
    let succeeded = summary.count(license_batch::outcome::RowStatus::Succeeded);
    let applied = requests.iter().filter(|r| r.applied).count();
    assert_eq!(
        applied, case.groups,
        "{}: groups the sandbox applied",
        case.name
    );
    assert_eq!(
        succeeded as usize, case.groups,
        "{}: rows reported succeeded",
        case.name
    );
    let ideal = case.groups as f64 / case.limit_per_minute * 60.0;
    let efficiency = if ideal.is_finite() && ideal > 0.0 {
        format!("{:.3}", ideal / elapsed)
    } else {
        "-".into()
    };
    println!(
        "| {} | {} | {succeeded} | {elapsed:.1} s | {ideal:.1} s | {efficiency} | {} | {throttled} ({:.2}%) | {:.0}/min | {most_in_10s} | {} | {} |",
        case.name,
        case.groups,
        requests.len(),
        throttled as f64 * 100.0 / requests.len().max(1) as f64,
        case.groups as f64 / elapsed * 60.0,
        sandbox.most_in_flight(),
        cpu.map_or("-".into(), |c| format!(
            "{:.0} µs/group",
            c * 1e6 / case.groups as f64
        )),
    );
}

fn main() {
    if std::env::var_os("LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter("license_batch=info")
            .init();
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| case | groups | succeeded | elapsed | ideal | efficiency | requests | 429s | achieved | most in 10 s | most in flight | CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for case in CASES
        .iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str())))
    {
        runtime.block_on(measure(case));
    }
}
