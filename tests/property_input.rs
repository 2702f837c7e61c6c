//! Property tests over the input reader, the row validator and the plan: whatever the sheet, no
//! panic, and every data record of the input appears exactly once in the report, in order.

use std::path::Path;

use license_batch::input::InputFile;
use license_batch::journal::inspect::{Plan, RowPlan};
use license_batch::journal::{Journal, NewRun};
use license_batch::outcome::RowStatus;
use license_batch::plan::{self, catalog::BuiltinCatalog};
use license_batch::report::{self, ReportRow};
use proptest::prelude::*;

/// Plans `input` as a run does (resolution, then grouping in `partitions` partitions) on a
/// scratch journal: the plan read back, and the report rows the run would write before it
/// sends anything (every operation still open).
fn plan_of(input: &InputFile, partitions: usize) -> (Plan, Vec<ReportRow>) {
    let mut journal = Journal::scratch().expect("a scratch journal opens");
    let mut draft = journal
        .draft_in_partitions(NewRun::scratch(&input.header), partitions)
        .expect("a scratch run starts");
    for row in &input.rows {
        let resolution = plan::resolve_row(&input.header, row, &BuiltinCatalog);
        draft
            .add_row(row, &input.header, &resolution)
            .expect("a scratch row is written");
    }
    draft.group().expect("scratch rows group");
    let run = draft.commit().expect("a scratch run commits");
    let mut rows = Vec::new();
    journal
        .each_stored_row(run, |_, row| {
            rows.push(report::row_of(row, "test"));
            Ok(())
        })
        .expect("the rows read back");
    (journal.load_plan(run).expect("a scratch run loads"), rows)
}

/// Cells an onboarding sheet might hold, the hostile ones included.
fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("7f3c2a10-4b8e-4d21-9c3a-1e5f6a7b8c90".to_string()),
        Just("{7F3C2A10-4B8E-4D21-9C3A-1E5F6A7B8C90}".to_string()),
        Just("ada@contoso.com".to_string()),
        Just("a/b@contoso.com".to_string()),
        Just("guest#EXT#@contoso.onmicrosoft.com".to_string()),
        Just("SPB".to_string()),
        Just("Microsoft 365 Business Premium".to_string()),
        Just("MEE_STUDENT".to_string()),
        Just("group2".to_string()),
        Just("remove".to_string()),
        Just("Microsoft Teams;SWAY".to_string()),
        Just("=HYPERLINK(\"x\")".to_string()),
        Just(String::new()),
        Just("a,b;c\"d\"\ne".to_string()),
        "\\PC{0,12}",
        "[ -~]{0,20}",
    ]
}

fn sheet() -> impl Strategy<Value = (Vec<String>, Vec<Vec<String>>, bool, bool)> {
    let header = prop::sample::subsequence(
        vec![
            "customer_id",
            "user_id",
            "sku",
            "license_group",
            "excluded_plans",
            "action",
            "ticket",
            "note",
        ],
        3..=8,
    )
    .prop_map(|h| h.into_iter().map(String::from).collect::<Vec<_>>());
    (
        header,
        prop::collection::vec(prop::collection::vec(cell(), 0..10), 0..30),
        any::<bool>(),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_record_appears_once_in_the_report_model((header, rows, crlf, bom) in sheet()) {
        let mut writer = csv::WriterBuilder::new()
            .flexible(true)
            .terminator(if crlf { csv::Terminator::CRLF } else { csv::Terminator::Any(b'\n') })
            .from_writer(Vec::new());
        writer.write_record(&header).unwrap();
        for row in &rows {
            if row.is_empty() {
                // An empty record: a blank line, which is not a data row.
                writer.write_record([""]).unwrap();
            } else {
                writer.write_record(row).unwrap();
            }
        }
        let mut bytes = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
        bytes.extend(writer.into_inner().unwrap());

        let parsed = license_batch::input::parse(Path::new("p.csv"), &bytes, None);
        let has_required = ["customer_id", "user_id", "sku"].iter().all(|r| header.iter().any(|h| h == r));
        let input = match parsed {
            Ok(input) => input,
            Err(error) => {
                // Refusing the file is only right when a required column is missing.
                prop_assert!(!has_required, "refused a well-formed sheet: {error}");
                return Ok(());
            }
        };
        let data_records = rows.iter().filter(|r| r.iter().any(|c| !c.trim().is_empty())).count();
        prop_assert_eq!(input.rows.len() + input.blank_lines.len(), rows.len());
        prop_assert_eq!(input.rows.len(), data_records);

        let (plan, model) = plan_of(&input, 1);
        prop_assert_eq!(model.len(), input.rows.len());
        for (row, reported) in input.rows.iter().zip(&model) {
            prop_assert_eq!(row.line, reported.line);
            if row.request.is_err() {
                prop_assert_eq!(reported.status, RowStatus::Invalid, "an unreadable row is reported invalid");
            }
        }
        prop_assert!(model.windows(2).all(|w| w[0].line < w[1].line), "input order kept");
        // Every operation is asked for by exactly the rows that point at it, the first of
        // them being the one it names.
        for (g, group) in plan.groups.iter().enumerate() {
            for (o, op) in group.operations.iter().enumerate() {
                let asking: Vec<usize> = plan.rows.iter().enumerate()
                    .filter(|(_, r)| r.plan == RowPlan::Send { group: g, operation: o })
                    .map(|(i, _)| i)
                    .collect();
                prop_assert_eq!(asking.len() as u64, op.row_count);
                prop_assert_eq!(asking.first().copied(), Some(op.first_row));
            }
        }
        // Users are spread over partitions to be grouped; how many must not change the plan.
        let (partitioned, _) = plan_of(&input, 7);
        prop_assert_eq!(&partitioned.rows, &plan.rows);
        prop_assert_eq!(&partitioned.groups, &plan.groups);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(input) = license_batch::input::parse(Path::new("b.csv"), &bytes, None) {
            let (plan, _) = plan_of(&input, 1);
            prop_assert_eq!(plan.rows.len(), input.rows.len());
        }
    }

    #[test]
    fn arbitrary_text_after_a_valid_header_never_panics(body in "\\PC{0,300}") {
        let text = format!("customer_id;user_id;sku\n{body}");
        if let Ok(input) = license_batch::input::parse(Path::new("t.csv"), text.as_bytes(), None) {
            let (plan, _) = plan_of(&input, 1);
            prop_assert_eq!(plan.rows.len(), input.rows.len());
        }
    }
}
