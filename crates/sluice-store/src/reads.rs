//! The reads of the HTTP API and `/metrics`: statements and rows shared by both backends.
//!
//! Each is one statement over one table (or a snapshot of a few), aggregated in SQL, so a page
//! of batches or a scrape of `/metrics` costs the same whatever number of series it answers.

use sluice_core::{BatchOutcome, TaskState};

use crate::rows::{TaskRow, task_columns};
use crate::{
    CheckFailures, CheckTotals, CommittedRows, DURATION_BUCKETS_MS, DurationHistogram, Result,
    RunTotals, StoreError, TaskCount,
};

/// `$1` pipeline, `$2` state or NULL, `$3` version or NULL, `$4` cursor (seq), `$5` limit.
pub(crate) const BATCHES_SQL: &str = concat!(
    "SELECT seq, ",
    task_columns!(),
    " FROM tasks WHERE pipeline = $1 AND ($2 IS NULL OR state = $2) \
     AND ($3 IS NULL OR version = $3) AND seq > $4 ORDER BY seq LIMIT $5"
);

/// A task row with its queue position, the cursor of a page.
#[derive(sqlx::FromRow)]
pub(crate) struct PagedTaskRow {
    pub seq: i64,
    #[sqlx(flatten)]
    pub task: TaskRow,
}

/// `$1` batch id; oldest first.
pub(crate) const BATCH_RUNS_OF_SQL: &str = concat!(
    "SELECT ",
    crate::rows::run_columns!(),
    " FROM batch_runs WHERE batch_id = $1 ORDER BY finished_at, id"
);

/// `$1` batch id; oldest first.
pub(crate) const CHECK_RESULTS_OF_SQL: &str = "SELECT pipeline, version, batch_id, check_name, \
    kind, level, considered, failing, dropped, detail, recorded_at FROM check_results \
    WHERE batch_id = $1 ORDER BY recorded_at, id";

/// `$1` pipeline, `$2` since, `$3` until (finish times, inclusive).
pub(crate) const RUN_TOTALS_SQL: &str = "SELECT version, outcome, \
    CAST(COUNT(*) AS BIGINT) AS runs, \
    CAST(COALESCE(SUM(rows_in), 0) AS BIGINT) AS rows_in, \
    CAST(COALESCE(SUM(rows_out), 0) AS BIGINT) AS rows_out, \
    CAST(COALESCE(SUM(duration_ms), 0) AS BIGINT) AS duration_ms_sum, \
    CAST(COALESCE(MAX(duration_ms), 0) AS BIGINT) AS duration_ms_max \
    FROM batch_runs WHERE pipeline = $1 AND finished_at >= $2 AND finished_at <= $3 \
    GROUP BY version, outcome ORDER BY version, outcome";

#[derive(sqlx::FromRow)]
pub(crate) struct RunTotalsRow {
    version: i64,
    outcome: String,
    runs: i64,
    rows_in: i64,
    rows_out: i64,
    duration_ms_sum: i64,
    duration_ms_max: i64,
}

impl RunTotalsRow {
    pub(crate) fn into_totals(self) -> Result<RunTotals> {
        Ok(RunTotals {
            version: self.version,
            outcome: outcome(&self.outcome)?,
            runs: self.runs,
            rows_in: self.rows_in,
            rows_out: self.rows_out,
            duration_ms_sum: self.duration_ms_sum,
            duration_ms_max: self.duration_ms_max,
        })
    }
}

/// `$1` pipeline, `$2` since, `$3` until (record times, inclusive).
pub(crate) const CHECK_TOTALS_SQL: &str = "SELECT version, check_name, level, \
    CAST(COUNT(*) AS BIGINT) AS results, CAST(COALESCE(SUM(failing), 0) AS BIGINT) AS failing \
    FROM check_results WHERE pipeline = $1 AND recorded_at >= $2 AND recorded_at <= $3 \
    GROUP BY version, check_name, level ORDER BY version, check_name, level";

