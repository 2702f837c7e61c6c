//! Users without a usage location (SPEC §3, §5), proven from the sandbox's ground truth: the
//! refused assignment, the PATCH that gives the user the row's (or the configured) location,
//! the group sent again under a new request ID — and nothing PATCHed for anyone else. Also
//! across a SIGKILL between the PATCH and the re-send.

mod common;

use std::process::{Command, Stdio};

use common::*;
use license_batch::config::Concurrency;
use license_batch::country::UsageLocation;
use license_batch::{Completion, exit_code_for};
use serde_json::json;
use uuid::Uuid;

const CONTOSO: &str = "7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90";
const HEADER: &str = "customer_id,user_id,sku,usage_location,name";
const ÉMILIE: &str = "émilie.dubois@contoso.example";
const REFUSAL: &str = "License assignment cannot be done for user with invalid usage location.";

fn contoso() -> Uuid {
    CONTOSO.parse().unwrap()
}

#[tokio::test]
async fn a_user_without_a_usage_location_gets_the_rows_one_then_the_license_and_nobody_else_is_patched()
 {
    // Émilie, Łukasz and user 4 have no usage location; 日本語 (user 3) has one.
    let sandbox = start(&format!(
        r#"
        [[customers]]
        id = "{CONTOSO}"
        users_without_usage_location = ["{ÉMILIE}", "{}", "{}"]
        "#,
        user_guid(2),
        user_guid(4)
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        format!("{CONTOSO},{ÉMILIE},SPB,nl,Émilie"),
        // The same group: the location of any of its rows serves.
        format!("{CONTOSO},{ÉMILIE},POWER_BI_PRO,,Émilie"),
        format!("{CONTOSO},{},SPB,,Łukasz", user_guid(2)),
        format!("{CONTOSO},{},SPB,JP,日本語", user_guid(3)),
        format!("{CONTOSO},{},SPB,NL,Zoë", user_guid(4)),
        format!("{CONTOSO},{},POWER_BI_PRO,DE,Zoë", user_guid(4)),
    ];
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows);
    let summary = run(options(&sandbox, &input)).await;
    assert_eq!(summary.completion, Completion::Finished);

    // One PATCH, for Émilie only, with the documented body.
    let patches = sandbox.patches();
    assert_eq!(patches.len(), 1, "{patches:#?}");
    let patch = &patches[0];
    assert_eq!(patch.user, ÉMILIE);
    assert_eq!(patch.status, 200);
    assert_eq!(
        patch.body,
        json!({"usageLocation": "NL", "attributes": {"objectType": "CustomerUser"}})
    );
    assert_eq!(
        sandbox.usage_location(contoso(), ÉMILIE).as_deref(),
        Some("NL")
    );
    for user in [user_guid(2), user_guid(4)] {
        assert_eq!(sandbox.usage_location(contoso(), &user), None, "{user}");
    }

    // Émilie: refused, PATCHed, then the same group under a new request ID, applied once.
    let émilie: Vec<_> = sandbox
        .requests()
        .into_iter()
        .filter(|r| r.user == ÉMILIE)
        .collect();
    assert_eq!(émilie.len(), 2, "{émilie:#?}");
    assert_eq!(émilie[0].status, 400);
    assert_eq!(émilie[1].status, 201);
    assert!(émilie[1].applied);
    assert_ne!(émilie[0].request_id, émilie[1].request_id);
    assert_eq!(émilie[0].body, émilie[1].body, "the whole group again");
    assert!(émilie[0].at <= patch.at && patch.at <= émilie[1].arrived_at);
    let patch_id = patch
        .request_id
        .clone()
        .expect("the PATCH has a request ID");
    assert!(patch_id.parse::<Uuid>().is_ok());
    assert!(
        émilie
            .iter()
            .all(|r| r.request_id.as_ref() != Some(&patch_id))
    );
    assert_eq!(sandbox.licenses(contoso(), ÉMILIE).len(), 2);
    assert_eq!(sandbox.licenses(contoso(), &user_guid(3)).len(), 1);
    assert!(sandbox.licenses(contoso(), &user_guid(2)).is_empty());
    assert!(sandbox.licenses(contoso(), &user_guid(4)).is_empty());
    // 日本語 already had a location: assigned at once, its JP never used.
    let user_3: Vec<_> = sandbox
        .requests()
        .into_iter()
        .filter(|r| r.user == user_guid(3))
        .collect();
    assert_eq!(user_3.len(), 1);

    let report = read_report(&report_path(&input));
    for row in &report[..2] {
        assert_eq!(row["result_status"], "succeeded", "{row:?}");
        assert!(
            row["result_message"].contains("usage location set to NL"),
            "{row:?}"
        );
    }
    let łukasz = &report[2];
    assert_eq!(łukasz["result_status"], "failed");
    assert_eq!(łukasz["result_http_status"], "400");
    for advice in [
        REFUSAL,
        "usage_location column",
        "run.default_usage_location",
    ] {
        assert!(łukasz["result_message"].contains(advice), "{łukasz:?}");
    }
    assert_eq!(report[3]["result_status"], "succeeded");
    assert_eq!(report[3]["result_message"], "");
    for zoë in &report[4..] {
        assert_eq!(zoë["result_status"], "failed");
        assert!(
            zoë["result_message"].contains("line 6 says NL, line 7 says DE"),
            "{zoë:?}"
        );
    }
    assert_eq!(exit_code_for(&Ok(summary)), 1);
}

