//! A new run's plan, made as its rows are read: each row waits in a temporary file while
//! [`Grouper`] applies the rules between rows one partition of users at a time; then every
//! row, group and operation goes to a [`PlanSink`] (the journal) in input order, with the
//! figures counted on the way ([`PlanCounts`]). A sheet of any size is planned without holding
//! it in memory, and the sink is only appended to.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use uuid::Uuid;

use super::RowResolution;
use super::grouping::{self, Assignment, Grouper};
use super::guard::LicenseChanges;
use crate::input::{Action, InputHeader, InputRow};
use crate::outcome::{RowStatus, Tally};
use crate::spill::{SpillReader, SpillWriter};

/// Buffer of the file the rows wait in until they are grouped.
const ROWS_BUFFER: usize = 64 << 10;

/// How a spilled row continues after its common part.
const INVALID: u8 = 0;
const RESOLVED: u8 = 1;

/// Where a plan goes, in input order: a group before its first operation, an operation before
/// (or with) its first row.
pub trait PlanSink {
    type Error;
    fn group(&mut self, group: &NewGroup<'_>) -> Result<(), Self::Error>;
    fn operation(&mut self, operation: &NewOperation<'_>) -> Result<(), Self::Error>;
    fn row(&mut self, row: &NewRow<'_>) -> Result<(), Self::Error>;
}

/// One request to send: its index is that of its first row.
#[derive(Debug)]
pub struct NewGroup<'a> {
    pub index: u64,
    pub customer: Uuid,
    pub user: &'a str,
    pub user_key: &'a str,
    pub license_group: &'a str,
    pub request_id: Uuid,
}

/// One SKU to assign or remove within a group, for all the rows that ask for it.
#[derive(Debug)]
pub struct NewOperation<'a> {
    pub group: u64,
    pub operation: u32,
    pub sku: Uuid,
    pub action: &'a str,
    pub excluded: &'a str,
    pub request_id: Uuid,
    pub first_row: u64,
    pub row_count: u64,
}

/// One input row and what the plan does with it.
#[derive(Debug)]
pub struct NewRow<'a> {
    pub index: u64,
    pub line: u64,
    /// The carried input cells, as JSON.
    pub cells: &'a str,
    pub customer: Option<Uuid>,
    /// `(group, operation)` when it is sent; else why it is invalid.
    pub sent: Result<(u64, u32), &'a str>,
    pub sku: Option<Uuid>,
    pub license_group: Option<&'a str>,
    /// The usage location the row gives (planned rows only).
    pub usage_location: Option<&'a str>,
}

/// Why a plan could not be made: its temporary files, or the sink.
#[derive(Debug)]
pub enum PlanError<E> {
    Spill(io::Error),
    Sink(E),
}

impl<E> From<io::Error> for PlanError<E> {
    fn from(error: io::Error) -> Self {
        PlanError::Spill(error)
    }
}

/// Figures of a plan counted while it is written, so that `plan` and the seat preflight need
/// not read a large plan back: they hold while every operation is still open (the journal
/// drops them when one is settled).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PlanCounts {
    pub tally: Tally,
    /// Per customer: (requests to send, rows planned for sending).
    pub per_customer: BTreeMap<Uuid, (u64, u64)>,
    /// Per (customer, SKU): assigns to send.
    pub seat_needs: BTreeMap<(Uuid, Uuid), u64>,
    /// Per customer: the license changes to send (what the guard checks).
    pub changes: BTreeMap<Uuid, LicenseChanges>,
    /// Rows per (customer, status) while counting; folded into `tally` at the end (a tally
    /// keys its rows by the customer's text, too dear to make for every row).
    rows: BTreeMap<(Option<Uuid>, RowStatus), u64>,
}

impl PlanCounts {
    fn count_row(&mut self, customer: Option<Uuid>, status: RowStatus) {
        *self.rows.entry((customer, status)).or_default() += 1;
    }

    fn finish(&mut self) {
        for ((customer, status), rows) in std::mem::take(&mut self.rows) {
            self.tally.add_rows(customer, status, None, None, rows);
        }
    }
}