#[derive(sqlx::FromRow)]
pub(crate) struct CheckTotalsRow {
    version: i64,
    check_name: String,
    level: String,
    results: i64,
    failing: i64,
}

impl From<CheckTotalsRow> for CheckTotals {
    fn from(r: CheckTotalsRow) -> CheckTotals {
        CheckTotals {
            version: r.version,
            check: r.check_name,
            level: r.level,
            results: r.results,
            failing: r.failing,
        }
    }
}

// ---- /metrics ----

pub(crate) const METRICS_CURRENT_SQL: &str =
    "SELECT name, current_version FROM pipelines ORDER BY name";

/// The batches per pipeline, version and state from the counters (migration 0008), and for
/// pending ones since when the longest-waiting waits: a lookup of that version's pending
/// batches by `tasks_by_pipeline_state`, so it reads the pending batches, not the history.
pub(crate) const METRICS_TASKS_SQL: &str = "SELECT pipeline, version, state, batches, rows_in, \
    rows_out, CAST(CASE WHEN state = 'pending' THEN COALESCE((SELECT MIN(t.updated_at) \
    FROM tasks t WHERE t.pipeline = c.pipeline AND t.state = 'pending' \
    AND t.version = c.version), 0) ELSE 0 END AS BIGINT) AS oldest_change \
    FROM (SELECT pipeline, version, state, CAST(SUM(batches) AS BIGINT) AS batches, \
    CAST(SUM(rows_in) AS BIGINT) AS rows_in, CAST(SUM(rows_out) AS BIGINT) AS rows_out \
    FROM task_counts GROUP BY pipeline, version, state HAVING SUM(batches) > 0) AS c \
    ORDER BY pipeline, version, state";

#[derive(sqlx::FromRow)]
pub(crate) struct TaskCountRow {
    pipeline: String,
    version: i64,
    state: String,
    batches: i64,
    rows_in: i64,
    rows_out: i64,
    oldest_change: i64,
}

impl TaskCountRow {
    pub(crate) fn into_count(self) -> Result<TaskCount> {
        let state = self.state.parse::<TaskState>().map_err(|e| {
            StoreError::Corrupt(format!("tasks.state of pipeline {}: {e}", self.pipeline))
        })?;
        Ok(TaskCount {
            pipeline: self.pipeline,
            version: self.version,
            state,
            batches: self.batches,
            rows_in: self.rows_in,
            rows_out: self.rows_out,
            oldest_change: self.oldest_change,
        })
    }
}

/// Committed runs of the live versions (current, or with pending or leased batches), counted
/// per duration bucket by the store as they are recorded (migration 0008): bucket `i` holds runs
/// in `(bound[i-1], bound[i]]` of [`DURATION_BUCKETS_MS`], bucket `len` the longer ones.
pub(crate) const METRICS_DURATIONS_SQL: &str = "WITH live AS (SELECT name AS pipeline, \
    current_version AS version FROM pipelines \
    UNION SELECT pipeline, version FROM task_counts WHERE state IN ('pending', 'leased') \
    GROUP BY pipeline, version HAVING SUM(batches) > 0) \
    SELECT r.pipeline, r.version, r.bucket, CAST(SUM(r.runs) AS BIGINT) AS runs, \
    CAST(SUM(r.duration_ms_sum) AS BIGINT) AS duration_ms_sum \
    FROM run_counts r JOIN live l ON r.pipeline = l.pipeline AND r.version = l.version \
    WHERE r.outcome = 'committed' GROUP BY r.pipeline, r.version, r.bucket \
    ORDER BY r.pipeline, r.version, r.bucket";

#[derive(sqlx::FromRow)]
pub(crate) struct DurationBucketRow {
    pipeline: String,
    version: i64,
    bucket: i64,
    runs: i64,
    duration_ms_sum: i64,
}

