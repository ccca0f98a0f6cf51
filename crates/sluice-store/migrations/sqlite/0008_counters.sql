-- Counters for `sluice status`, the HTTP API and /metrics, so their reads cost what is live
-- (pipelines, versions, states), not what ever ran: each is kept by a trigger in the
-- transaction of the change it counts, so no statement of the store (or of a future one) can
-- change `tasks`, `batch_runs`, `check_results` or `files` without it. Backfilled below from
-- the history already there. Keep in step with the other backend's 0008_counters.sql: same
-- tables, same columns, same meaning.
--
-- `shard` spreads one series over several rows so concurrent writers of one pipeline do not
-- queue on one row (PostgreSQL: a hash of the batch id; SQLite, one writer at a time: 0).
-- Readers sum over shards. The duration buckets are sluice_store::DURATION_BUCKETS_MS (a
-- conformance test recounts them from that constant).

-- Batches (and the rows recorded on them) per pipeline, version and state.
CREATE TABLE task_counts (
    pipeline TEXT   NOT NULL,
    version  BIGINT NOT NULL,
    state    TEXT   NOT NULL,
    shard    BIGINT NOT NULL,
    batches  BIGINT NOT NULL,
    rows_in  BIGINT NOT NULL,
    rows_out BIGINT NOT NULL,
    PRIMARY KEY (pipeline, version, state, shard)
);

-- Batch runs per pipeline, version, outcome and duration bucket (`batch_runs` is append-only).
CREATE TABLE run_counts (
    pipeline         TEXT   NOT NULL,
    version          BIGINT NOT NULL,
    outcome          TEXT   NOT NULL,
    bucket           BIGINT NOT NULL,
    shard            BIGINT NOT NULL,
    runs             BIGINT NOT NULL,
    rows_in          BIGINT NOT NULL,
    rows_out         BIGINT NOT NULL,
    duration_ms_sum  BIGINT NOT NULL,
    first_started_at BIGINT NOT NULL,
    last_finished_at BIGINT NOT NULL,
    PRIMARY KEY (pipeline, version, outcome, bucket, shard)
);

-- Check results per pipeline, check and level (`check_results` is append-only).
CREATE TABLE check_counts (
    pipeline   TEXT   NOT NULL,
    check_name TEXT   NOT NULL,
    level      TEXT   NOT NULL,
    shard      BIGINT NOT NULL,
    results    BIGINT NOT NULL,
    PRIMARY KEY (pipeline, check_name, level, shard)
);

-- Rows dropped as bad input per pipeline, each batch counted by its largest measurement (a
-- re-run that finds the batch committed records it again), and files taken in per pipeline.
CREATE TABLE pipeline_counts (
    pipeline     TEXT   NOT NULL,
    shard        BIGINT NOT NULL,
    dropped_rows BIGINT NOT NULL,
    files        BIGINT NOT NULL,
    PRIMARY KEY (pipeline, shard)
);

-- The dropped-rows counter looks up a batch's earlier measurements.
CREATE INDEX check_results_bad_rows_by_batch ON check_results (batch_id) WHERE kind = 'bad_rows';

CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO task_counts (pipeline, version, state, shard, batches, rows_in, rows_out)
    VALUES (new.pipeline, new.version, new.state, 0, 1,
            COALESCE(new.rows_in, 0), COALESCE(new.rows_out, 0))
    ON CONFLICT (pipeline, version, state, shard) DO UPDATE SET
        batches = batches + excluded.batches,
        rows_in = rows_in + excluded.rows_in,
        rows_out = rows_out + excluded.rows_out;
END;

CREATE TRIGGER task_counts_update AFTER UPDATE OF pipeline, version, state, rows_in, rows_out ON tasks
WHEN old.pipeline IS NOT new.pipeline OR old.version IS NOT new.version
  OR old.state IS NOT new.state OR old.rows_in IS NOT new.rows_in
  OR old.rows_out IS NOT new.rows_out
BEGIN
    INSERT INTO task_counts (pipeline, version, state, shard, batches, rows_in, rows_out)
    VALUES (old.pipeline, old.version, old.state, 0, -1,
            -COALESCE(old.rows_in, 0), -COALESCE(old.rows_out, 0))
    ON CONFLICT (pipeline, version, state, shard) DO UPDATE SET
        batches = batches + excluded.batches,
        rows_in = rows_in + excluded.rows_in,
        rows_out = rows_out + excluded.rows_out;
    INSERT INTO task_counts (pipeline, version, state, shard, batches, rows_in, rows_out)
    VALUES (new.pipeline, new.version, new.state, 0, 1,
            COALESCE(new.rows_in, 0), COALESCE(new.rows_out, 0))
    ON CONFLICT (pipeline, version, state, shard) DO UPDATE SET
        batches = batches + excluded.batches,
        rows_in = rows_in + excluded.rows_in,
        rows_out = rows_out + excluded.rows_out;
END;

CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks BEGIN
    INSERT INTO task_counts (pipeline, version, state, shard, batches, rows_in, rows_out)
    VALUES (old.pipeline, old.version, old.state, 0, -1,
            -COALESCE(old.rows_in, 0), -COALESCE(old.rows_out, 0))
    ON CONFLICT (pipeline, version, state, shard) DO UPDATE SET
        batches = batches + excluded.batches,
        rows_in = rows_in + excluded.rows_in,
        rows_out = rows_out + excluded.rows_out;
END;