/// A plan in the making: the rows read so far, waiting to be grouped.
pub struct Planner {
    rows: SpillWriter,
    grouper: Grouper,
    next_row: u64,
    /// False: open operations (and the rows, groups they stand for) are counted, not handed
    /// to the sink ([`Planner::count_open_operations_only`]).
    record_open: bool,
}

impl Planner {
    /// Temporary files in `dir`; `partitions` of users grouped one at a time (the plan does
    /// not depend on how many: tests show that).
    pub fn new(dir: &Path, partitions: usize) -> io::Result<Self> {
        Ok(Planner {
            grouper: Grouper::new(dir, partitions)?,
            rows: SpillWriter::create_in(dir, ROWS_BUFFER)?,
            next_row: 0,
            record_open: true,
        })
    }

    /// As many partitions as an input of `input_bytes` calls for.
    pub fn partitions_for(input_bytes: u64) -> usize {
        grouping::partitions_for(input_bytes)
    }

    /// For `plan`, when nothing will be settled before sending: the valid rows' operations
    /// are counted ([`PlanCounts`]) but not handed to the sink; invalid rows still are.
    pub fn count_open_operations_only(&mut self) {
        self.record_open = false;
    }

    pub fn records_open_operations(&self) -> bool {
        self.record_open
    }

    /// Takes one data row with what resolution made of it.
    pub fn add_row(
        &mut self,
        row: &InputRow,
        header: &InputHeader,
        resolution: &RowResolution,
    ) -> io::Result<()> {
        let cells: Vec<&str> = header
            .carried
            .iter()
            .map(|&i| row.cells[i].as_str())
            .collect();
        let customer = row.request.as_ref().ok().map(|r| r.customer_id);
        let out = &mut self.rows;
        out.u64(row.line)?;
        out.str(&serde_json::to_string(&cells).expect("strings serialise"))?;
        optional_uuid(out, customer.as_ref())?;
        match resolution {
            RowResolution::Invalid {
                message,
                sku_id,
                license_group,
            } => {
                out.u8(INVALID)?;
                out.str(message)?;
                optional_uuid(out, sku_id.as_ref())?;
                out.str(license_group.map_or("", |g| g.as_str()))?;
            }
            RowResolution::Resolved(resolved) => {
                out.u8(RESOLVED)?;
                out.uuid(&resolved.sku)?;
                out.str(resolved.license_group.as_str())?;
                out.str(&resolved.user)?;
                out.str(&resolved.user_key)?;
                out.str(resolved.action.as_str())?;
                out.str(&grouping::excluded_text(&resolved.excluded))?;
                out.str(resolved.usage_location.as_ref().map_or("", |l| l.as_str()))?;
                self.grouper.add(self.next_row, row.line, resolved)?;
            }
        }
        self.next_row += 1;
        Ok(())
    }

    /// Applies the rules between rows (SPEC §4; see [`grouping`]): rows asking about the same
    /// (customer, user, SKU) must agree — identical ones become one operation, an assign and a
    /// remove (or two different exclusions) make all of them invalid; then one group (one
    /// request, with its request ID) per (customer, user, license group), its index that of
    /// its first row, its operations numbered 0.. by their first rows. Then hands every row,
    /// group and operation to `sink` in input order.
    pub fn finish<S: PlanSink>(self, sink: &mut S) -> Result<PlanCounts, PlanError<S::Error>> {
        let clock = std::time::Instant::now();
        let mut assignments = self.grouper.finish()?;
        tracing::debug!("planning: partitions grouped in {:?}", clock.elapsed());
        let clock = std::time::Instant::now();
        let mut rows = self.rows.into_reader(ROWS_BUFFER)?;
        let mut counts = PlanCounts::default();
        for index in 0..self.next_row {
            write_row(
                index,
                &mut rows,
                &mut assignments,
                sink,
                &mut counts,
                self.record_open,
            )?;
        }
        counts.finish();
        tracing::debug!(
            "planning: rows, groups and operations {} in {:?}",
            if self.record_open {
                "written"
            } else {
                "counted (invalid rows written)"
            },
            clock.elapsed()
        );
        Ok(counts)
    }
}

