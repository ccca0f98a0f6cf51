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

-- Statement-level triggers: one upsert per statement however many tasks it moves.
CREATE FUNCTION task_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_counts (pipeline, version, state, shard, batches, rows_in, rows_out)
    SELECT pipeline, version, state, shard, SUM(n), SUM(rows_in), SUM(rows_out)
    FROM (SELECT pipeline, version, state, (hashtext(batch_id) & 15) AS shard, 1 AS n, COALESCE(rows_in, 0) AS rows_in, COALESCE(rows_out, 0) AS rows_out FROM new_rows) AS d
    GROUP BY pipeline, version, state, shard
    HAVING SUM(n) <> 0 OR SUM(rows_in) <> 0 OR SUM(rows_out) <> 0
    -- one order for every writer, so two never wait on each other's rows in a cycle
    ORDER BY pipeline, version, state, shard
    ON CONFLICT (pipeline, version, state, shard) DO UPDATE SET
        batches = task_counts.batches + excluded.batches,
        rows_in = task_counts.rows_in + excluded.rows_in,
        rows_out = task_counts.rows_out + excluded.rows_out;
    RETURN NULL;
END
$$;

CREATE FUNCTION task_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_counts (pipeline, version, state, shard, batches, rows_in, rows_out)
    SELECT pipeline, version, state, shard, SUM(n), SUM(rows_in), SUM(rows_out)
    FROM (SELECT pipeline, version, state, (hashtext(batch_id) & 15) AS shard, 1 AS n, COALESCE(rows_in, 0) AS rows_in, COALESCE(rows_out, 0) AS rows_out FROM new_rows UNION ALL SELECT pipeline, version, state, (hashtext(batch_id) & 15) AS shard, -1 AS n, -COALESCE(rows_in, 0) AS rows_in, -COALESCE(rows_out, 0) AS rows_out FROM old_rows) AS d
    GROUP BY pipeline, version, state, shard
    HAVING SUM(n) <> 0 OR SUM(rows_in) <> 0 OR SUM(rows_out) <> 0
    -- one order for every writer, so two never wait on each other's rows in a cycle
    ORDER BY pipeline, version, state, shard
    ON CONFLICT (pipeline, version, state, shard) DO UPDATE SET
        batches = task_counts.batches + excluded.batches,
        rows_in = task_counts.rows_in + excluded.rows_in,
        rows_out = task_counts.rows_out + excluded.rows_out;
    RETURN NULL;
END
$$;

CREATE FUNCTION task_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_counts (pipeline, version, state, shard, batches, rows_in, rows_out)
    SELECT pipeline, version, state, shard, SUM(n), SUM(rows_in), SUM(rows_out)
    FROM (SELECT pipeline, version, state, (hashtext(batch_id) & 15) AS shard, -1 AS n, -COALESCE(rows_in, 0) AS rows_in, -COALESCE(rows_out, 0) AS rows_out FROM old_rows) AS d
    GROUP BY pipeline, version, state, shard
    HAVING SUM(n) <> 0 OR SUM(rows_in) <> 0 OR SUM(rows_out) <> 0
    -- one order for every writer, so two never wait on each other's rows in a cycle
    ORDER BY pipeline, version, state, shard
    ON CONFLICT (pipeline, version, state, shard) DO UPDATE SET
        batches = task_counts.batches + excluded.batches,
        rows_in = task_counts.rows_in + excluded.rows_in,
        rows_out = task_counts.rows_out + excluded.rows_out;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION task_counts_insert();
CREATE TRIGGER task_counts_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_update();
CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION task_counts_delete();

CREATE FUNCTION run_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO run_counts (pipeline, version, outcome, bucket, shard, runs, rows_in, rows_out,
                            duration_ms_sum, first_started_at, last_finished_at)
    SELECT pipeline, version, outcome, CASE WHEN duration_ms <= 50 THEN 0 WHEN duration_ms <= 100 THEN 1 WHEN duration_ms <= 250 THEN 2 WHEN duration_ms <= 500 THEN 3 WHEN duration_ms <= 1000 THEN 4 WHEN duration_ms <= 2500 THEN 5 WHEN duration_ms <= 5000 THEN 6 WHEN duration_ms <= 10000 THEN 7 WHEN duration_ms <= 30000 THEN 8 WHEN duration_ms <= 60000 THEN 9 WHEN duration_ms <= 300000 THEN 10 WHEN duration_ms <= 900000 THEN 11 ELSE 12 END AS bucket,
           (hashtext(batch_id) & 15) AS shard, COUNT(*), SUM(rows_in), SUM(rows_out),
           SUM(duration_ms), MIN(started_at), MAX(finished_at)
    FROM new_rows GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (pipeline, version, outcome, bucket, shard) DO UPDATE SET
        runs = run_counts.runs + excluded.runs,
        rows_in = run_counts.rows_in + excluded.rows_in,
        rows_out = run_counts.rows_out + excluded.rows_out,
        duration_ms_sum = run_counts.duration_ms_sum + excluded.duration_ms_sum,
        first_started_at = LEAST(run_counts.first_started_at, excluded.first_started_at),
        last_finished_at = GREATEST(run_counts.last_finished_at, excluded.last_finished_at);
    RETURN NULL;
