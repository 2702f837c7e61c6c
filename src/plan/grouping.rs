//! The rules between rows (SPEC §4) applied without holding the sheet: valid rows are spread
//! over temporary partition files by (customer, user) — rows that can affect one another
//! always share a partition — each partition is grouped in memory on its own, and each row's
//! answer is read back in input order. Memory is set by the size of one partition, not by the
//! size of the sheet; every row is written and read a fixed number of times.

use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use rustc_hash::{FxHashMap, FxHasher};
use uuid::Uuid;

use super::ResolvedRow;
use crate::input::{Action, LicenseGroup};
use crate::spill::{SpillReader, SpillWriter};

/// Input bytes per partition. A partition is grouped in memory at a few hundred bytes per
/// distinct (user, SKU), i.e. a few times its share of the input.
const INPUT_BYTES_PER_PARTITION: u64 = 2 << 20;

/// Partition files open at once, at most; past 256 × 2 MiB of input the partitions grow.
const MAX_PARTITIONS: u64 = 256;

/// Buffer of each partition file.
const BUFFER: usize = 16 << 10;

/// How many partitions a sheet of `input_bytes` is grouped in.
pub fn partitions_for(input_bytes: u64) -> usize {
    input_bytes
        .div_ceil(INPUT_BYTES_PER_PARTITION)
        .clamp(1, MAX_PARTITIONS) as usize
}

/// The excluded plans of an operation as they are recorded (a JSON array, sorted).
pub fn excluded_text(excluded: &[Uuid]) -> String {
    serde_json::to_string(excluded).expect("uuids serialise")
}

/// What the rules make of one valid row.
#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    /// Sent as operation `operation` of group `group` (a group's index is the index of its
    /// first row, so groups go out in input order; operations are numbered 0.. by their first
    /// rows). `rows` is `Some(rows asking for the operation)` on the operation's first row.
    Send {
        group: u64,
        operation: u32,
        rows: Option<u64>,
        send_id: Uuid,
    },
    /// The row conflicts with others about the same SKU for the same user: invalid, with this
    /// message.
    Conflict(String),
}

/// Collects the valid rows of a sheet, one at a time, in input order.
pub struct Grouper {
    dir: PathBuf,
    partitions: Vec<SpillWriter>,
}

impl Grouper {
    /// Partition files are made in `dir`; they disappear with the grouper.
    pub fn new(dir: &Path, partitions: usize) -> io::Result<Grouper> {
        Ok(Grouper {
            dir: dir.to_path_buf(),
            partitions: (0..partitions.max(1))
                .map(|_| SpillWriter::create_in(dir, BUFFER))
                .collect::<io::Result<_>>()?,
        })
    }

    /// Adds the valid row with data-row index `index` on input line `line`.
    pub fn add(&mut self, index: u64, line: u64, row: &ResolvedRow) -> io::Result<()> {
        let partition = partition_of(row.customer, &row.user_key, self.partitions.len());
        let out = &mut self.partitions[partition];
        out.u64(index)?;
        out.u64(line)?;
        out.uuid(&row.customer)?;
        out.str(&row.user_key)?;
        out.uuid(&row.sku)?;
        out.u8(license_group_code(row.license_group))?;
        out.u8(action_code(row.action))?;
        out.str(&excluded_text(&row.excluded))
    }

    /// Groups every partition; the answers are then read in input order.
    pub fn finish(self) -> io::Result<Assignments> {
        let partitions = self
            .partitions
            .into_iter()
            .map(|partition| group_partition(partition.into_reader(BUFFER)?, &self.dir))
            .collect::<io::Result<_>>()?;
        Ok(Assignments { partitions })
    }
}

/// Each valid row's [`Assignment`], in input order.
pub struct Assignments {
    partitions: Vec<SpillReader>,
}

