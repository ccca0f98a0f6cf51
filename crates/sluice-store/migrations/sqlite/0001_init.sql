-- sluice state store, version 1 (SQLite).
-- Keep in step with ../postgres/0001_init.sql: same tables, same columns, same meaning.
-- Timestamps are BIGINT milliseconds since the Unix epoch.

CREATE TABLE pipelines (
    name            TEXT    PRIMARY KEY,
    -- the version new batches are pinned to
    current_version BIGINT  NOT NULL,
    created_at      BIGINT  NOT NULL
);

CREATE TABLE pipeline_versions (
    pipeline   TEXT   NOT NULL REFERENCES pipelines (name),
    version    BIGINT NOT NULL,
    spec_hash  TEXT   NOT NULL,
    spec       TEXT   NOT NULL,
    base_dir   TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (pipeline, version),
    UNIQUE (pipeline, spec_hash)
);

CREATE TABLE files (
    pipeline      TEXT   NOT NULL REFERENCES pipelines (name),
    path          TEXT   NOT NULL,
    size          BIGINT NOT NULL,
    modified_ms   BIGINT NOT NULL,
    registered_at BIGINT NOT NULL,
    PRIMARY KEY (pipeline, path)
);

CREATE TABLE tasks (
    -- queue order: AUTOINCREMENT so a sequence number is never reused after deletes
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id         TEXT    NOT NULL UNIQUE,
    pipeline         TEXT    NOT NULL,
    -- the pipeline version that must run this batch (pinned at queueing or retry)
    version          BIGINT  NOT NULL,
    path             TEXT    NOT NULL,
    slice_index      BIGINT  NOT NULL,
    byte_start       BIGINT  NOT NULL,
    byte_end         BIGINT  NOT NULL,
    row_start        BIGINT  NOT NULL,
    row_count        BIGINT  NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'leased', 'done', 'quarantined')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    -- not leasable before this time (retry back-off)
    run_after        BIGINT  NOT NULL,
    lease_owner      TEXT,
    lease_token      TEXT,
    leased_at        BIGINT,
    lease_expires_at BIGINT,
    last_error       TEXT,
    error_kind       TEXT CHECK (error_kind IN ('user', 'external', 'internal')),
    rows_in          BIGINT,
    rows_out         BIGINT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    FOREIGN KEY (pipeline, version) REFERENCES pipeline_versions (pipeline, version)
);

-- leasing walks pending tasks in queue order; the rescuer looks only at leased ones
CREATE INDEX tasks_pending_by_seq ON tasks (seq) WHERE state = 'pending';
CREATE INDEX tasks_leased_by_expiry ON tasks (lease_expires_at) WHERE state = 'leased';
CREATE INDEX tasks_by_pipeline_state ON tasks (pipeline, state, seq);

CREATE TABLE batch_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id    TEXT    NOT NULL,
    pipeline    TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    worker      TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  BIGINT  NOT NULL,
    finished_at BIGINT  NOT NULL,
    duration_ms BIGINT  NOT NULL,
    rows_in     BIGINT  NOT NULL,
    rows_out    BIGINT  NOT NULL,
    outcome     TEXT    NOT NULL
        CHECK (outcome IN ('committed', 'already_committed', 'failed', 'quarantined', 'expired')),
    error       TEXT
);

CREATE INDEX batch_runs_by_pipeline_finished ON batch_runs (pipeline, finished_at);
CREATE INDEX batch_runs_by_batch ON batch_runs (batch_id);

CREATE TABLE workers (
    worker         TEXT   PRIMARY KEY,
    host           TEXT   NOT NULL,
    pid            BIGINT NOT NULL,
    state          TEXT   NOT NULL,
    started_at     BIGINT NOT NULL,
    last_heartbeat BIGINT NOT NULL
);
