-- The journal schema of version 1 (license-batch before the plan moved into the journal).
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
    headers      TEXT NOT NULL           -- JSON array of the carried header names
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
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS groups (
    run_id        INTEGER NOT NULL REFERENCES runs(id),
    idx           INTEGER NOT NULL,
    customer_id   TEXT NOT NULL,
    user          TEXT NOT NULL,
    user_key      TEXT NOT NULL,
    license_group TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
);
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
INSERT INTO meta (key, value) VALUES ('schema_version', '1');