END
$$;

CREATE TRIGGER run_counts_insert AFTER INSERT ON batch_runs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION run_counts_insert();

CREATE FUNCTION check_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO check_counts (pipeline, check_name, level, shard, results)
    SELECT pipeline, check_name, level, (hashtext(batch_id) & 15), COUNT(*)
    FROM new_rows GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (pipeline, check_name, level, shard) DO UPDATE SET
        results = check_counts.results + excluded.results;
    RETURN NULL;
END
$$;

CREATE TRIGGER check_counts_insert AFTER INSERT ON check_results
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION check_counts_insert();

-- What a batch's new measurement adds: how far it goes past the batch's earlier largest. The
-- measurements of one batch take turns (a zombie run and its successor may record at once), and
-- each statement of a PL/pgSQL function sees what committed before it, so none is missed.
CREATE FUNCTION dropped_rows_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('sluice.dropped_rows'), hashtext(NEW.batch_id));
    INSERT INTO pipeline_counts (pipeline, shard, dropped_rows, files)
    SELECT NEW.pipeline, (hashtext(NEW.batch_id) & 15), GREATEST(0, NEW.dropped - COALESCE(
        (SELECT MAX(dropped) FROM check_results
         WHERE batch_id = NEW.batch_id AND kind = 'bad_rows' AND pipeline = NEW.pipeline
           AND id <> NEW.id), 0)), 0
    ON CONFLICT (pipeline, shard) DO UPDATE SET
        dropped_rows = pipeline_counts.dropped_rows + excluded.dropped_rows;
    RETURN NULL;
END
$$;

CREATE TRIGGER dropped_rows_insert AFTER INSERT ON check_results
    FOR EACH ROW WHEN (NEW.kind = 'bad_rows') EXECUTE FUNCTION dropped_rows_insert();

CREATE FUNCTION file_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pipeline_counts (pipeline, shard, dropped_rows, files)
    SELECT pipeline, (hashtext(path) & 15), 0, COUNT(*) FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (pipeline, shard) DO UPDATE SET files = pipeline_counts.files + excluded.files;
    RETURN NULL;
END
$$;

CREATE FUNCTION file_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pipeline_counts (pipeline, shard, dropped_rows, files)
    SELECT pipeline, (hashtext(path) & 15), 0, -COUNT(*) FROM old_rows GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (pipeline, shard) DO UPDATE SET files = pipeline_counts.files + excluded.files;
    RETURN NULL;
END
$$;

CREATE TRIGGER file_counts_insert AFTER INSERT ON files
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION file_counts_insert();
CREATE TRIGGER file_counts_delete AFTER DELETE ON files
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION file_counts_delete();

-- The history already there (the migration holds its lock, so nothing changes meanwhile).
INSERT INTO task_counts (pipeline, version, state, shard, batches, rows_in, rows_out)
SELECT pipeline, version, state, (hashtext(batch_id) & 15), COUNT(*), COALESCE(SUM(rows_in), 0),
       COALESCE(SUM(rows_out), 0)
FROM tasks GROUP BY 1, 2, 3, 4;

INSERT INTO run_counts (pipeline, version, outcome, bucket, shard, runs, rows_in, rows_out,
                        duration_ms_sum, first_started_at, last_finished_at)
SELECT pipeline, version, outcome, CASE WHEN duration_ms <= 50 THEN 0 WHEN duration_ms <= 100 THEN 1 WHEN duration_ms <= 250 THEN 2 WHEN duration_ms <= 500 THEN 3 WHEN duration_ms <= 1000 THEN 4 WHEN duration_ms <= 2500 THEN 5 WHEN duration_ms <= 5000 THEN 6 WHEN duration_ms <= 10000 THEN 7 WHEN duration_ms <= 30000 THEN 8 WHEN duration_ms <= 60000 THEN 9 WHEN duration_ms <= 300000 THEN 10 WHEN duration_ms <= 900000 THEN 11 ELSE 12 END, (hashtext(batch_id) & 15),
       COUNT(*), SUM(rows_in), SUM(rows_out), SUM(duration_ms), MIN(started_at), MAX(finished_at)
FROM batch_runs GROUP BY 1, 2, 3, 4, 5;

INSERT INTO check_counts (pipeline, check_name, level, shard, results)
SELECT pipeline, check_name, level, (hashtext(batch_id) & 15), COUNT(*) FROM check_results
GROUP BY 1, 2, 3, 4;

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
