//! The shared backend: one PostgreSQL database for workers on many machines.
//!
//! Leasing selects pending rows `FOR UPDATE SKIP LOCKED`, so concurrent leasers take disjoint
//! tasks without waiting on each other. Every timestamp comes from the database's clock, so a
//! worker machine whose clock runs ahead cannot make a live lease look expired.
//!
//! The statements are the ones both backends share (`shared.rs`); this file connects and holds
//! what only PostgreSQL does: its clock, its row locks, and its way to queue and lease.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_core::LeaseToken;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgQueryResult};
use sqlx::{Postgres, Transaction};

use crate::rows::{self, SliceColumns, TaskRow, task_columns};
use crate::shared::{Backend, Queue, RowsAffected};
use crate::{LeaseRequest, NewTask, Result, StoreError};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The database clock in epoch milliseconds. `clock_timestamp()`, not `now()`: `now()` is frozen
/// at the start of the transaction, which would make a long transaction's leases start late.
macro_rules! db_now {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

/// A process's workers share these; each lease, heartbeat or completion holds one only briefly.
const MAX_CONNECTIONS: u32 = 10;
/// How long a session may sit idle inside a transaction before the server ends it (ours take
/// milliseconds). Shorter than the default leader lease, so a stopped leader's locks are gone
/// by the time another process may take over.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "10s";

/// How long a call waits for a connection, which while the server is away means reconnecting
/// until it is back. Short: a connection is free within milliseconds when the server is up, and
/// a call that gives up here reports an outage, which the long-running loops say and wait out
/// (and count against their limit), instead of hanging silently.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The PostgreSQL state store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    stats: Arc<TaskStats>,
}

/// Keeps the planner's statistics of `tasks` in step with a backlog queued all at once.
///
/// Autovacuum analyzes a table about a minute after a tenth of it changed. Until then a backlog
/// registered in one go (thousands of files landing together) is planned with the old
/// statistics, which say the queue is nearly empty: each lease then read and sorted every
/// pending row (10 ms a lease at 20,000 pending tasks, against 0.04 ms through the partial
/// index once analyzed). So the store analyzes `tasks` itself as soon as the rows it queued
/// since the last look exceed autovacuum's own rule: 1,000 rows or a tenth of the table.
#[derive(Debug, Default)]
struct TaskStats {
    /// Tasks this process queued since it last analyzed the table.
    queued: AtomicU64,
    /// The table's row count at that time.
    known: AtomicU64,
}

/// Rows queued before `tasks` is analyzed again, at least.
const ANALYZE_AFTER: u64 = 1_000;

/// Queue transitions (lease, complete, fail) commit without waiting for the WAL flush:
/// `synchronous_commit = off` for that transaction only. A server crash can lose the last
/// fraction of a second of them, which sluice survives by design: a lost lease puts the batch
/// back in the queue, a lost completion makes the batch run again, and its Delta commit marker
/// makes the rerun a no-op (`AlreadyCommitted`). Everything else (registry, pipeline versions,
/// retries) keeps durable commits. On this machine a completion went from ~6 ms (a WAL flush)
/// to ~0.5 ms, a lease + complete cycle from ~12 ms to ~5 ms
/// (`cargo bench -p sluice-store --bench lease`).
async fn queue_commit(tx: &mut Transaction<'_, Postgres>) -> Result<()> {
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut **tx)
        .await
        .map_err(StoreError::postgres)?;
    Ok(())
}

impl PostgresStore {
    /// Connects to `url` and applies pending migrations. sqlx's migrator holds an advisory lock
    /// while it works, so processes starting together apply each migration once.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(StoreError::postgres)?
            // A process stopped (SIGSTOP, a VM paused) inside a transaction would hold its row
            // locks, and with them the leader row, forever: the server ends such a session.
            .options([(
                "idle_in_transaction_session_timeout",
                IDLE_IN_TRANSACTION_TIMEOUT,
            )]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(StoreError::postgres)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: "postgres",
                source,
            })?;
        Ok(PostgresStore {
            pool,
            stats: Arc::default(),
        })
    }
}

async fn db_now(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar(concat!("SELECT ", db_now!()))
        .fetch_one(conn)
        .await
        .map_err(StoreError::postgres)
}

