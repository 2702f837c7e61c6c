//! Arbitrary Unicode through the whole pipeline — plan, run against the sandbox, report, the
//! report rewritten from the journal, `status`, `verify` — in every carried column (German and
//! Japanese headers among them), in user IDs and in SKU names (the tenant's too): no panic,
//! every row reported, and every carried cell byte-identical to the input except the documented
//! `'` before a cell a spreadsheet would execute.

mod common;

use std::sync::LazyLock;

use common::*;
use license_batch::Completion;
use license_batch::journal::Journal;
use license_batch::report::neutralise;
use license_batch::report::write_from_journal;
use license_batch::run::{Target, connect};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Runtime::new().expect("runtime"));

/// Carried columns beside the required ones: our aliases must not swallow them.
const CARRIED: [&str; 3] = ["name", "Straße", "名前"];

/// Characters our users' sheets are full of, and the ones that break naive code: several-byte
/// letters, combining marks, emoji, right-to-left and zero-width marks, NBSP, a BOM, formula
/// starters, CSV punctuation and line breaks.
fn tricky_char() -> impl Strategy<Value = char> {
    prop::sample::select(vec![
        'É', 'Ł', 'ö', 'ß', '日', '本', '語', '🙂', '👩', '\u{200d}', '\u{0301}', '\u{0308}',
        '\u{200f}', '\u{202e}', '\u{200b}', '\u{00a0}', '\u{feff}', '=', '+', '-', '@', '\t', '\r',
        '\n', '"', ',', ';', '\'', 'a', '1', ' ',
    ])
}

fn unicode_cell() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(tricky_char(), 0..12).prop_map(String::from_iter),
        2 => "\\PC{0,16}",
        1 => (tricky_char(), 1000..3000usize).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
    ]
}

fn user_id(index: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(user_guid(index)),
        prop::sample::select(vec!["Émilie", "łukasz", "日本語", "zoë", "ödön"])
            .prop_map(move |name| format!("{name}.{index}@contoso.com")),
        unicode_cell(),
    ]
}

/// The tenant: Business Premium, Power BI Pro, and a product whose name and part number are
/// not ASCII; every user exists.
fn scenario() -> String {
    format!(
        r#"
        [[customers]]
        id = "{CONTOSO}"
        skus = [
            {{ sku = "SPB", total = 100000 }},
            {{ sku = "Power BI Pro", total = 100000 }},
            {{ sku = "9a1c0f3e-5b7d-4e2a-8c6f-1d3b5a7c9e0f", name = "Büro 日本 🙂", part_number = "BÜRO_日本", license_group = "group1", total = 100000 }},
        ]
        "#
    )
}

fn sku() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("SPB".to_string()),
        Just("Power BI Pro".to_string()),
        Just("Büro 日本 🙂".to_string()),
        Just("BÜRO 日本 🙂".to_string()),
        Just("BÜRO_日本".to_string()),
        Just("Ünknown Prödüct".to_string()),
        unicode_cell(),
    ]
}

fn rows() -> impl Strategy<Value = Vec<Vec<String>>> {
    prop::collection::vec(0..40usize, 1..10).prop_flat_map(|users| {
        users
            .into_iter()
            .map(|index| {
                (
                    user_id(index),
                    sku(),
                    prop::collection::vec(unicode_cell(), CARRIED.len()),
                )
                    .prop_map(|(user, sku, carried)| {
                        let mut row = vec![CONTOSO.to_string(), user, sku];
                        row.extend(carried);
                        row
                    })
            })
            .collect::<Vec<_>>()
    })
}

fn records(path: &std::path::Path) -> Vec<csv::StringRecord> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .expect("report exists")
        .records()
        .map(Result::unwrap)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn unicode_cells_come_back_as_they_went_in(rows in rows(), bom in any::<bool>()) {
        RUNTIME.block_on(async {
            let sandbox = start(&scenario()).await;
            let dir = tempfile::tempdir().unwrap();
            let header: Vec<&str> = ["customer_id", "user_id", "sku"].into_iter().chain(CARRIED).collect();
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record(&header).unwrap();
            for row in &rows {
                writer.write_record(row).unwrap();
            }
            let mut bytes = if bom { b"\xEF\xBB\xBF".to_vec() } else { Vec::new() };
            bytes.extend(writer.into_inner().unwrap());
            let input = dir.path().join("sheet.csv");
            std::fs::write(&input, bytes).unwrap();

            let opts = options(&sandbox, &input);
            let settings = opts.settings.clone();
            let summary = license_batch::run(opts).await.expect("the run starts");
            prop_assert_eq!(&summary.completion, &Completion::Finished, "{}", summary);

            let report = report_path(&input);
            let written = records(&report);
            prop_assert_eq!(written.len(), rows.len() + 1, "one report row per input row");
            for (column, name) in header.iter().enumerate() {
                prop_assert_eq!(&written[0][column], *name);
            }
            for (row, reported) in rows.iter().zip(&written[1..]) {
                for (column, cell) in row.iter().enumerate() {
                    let expected = neutralise(cell);
                    prop_assert_eq!(&reported[column], expected.as_ref(), "column {}", header[column]);
                }
                let status = &reported[header.len() + 1];
                prop_assert!(["succeeded", "failed", "invalid"].contains(&status), "{}", status);
                // A valid user and a name of the product resolve to it, whatever its letters.
                if row[1].starts_with("00000000-") && row[2].to_lowercase().starts_with("büro") {
                    prop_assert_eq!(&reported[header.len() + 2], "9a1c0f3e-5b7d-4e2a-8c6f-1d3b5a7c9e0f");
                }
            }

            // The report rewritten from the journal alone is the same file.
            let journal_path = input.with_file_name("state.sqlite");
            let journal = Journal::open_to_read(&journal_path).unwrap();
            let again = dir.path().join("again.csv");
            let run_id = summary.run_id.expect("a run was recorded");
            write_from_journal(&journal, run_id, &again).unwrap();
            prop_assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&report).unwrap());

            // `status` counts every row of the run.
            let latest = &journal.recent_runs(1).unwrap()[0];
            prop_assert_eq!(latest.outcome.as_str(), "finished");
            prop_assert_eq!(latest.counts.iter().map(|(_, n)| n).sum::<u64>(), rows.len() as u64);

            // `verify` reads the report back as an input and finds the tenant agrees.
            let connection = connect(&settings, &sandbox_secrets(), &Target::Configured, CancellationToken::new())
                .await
                .unwrap();
            let verified = license_batch::verify::verify(&report, &connection.calls).await.unwrap();
            prop_assert!(verified.all_agree(), "{:?}", verified.findings);
            Ok(())
        })?;
    }
}