/// Hands the row `index` (the next one in `rows`) to the sink and, on the first row of a group
/// or an operation, that group or operation before it.
fn write_row<S: PlanSink>(
    index: u64,
    rows: &mut SpillReader,
    assignments: &mut grouping::Assignments,
    sink: &mut S,
    counts: &mut PlanCounts,
    record_open: bool,
) -> Result<(), PlanError<S::Error>> {
    let line = rows.u64()?;
    let cells = rows.string()?;
    let customer = read_optional_uuid(rows)?;
    let row = |sent, sku, license_group, usage_location| NewRow {
        index,
        line,
        cells: &cells,
        customer,
        sent,
        sku,
        license_group,
        usage_location,
    };
    if rows.u8()? == INVALID {
        let message = rows.string()?;
        let sku = read_optional_uuid(rows)?;
        let license_group = Some(rows.string()?).filter(|g| !g.is_empty());
        counts.count_row(customer, RowStatus::Invalid);
        return sink
            .row(&row(Err(&message), sku, license_group.as_deref(), None))
            .map_err(PlanError::Sink);
    }
    let sku_id = rows.uuid()?;
    let license_group = rows.string()?;
    let user = rows.string()?;
    let user_key = rows.string()?;
    let action = rows.string()?;
    let excluded = rows.string()?;
    let usage_location = rows.string()?;
    let usage_location = Some(usage_location.as_str()).filter(|l| !l.is_empty());
    let Some(customer) = customer else {
        return Err(PlanError::Spill(io::Error::new(
            io::ErrorKind::InvalidData,
            "a planned row without a customer",
        )));
    };
    match assignments.next(customer, &user_key)? {
        Assignment::Conflict(message) => {
            counts.count_row(Some(customer), RowStatus::Invalid);
            sink.row(&row(
                Err(&message),
                Some(sku_id),
                Some(&license_group),
                None,
            ))
            .map_err(PlanError::Sink)
        }
        Assignment::Send {
            group,
            operation,
            rows: first_of,
            send_id,
        } => {
            counts.count_row(Some(customer), RowStatus::Pending);
            let (requests, planned_rows) = counts.per_customer.entry(customer).or_default();
            *planned_rows += 1;
            if group == index {
                *requests += 1;
            }
            // An operation needs a seat once, counted on its first row.
            if first_of.is_some() {
                let changes = counts.changes.entry(customer).or_default();
                if action == Action::Assign.as_str() {
                    *counts.seat_needs.entry((customer, sku_id)).or_default() += 1;
                    changes.assigns += 1;
                } else {
                    changes.removals += 1;
                }
            }
            if !record_open {
                return Ok(());
            }
            // A group's index is its first row's, and that row comes before (or is) the first
            // row of each of its operations: a group is written before them.
            if group == index {
                sink.group(&NewGroup {
                    index,
                    customer,
                    user: &user,
                    user_key: &user_key,
                    license_group: &license_group,
                    request_id: send_id,
                })
                .map_err(PlanError::Sink)?;
            }
            if let Some(row_count) = first_of {
                sink.operation(&NewOperation {
                    group,
                    operation,
                    sku: sku_id,
                    action: &action,
                    excluded: &excluded,
                    request_id: send_id,
                    first_row: index,
                    row_count,
                })
                .map_err(PlanError::Sink)?;
            }
            sink.row(&row(
                Ok((group, operation)),
                Some(sku_id),
                Some(&license_group),
                usage_location,
            ))
            .map_err(PlanError::Sink)
        }
    }
}

fn optional_uuid(out: &mut SpillWriter, value: Option<&Uuid>) -> io::Result<()> {
    match value {
        Some(value) => {
            out.u8(1)?;
            out.uuid(value)
        }
        None => out.u8(0),
    }
}