#[tokio::test]
async fn without_a_column_the_configured_default_is_given() {
    let sandbox = start(&format!(
        r#"
        [[customers]]
        id = "{CONTOSO}"
        users_without_usage_location = ["{}"]
        "#,
        user_guid(1)
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        format!("{CONTOSO},{},SPB,Łukasz", user_guid(1)),
        format!("{CONTOSO},{},SPB,Émilie", user_guid(2)),
    ];
    let input = write_csv(
        dir.path(),
        "sheet.csv",
        "customer_id,user_id,sku,name",
        &rows,
    );
    let mut opts = options(&sandbox, &input);
    opts.settings.run.default_usage_location = Some(UsageLocation::parse("de").unwrap());
    let summary = run(opts).await;
    assert_eq!(exit_code_for(&Ok(summary)), 0);
    let patches = sandbox.patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].user, user_guid(1));
    assert_eq!(patches[0].body["usageLocation"], "DE");
    assert_eq!(sandbox.licenses(contoso(), &user_guid(1)).len(), 1);
    assert_eq!(sandbox.licenses(contoso(), &user_guid(2)).len(), 1);
}

/// Setting a location needs a GDAP role that assigning licenses does not (User Administrator):
/// a 403 to the PATCH fails that user's rows with the role named, and the customer's other
/// users are still sent.
#[tokio::test]
async fn a_patch_refused_for_a_missing_role_fails_that_user_only() {
    let sandbox = start(&format!(
        r#"
        [[customers]]
        id = "{CONTOSO}"
        missing_user_admin_role = true
        users_without_usage_location = ["{ÉMILIE}"]
        "#
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        format!("{CONTOSO},{ÉMILIE},SPB,FR,Émilie"),
        format!("{CONTOSO},{},SPB,,日本語", user_guid(3)),
    ];
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows);
    // One at a time, in sheet order: user 3 is sent after the PATCH was refused.
    let mut opts = options(&sandbox, &input);
    opts.settings.limits.concurrency = Concurrency::fixed(1);
    let summary = run(opts).await;
    assert_eq!(exit_code_for(&Ok(summary)), 1);
    let patches = sandbox.patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].status, 403);
    let last = sandbox.requests().pop().expect("sent");
    assert_eq!(last.user, user_guid(3), "sent after the refused PATCH");
    assert!(patches[0].at <= last.arrived_at);
    assert!(sandbox.licenses(contoso(), ÉMILIE).is_empty());
    assert_eq!(sandbox.licenses(contoso(), &user_guid(3)).len(), 1);
    let report = read_report(&report_path(&input));
    assert_eq!(report[0]["result_status"], "failed");
    for words in ["cannot set the usage location to FR", "User Administrator"] {
        assert!(
            report[0]["result_message"].contains(words),
            "{:?}",
            report[0]
        );
    }
    assert_eq!(report[1]["result_status"], "succeeded");
}

/// Killed while the PATCH is applied but unanswered: the next run sends the PATCH again under
/// the request ID recorded before the first went out, then the group under the request ID
/// recorded with it — never the refused request's.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_between_the_patch_and_the_resend_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = SandboxServer::start(
        dir.path(),
        &format!(
            "[faults]\npatch_answer_delay_ms = 60000\npatch_answer_delay_calls = 1\n\
             [[customers]]\nid = \"{CONTOSO}\"\nusers_without_usage_location = [\"{ÉMILIE}\"]\n"
        ),
    );
    let rows = [format!("{CONTOSO},{ÉMILIE},SPB,NL,Émilie")];
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows);
    let command = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_license-batch"));
        command
            .args(["run", "sheet.csv", "--state", "state.sqlite", "-q"])
            .args(["--requests-per-minute", "60000"])
            .current_dir(dir.path())
            .env_clear()
            .envs(sandbox.env())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    let mut first = command().spawn().unwrap();
    sandbox.wait_for_patches(1).await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!report_path(&input).exists(), "killed before any report");

    let output = command().output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");

    let record = sandbox.record().await;
    let patches = record["patches"].as_array().unwrap();
    assert_eq!(patches.len(), 2, "{patches:#?}");
    assert_eq!(patches[0]["request_id"], patches[1]["request_id"]);
    let requests = record["requests"].as_array().unwrap();
    let statuses: Vec<_> = requests.iter().map(|r| r["status"].as_u64()).collect();
    assert_eq!(statuses, [Some(400), Some(201)], "{requests:#?}");
    assert_ne!(requests[0]["request_id"], requests[1]["request_id"]);
    assert_ne!(requests[1]["request_id"], patches[0]["request_id"]);
    let applied = requests.iter().filter(|r| r["applied"] == true).count();
    assert_eq!(applied, 1);
    let report = read_report(&report_path(&input));
    assert_eq!(report[0]["result_status"], "succeeded");
    assert!(report[0]["result_message"].contains("usage location set to NL"));
}