impl Assignments {
    /// The answer for the next valid row, which must be the one of `customer` and `user_key`
    /// that comes next in input order.
    pub fn next(&mut self, customer: Uuid, user_key: &str) -> io::Result<Assignment> {
        let count = self.partitions.len();
        let input = &mut self.partitions[partition_of(customer, user_key, count)];
        Ok(match input.u8()? {
            SEND => Assignment::Send {
                group: input.u64()?,
                operation: input.u64()? as u32,
                rows: Some(input.u64()?).filter(|&rows| rows > 0),
                send_id: input.uuid()?,
            },
            _ => Assignment::Conflict(input.string()?),
        })
    }
}

const SEND: u8 = 0;
const CONFLICT: u8 = 1;

fn partition_of(customer: Uuid, user_key: &str, partitions: usize) -> usize {
    // A fixed hash (no random seed): the same row lands in the same partition when it is
    // written and when its answer is read. (Fx, not SipHash: it runs several times per row,
    // and a sheet is the operator's own, not an attacker's.)
    let mut hasher = FxHasher::default();
    customer.hash(&mut hasher);
    user_key.hash(&mut hasher);
    (hasher.finish() % partitions as u64) as usize
}

fn license_group_code(group: LicenseGroup) -> u8 {
    match group {
        LicenseGroup::Group1 => 1,
        LicenseGroup::Group2 => 2,
    }
}

fn action_code(action: Action) -> u8 {
    match action {
        Action::Assign => 0,
        Action::Remove => 1,
    }
}

/// A valid row as a partition holds it.
#[derive(Default)]
struct Record {
    index: u64,
    line: u64,
    customer: Uuid,
    user_key: String,
    sku: Uuid,
    license_group: u8,
    action: u8,
    excluded: String,
}

/// Reads the next record into `record`, reusing its texts' allocations.
fn read_record(input: &mut SpillReader, record: &mut Record) -> io::Result<()> {
    record.index = input.u64()?;
    record.line = input.u64()?;
    record.customer = input.uuid()?;
    input.string_into(&mut record.user_key)?;
    record.sku = input.uuid()?;
    record.license_group = input.u8()?;
    record.action = input.u8()?;
    input.string_into(&mut record.excluded)
}

/// One (SKU, license group) a user asks for: an operation, unless its SKU is in conflict.
struct Wanted {
    sku: Uuid,
    license_group: u8,
    action: u8,
    excluded: String,
    first: u64,
    first_line: u64,
    /// Lines of the later rows (most operations have one row: no allocation).
    later_lines: Vec<u64>,
    mixed_actions: bool,
    mixed_exclusions: bool,
    // Decided once the whole partition is read:
    group: u64,
    operation: u32,
    send_id: Uuid,
    conflict: Option<String>,
}

impl Wanted {
    fn new(record: &Record) -> Wanted {
        Wanted {
            sku: record.sku,
            license_group: record.license_group,
            action: record.action,
            excluded: record.excluded.clone(),
            first: record.index,
            first_line: record.line,
            later_lines: Vec::new(),
            mixed_actions: false,
            mixed_exclusions: false,
            group: 0,
            operation: 0,
            send_id: Uuid::nil(),
            conflict: None,
        }
    }

    fn rows(&self) -> u64 {
        1 + self.later_lines.len() as u64
    }

    fn lines(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.first_line).chain(self.later_lines.iter().copied())
    }

    fn matches(&self, record: &Record) -> bool {
        self.sku == record.sku && self.license_group == record.license_group
    }
}

/// Per customer, per user key: what the user asks for.
type Users = FxHashMap<Uuid, FxHashMap<String, Vec<Wanted>>>;

