//! The journal's tables and connection settings, and the migration of older journals.

use rusqlite::Connection;

/// 2: the rows keep what planning needs (user, action, exclusions), so the plan is computed
/// where it is stored; operations know their first row and row count; groups their first
/// request ID; runs their blank lines.
/// 3: request IDs follow the operation across runs (SPEC §8): operations know whether their
/// last request got no definitive answer (`unanswered`), runs how many such operations they
/// left (`in_doubt`), and `carried` says which requests of a run re-send an earlier run's.
/// 4: users without a usage location (SPEC §5): rows keep the location they give, groups
/// the PATCH that gives one (its location and request ID, recorded before it is sent, and
/// whether it was answered).
const SCHEMA_VERSION: i64 = 4;

/// The page cache of a connection that plans, KiB.
const CACHE_KIB: i64 = 16 * 1024;

/// The page cache of the connections that only page through a run while it is sent (the
/// engine's reader, the outcome writer), KiB: they touch few pages at a time.
pub const SMALL_CACHE_KIB: i64 = 2 * 1024;

/// WAL (readers never block the writer; a crash never leaves half a transaction), a busy
/// timeout for the `status` reader, and the tables, created if missing.
pub fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // A fixed page cache (the default is 2 MiB): planning a large sheet sorts and groups all
    // its rows; a bigger cache spares most re-reads, and a fixed one keeps memory bounded.
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS runs (
             id           INTEGER PRIMARY KEY,
             input_path   TEXT NOT NULL,
             input_hash   TEXT NOT NULL,
             target       TEXT NOT NULL,
             started_at   TEXT NOT NULL,
             finished_at  TEXT,
             outcome      TEXT NOT NULL,          -- running | finished | aborted | interrupted
             message      TEXT,
             settings     TEXT NOT NULL,
             report_path  TEXT NOT NULL,
             delimiter    INTEGER NOT NULL,
             headers      TEXT NOT NULL,          -- JSON array of the carried header names
             blank_lines  INTEGER NOT NULL DEFAULT 0,
             in_doubt     INTEGER                 -- operations left without a definitive answer; NULL: not counted yet
         );
         CREATE INDEX IF NOT EXISTS runs_resume ON runs (input_hash, target, outcome);
         CREATE TABLE IF NOT EXISTS rows (
             run_id          INTEGER NOT NULL REFERENCES runs(id),
             idx             INTEGER NOT NULL,    -- position among the data rows
             line            INTEGER NOT NULL,    -- line in the input file
             cells           TEXT NOT NULL,       -- JSON array of the carried cells
             customer_id     TEXT,
             group_idx       INTEGER,             -- NULL for invalid rows
             op_idx          INTEGER,
             invalid_message TEXT,
             sku_id          TEXT,
             license_group   TEXT,
             user            TEXT,                -- planning input of resolved rows
             user_key        TEXT,
             action          TEXT,
             excluded_plans  TEXT,
             usage_location  TEXT,                -- the usage_location cell, upper case; NULL: none
             PRIMARY KEY (run_id, idx)
         );
         CREATE TABLE IF NOT EXISTS groups (
             run_id        INTEGER NOT NULL REFERENCES runs(id),
             idx           INTEGER NOT NULL,
             customer_id   TEXT NOT NULL,
             user          TEXT NOT NULL,
             user_key      TEXT NOT NULL,
             license_group TEXT NOT NULL,
             send_id       TEXT,                  -- the request ID it is first sent under
             location      TEXT,                  -- the usage location a PATCH gives the user …
             location_request_id TEXT,            -- … under this request ID, recorded before it is sent
             location_answered INTEGER NOT NULL DEFAULT 0, -- 1: the PATCH succeeded
             PRIMARY KEY (run_id, idx)
         );
         CREATE INDEX IF NOT EXISTS groups_by_customer ON groups (run_id, customer_id, idx);
         CREATE TABLE IF NOT EXISTS operations (
             run_id         INTEGER NOT NULL,
             group_idx      INTEGER NOT NULL,
             op_idx         INTEGER NOT NULL,
             sku_id         TEXT NOT NULL,
             action         TEXT NOT NULL,
             excluded_plans TEXT NOT NULL,
             send_id        TEXT NOT NULL,        -- MS-RequestId it is sent under; shared = one request
             status         TEXT,                 -- NULL (not sent) | succeeded | failed | skipped | pending
             http_status    INTEGER,
             error_code     TEXT,
             message        TEXT,
             attempts       INTEGER NOT NULL DEFAULT 0,
             request_id     TEXT,                 -- of the last request made
             correlation_id TEXT,
             finished_at    TEXT,
             warnings       TEXT,
             first_row      INTEGER NOT NULL DEFAULT 0, -- idx of the first row asking for it
             row_count      INTEGER NOT NULL DEFAULT 0,
             unanswered     INTEGER NOT NULL DEFAULT 0, -- 1: its last request got no definitive answer
             PRIMARY KEY (run_id, group_idx, op_idx),
             FOREIGN KEY (run_id, group_idx) REFERENCES groups(run_id, idx)
         );
         CREATE TABLE IF NOT EXISTS done (
             target      TEXT NOT NULL,
             customer_id TEXT NOT NULL,
             user_key    TEXT NOT NULL,
             sku_id      TEXT NOT NULL,
             action      TEXT NOT NULL,
             run_id      INTEGER NOT NULL,
             finished_at TEXT NOT NULL,
             PRIMARY KEY (target, customer_id, user_key, sku_id, action)
         );
         CREATE TABLE IF NOT EXISTS carried (
             run_id      INTEGER NOT NULL,        -- the run that sends it again …
             group_idx   INTEGER NOT NULL,
             request_id  TEXT NOT NULL,           -- … under the earlier run's request ID
             from_run    INTEGER NOT NULL,
             from_group  INTEGER NOT NULL,
             PRIMARY KEY (run_id, group_idx, request_id)
         );",
    )?;
    let version: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get::<_, String>(0),
        )
        .ok()
        .and_then(|v| v.parse().ok());
    match version {
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION.to_string()],
            )?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "schema version {v} is newer than this license-batch understands ({SCHEMA_VERSION}); upgrade license-batch"
            )));
        }
        Some(1) => {
            migrate_from_1(conn)?;
            migrate_from_2(conn)?;
            migrate_from_3(conn)?;
        }
        Some(2) => {
            migrate_from_2(conn)?;
            migrate_from_3(conn)?;
        }
        Some(3) => migrate_from_3(conn)?,
        Some(_) => {}
    }
    // After the migrations: it names a column that older journals get only from them. Partial:
    // most rows give no location, and those cost the index nothing.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS rows_usage_location ON rows (run_id, group_idx)
             WHERE usage_location IS NOT NULL;",
    )?;
    Ok(())
}

