//! The guard of SPEC §13, proven from the sandbox's ground truth: a sheet that would remove more
//! licenses than `run.max_removals` sends nothing and exits 2 (the tenant keeps every license);
//! `--yes` lets it go; a run that was let go and aborted resumes without being stopped again.

mod common;

use common::*;
use license_batch::config::Concurrency;
use license_batch::outcome::RowStatus;
use license_batch::{Completion, Error, exit_code_for};
use uuid::Uuid;

const HEADER: &str = "customer_id,user_id,sku,action";
const SPB: &str = "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46";

/// 40 users of Contoso and 35 of Fabrikam: 75 in all, each customer under the default limit of
/// 50 on its own.
fn users() -> Vec<(&'static str, String)> {
    let names = ["émilie", "łukasz", "zoë", "jürgen", "søren"];
    (0..75)
        .map(|i| {
            let customer = if i < 40 { CONTOSO } else { FABRIKAM };
            (
                customer,
                format!("{}.{i}@contoso.example", names[i % names.len()]),
            )
        })
        .collect()
}

fn sheet(action: &str) -> Vec<String> {
    users()
        .iter()
        .map(|(customer, user)| format!("{customer},{user},SPB,{action}"))
        .collect()
}

fn holders(sandbox: &license_batch::sandbox::Sandbox) -> usize {
    let spb: Uuid = SPB.parse().unwrap();
    users()
        .iter()
        .filter(|(customer, user)| {
            sandbox
                .licenses(customer.parse().unwrap(), user)
                .contains(&spb)
        })
        .count()
}

/// A sandbox whose 75 users hold the license the removal sheet names (assigned by a first run,
/// which the guard lets through: it removes nothing).
async fn tenant_with_75_holders(dir: &std::path::Path) -> license_batch::sandbox::Sandbox {
    let sandbox = start("[faults]\nlatency_ms = 20\n").await;
    let assign = write_csv(dir, "assign.csv", HEADER, &sheet("assign"));
    let summary = run(options(&sandbox, &assign)).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 75);
    assert_eq!(holders(&sandbox), 75);
    sandbox
}

#[tokio::test]
async fn seventy_five_removals_over_the_default_limit_send_nothing_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = tenant_with_75_holders(dir.path()).await;
    let before = sandbox.requests().len();
    let input = write_csv(dir.path(), "remove.csv", HEADER, &sheet("remove"));

    let result = license_batch::run(options(&sandbox, &input)).await;
    assert_eq!(exit_code_for(&result), 2);
    let Err(Error::Guard(guard)) = &result else {
        panic!("expected the guard to stop the run: {result:?}")
    };
    let text = Error::Guard(guard.clone()).to_string();
    assert!(
        text.contains("75 license removals (max_removals = 50"),
        "{text}"
    );
    assert!(text.contains(&format!("{CONTOSO}: 40 removals")), "{text}");
    assert!(text.contains(&format!("{FABRIKAM}: 35 removals")), "{text}");
    assert!(text.contains("--yes"), "{text}");

    // Ground truth: not one license update left, every user still holds the license, and no
    // report claims anything.
    assert_eq!(sandbox.requests().len(), before, "nothing was sent");
    assert_eq!(holders(&sandbox), 75);
    assert!(!report_path(&input).exists());

    // A higher limit lets the same sheet through; so does --yes (below).
    let mut raised = options(&sandbox, &input);
    raised.settings.run.guard.max_removals = 75;
    raised.dry_run = true;
    license_batch::run(raised)
        .await
        .expect("75 of at most 75 passes");
    assert_eq!(sandbox.requests().len(), before, "a plan sends nothing");

    let mut confirmed = options(&sandbox, &input);
    confirmed.confirmed = true;
    let summary = run(confirmed).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 75);
    assert_eq!(holders(&sandbox), 0, "--yes: every license removed");
    assert_eq!(sandbox.requests().len(), before + 75);
}

#[tokio::test]
async fn a_limit_on_all_changes_stops_assigns_too() {
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "assign.csv", HEADER, &sheet("assign"));
    let mut opts = options(&sandbox, &input);
    opts.settings.run.guard.max_changes = 74;
    let result = license_batch::run(opts).await;
    let Err(Error::Guard(guard)) = &result else {
        panic!("expected the guard to stop the run: {result:?}")
    };
    assert!(
        guard
            .to_string()
            .contains("75 license changes (max_changes = 74")
    );
    assert!(sandbox.requests().is_empty());
    assert_eq!(holders(&sandbox), 0);
}

#[tokio::test]
async fn a_run_let_go_with_yes_and_aborted_resumes_without_yes() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = tenant_with_75_holders(dir.path()).await;
    let before = sandbox.requests().len();
    let input = write_csv(dir.path(), "remove.csv", HEADER, &sheet("remove"));
    let mut opts = options(&sandbox, &input);
    opts.confirmed = true;
    opts.settings.limits.concurrency = Concurrency::fixed(1);
    // The credential turns out to be a partner token after the first removal: the run aborts.
    let running = tokio::spawn(license_batch::run(opts));
    sandbox.wait_for(before as u64 + 1, 0).await;
    sandbox.set_partner_token(true);
    let aborted = running.await.unwrap().unwrap();
    assert!(
        matches!(aborted.completion, Completion::Aborted(_)),
        "{:?}",
        aborted.completion
    );
    let removed = 75 - holders(&sandbox);
    assert!(
        (1..75).contains(&removed),
        "{removed} removed before the abort"
    );

    // Fixed, and the same command without --yes: the run resumes; the guard does not stop it.
    sandbox.set_partner_token(false);
    let resumed = run(options(&sandbox, &input)).await;
    assert_eq!(resumed.completion, Completion::Finished);
    assert_eq!(resumed.count(RowStatus::Succeeded), 75);
    assert_eq!(holders(&sandbox), 0);
    let applied = sandbox.requests()[before..]
        .iter()
        .filter(|r| r.applied)
        .count();
    assert_eq!(applied, 75, "each removal applied once");
}