/// Groups one partition: a pass to collect, the rules per user, a pass to answer each row.
fn group_partition(mut input: SpillReader, dir: &Path) -> io::Result<SpillReader> {
    let mut users = Users::default();
    let mut record = Record::default();
    while !input.at_end()? {
        read_record(&mut input, &mut record)?;
        let of_customer = users.entry(record.customer).or_default();
        if !of_customer.contains_key(record.user_key.as_str()) {
            of_customer.insert(record.user_key.clone(), Vec::new());
        }
        let wants = of_customer
            .get_mut(record.user_key.as_str())
            .expect("inserted above");
        match wants.iter_mut().find(|w| w.matches(&record)) {
            Some(wanted) => {
                wanted.later_lines.push(record.line);
                wanted.mixed_actions |= wanted.action != record.action;
                wanted.mixed_exclusions |= wanted.excluded != record.excluded;
            }
            None => wants.push(Wanted::new(&record)),
        }
    }
    for wants in users
        .values_mut()
        .flat_map(|of_customer| of_customer.values_mut())
    {
        apply_rules(wants);
    }
    input.rewind()?;
    let mut out = SpillWriter::create_in(dir, BUFFER)?;
    while !input.at_end()? {
        read_record(&mut input, &mut record)?;
        let wanted = users
            .get(&record.customer)
            .and_then(|of_customer| of_customer.get(record.user_key.as_str()))
            .and_then(|wants| wants.iter().find(|w| w.matches(&record)))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a partition changed while grouped",
                )
            })?;
        match &wanted.conflict {
            Some(message) => {
                out.u8(CONFLICT)?;
                out.str(message)?;
            }
            None => {
                out.u8(SEND)?;
                out.u64(wanted.group)?;
                out.u64(u64::from(wanted.operation))?;
                out.u64(if record.index == wanted.first {
                    wanted.rows()
                } else {
                    0
                })?;
                out.uuid(&wanted.send_id)?;
            }
        }
    }
    out.into_reader(BUFFER)
}

