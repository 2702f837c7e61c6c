//! Pacing against every quota shape of docs/BENCHMARKS.md, side by side with two peers' policies
//! on the same sandbox and the same work:
//!
//! - **ours**: `license_batch::run` (journal on, ceiling 60,000/min, concurrency not set);
//! - **gam**: GAM's policy — 5 workers, a 429 or 5xx retried up to 10 tries after
//!   min(2^n, 60) s + rand(0, 1) s, Retry-After ignored;
//! - **careful**: a careful script — 8 in flight, a 429 waits its Retry-After (else the body's
//!   N, else 2^n s), a 5xx backs off.
//!
//! Every figure comes from the sandbox's record: **elapsed** is from the first license update
//! the sandbox answered to the last one (a call is recorded, and charged to the quota, when
//! its latency has passed), **ideal** the same span for a client that sends each call the
//! moment the quota allows it (a full bucket at once, then the refill; each window's allowance
//! at its start), **429s** the throttled share of all license updates.
//!
//!     cargo bench --bench quota_shapes                    # every shape, all three (~40 min)
//!     cargo bench --bench quota_shapes -- bucket-5        # shapes whose name contains it
//!     POLICIES=ours cargo bench --bench quota_shapes      # only some policies
//!     LOG=1 TIMELINE=1 cargo bench --bench quota_shapes -- bucket-60s  # the pacer's decisions,
//!                                                         # and the calls and 429s per second

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use license_batch::config::Overrides;
use license_batch::run;
use license_batch::sandbox::{self, Sandbox};
use serde_json::{Value, json};
use uuid::Uuid;

const LATENCY: &str = "[faults]\nlatency_ms = 100\nlatency_jitter_ms = 50\n";

/// A quota as Partner Center might enforce it.
struct Shape {
    name: &'static str,
    /// The scenario's `[throttle]` table (and customers, for per-pair quotas).
    throttle: &'static str,
    groups: usize,
    /// The sheet's groups go to this many customers in turn.
    customers: usize,
    /// The ideal client's span, seconds (see the module docs).
    ideal: f64,
}

