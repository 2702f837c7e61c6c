//! Knowing the tenant before writing, against the sandbox: resolution of names and part numbers
//! per customer, license groups from the tenant, the seat preflight in both modes, deployment
//! insights, and `verify` against the tenant's real state.

mod common;

use common::*;
use license_batch::config::PreflightMode;
use license_batch::outcome::RowStatus;
use license_batch::run::deployment_insights;
use uuid::Uuid;

const HEADER: &str = "customer_id,user_id,sku";
const CUSTOM_A: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const CUSTOM_B: &str = "bbbbbbbb-0000-4000-8000-00000000000b";

fn tenant() -> String {
    format!(
        r#"
        [[customers]]
        id = "{CONTOSO}"
        name = "Contoso"
        skus = [
          {{ sku = "SPE_E3", total = 50 }},
          {{ sku = "POWER_BI_PRO", total = 10, consumed = 7 }},
          {{ sku = "MEE_STUDENT", total = 30 }},
          {{ sku = "{CUSTOM_A}", name = "Contoso Learning Suite", part_number = "LEARN_A", license_group = "group1" }},
          {{ sku = "{CUSTOM_B}", name = "Contoso Learning Suite", part_number = "LEARN_B", license_group = "group2" }},
        ]
        "#
    )
}

#[tokio::test]
async fn names_and_part_numbers_resolve_per_customer_and_ambiguity_is_invalid() {
    let sandbox = start(&tenant()).await;
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![
        format!("{CONTOSO},a@contoso.com,microsoft 365 e3"),
        format!("{CONTOSO},b@contoso.com,POWER_BI_PRO"),
        format!("{CONTOSO},c@contoso.com,learn_b"),
        format!("{CONTOSO},d@contoso.com,Contoso Learning Suite"),
        format!("{CONTOSO},e@contoso.com,Microsoft 365 Business Premium"),
    ];
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows);
    run(options(&sandbox, &input)).await;
    let report = read_report(&report_path(&input));
    assert_eq!(report[0]["result_sku_id"], E3);
    assert_eq!(report[1]["result_sku_id"], POWER_BI);
    assert_eq!(report[2]["result_sku_id"], CUSTOM_B);
    assert_eq!(
        report[2]["result_license_group"], "group2",
        "the group comes from the tenant"
    );
    assert_eq!(report[3]["result_status"], "invalid");
    assert!(
        report[3]["result_message"].contains("ambiguous"),
        "{}",
        report[3]["result_message"]
    );
    assert!(
        report[3]["result_message"].contains(CUSTOM_A)
            && report[3]["result_message"].contains(CUSTOM_B)
    );
    // Not subscribed by this customer: the message lists what it has.
    assert_eq!(report[4]["result_status"], "invalid");
    assert!(
        report[4]["result_message"].contains("it has: Microsoft 365 E3 (SPE_E3)"),
        "{}",
        report[4]["result_message"]
    );
    assert_eq!(
        report
            .iter()
            .filter(|r| r["result_status"] == "succeeded")
            .count(),
        3
    );
    // The tenant's own state: each resolved SKU was assigned to its user, and the ambiguous
    // and unknown names were never sent.
    let customer: Uuid = CONTOSO.parse().unwrap();
    for (user, sku) in [
        ("a@contoso.com", E3),
        ("b@contoso.com", POWER_BI),
        ("c@contoso.com", CUSTOM_B),
    ] {
        let held = sandbox.licenses(customer, user);
        assert_eq!(
            held,
            std::collections::BTreeSet::from([sku.parse().unwrap()]),
            "{user}"
        );
    }
    let sent: Vec<String> = sandbox.requests().into_iter().map(|r| r.user).collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(
        !sent
            .iter()
            .any(|u| u.starts_with('d') || u.starts_with('e'))
    );
}

#[tokio::test]
async fn minecraft_is_discovered_in_group2_and_never_shares_a_request_with_group1() {
    let sandbox = start(&tenant()).await;
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![
        format!("{CONTOSO},student@contoso.com,Microsoft 365 E3"),
        format!("{CONTOSO},student@contoso.com,Minecraft Education Student"),
    ];
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows);
    let summary = run(options(&sandbox, &input)).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 2);
    let report = read_report(&report_path(&input));
    assert_eq!(report[1]["result_license_group"], "group2");
    let requests = sandbox.requests();
    assert_eq!(requests.len(), 2, "one request per license group");
    assert_ne!(requests[0].request_id, requests[1].request_id);
    assert_eq!(sandbox.violations().mixed_license_groups, 0);
}