fn read_optional_uuid(input: &mut SpillReader) -> io::Result<Option<Uuid>> {
    Ok(match input.u8()? {
        0 => None,
        _ => Some(input.uuid()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::catalog::BuiltinCatalog;
    use crate::plan::resolve_row;

    /// What a sink was handed, in order.
    #[derive(Default)]
    struct Recorded(Vec<String>);

    impl PlanSink for Recorded {
        type Error = std::convert::Infallible;
        fn group(&mut self, g: &NewGroup<'_>) -> Result<(), Self::Error> {
            self.0
                .push(format!("group {} {} {}", g.index, g.user, g.license_group));
            Ok(())
        }
        fn operation(&mut self, o: &NewOperation<'_>) -> Result<(), Self::Error> {
            self.0.push(format!(
                "operation {}.{} {} rows={} first={}",
                o.group, o.operation, o.action, o.row_count, o.first_row
            ));
            Ok(())
        }
        fn row(&mut self, r: &NewRow<'_>) -> Result<(), Self::Error> {
            self.0.push(match r.sent {
                Ok((g, o)) => format!("row {} line {} → {g}.{o}", r.index, r.line),
                Err(why) => format!("row {} line {} invalid: {why}", r.index, r.line),
            });
            Ok(())
        }
    }

    fn planned(text: &str, partitions: usize, counted_only: bool) -> (Vec<String>, PlanCounts) {
        let input = crate::input::parse(Path::new("t.csv"), text.as_bytes(), None).unwrap();
        let dir = std::env::temp_dir();
        let mut planner = Planner::new(&dir, partitions).unwrap();
        if counted_only {
            planner.count_open_operations_only();
        }
        for row in &input.rows {
            let resolution = resolve_row(&input.header, row, &BuiltinCatalog);
            planner.add_row(row, &input.header, &resolution).unwrap();
        }
        let mut sink = Recorded::default();
        let counts = planner.finish(&mut sink).unwrap();
        (sink.0, counts)
    }

    const C: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";

    /// The sink gets, in input order, each group before its operations and each operation
    /// before (or with) its first row; identical rows point at one operation, an assign and a
    /// remove of one SKU are both invalid; the figures count what was handed over. However
    /// many partitions, the same plan; counted only, the invalid rows alone reach the sink.
    #[test]
    fn the_plan_reaches_the_sink_in_input_order_each_group_before_its_operations() {
        let text = format!(
            "customer_id,user_id,sku,action\n\
             {C},émilie@contoso.example,SPB,assign\n\
             {C},łukasz@contoso.example,SPB,assign\n\
             {C},émilie@contoso.example,O365_BUSINESS_ESSENTIALS,assign\n\
             {C},émilie@contoso.example,SPB,assign\n\
             {C},日本語@contoso.example,SPB,assign\n\
             {C},日本語@contoso.example,SPB,remove\n\
             {C},,SPB,assign\n"
        );
        let (events, counts) = planned(&text, 1, false);
        let expected = [
            "group 0 émilie@contoso.example group1",
            "operation 0.0 assign rows=2 first=0",
            "row 0 line 2 → 0.0",
            "group 1 łukasz@contoso.example group1",
            "operation 1.0 assign rows=1 first=1",
            "row 1 line 3 → 1.0",
            "operation 0.1 assign rows=1 first=2",
            "row 2 line 4 → 0.1",
            "row 3 line 5 → 0.0",
        ];
        assert_eq!(events[..expected.len()], expected);
        let invalid: Vec<&String> = events[expected.len()..].iter().collect();
        assert_eq!(invalid.len(), 3, "{events:#?}");
        assert!(invalid.iter().all(|e| e.contains("invalid")), "{events:#?}");
        assert_eq!(counts.tally.count(RowStatus::Pending), 4);
        assert_eq!(counts.tally.count(RowStatus::Invalid), 3);
        let customer: Uuid = C.parse().unwrap();
        assert_eq!(counts.per_customer[&customer], (2, 4));
        assert_eq!(counts.seat_needs.values().sum::<u64>(), 3);
        assert_eq!(
            counts.changes[&customer],
            LicenseChanges {
                assigns: 3,
                removals: 0
            },
            "one change per operation, not per row"
        );

        for partitions in [2, 7] {
            assert_eq!(
                planned(&text, partitions, false),
                (events.clone(), counts.clone())
            );
        }
        let (counted, counted_figures) = planned(&text, 1, true);
        assert_eq!(counted, invalid.into_iter().cloned().collect::<Vec<_>>());
        assert_eq!(counted_figures, counts);
    }
}