/// The rules for one user: all rows about one SKU must agree (whatever license group they
/// name), or all of them are invalid; then one group per license group, its operations
/// numbered by their first rows, the group's index that of its first row.
fn apply_rules(wants: &mut [Wanted]) {
    for i in 0..wants.len() {
        let same_sku = || wants.iter().filter(|w| w.sku == wants[i].sku);
        let mixed_actions = same_sku().any(|w| w.mixed_actions || w.action != wants[i].action);
        let mixed_exclusions =
            same_sku().any(|w| w.mixed_exclusions || w.excluded != wants[i].excluded);
        if mixed_actions || mixed_exclusions {
            let mut lines: Vec<u64> = same_sku().flat_map(Wanted::lines).collect();
            lines.sort_unstable();
            let lines: Vec<String> = lines.iter().map(u64::to_string).collect();
            let why = if mixed_actions {
                "ask to both assign and remove this SKU for this user"
            } else {
                "assign this SKU with different excluded_plans"
            };
            wants[i].conflict = Some(format!(
                "conflict: lines {} {why}; keep one and run again",
                lines.join(" and ")
            ));
        }
    }
    for license_group in [1, 2] {
        let mut members: Vec<usize> = (0..wants.len())
            .filter(|&i| wants[i].license_group == license_group && wants[i].conflict.is_none())
            .collect();
        members.sort_unstable_by_key(|&i| wants[i].first);
        let Some(&first) = members.first() else {
            continue;
        };
        let (group, send_id) = (wants[first].first, Uuid::new_v4());
        for (operation, &i) in members.iter().enumerate() {
            wants[i].group = group;
            wants[i].operation = operation as u32;
            wants[i].send_id = send_id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";

    fn row(
        user: &str,
        sku: u128,
        group: LicenseGroup,
        action: Action,
        excluded: &[u128],
    ) -> ResolvedRow {
        ResolvedRow {
            customer: C.parse().unwrap(),
            user: user.to_string(),
            user_key: user.to_lowercase(),
            sku: Uuid::from_u128(sku),
            license_group: group,
            action,
            excluded: excluded.iter().map(|&p| Uuid::from_u128(p)).collect(),
            usage_location: None,
        }
    }

    /// The answers for `rows` (row i on line i + 2), grouped in `partitions`.
    fn answers(rows: &[ResolvedRow], partitions: usize) -> Vec<Assignment> {
        let mut grouper = Grouper::new(&std::env::temp_dir(), partitions).unwrap();
        for (i, r) in rows.iter().enumerate() {
            grouper.add(i as u64, i as u64 + 2, r).unwrap();
        }
        let mut assignments = grouper.finish().unwrap();
        rows.iter()
            .map(|r| assignments.next(r.customer, &r.user_key).unwrap())
            .collect()
    }

    fn send(answer: &Assignment) -> (u64, u32, Option<u64>, Uuid) {
        match answer {
            Assignment::Send {
                group,
                operation,
                rows,
                send_id,
            } => (*group, *operation, *rows, *send_id),
            Assignment::Conflict(message) => panic!("unexpected conflict: {message}"),
        }
    }

    #[test]
    fn groups_take_their_first_rows_index_and_number_operations_by_first_row() {
        use Action::Assign;
        use LicenseGroup::{Group1, Group2};
        let rows = [
            row("bo@x.com", 1, Group1, Assign, &[]), // 0: bo, group at 0, op 0
            row("Ada@x.com", 2, Group1, Assign, &[]), // 1: ada group1 at 1, op 0
            row("ada@x.com", 3, Group2, Assign, &[]), // 2: ada group2 at 2
            row("ADA@x.com", 4, Group1, Assign, &[]), // 3: ada group1, op 1
            row("ada@x.com", 2, Group1, Assign, &[]), // 4: same operation as row 1
        ];
        for partitions in [1, 3] {
            let got: Vec<_> = answers(&rows, partitions).iter().map(send).collect();
            let plain: Vec<_> = got.iter().map(|&(g, o, n, _)| (g, o, n)).collect();
            assert_eq!(
                plain,
                [
                    (0, 0, Some(1)),
                    (1, 0, Some(2)),
                    (2, 0, Some(1)),
                    (1, 1, Some(1)),
                    (1, 0, None)
                ],
                "{partitions} partitions"
            );
            let ids: Vec<Uuid> = got.iter().map(|a| a.3).collect();
            assert_eq!(ids[1], ids[3], "one request ID per group");
            assert_eq!(ids[1], ids[4]);
            assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
        }
    }

    #[test]
    fn rows_about_one_sku_conflict_across_license_groups_and_exclusions() {
        use Action::{Assign, Remove};
        use LicenseGroup::{Group1, Group2};
        let rows = [
            row("ada@x.com", 1, Group1, Assign, &[]),  // line 2
            row("ada@x.com", 9, Group1, Assign, &[7]), // line 3
            row("bo@x.com", 1, Group1, Assign, &[]),   // line 4: another user, no conflict
            row("ada@x.com", 1, Group2, Remove, &[]),  // line 5: same SKU, other group, removes
            row("ada@x.com", 9, Group1, Assign, &[8]), // line 6: other exclusions
            row("ada@x.com", 5, Group1, Assign, &[]),  // line 7: fine, first op of ada's group
        ];
        let got = answers(&rows, 2);
        let both = "conflict: lines 2 and 5 ask to both assign and remove this SKU for this user; keep one and run again";
        let exclusions = "conflict: lines 3 and 6 assign this SKU with different excluded_plans; keep one and run again";
        assert_eq!(got[0], Assignment::Conflict(both.into()));
        assert_eq!(got[3], Assignment::Conflict(both.into()));
        assert_eq!(got[1], Assignment::Conflict(exclusions.into()));
        assert_eq!(got[4], Assignment::Conflict(exclusions.into()));
        assert_eq!(send(&got[2]).0, 2);
        let (group, operation, ..) = send(&got[5]);
        assert_eq!(
            (group, operation),
            (5, 0),
            "ada's group starts at her only valid row"
        );
    }
}