#[tokio::test]
async fn excluded_plans_can_be_named() {
    let sandbox = start(&tenant()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(
        dir.path(),
        "sheet.csv",
        "customer_id,user_id,sku,excluded_plans",
        &[
            format!("{CONTOSO},a@contoso.com,SPE_E3,Microsoft Teams;SWAY"),
            format!("{CONTOSO},b@contoso.com,SPE_E3,Skype"),
        ],
    );
    run(options(&sandbox, &input)).await;
    let report = read_report(&report_path(&input));
    assert_eq!(report[0]["result_status"], "succeeded");
    let body = sandbox.requests()[0].body.to_string();
    assert!(
        body.contains("57ff2da0-773e-42df-b2af-ffb7a2317929"),
        "Teams excluded by name: {body}"
    );
    assert!(
        body.contains("a23b959c-7ce8-4e57-9140-b90eb88a9e97"),
        "Sway excluded by name: {body}"
    );
    assert_eq!(report[1]["result_status"], "invalid");
    assert!(
        report[1]["result_message"].contains("TEAMS1 (Microsoft Teams)"),
        "{}",
        report[1]["result_message"]
    );
}

fn five_power_bi_users() -> Vec<String> {
    (0..5)
        .map(|i| format!("{CONTOSO},u{i}@contoso.com,Power BI Pro"))
        .collect()
}

#[tokio::test]
async fn preflight_warn_sends_anyway_and_the_api_refuses_the_excess() {
    let sandbox = start(&tenant()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &five_power_bi_users());
    let summary = run(options(&sandbox, &input)).await;
    assert_eq!(summary.count(RowStatus::Succeeded), 3);
    assert_eq!(summary.count(RowStatus::Failed), 2);
    assert_eq!(sandbox.requests().len(), 5);
    let short = &summary.seat_shortages[0];
    assert_eq!((short.available, short.needed), (Some(3), 5));
}

#[tokio::test]
async fn preflight_strict_skips_the_excess_in_input_order_without_calling_the_api() {
    let sandbox = start(&tenant()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &five_power_bi_users());
    let mut opts = options(&sandbox, &input);
    opts.settings.run.preflight = PreflightMode::Strict;
    let summary = run(opts).await;
    assert_eq!(sandbox.requests().len(), 3);
    let report = read_report(&report_path(&input));
    let statuses: Vec<&str> = report.iter().map(|r| r["result_status"].as_str()).collect();
    assert_eq!(
        statuses,
        ["succeeded", "succeeded", "succeeded", "skipped", "skipped"]
    );
    assert!(report[3]["result_message"].contains("--preflight strict"));
    assert_eq!(license_batch::exit_code_for(&Ok(summary)), 1);

    // Seats are bought; the same sheet the next night sends only the skipped rows.
    sandbox.set_seats(CONTOSO.parse().unwrap(), POWER_BI.parse().unwrap(), 20);
    let mut opts = options(&sandbox, &input);
    opts.settings.run.preflight = PreflightMode::Strict;
    let next = run(opts).await;
    assert_eq!(next.count(RowStatus::Succeeded), 5);
    assert_eq!(sandbox.requests().len(), 5);
}

#[tokio::test]
async fn the_summary_shows_deployment_insights_of_the_touched_customers() {
    let sandbox = start(&tenant()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write_csv(
        dir.path(),
        "sheet.csv",
        HEADER,
        &[format!("{CONTOSO},a@contoso.com,SPE_E3")],
    );
    let summary = run(options(&sandbox, &input)).await;
    assert_eq!(summary.insights.len(), 1);
    let products = summary.insights[0].products.as_ref().unwrap();
    let e3 = products
        .iter()
        .find(|p| p.product_name == "MICROSOFT 365 E3")
        .unwrap();
    assert_eq!((e3.licenses_deployed, e3.licenses_sold), (1.0, 50.0));
    assert!(summary.to_string().contains("licenses deployed / sold"));

    let mut opts = options(&sandbox, &input);
    opts.settings.run.insights = false;
    opts.resend = true;
    assert!(run(opts).await.insights.is_empty(), "--no-insights");
}

#[tokio::test]
async fn insights_of_any_customer_and_unknown_ones_explained() {
    let sandbox = start(&tenant()).await;
    let connection = connect_to(&sandbox).await;
    let unknown = Uuid::new_v4();
    let all = deployment_insights(&connection.calls, [CONTOSO.parse().unwrap(), unknown]).await;
    assert!(
        all[0]
            .products
            .as_ref()
            .unwrap()
            .iter()
            .any(|p| p.product_name == "POWER BI PRO")
    );
    assert!(all[1].products.as_ref().unwrap_err().contains("60003"));
}

#[tokio::test]
async fn verify_catches_a_license_removed_behind_the_tools_back() {
    let sandbox = start(&tenant()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut rows: Vec<String> = (0..4)
        .map(|i| format!("{CONTOSO},u{i}@contoso.com,SPE_E3"))
        .collect();
    rows.push(format!("{CONTOSO},bad-row,SPE_E3"));
    let input = write_csv(dir.path(), "sheet.csv", HEADER, &rows);
    run(options(&sandbox, &input)).await;
    let connection = connect_to(&sandbox).await;

    let clean = license_batch::verify::verify(&report_path(&input), &connection.calls)
        .await
        .unwrap();
    assert!(clean.all_agree(), "{:?}", clean.findings);
    assert_eq!((clean.checked, clean.not_comparable), (4, 1));

    sandbox.revoke_license(
        CONTOSO.parse().unwrap(),
        "u2@contoso.com",
        E3.parse().unwrap(),
    );
    let after = license_batch::verify::verify(&report_path(&input), &connection.calls)
        .await
        .unwrap();
    assert_eq!(after.findings.len(), 1);
    let finding = &after.findings[0];
    assert_eq!((finding.line, finding.user.as_str()), (4, "u2@contoso.com"));
    assert!(
        finding.message.contains("does not have it"),
        "{}",
        finding.message
    );
}
