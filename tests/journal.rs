//! The journal in-process: resuming the same run, incremental nightly runs, --fresh/--resend,
//! one writer per state file, and request IDs across all of it (checked on the sandbox).

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use license_batch::config::Concurrency;
use license_batch::outcome::RowStatus;
use license_batch::{Completion, Error, exit_code_for};
use uuid::Uuid;

const HEADER: &str = "customer_id,user_id,sku,action";

fn rows(range: std::ops::Range<usize>, sku: &str) -> Vec<String> {
    range
        .map(|i| format!("{CONTOSO},{},{sku},", user_guid(i)))
        .collect()
}

#[tokio::test]
async fn appended_rows_are_the_only_ones_sent_the_next_night() {
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let first = write_csv(dir.path(), "sheet.csv", HEADER, &rows(0..10, "SPB"));
    let night1 = run(options(&sandbox, &first)).await;
    assert_eq!(night1.count(RowStatus::Succeeded), 10);
    assert_eq!(sandbox.requests().len(), 10);

    let grown = write_csv(dir.path(), "sheet.csv", HEADER, &rows(0..15, "SPB"));
    let night2 = run(options(&sandbox, &grown)).await;
    assert_eq!(night2.count(RowStatus::Succeeded), 15);
    assert_ne!(night2.run_id, night1.run_id, "a grown sheet is a new run");
    let requests = sandbox.requests();
    assert_eq!(requests.len(), 15, "only the 5 new rows were sent");
    let sent_night2: HashSet<_> = requests[10..].iter().map(|r| r.user.clone()).collect();
    assert_eq!(sent_night2, (10..15).map(user_guid).collect());

    let report = read_report(&report_path(&grown));
    for row in &report[..10] {
        assert_eq!(row["result_status"], "succeeded");
        assert_eq!(row["result_attempts"], "0");
        let expected = format!("already done in run {}", night1.run_id.unwrap());
        assert!(
            row["result_message"].starts_with(&expected),
            "{}",
            row["result_message"]
        );
    }
    assert_eq!(exit_code_for(&Ok(night2)), 0);
}

#[tokio::test]
async fn failed_rows_are_tried_again_with_new_request_ids() {
    let sandbox = start(&format!(
        "[[customers]]\nid = \"{CONTOSO}\"\nskus = [{{ sku = \"SPB\", total = 2 }}]\n"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows(0..4, "SPB"));
    let night1 = run(options(&sandbox, &input)).await;
    assert_eq!(night1.count(RowStatus::Failed), 2);
    let first_ids: HashMap<String, String> = sandbox
        .requests()
        .into_iter()
        .map(|r| (r.user, r.request_id.unwrap()))
        .collect();

    // The operator buys seats; the same command the next night sends only the failed rows.
    sandbox.set_seats(
        CONTOSO.parse().unwrap(),
        E3_BUSINESS_PREMIUM.parse().unwrap(),
        10,
    );
    let night2 = run(options(&sandbox, &input)).await;
    assert_eq!(night2.count(RowStatus::Succeeded), 4);
    let retried = &sandbox.requests()[4..];
    assert_eq!(retried.len(), 2);
    for r in retried {
        assert_ne!(
            Some(&first_ids[&r.user]),
            r.request_id.as_ref(),
            "a definitive answer spent the old ID"
        );
        assert_eq!(r.status, 201);
    }
    assert_eq!(sandbox.violations(), Default::default());
}

const E3_BUSINESS_PREMIUM: &str = "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46";

#[tokio::test]
async fn resend_sends_everything_again() {
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows(0..3, "SPB"));
    run(options(&sandbox, &input)).await;
    let first: HashSet<_> = sandbox
        .requests()
        .into_iter()
        .map(|r| r.request_id.unwrap())
        .collect();
    let mut opts = options(&sandbox, &input);
    opts.resend = true;
    let again = run(opts).await;
    assert_eq!(again.count(RowStatus::Succeeded), 3);
    let requests = sandbox.requests();
    assert_eq!(requests.len(), 6);
    // Sent again under new request IDs, and the sandbox took them as new requests (not
    // replays of the stored answers): each repeated a change already made.
    for r in &requests[3..] {
        let id = r.request_id.clone().unwrap();
        assert!(!first.contains(&id), "{id} was the first night's");
        assert!(r.applied && !r.replay, "{r:?}");
        assert_eq!(r.status, 201);
    }
    assert_eq!(
        sandbox
            .violations()
            .license_change_repeated_under_new_request_id,
        3
    );
}

#[tokio::test]
async fn a_remove_makes_a_later_assign_count_again() {
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let user = user_guid(1);
    for (name, action) in [
        ("a.csv", "assign"),
        ("b.csv", "remove"),
        ("c.csv", "assign"),
    ] {
        let input = write_csv(
            dir.path(),
            name,
            HEADER,
            &[format!("{CONTOSO},{user},SPB,{action}")],
        );
        let summary = run(options(&sandbox, &input)).await;
        assert_eq!(summary.count(RowStatus::Succeeded), 1);
        let held = sandbox
            .licenses(CONTOSO.parse().unwrap(), &user)
            .contains(&E3_BUSINESS_PREMIUM.parse::<Uuid>().unwrap());
        assert_eq!(held, action == "assign", "after the {action} of {name}");
    }
    assert_eq!(
        sandbox.requests().len(),
        3,
        "the second assign was sent, not skipped"
    );
    let held = sandbox.licenses(CONTOSO.parse().unwrap(), &user);
    assert!(held.contains(&E3_BUSINESS_PREMIUM.parse::<Uuid>().unwrap()));
}