/// Folds per-bucket counts (ordered by pipeline and version) into cumulative histograms.
pub(crate) fn histograms(rows: Vec<DurationBucketRow>) -> Vec<DurationHistogram> {
    let mut out: Vec<DurationHistogram> = Vec::new();
    for row in rows {
        let same = out
            .last()
            .is_some_and(|h| h.pipeline == row.pipeline && h.version == row.version);
        if !same {
            out.push(DurationHistogram {
                pipeline: row.pipeline.clone(),
                version: row.version,
                runs: 0,
                duration_ms_sum: 0,
                buckets: vec![0; DURATION_BUCKETS_MS.len()],
            });
        }
        let Some(h) = out.last_mut() else { continue };
        h.runs += row.runs;
        h.duration_ms_sum += row.duration_ms_sum;
        let from = usize::try_from(row.bucket).unwrap_or(usize::MAX);
        for count in h.buckets.iter_mut().skip(from) {
            *count += row.runs;
        }
    }
    out
}

/// Rows of committed runs per pipeline version, from the run counters.
pub(crate) const METRICS_ROWS_SQL: &str = "SELECT pipeline, version, \
    CAST(SUM(rows_in) AS BIGINT) AS rows_in, CAST(SUM(rows_out) AS BIGINT) AS rows_out \
    FROM run_counts WHERE outcome = 'committed' GROUP BY pipeline, version \
    ORDER BY pipeline, version";

#[derive(sqlx::FromRow)]
pub(crate) struct CommittedRowsRow {
    pipeline: String,
    version: i64,
    rows_in: i64,
    rows_out: i64,
}

impl From<CommittedRowsRow> for CommittedRows {
    fn from(r: CommittedRowsRow) -> CommittedRows {
        CommittedRows {
            pipeline: r.pipeline,
            version: r.version,
            rows_in: r.rows_in,
            rows_out: r.rows_out,
        }
    }
}

/// `$1` the oldest heartbeat of a live worker.
pub(crate) const METRICS_WORKERS_SQL: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM workers \
    WHERE state <> 'stopped' AND last_heartbeat >= $1";

pub(crate) const METRICS_CHECKS_SQL: &str = "SELECT pipeline, check_name, level, \
    CAST(SUM(results) AS BIGINT) AS results FROM check_counts WHERE level <> 'pass' \
    GROUP BY pipeline, check_name, level ORDER BY pipeline, check_name, level";

#[derive(sqlx::FromRow)]
pub(crate) struct CheckFailuresRow {
    pipeline: String,
    check_name: String,
    level: String,
    results: i64,
}

impl From<CheckFailuresRow> for CheckFailures {
    fn from(r: CheckFailuresRow) -> CheckFailures {
        CheckFailures {
            pipeline: r.pipeline,
            check: r.check_name,
            level: r.level,
            results: r.results,
        }
    }
}

fn outcome(text: &str) -> Result<BatchOutcome> {
    text.parse::<BatchOutcome>()
        .map_err(|e| StoreError::Corrupt(format!("batch_runs.outcome: {e}")))
}

/// A limit as both backends take it: SQLite reads a negative LIMIT as "no limit", PostgreSQL
/// refuses it; both mean none here.
pub(crate) fn limit(n: i64) -> i64 {
    n.max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_add_up_cumulatively() {
        let row = |version: i64, bucket: i64, runs: i64| DurationBucketRow {
            pipeline: "p".into(),
            version,
            bucket,
            runs,
            duration_ms_sum: runs * 10,
        };
        let over = DURATION_BUCKETS_MS.len() as i64;
        let h = histograms(vec![
            row(1, 0, 2),
            row(1, 3, 1),
            row(1, over, 4),
            row(2, 1, 5),
        ]);
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].runs, h[0].duration_ms_sum), (7, 70));
        assert_eq!(&h[0].buckets[..5], &[2, 2, 2, 3, 3]);
        assert_eq!(
            h[0].buckets.last(),
            Some(&3),
            "runs past the last bound are not in it"
        );
        assert_eq!(&h[1].buckets[..3], &[0, 5, 5]);
    }
}