/// 50/s (3,000/min) unless said otherwise; 1,500 groups are 30 s of work at it.
const SHAPES: &[Shape] = &[
    Shape {
        name: "bucket-1s",
        throttle: "[throttle]\nmode = \"bucket\"\nper_minute = 3000\n",
        groups: 1550,
        customers: 1,
        ideal: 30.0,
    },
    Shape {
        name: "bucket-5",
        throttle: "[throttle]\nmode = \"bucket\"\nper_minute = 3000\nburst = 5\n",
        groups: 1505,
        customers: 1,
        ideal: 30.0,
    },
    Shape {
        name: "bucket-1-at-1800",
        throttle: "[throttle]\nmode = \"bucket\"\nper_minute = 1800\nburst = 1\n",
        groups: 901,
        customers: 1,
        ideal: 30.0,
    },
    Shape {
        name: "bucket-60s",
        throttle: "[throttle]\nmode = \"bucket\"\nper_minute = 3000\nburst = 3000\n",
        groups: 4500,
        customers: 1,
        ideal: 30.0,
    },
    Shape {
        name: "bucket-5-exact",
        throttle: "[throttle]\nmode = \"bucket\"\nper_minute = 3000\nburst = 5\nretry_after = \"exact\"\n",
        groups: 1505,
        customers: 1,
        ideal: 30.0,
    },
    Shape {
        name: "bucket-5-always-1",
        throttle: "[throttle]\nmode = \"bucket\"\nper_minute = 3000\nburst = 5\nretry_after = \"constant\"\nretry_after_constant_secs = 1\n",
        groups: 1505,
        customers: 1,
        ideal: 30.0,
    },
    // Partner Center's own throttling guidance shows `Retry-After: 57`. 90 s of work: a request
    // throttled at the start is retried well before the end.
    Shape {
        name: "bucket-5-always-57",
        throttle: "[throttle]\nmode = \"bucket\"\nper_minute = 3000\nburst = 5\nretry_after = \"constant\"\nretry_after_constant_secs = 57\n",
        groups: 4505,
        customers: 1,
        ideal: 90.0,
    },
    Shape {
        name: "bucket-5-no-retry-after",
        throttle: "[throttle]\nmode = \"bucket\"\nper_minute = 3000\nburst = 5\nretry_after = \"absent\"\n",
        groups: 1505,
        customers: 1,
        ideal: 30.0,
    },
    // 3,000/min, down to 1,500/min from 15 s to 30 s, up to 6,000/min from 30 s: 750 + 375 +
    // 1,500 calls in 45 s.
    Shape {
        name: "bucket-5-schedule",
        throttle: "[throttle]\nmode = \"bucket\"\nper_minute = 3000\nburst = 5\nschedule = [{ at_secs = 15, per_minute = 1500 }, { at_secs = 30, per_minute = 6000 }]\n",
        groups: 2630,
        customers: 1,
        ideal: 45.0,
    },
    Shape {
        name: "gateway-5",
        throttle: "[throttle]\nmode = \"bucket\"\nper_minute = 3000\nburst = 5\ncharge = \"on_arrival\"\n",
        groups: 1505,
        customers: 1,
        ideal: 30.0,
    },
    Shape {
        name: "gateway-1-at-1800",
        throttle: "[throttle]\nmode = \"bucket\"\nper_minute = 1800\nburst = 1\ncharge = \"on_arrival\"\n",
        groups: 901,
        customers: 1,
        ideal: 30.0,
    },
    // 500 per 10 s window: four windows' allowance at their starts, the last at 30 s.
    Shape {
        name: "window-10s",
        throttle: "[throttle]\nmode = \"window\"\nper_minute = 500\nwindow_secs = 10\n",
        groups: 2000,
        customers: 1,
        ideal: 30.0,
    },
    // 1,200 per 60 s window: the second window's calls go at 60 s.
    Shape {
        name: "window-60s",
        throttle: "[throttle]\nmode = \"window\"\nper_minute = 1200\nwindow_secs = 60\n",
        groups: 1500,
        customers: 1,
        ideal: 60.0,
    },
    // A bucket of 5 per partner+customer pair at 1,200/min each, three customers: 600 each.
    Shape {
        name: "pair-bucket-5",
        throttle: "[throttle]\nmode = \"bucket\"\nper = \"customer\"\nper_minute = 1200\nburst = 5\n",
        groups: 1815,
        customers: 3,
        ideal: 30.0,
    },
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Policy {
    Ours,
    Gam,
    Careful,
}

use support::{customer, user};

const SPB: &str = "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46";

async fn ours(sandbox: &Sandbox, shape: &Shape) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sheet.csv");
    support::write_sheet(&input, shape.groups, shape.customers);
    let overrides = Overrides {
        requests_per_minute: Some(60_000),
        ..Default::default()
    };
    let state = dir.path().join("state.sqlite");
    run(support::run_options(sandbox, &input, &state, overrides))
        .await
        .unwrap();
}

/// A peer's client: a token, then `workers` loops taking groups in turn.
async fn peer(sandbox: &Sandbox, shape: &Shape, policy: Policy) {
    let http = reqwest::Client::new();
    let base = sandbox.url.to_string();
    let token: Value = http
        .post(format!("{base}{}/oauth2/token", sandbox::TENANT_ID))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", sandbox::CLIENT_ID),
            ("client_secret", sandbox::CLIENT_SECRET),
            ("refresh_token", sandbox::REFRESH_TOKEN),
            ("resource", "https://api.partnercenter.microsoft.com"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let next = Arc::new(AtomicUsize::new(0));
    let workers = if policy == Policy::Gam { 5 } else { 8 };
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (http, base, bearer, next) = (http.clone(), base.clone(), bearer.clone(), next.clone());
        let (groups, customers) = (shape.groups, shape.customers);
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= groups {
                    return;
                }
                let url = format!(
                    "{base}v1/customers/{}/users/{}/licenseupdates",
                    customer(i % customers),
                    user(i)
                );
                let request_id = Uuid::new_v4().to_string();
                let body = json!({"LicensesToAssign": [{"SkuId": SPB, "ExcludedPlans": null}],
                                  "LicensesToRemove": null, "LicenseWarnings": null,
                                  "Attributes": {"ObjectType": "LicenseUpdate"}});
                for attempt in 1..=10_u32 {
                    let answer = http
                        .post(&url)
                        .header("Authorization", &bearer)
                        .header("MS-RequestId", &request_id)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    let status = answer.status().as_u16();
                    if status < 300 {
                        break;
                    }
                    let told = answer
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<f64>().ok());
                    let text = answer.text().await.unwrap_or_default();
                    let in_body = text
                        .split("Try again in ")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|n| n.parse::<f64>().ok());
                    let backoff = 2_f64.powi(attempt as i32).min(60.0);
                    let wait = match policy {
                        Policy::Gam => backoff + fastrand::f64(),
                        _ if status == 429 => told.or(in_body).unwrap_or(backoff),
                        _ => backoff,
                    };
                    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                }
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
}