/// Version 3 journals get the usage-location columns; nothing in them gives one.
fn migrate_from_3(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE rows ADD COLUMN usage_location TEXT;
         ALTER TABLE groups ADD COLUMN location TEXT;
         ALTER TABLE groups ADD COLUMN location_request_id TEXT;
         ALTER TABLE groups ADD COLUMN location_answered INTEGER NOT NULL DEFAULT 0;
         UPDATE meta SET value = '4' WHERE key = 'schema_version';
         COMMIT;",
    )
}

/// Version 2 journals get the columns that let a request ID follow its operation into a later
/// run; their unfinished runs count as possibly holding requests without an answer.
fn migrate_from_2(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE runs ADD COLUMN in_doubt INTEGER;
         ALTER TABLE operations ADD COLUMN unanswered INTEGER NOT NULL DEFAULT 0;
         UPDATE meta SET value = '3' WHERE key = 'schema_version';
         COMMIT;",
    )
}

/// Version 1 journals get the new columns; their operations get first row and row count from
/// their rows, so a run started by an older license-batch resumes and reports as before.
fn migrate_from_1(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE runs ADD COLUMN blank_lines INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE rows ADD COLUMN user TEXT;
         ALTER TABLE rows ADD COLUMN user_key TEXT;
         ALTER TABLE rows ADD COLUMN action TEXT;
         ALTER TABLE rows ADD COLUMN excluded_plans TEXT;
         ALTER TABLE groups ADD COLUMN send_id TEXT;
         ALTER TABLE operations ADD COLUMN first_row INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE operations ADD COLUMN row_count INTEGER NOT NULL DEFAULT 0;
         CREATE INDEX migrate_rows_by_operation ON rows (run_id, group_idx, op_idx);
         UPDATE operations SET
             first_row = (SELECT MIN(idx) FROM rows r WHERE r.run_id = operations.run_id
                          AND r.group_idx = operations.group_idx AND r.op_idx = operations.op_idx),
             row_count = (SELECT COUNT(*) FROM rows r WHERE r.run_id = operations.run_id
                          AND r.group_idx = operations.group_idx AND r.op_idx = operations.op_idx);
         DROP INDEX migrate_rows_by_operation;
         UPDATE meta SET value = '2' WHERE key = 'schema_version';
         COMMIT;",
    )
}

