//! Check measurements: rows and statements shared by both backends.

use sluice_core::BatchId;

use crate::CheckRecord;

/// `$1..$10` the record's fields, `$11` now.
pub(crate) const INSERT_CHECK_SQL: &str = "INSERT INTO check_results \
    (pipeline, version, batch_id, check_name, kind, level, considered, failing, dropped, detail, recorded_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// `$1` pipeline, `$2` version or NULL for all, `$3` limit. Newest first.
pub(crate) const CHECK_RESULTS_SQL: &str = "SELECT pipeline, version, batch_id, check_name, kind, \
    level, considered, failing, dropped, detail, recorded_at FROM check_results \
    WHERE pipeline = $1 AND ($2 IS NULL OR version = $2) ORDER BY recorded_at DESC, id DESC LIMIT $3";

#[derive(sqlx::FromRow)]
pub(crate) struct CheckRow {
    pipeline: String,
    version: i64,
    batch_id: String,
    check_name: String,
    kind: String,
    level: String,
    considered: i64,
    failing: i64,
    dropped: i64,
    detail: String,
    recorded_at: i64,
}

impl From<CheckRow> for CheckRecord {
    fn from(r: CheckRow) -> CheckRecord {
        CheckRecord {
            pipeline: r.pipeline,
            version: r.version,
            batch_id: BatchId(r.batch_id),
            check: r.check_name,
            kind: r.kind,
            level: r.level,
            considered: r.considered,
            failing: r.failing,
            dropped: r.dropped,
            detail: r.detail,
            recorded_at: r.recorded_at,
        }
    }
}

/// Binds a record's fields in [`INSERT_CHECK_SQL`]'s order.
macro_rules! bind_check {
    ($query:expr, $r:expr, $now:expr) => {
        $query
            .bind(&$r.pipeline)
            .bind($r.version)
            .bind(&$r.batch_id.0)
            .bind(&$r.check)
            .bind(&$r.kind)
            .bind(&$r.level)
            .bind($r.considered)
            .bind($r.failing)
            .bind($r.dropped)
            .bind(&$r.detail)
            .bind($now)
    };
}
pub(crate) use bind_check;