async fn measure(shape: &Shape, policy: Policy) {
    let sandbox =
        support::start_sandbox(&format!("permissive = true\n{}{LATENCY}", shape.throttle)).await;
    match policy {
        Policy::Ours => ours(&sandbox, shape).await,
        _ => peer(&sandbox, shape, policy).await,
    }
    let requests = sandbox.requests();
    let applied = requests.iter().filter(|r| r.applied).count();
    // Ours must finish the work; a peer's policy may give up (GAM's after 10 tries), and the
    // table then shows it in the applied column.
    if policy == Policy::Ours {
        assert_eq!(
            applied, shape.groups,
            "{}: groups the sandbox applied",
            shape.name
        );
    }
    if std::env::var_os("TIMELINE").is_some() {
        print_timeline(&requests);
    }
    let throttled = requests.iter().filter(|r| r.status == 429).count();
    let first = requests.first().map_or(SystemTime::now(), |r| r.at);
    let last = requests.last().map_or(first, |r| r.at);
    let elapsed = last.duration_since(first).unwrap_or_default().as_secs_f64();
    println!(
        "| {} | {policy:?} | {} | {applied} | {elapsed:.1} s | {:.1} s | {:.3} | {} | {throttled} ({:.2}%) | {} |",
        shape.name,
        shape.groups,
        shape.ideal,
        shape.ideal / elapsed.max(0.001),
        requests.len(),
        throttled as f64 * 100.0 / requests.len().max(1) as f64,
        sandbox.most_in_flight(),
    );
}

/// `TIMELINE=1`: per second of the run, the calls the sandbox applied and the 429s it
/// answered, on stderr (where the time of a shape goes).
fn print_timeline(requests: &[sandbox::RecordedRequest]) {
    let Some(first) = requests.first().map(|r| r.at) else {
        return;
    };
    let mut seconds: Vec<(usize, usize)> = Vec::new();
    for request in requests {
        let second = request
            .at
            .duration_since(first)
            .unwrap_or_default()
            .as_secs() as usize;
        if seconds.len() <= second {
            seconds.resize(second + 1, (0, 0));
        }
        if request.applied {
            seconds[second].0 += 1;
        }
        if request.status == 429 {
            seconds[second].1 += 1;
        }
    }
    for (second, (applied, throttled)) in seconds.iter().enumerate() {
        eprintln!("  {second:>4} s  applied {applied:>5}  429 {throttled:>4}");
    }
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
    let policies: Vec<Policy> = match std::env::var("POLICIES") {
        Ok(list) => list
            .split(',')
            .map(|p| match p.trim() {
                "ours" => Policy::Ours,
                "gam" => Policy::Gam,
                "careful" => Policy::Careful,
                other => panic!("unknown policy {other}: ours, gam or careful"),
            })
            .collect(),
        Err(_) => vec![Policy::Ours, Policy::Gam, Policy::Careful],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| shape | policy | groups | applied | elapsed | ideal | efficiency | requests | 429s | most in flight |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for shape in SHAPES
        .iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f.as_str())))
    {
        for &policy in &policies {
            runtime.block_on(measure(shape, policy));
        }
    }
}