#[tokio::test]
async fn an_aborted_run_resumes_as_the_same_run_with_a_fresh_id_for_the_refused_group() {
    let sandbox = start("[faults]\nlatency_ms = 100\n").await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows(0..8, "SPB"));
    let mut opts = options(&sandbox, &input);
    opts.settings.limits.concurrency = Concurrency::fixed(1);
    // The credential turns out to be a partner token after the first update.
    let aborted =
        run_and_flip_after_first_update(&sandbox, opts, |s| s.set_partner_token(true)).await;
    assert!(matches!(aborted.completion, Completion::Aborted(_)));
    assert_eq!(aborted.count(RowStatus::Pending), 7);
    let before = sandbox.requests();
    assert_eq!(before.len(), 2);
    let refused = &before[1];
    assert_eq!(refused.status, 400);

    // The credential is fixed; the same command resumes the same run.
    sandbox.set_partner_token(false);
    let mut opts = options(&sandbox, &input);
    opts.settings.limits.concurrency = Concurrency::fixed(1);
    let resumed = run(opts).await;
    assert_eq!(resumed.run_id, aborted.run_id);
    assert_eq!(resumed.completion, Completion::Finished);
    assert_eq!(resumed.count(RowStatus::Succeeded), 8);
    let requests = sandbox.requests();
    assert_eq!(requests.len(), 9, "the first user was not sent again");
    let retry = requests[2..]
        .iter()
        .find(|r| r.user == refused.user)
        .unwrap();
    assert_ne!(
        retry.request_id, refused.request_id,
        "the refused ID is not reused"
    );
    let report = read_report(&report_path(&input));
    let row = report
        .iter()
        .find(|r| r["user_id"] == refused.user)
        .unwrap();
    assert_eq!(
        row["result_attempts"], "2",
        "attempts of a resumed run add up"
    );
}

#[tokio::test]
async fn an_interrupted_run_resumes_without_sending_anything_twice() {
    let sandbox = start("[faults]\nlatency_ms = 5\n").await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows(0..40, "SPB"));
    let mut opts = options(&sandbox, &input);
    opts.settings.limits.concurrency = Concurrency::fixed(2);
    let stop = opts.stop.clone();
    let running = tokio::spawn(license_batch::run(opts));
    sandbox.wait_for(10, 0).await;
    stop.cancel();
    let interrupted = running.await.unwrap().unwrap();
    assert_eq!(interrupted.completion, Completion::Interrupted);
    let done_first = interrupted.count(RowStatus::Succeeded);
    assert!((10..40).contains(&done_first), "{done_first}");
    assert_eq!(interrupted.count(RowStatus::Pending), 40 - done_first);
    assert_eq!(
        read_report(&report_path(&input)).len(),
        40,
        "report written on interrupt"
    );
    assert_eq!(exit_code_for(&Ok(interrupted.clone())), 130);

    let resumed = run(options(&sandbox, &input)).await;
    assert_eq!(resumed.run_id, interrupted.run_id);
    assert_eq!(resumed.count(RowStatus::Succeeded), 40);
    let requests = sandbox.requests();
    assert_eq!(
        requests.len(),
        40,
        "nothing finished before the interrupt was sent again"
    );
    let users: HashSet<_> = requests.iter().map(|r| r.user.clone()).collect();
    assert_eq!(users.len(), 40);
}

#[tokio::test]
async fn a_second_run_on_the_same_state_file_is_refused() {
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows(0..2, "SPB"));
    let opts = options(&sandbox, &input);
    let _held =
        license_batch::journal::Journal::open_for_run(&opts.settings.run.state_file).unwrap();
    let result = license_batch::run(opts).await;
    let Err(error @ Error::Journal(_)) = &result else {
        panic!("{result:?}")
    };
    assert!(
        error
            .to_string()
            .contains("in use by another license-batch run"),
        "{error}"
    );
    assert_eq!(exit_code_for(&result), 2);
    assert!(sandbox.requests().is_empty());
}

#[cfg(unix)]
#[tokio::test]
async fn the_journal_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows(0..1, "SPB"));
    let opts = options(&sandbox, &input);
    let state = opts.settings.run.state_file.clone();
    run(opts).await;
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

#[tokio::test]
async fn the_report_is_rebuilt_from_the_journal() {
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let mut sheet = rows(0..3, "SPB");
    sheet.push(format!("{CONTOSO},not-a-user,SPB,"));
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &sheet);
    let opts = options(&sandbox, &input);
    let state = opts.settings.run.state_file.clone();
    let summary = run(opts).await;
    let original = std::fs::read_to_string(report_path(&input)).unwrap();
    std::fs::remove_file(report_path(&input)).unwrap();
    std::fs::remove_file(&input).unwrap();

    let journal = license_batch::journal::Journal::open_to_read(&state).unwrap();
    let again = dir.path().join("again.csv");
    license_batch::report::write_from_journal(&journal, summary.run_id.unwrap(), &again).unwrap();
    assert_eq!(
        std::fs::read_to_string(again).unwrap(),
        original,
        "same report without the input file"
    );
}

/// Lines with no value at all are not rows: the summary counts them (from the journal, so a
/// resumed run says the same).
#[tokio::test]
async fn blank_lines_are_counted_not_reported() {
    let sandbox = start("").await;
    let dir = tempfile::tempdir().unwrap();
    let mut lines = rows(0..2, "SPB");
    lines.insert(1, ",,,".into());
    lines.push(" , , ,".into());
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &lines);
    let summary = run(options(&sandbox, &input)).await;
    assert_eq!(summary.blank_lines, 2, "{summary}");
    assert!(
        summary.to_string().contains("blank lines: 2 skipped"),
        "{summary}"
    );
    assert_eq!(read_report(&report_path(&input)).len(), 2);
    assert_eq!(sandbox.requests().len(), 2);
}