impl Backend for PostgresStore {
    type DB = Postgres;
    const NAME: &'static str = "postgres";
    const NOW: &'static str = db_now!();
    /// Leasers and rescuers on many machines split the rows between them instead of waiting.
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    /// A deployment a leaser routes by or a command changes: they take turns on it.
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    /// The leadership a fenced write relies on: a takeover waits for the write, or the write
    /// waits for a takeover in flight and then sees it.
    const FOR_SHARE: &'static str = " FOR SHARE";
    const BEGIN_SNAPSHOT: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn clock(&self) -> Result<i64> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::postgres)?;
        db_now(&mut conn).await
    }

    async fn clock_in(conn: &mut PgConnection) -> Result<i64> {
        db_now(conn).await
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool.begin().await.map_err(StoreError::postgres)
    }

    async fn queue_tx(&self) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.write_tx().await?;
        queue_commit(&mut tx).await?;
        Ok(tx)
    }

    async fn lock_row(conn: &mut PgConnection, select: &'static str, key: &str) -> Result<()> {
        sqlx::query(&format!("{select} FOR UPDATE"))
            .bind(key)
            .execute(conn)
            .await
            .map_err(StoreError::postgres)?;
        Ok(())
    }

    async fn queue_tasks(
        conn: &mut PgConnection,
        q: &Queue<'_>,
        tasks: &[NewTask],
        slices: &[SliceColumns],
    ) -> Result<u64> {
        if tasks.is_empty() {
            return Ok(0);
        }
        let batch_ids: Vec<&str> = tasks.iter().map(|t| t.batch_id.0.as_str()).collect();
        // One statement for all slices of the file (arrays, not one round trip per slice);
        // ordered by position so the queue keeps the file's order. A batch id already queued
        // stays where it is: its rows must enter the queue once.
        let queued = sqlx::query(concat!(
            "INSERT INTO tasks (batch_id, pipeline, version, path, slice_index, byte_start, \
             byte_end, row_start, row_count, state, attempts, max_attempts, run_after, \
             created_at, updated_at) \
             SELECT t.batch_id, $1, $2, t.path, t.slice_index, t.byte_start, t.byte_end, \
             t.row_start, t.row_count, 'pending', 0, $3, c.now, c.now, c.now \
             FROM UNNEST($4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], \
             $9::bigint[], $10::bigint[]) WITH ORDINALITY \
             AS t(batch_id, path, slice_index, byte_start, byte_end, row_start, row_count, ord), \
             (SELECT ",
            db_now!(),
            " AS now) c \
             ORDER BY t.ord \
             ON CONFLICT (batch_id) DO NOTHING"
        ))
        .bind(q.pipeline)
        .bind(q.version)
        .bind(q.max_attempts)
        .bind(&batch_ids)
        .bind(
            tasks
                .iter()
                .map(|t| t.slice.path.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(slices.iter().map(|s| s.index).collect::<Vec<_>>())
        .bind(slices.iter().map(|s| s.byte_start).collect::<Vec<_>>())
        .bind(slices.iter().map(|s| s.byte_end).collect::<Vec<_>>())
        .bind(slices.iter().map(|s| s.row_start).collect::<Vec<_>>())
        .bind(slices.iter().map(|s| s.row_count).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await
        .map_err(StoreError::postgres)?
        .rows_affected();
        sqlx::query(
            "INSERT INTO batch_inputs (batch_id, pipeline, path, generation) \
             SELECT b, $1, $2, $3 FROM UNNEST($4::text[]) AS t(b) \
             ON CONFLICT (batch_id) DO NOTHING",
        )
        .bind(q.pipeline)
        .bind(q.path)
        .bind(q.generation)
        .bind(&batch_ids)
        .execute(conn)
        .await
        .map_err(StoreError::postgres)?;
        Ok(queued)
    }

    /// Counts `n` newly queued tasks and analyzes `tasks` when they are many (see
    /// [`TaskStats`]). Best effort: a failed ANALYZE only leaves planning to autovacuum.
    async fn queued(&self, n: u64) {
        let stats = &self.stats;
        let queued = stats.queued.fetch_add(n, Ordering::Relaxed) + n;
        if queued < ANALYZE_AFTER.max(stats.known.load(Ordering::Relaxed) / 10) {
            return;
        }
        stats.queued.store(0, Ordering::Relaxed);
        if let Err(e) = sqlx::query("ANALYZE tasks").execute(&self.pool).await {
            tracing::debug!(error = %e, "ANALYZE tasks failed; autovacuum will do it");
            return;
        }
        let rows: Option<f32> =
            sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 'tasks'::regclass")
                .fetch_optional(&self.pool)
                .await
                .ok()
                .flatten();
        stats
            .known
            .store(rows.unwrap_or(0.0).max(0.0) as u64, Ordering::Relaxed);
    }

    async fn lease_pending(conn: &mut PgConnection, req: &LeaseRequest) -> Result<Vec<TaskRow>> {
        let limit = i64::try_from(req.limit).unwrap_or(i64::MAX);
        // SKIP LOCKED: rows another leaser is taking right now are passed over, not waited on.
        let seqs: Vec<i64> = sqlx::query_scalar(concat!(
            "SELECT seq FROM tasks WHERE state = 'pending' AND run_after <= ",
            db_now!(),
            " AND ($1::text[] IS NULL OR pipeline = ANY($1)) AND ",
            rows::not_held!(),
            " ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED"
        ))
        .bind(req.pipelines.as_deref())
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::postgres)?;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<String> = seqs.iter().map(|_| LeaseToken::random().0).collect();
        sqlx::query_as(concat!(
            "WITH leased AS (UPDATE tasks t SET state = 'leased', attempts = t.attempts + 1, \
             lease_owner = $1, lease_token = l.token, leased_at = c.now, \
             lease_expires_at = c.now + $2, updated_at = c.now, ",
            rows::route_to_current!("c.now"),
            " FROM UNNEST($3::bigint[], $4::text[]) AS l(seq, token), (SELECT ",
            db_now!(),
            " AS now) c \
             WHERE t.seq = l.seq AND t.state = 'pending' RETURNING t.*) \
             SELECT ",
            task_columns!(),
            " FROM leased ORDER BY seq"
        ))
        .bind(&req.worker.0)
        .bind(rows::millis(req.lease_for))
        .bind(&seqs)
        .bind(&tokens)
        .fetch_all(conn)
        .await
        .map_err(StoreError::postgres)
    }
}

impl RowsAffected for PgQueryResult {
    fn rows_affected(&self) -> u64 {
        PgQueryResult::rows_affected(self)
    }
}
