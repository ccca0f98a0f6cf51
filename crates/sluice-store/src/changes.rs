//! Files that change after they were taken in, and the data files batch commits added: rows
//! and statements shared by both backends (run by `shared.rs`).

use sluice_core::BatchId;

use crate::{BatchFile, FileChange, TakenFile};

/// `$1` pipeline. Files taken in before takes and checksums were kept read as wholly taken in,
/// without a checksum.
pub(crate) const TAKEN_FILES_SQL: &str = "SELECT path, size, modified_ms, \
    COALESCE(taken_bytes, size) AS taken_bytes, COALESCE(taken_rows, 0) AS taken_rows, checksum, \
    generation, change_size, change_modified_ms, change_detail, change_action, change_noticed_at, \
    cutting FROM files WHERE pipeline = $1 ORDER BY path";

/// `$1` pipeline: only files with a noticed change.
pub(crate) const CHANGED_FILES_SQL: &str = "SELECT path, size, modified_ms, \
    COALESCE(taken_bytes, size) AS taken_bytes, COALESCE(taken_rows, 0) AS taken_rows, checksum, \
    generation, change_size, change_modified_ms, change_detail, change_action, change_noticed_at, \
    cutting FROM files WHERE pipeline = $1 AND change_action IS NOT NULL ORDER BY path";

/// `$1` pipeline, `$2` path, `$3..$7` the new take (size, modified_ms, taken_bytes, taken_rows,
/// checksum), `$8` its generation, `$9..$11` the take it builds on (taken_bytes, checksum,
/// generation). Clears any noticed change.
pub(crate) const TAKE_IN_CHANGE_SQL: &str = "UPDATE files SET size = $3, modified_ms = $4, \
    taken_bytes = $5, taken_rows = $6, checksum = $7, generation = $8, change_size = NULL, \
    change_modified_ms = NULL, change_detail = NULL, change_action = NULL, change_noticed_at = NULL \
    WHERE pipeline = $1 AND path = $2 AND COALESCE(taken_bytes, size) = $9 \
    AND COALESCE(checksum, '') = COALESCE($10, '') AND generation = $11";

/// `$1` pipeline, `$2` path, `$3..$7` the first part of a cut (size, modified_ms,
/// taken_bytes, taken_rows, checksum), `$8` 1 if the cut goes on. Takes the file in, or nothing
/// if it was taken in before.
pub(crate) const BEGIN_CUT_SQL: &str = "INSERT INTO files (pipeline, path, size, modified_ms, \
    taken_bytes, taken_rows, checksum, cutting, registered_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, {now}) ON CONFLICT (pipeline, path) DO NOTHING";

/// `$1` pipeline, `$2` path, `$3` taken_bytes, `$4` taken_rows, `$5` checksum, `$6` 1 if the
/// cut goes on, `$7` the taken_bytes the part follows. Moves a cut under way on, only from where
/// it stands.
pub(crate) const EXTEND_CUT_SQL: &str = "UPDATE files SET taken_bytes = $3, taken_rows = $4, \
    checksum = $5, cutting = $6 \
    WHERE pipeline = $1 AND path = $2 AND cutting = 1 AND taken_bytes = $7";

/// `$1` pipeline, `$2` path, `$3..$6` size, modified_ms, detail, action; noticed at the store
/// clock (`{now}`). Changes nothing when the same change (size, time, action) is already
/// recorded.
pub(crate) const NOTICE_CHANGE_SQL: &str = "UPDATE files SET change_size = $3, \
    change_modified_ms = $4, change_detail = $5, change_action = $6, change_noticed_at = {now} \
    WHERE pipeline = $1 AND path = $2 AND NOT (COALESCE(change_size, -1) = $3 \
    AND COALESCE(change_modified_ms, -1) = $4 AND COALESCE(change_action, '') = $6)";

/// `$1` pipeline, `$2` path.
pub(crate) const CLEAR_CHANGE_SQL: &str = "UPDATE files SET change_size = NULL, \
    change_modified_ms = NULL, change_detail = NULL, change_action = NULL, change_noticed_at = NULL \
    WHERE pipeline = $1 AND path = $2 AND change_action IS NOT NULL";

/// `$1..$4` the [`BatchFile`], `$5` when it was recorded (the store clock).
pub(crate) const INSERT_BATCH_FILE_SQL: &str = "INSERT INTO batch_files \
    (pipeline, batch_id, table_version, data_file, recorded_at) VALUES ($1, $2, $3, $4, $5) \
    ON CONFLICT (batch_id, data_file) DO NOTHING";

/// `$1` batch id.
pub(crate) const BATCH_FILES_SQL: &str = "SELECT pipeline, batch_id, table_version, data_file \
    FROM batch_files WHERE batch_id = $1 ORDER BY data_file";

/// `$1` batch id: the data files of batches holding earlier generations of its file.
pub(crate) const SUPERSEDED_FILES_SQL: &str = "SELECT DISTINCT f.data_file \
    FROM batch_inputs me \
    JOIN batch_inputs old ON old.pipeline = me.pipeline AND old.path = me.path \
        AND old.generation < me.generation \
    JOIN batch_files f ON f.batch_id = old.batch_id \
    WHERE me.batch_id = $1 ORDER BY f.data_file";

#[derive(sqlx::FromRow)]
pub(crate) struct TakenFileRow {
    path: String,
    size: i64,
    modified_ms: i64,
    taken_bytes: i64,
    taken_rows: i64,
    checksum: Option<String>,
    generation: i64,
    change_size: Option<i64>,
    change_modified_ms: Option<i64>,
    change_detail: Option<String>,
    change_action: Option<String>,
    change_noticed_at: Option<i64>,
    cutting: i64,
}

impl From<TakenFileRow> for TakenFile {
    fn from(r: TakenFileRow) -> TakenFile {
        let change = match (r.change_size, r.change_modified_ms, r.change_action) {
            (Some(size), Some(modified_ms), Some(action)) => Some(FileChange {
                size,
                modified_ms,
                detail: r.change_detail.unwrap_or_default(),
                action,
                noticed_at: r.change_noticed_at.unwrap_or(0),
            }),
            _ => None,
        };
        TakenFile {
            path: r.path,
            size: r.size,
            modified_ms: r.modified_ms,
            taken_bytes: r.taken_bytes,
            taken_rows: r.taken_rows,
            checksum: r.checksum,
            generation: r.generation,
            change,
            cutting: r.cutting != 0,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct BatchFileRow {
    pipeline: String,
    batch_id: String,
    table_version: i64,
    data_file: String,
}

impl From<BatchFileRow> for BatchFile {
    fn from(r: BatchFileRow) -> BatchFile {
        BatchFile {
            pipeline: r.pipeline,
            batch_id: BatchId(r.batch_id),
            table_version: r.table_version,
            data_file: r.data_file,
        }
    }
}