#[cfg(test)]
mod tests {
    use crate::journal::Journal;
    use crate::journal::draft::tests::status_of_row;
    use crate::journal::read::RowState;
    use crate::outcome::OperationStatus;
    use crate::outcome::RowStatus;

    const C: &str = "0c39d6d5-c70d-4c55-bc02-f620844f3fd1";
    const SKU: &str = "f8a1db68-be16-40ed-86d5-cb42ce701560";

    #[test]
    fn a_version_1_journal_is_migrated_and_its_run_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(include_str!("testdata/schema-v1.sql"))
                .unwrap();
            // A run of three rows: two identical ones (one operation) and an invalid one.
            conn.execute_batch(&format!(
                "INSERT INTO runs VALUES (1, 'in.csv', 'h', 't', 'now', NULL, 'interrupted', NULL,
                                          '{{}}', 'in.report.csv', 44, '[\"c\"]');
                 INSERT INTO rows VALUES (1, 0, 2, '[\"a\"]', '{C}', 0, 0, NULL, '{SKU}', 'group1');
                 INSERT INTO rows VALUES (1, 1, 3, '[\"b\"]', NULL, NULL, NULL, 'bad', NULL, NULL);
                 INSERT INTO rows VALUES (1, 2, 4, '[\"c\"]', '{C}', 0, 0, NULL, '{SKU}', 'group1');
                 INSERT INTO groups VALUES (1, 0, '{C}', 'ada@x.com', 'ada@x.com', 'group1');
                 INSERT INTO operations (run_id, group_idx, op_idx, sku_id, action, excluded_plans,
                                         send_id, status, attempts)
                 VALUES (1, 0, 0, '{SKU}', 'assign', '[]', '{C}', 'succeeded', 1);"
            ))
            .unwrap();
        }
        let journal = Journal::open_to_read(&path).unwrap();
        let version: String = journal
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, "4");
        let plan = journal.load_plan(1).unwrap();
        let operation = &plan.groups[0].operations[0];
        assert_eq!((operation.first_row, operation.row_count), (0, 2));
        let outcomes = journal.group(1, 0).unwrap().outcomes;
        assert_eq!(
            outcomes[0].as_ref().unwrap().status,
            OperationStatus::Succeeded
        );
        let mut reported = Vec::new();
        journal
            .each_stored_row(1, |cells, row| {
                reported.push((cells[0].clone(), status_of_row(&row), row.state));
                Ok(())
            })
            .unwrap();
        assert_eq!(reported[1].1, RowStatus::Invalid);
        assert_eq!(reported[2].1, RowStatus::Succeeded);
        assert!(
            matches!(
                reported[2].2,
                RowState::Planned {
                    same_as: Some(2),
                    ..
                }
            ),
            "the same operation as line 2: {:?}",
            reported[2].2
        );
        assert_eq!(journal.run_record(1).unwrap().blank_lines, 0);
        // Opening it again changes nothing.
        drop(journal);
        assert!(Journal::open_to_read(&path).is_ok());
    }

    /// A journal written by a newer license-batch is refused, untouched, with what to do:
    /// an older one would misread the runs (and could resend what they applied).
    #[test]
    fn a_journal_from_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("from-the-future.sqlite");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            super::prepare(&conn).unwrap();
            conn.execute(
                "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        }
        let refused = Journal::open_to_read(&path).err().expect("refused");
        let message = refused.to_string();
        assert!(message.contains("schema version 99"), "{message}");
        assert!(message.contains("upgrade license-batch"), "{message}");
    }
}
