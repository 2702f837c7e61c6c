//! The plan a sheet makes (grouping, identical rows, conflicts, invalid rows), as a run writes it
//! to the journal and reads it back.

use super::draft::tests::{add_rows, sheet};
use super::inspect::{Plan, RowPlan};
use super::{Journal, NewRun};
use crate::input::{Action, InputFile, LicenseGroup};

const C: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";
const C2: &str = "11111111-2222-4333-8444-555555555555";

/// Plans `body` as a run does (built-in catalog, scratch journal) and reads the plan back.
fn plan(body: &str) -> (InputFile, Plan) {
    let input = sheet(&format!(
        "customer_id,user_id,sku,license_group,action,excluded_plans\n{body}"
    ));
    let mut journal = Journal::scratch().unwrap();
    let mut draft = journal.draft(NewRun::scratch(&input.header)).unwrap();
    add_rows(&mut draft, &input);
    draft.group().unwrap();
    let run = draft.commit().unwrap();
    (input, journal.load_plan(run).unwrap())
}

#[test]
fn groups_by_customer_user_and_license_group() {
    let (_, plan) = plan(&format!(
        "{C},ada@x.com,SPB,,,\n{C},ADA@x.com,Power BI Pro,,,\n{C},ada@x.com,MEE_STUDENT,,,\n\
         {C2},ada@x.com,SPB,,,\n{C},bob@x.com,ENTERPRISEPACK,,remove,\n"
    ));
    assert_eq!(plan.groups.len(), 4);
    let first = &plan.groups[0];
    assert_eq!(first.user, "ada@x.com");
    assert_eq!(first.license_group, LicenseGroup::Group1);
    assert_eq!(first.operations.len(), 2);
    assert_eq!(plan.groups[1].license_group, LicenseGroup::Group2);
    assert_eq!(plan.groups[3].operations[0].action, Action::Remove);
    assert_eq!(
        plan.rows[1].plan,
        RowPlan::Send {
            group: 0,
            operation: 1
        }
    );
}

#[test]
fn identical_rows_share_one_operation() {
    let (_, plan) = plan(&format!(
        "{C},ada@x.com,SPB,,,\n{C},ada@x.com,spb,,assign,\n"
    ));
    assert_eq!(plan.groups.len(), 1);
    let operation = &plan.groups[0].operations[0];
    assert_eq!((operation.first_row, operation.row_count), (0, 2));
    let send = RowPlan::Send {
        group: 0,
        operation: 0,
    };
    assert_eq!([&plan.rows[0].plan, &plan.rows[1].plan], [&send, &send]);
}

#[test]
fn assign_and_remove_of_one_sku_are_both_invalid() {
    let (_, plan) = plan(&format!(
        "{C},ada@x.com,SPB,,,\n{C},ada@x.com,Microsoft 365 Business Premium,,remove,\n{C},ada@x.com,POWER_BI_PRO,,,\n"
    ));
    for row in &plan.rows[..2] {
        let RowPlan::Invalid { message, .. } = &row.plan else {
            panic!("{row:?}")
        };
        assert!(
            message.contains("lines 2 and 3 ask to both assign and remove"),
            "{message}"
        );
    }
    assert_eq!(plan.groups.len(), 1);
    assert_eq!(plan.groups[0].operations.len(), 1);
}

#[test]
fn contradicting_license_group_and_unknown_names_are_invalid() {
    let (_, plan) = plan(&format!(
        "{C},ada@x.com,MEE_STUDENT,group1,,\n{C},ada@x.com,E9,,,\n"
    ));
    let RowPlan::Invalid {
        message,
        license_group,
        ..
    } = &plan.rows[0].plan
    else {
        panic!()
    };
    assert!(message.contains("group2"), "{message}");
    assert_eq!(*license_group, Some(LicenseGroup::Group2));
    let RowPlan::Invalid { message, .. } = &plan.rows[1].plan else {
        panic!()
    };
    assert!(message.starts_with("column sku: unknown SKU"), "{message}");
    assert!(plan.groups.is_empty());
}