CREATE TRIGGER run_counts_insert AFTER INSERT ON batch_runs BEGIN
    INSERT INTO run_counts (pipeline, version, outcome, bucket, shard, runs, rows_in, rows_out,
                            duration_ms_sum, first_started_at, last_finished_at)
    VALUES (new.pipeline, new.version, new.outcome, CASE WHEN new.duration_ms <= 50 THEN 0 WHEN new.duration_ms <= 100 THEN 1 WHEN new.duration_ms <= 250 THEN 2 WHEN new.duration_ms <= 500 THEN 3 WHEN new.duration_ms <= 1000 THEN 4 WHEN new.duration_ms <= 2500 THEN 5 WHEN new.duration_ms <= 5000 THEN 6 WHEN new.duration_ms <= 10000 THEN 7 WHEN new.duration_ms <= 30000 THEN 8 WHEN new.duration_ms <= 60000 THEN 9 WHEN new.duration_ms <= 300000 THEN 10 WHEN new.duration_ms <= 900000 THEN 11 ELSE 12 END, 0, 1,
            new.rows_in, new.rows_out, new.duration_ms, new.started_at, new.finished_at)
    ON CONFLICT (pipeline, version, outcome, bucket, shard) DO UPDATE SET
        runs = runs + 1,
        rows_in = rows_in + excluded.rows_in,
        rows_out = rows_out + excluded.rows_out,
        duration_ms_sum = duration_ms_sum + excluded.duration_ms_sum,
        first_started_at = min(first_started_at, excluded.first_started_at),
        last_finished_at = max(last_finished_at, excluded.last_finished_at);
END;

CREATE TRIGGER check_counts_insert AFTER INSERT ON check_results BEGIN
    INSERT INTO check_counts (pipeline, check_name, level, shard, results)
    VALUES (new.pipeline, new.check_name, new.level, 0, 1)
    ON CONFLICT (pipeline, check_name, level, shard) DO UPDATE SET results = results + 1;
END;

-- What a batch's new measurement adds: how far it goes past the batch's earlier largest.
CREATE TRIGGER dropped_rows_insert AFTER INSERT ON check_results WHEN new.kind = 'bad_rows' BEGIN
    INSERT INTO pipeline_counts (pipeline, shard, dropped_rows, files)
    SELECT new.pipeline, 0, max(0, new.dropped - COALESCE(
        (SELECT MAX(dropped) FROM check_results
         WHERE batch_id = new.batch_id AND kind = 'bad_rows' AND pipeline = new.pipeline
           AND id <> new.id), 0)), 0
    WHERE true
    ON CONFLICT (pipeline, shard) DO UPDATE SET dropped_rows = dropped_rows + excluded.dropped_rows;
END;

CREATE TRIGGER file_counts_insert AFTER INSERT ON files BEGIN
    INSERT INTO pipeline_counts (pipeline, shard, dropped_rows, files) VALUES (new.pipeline, 0, 0, 1)
    ON CONFLICT (pipeline, shard) DO UPDATE SET files = files + 1;
END;

CREATE TRIGGER file_counts_delete AFTER DELETE ON files BEGIN
    INSERT INTO pipeline_counts (pipeline, shard, dropped_rows, files) VALUES (old.pipeline, 0, 0, -1)
    ON CONFLICT (pipeline, shard) DO UPDATE SET files = files - 1;
END;

-- The history already there.
INSERT INTO task_counts (pipeline, version, state, shard, batches, rows_in, rows_out)
SELECT pipeline, version, state, 0, COUNT(*), COALESCE(SUM(rows_in), 0), COALESCE(SUM(rows_out), 0)
FROM tasks GROUP BY pipeline, version, state;

INSERT INTO run_counts (pipeline, version, outcome, bucket, shard, runs, rows_in, rows_out,
                        duration_ms_sum, first_started_at, last_finished_at)
SELECT pipeline, version, outcome, bucket, 0, COUNT(*), SUM(rows_in), SUM(rows_out),
       SUM(duration_ms), MIN(started_at), MAX(finished_at)
FROM (SELECT *, CASE WHEN duration_ms <= 50 THEN 0 WHEN duration_ms <= 100 THEN 1 WHEN duration_ms <= 250 THEN 2 WHEN duration_ms <= 500 THEN 3 WHEN duration_ms <= 1000 THEN 4 WHEN duration_ms <= 2500 THEN 5 WHEN duration_ms <= 5000 THEN 6 WHEN duration_ms <= 10000 THEN 7 WHEN duration_ms <= 30000 THEN 8 WHEN duration_ms <= 60000 THEN 9 WHEN duration_ms <= 300000 THEN 10 WHEN duration_ms <= 900000 THEN 11 ELSE 12 END AS bucket FROM batch_runs) AS r
GROUP BY pipeline, version, outcome, bucket;

INSERT INTO check_counts (pipeline, check_name, level, shard, results)
SELECT pipeline, check_name, level, 0, COUNT(*) FROM check_results
GROUP BY pipeline, check_name, level;

INSERT INTO pipeline_counts (pipeline, shard, dropped_rows, files)
SELECT pipeline, 0, SUM(dropped_rows), SUM(files) FROM (
    SELECT pipeline, SUM(d) AS dropped_rows, 0 AS files FROM
        (SELECT pipeline, batch_id, MAX(dropped) AS d FROM check_results
         WHERE kind = 'bad_rows' GROUP BY pipeline, batch_id) AS per_batch GROUP BY pipeline
    UNION ALL
    SELECT pipeline, 0, COUNT(*) FROM files GROUP BY pipeline
) AS c GROUP BY pipeline;

-- Status lists the files whose change was noticed; without this it reads every file taken in.
CREATE INDEX files_changed ON files (pipeline, path) WHERE change_action IS NOT NULL;

-- A page of a pipeline's batches (`seq > cursor ORDER BY seq LIMIT n`, no state asked for)
-- walks this in order and stops after the page; with only (pipeline, state, seq) it read and
-- sorted every batch the pipeline ever had.
CREATE INDEX tasks_by_pipeline_seq ON tasks (pipeline, seq);
