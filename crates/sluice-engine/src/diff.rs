//! Table diff: which rows two Delta tables disagree on, by key.
//!
//! Used directly by `sluice diff`, and by shadow and blue-green deployments to compare a
//! candidate's output with production's.
//!
//! # How it stays fast
//!
//! The idea is data-diff's: compare checksums of slices of the key space first and look at rows
//! only where the checksums disagree. Everything runs in DataFusion.
//!
//! 1. **Schemas.** Columns only in one table and columns whose types do not compare are
//!    reported; the remaining common columns are the *compared* columns.
//! 2. **Checksums.** Every row gets a 64-bit hash of its key (`sluice_key_hash`) and one of its
//!    key and compared values (`sluice_row_hash`); both encode the values with Arrow's row
//!    format, which is injective (NULL differs from every value and equals NULL), then hash the
//!    bytes. Rows fall into `key_hash % buckets` buckets; per bucket each table yields its row
//!    count, the wrapping sum of its row hashes (order- and layout-independent) and, with
//!    [`DiffOptions::check_unique_keys`], its number of distinct key hashes.
//! 3. **Drill-down.** Only buckets whose count or checksum differ, or which hold a repeated key,
//!    are read again: their rows are materialised in memory, keys repeated within a table are
//!    reported and set aside, and a full outer join on the key (`IS NOT DISTINCT FROM`, so NULL
//!    keys match) classifies the rest as only in A, only in B or changed, with per-column
//!    mismatch counts and a few samples.
//!
//! With `d` differing rows spread over `n` rows, the join touches about `d * n / buckets` rows
//! instead of `n`: two scans of each table plus a join of the differing buckets.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_engine::diff::DiffError> {
//! use sluice_engine::diff::{DiffOptions, diff_tables};
//! let report = diff_tables("tables/prod", "tables/shadow", &["order_id".to_string()],
//!     DiffOptions::default(), |_| {}).await?;
//! println!("{} rows only in A", report.only_in_a.count);
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt64Array};
use arrow::compute::can_cast_types;
use arrow::datatypes::{DataType, Schema};
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::count::count_all_window;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, max, sum};
use datafusion::logical_expr::{
    ColumnarValue, ExprFunctionExt, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility, binary_expr,
};
use datafusion::prelude::{DataFrame, Expr, JoinType, SessionContext, cast, coalesce, ident, lit};
use deltalake::{DeltaTable, DeltaTableError};
use futures::StreamExt;
use indexmap::IndexMap;
use serde::Serialize;
use url::Url;

/// Why a diff could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("table {table:?}: {reason}")]
    Location { table: String, reason: String },
    #[error("table {table}: not a readable Delta table: {source}")]
    Open {
        table: String,
        #[source]
        source: DeltaTableError,
    },
    #[error("no key columns given: name the columns that identify a row (--key id[,other])")]
    NoKey,
    #[error("key column {column:?} is not in table {table} (its columns: {columns})")]
    KeyColumn {
        column: String,
        table: String,
        columns: String,
    },
    #[error("key column {column:?} is {a} in A and {b} in B: the keys cannot be compared")]
    KeyType {
        column: String,
        a: String,
        b: String,
    },
    #[error("comparing the tables: {0}")]
    Query(#[from] DataFusionError),
}

impl DiffError {
    /// The caller's input is at fault (a missing table, a wrong key), not the world.
    pub fn is_input(&self) -> bool {
        !matches!(self, DiffError::Query(_))
    }
}

/// Tuning of a diff.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Buckets the key space is cut into; `None` picks about one per 2,000 rows.
    pub buckets: Option<u64>,
    /// Samples kept per class (only in A, only in B, each changed column, duplicates).
    pub samples: usize,
    /// Find keys repeated within a table everywhere, not only in buckets that differ. Costs a
    /// distinct count of key hashes per bucket.
    pub check_unique_keys: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            buckets: None,
            samples: 5,
            check_unique_keys: true,
        }
    }
}

/// Where a diff is, for progress bars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffProgress {
    /// Checksumming every row of both tables (`rows_total` is the sum of both tables' rows).
    Checksums { rows_done: u64, rows_total: u64 },
    /// Re-reading both tables to pick out the rows of the buckets that differ.
    DrillDown {
        buckets: u64,
        rows_done: u64,
        rows_total: u64,
    },
    /// Joining the picked rows and classifying them.
    Classifying,
}

/// One side of the diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    A,
    B,
}

/// A column's name and Arrow type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnType {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

/// A column present in both tables with types that do not compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeChange {
    pub name: String,
    pub a: String,
    pub b: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SchemaDiff {
    pub only_in_a: Vec<ColumnType>,
    pub only_in_b: Vec<ColumnType>,
    /// Not compared row by row (a key column of a castable type is compared after a cast).
    pub type_changes: Vec<TypeChange>,
}

impl SchemaDiff {
    pub fn is_empty(&self) -> bool {
        self.only_in_a.is_empty() && self.only_in_b.is_empty() && self.type_changes.is_empty()
    }
}

/// A key, column name -> value as displayed (`None` is NULL).
pub type KeyValues = IndexMap<String, Option<String>>;

/// Rows present in one table only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MissingRows {
    pub count: u64,
    pub samples: Vec<KeyValues>,
}

/// A changed value: the row's key, the value in A and in B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueSample {
    pub key: KeyValues,
    pub a: Option<String>,
    pub b: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnMismatch {
    pub column: String,
    /// Rows whose value in this column differs.
    pub count: u64,
    pub samples: Vec<ValueSample>,
}

/// Rows present in both tables whose compared values differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChangedRows {
    pub count: u64,
    /// Only columns with at least one mismatch, in table order.
    pub columns: Vec<ColumnMismatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateSample {
    pub key: KeyValues,
    pub rows: u64,
}

/// Keys that occur more than once in one table. Their rows are not classified (a join would
/// pair them arbitrarily); they are reported here instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateKeys {
    pub table: Side,
    pub keys: u64,
    pub rows: u64,
    pub samples: Vec<DuplicateSample>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketStats {
    pub total: u64,
    /// Buckets whose rows were compared one by one.
    pub drilled: u64,
    /// Rows of both tables in those buckets.
    pub rows_drilled: u64,
}

/// The result of a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    pub table_a: String,
    pub table_b: String,
    pub key: Vec<String>,
    pub rows_a: u64,
    pub rows_b: u64,
    pub schema: SchemaDiff,
    /// Non-key columns compared row by row.
    pub compared_columns: Vec<String>,
    pub only_in_a: MissingRows,
    pub only_in_b: MissingRows,
    pub changed: ChangedRows,
    pub duplicates: Vec<DuplicateKeys>,
    pub buckets: BucketStats,
    pub elapsed_ms: u64,
}

impl DiffReport {
    /// Whether the tables differ in any way this report shows.
    pub fn has_differences(&self) -> bool {
        !self.schema.is_empty()
            || self.only_in_a.count > 0
            || self.only_in_b.count > 0
            || self.changed.count > 0
            || !self.duplicates.is_empty()
    }
}

/// Resolves a table argument: a URL as is, a path relative to the working directory.
pub fn resolve_table(location: &str) -> Result<Url, DiffError> {
    let bad = |reason: String| DiffError::Location {
        table: location.to_string(),
        reason,
    };
    if location.contains("://") {
        return Url::parse(location).map_err(|e| bad(e.to_string()));
    }
    let path = std::path::Path::new(location);
    if !path.is_dir() {
        return Err(bad("no such directory".into()));
    }
    let path = std::fs::canonicalize(path).map_err(|e| bad(e.to_string()))?;
    Url::from_directory_path(&path)
        .map_err(|_| bad(format!("{} is not an absolute path", path.display())))
}

/// Compares two Delta tables (paths relative to the working directory, or URLs) by `key`.
/// `progress` is called from this task every 100 ms or so, and at phase changes.
pub async fn diff_tables(
    a: &str,
    b: &str,
    key: &[String],
    opts: DiffOptions,
    progress: impl Fn(DiffProgress),
) -> Result<DiffReport, DiffError> {
    let started = Instant::now();
    if key.is_empty() {
        return Err(DiffError::NoKey);
    }
    let ctx = SessionContext::new();
    let df_a = open(&ctx, a).await?;
    let df_b = open(&ctx, b).await?;
    let plan = ComparePlan::new(a, b, &df_a, &df_b, key)?;
    let side_a = plan.project(df_a)?;
    let side_b = plan.project(df_b)?;

    let rows_a = side_a.clone().count().await? as u64;
    let rows_b = side_b.clone().count().await? as u64;
    let buckets = opts
        .buckets
        .unwrap_or_else(|| (rows_a.max(rows_b) / 2_000).clamp(16, 1 << 16))
        .max(1);

    // Checksums of every bucket of both tables.
    let counter = Arc::new(AtomicU64::new(0));
    let rows_total = rows_a + rows_b;
    let report = |done: u64| {
        progress(DiffProgress::Checksums {
            rows_done: done,
            rows_total,
        })
    };
    let sums_a = with_progress(
        checksums(
            &plan,
            side_a.clone(),
            buckets,
            &counter,
            opts.check_unique_keys,
        ),
        &counter,
        &report,
    )
    .await?;
    let sums_b = with_progress(
        checksums(
            &plan,
            side_b.clone(),
            buckets,
            &counter,
            opts.check_unique_keys,
        ),
        &counter,
        &report,
    )
    .await?;
    report(rows_total);
    tracing::debug!(elapsed = ?started.elapsed(), buckets, "diff: checksums done");

    let differing = differing_buckets(&sums_a, &sums_b);
    let rows_drilled: u64 = differing
        .iter()
        .map(|b| sums_a.get(b).map_or(0, |s| s.rows) + sums_b.get(b).map_or(0, |s| s.rows))
        .sum();
    let mut out = DiffReport {
        table_a: a.to_string(),
        table_b: b.to_string(),
        key: key.to_vec(),
        rows_a,
        rows_b,
        schema: plan.schema_diff.clone(),
        compared_columns: plan.values.iter().map(|c| c.name.clone()).collect(),
        only_in_a: MissingRows::default(),
        only_in_b: MissingRows::default(),
        changed: ChangedRows::default(),
        duplicates: vec![],
        buckets: BucketStats {
            total: buckets,
            drilled: differing.len() as u64,
            rows_drilled,
        },
        elapsed_ms: 0,
    };
    if !differing.is_empty() {
        drill_down(
            &plan, side_a, side_b, buckets, &differing, &opts, &progress, &mut out,
        )
        .await?;
    }
    out.elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::debug!(elapsed = ?started.elapsed(), drilled = out.buckets.drilled, "diff: done");
    Ok(out)
}

async fn open(ctx: &SessionContext, location: &str) -> Result<DataFrame, DiffError> {
    let url = resolve_table(location)?;
    let open_err = |source: DeltaTableError| DiffError::Open {
        table: location.to_string(),
        source,
    };
    let table = DeltaTable::try_from_url(url).await.map_err(open_err)?;
    if table.version().is_none() {
        return Err(DiffError::Location {
            table: location.to_string(),
            reason: "the Delta table has no commits yet".into(),
        });
    }
    let generic = |e: &dyn std::fmt::Display| open_err(DeltaTableError::Generic(e.to_string()));
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| generic(&e))?;
    let provider = table.table_provider().await.map_err(|e| generic(&e))?;
    Ok(ctx.read_table(provider)?)
}

/// A column as both sides project it.
#[derive(Debug, Clone)]
struct Compared {
    name: String,
    /// The type both sides are cast to.
    data_type: DataType,
}

/// What is compared and how each side is projected so both look the same: key columns `k0..`,
/// compared columns `v0..`, same types.
struct ComparePlan {
    keys: Vec<Compared>,
    values: Vec<Compared>,
    schema_diff: SchemaDiff,
}

/// The type a column is compared as: dictionaries by their values, every string layout as
/// `Utf8View` and every binary one as `BinaryView` (what DataFusion reads Parquet strings as, so
/// usually no cast), so tables written with different layouts still compare equal.
fn comparable_type(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, v) => comparable_type(v),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8View,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => DataType::BinaryView,
        other => other.clone(),
    }
}

/// A type as reported: the logical type, without the in-memory layout of strings and binaries.
fn type_name(t: &DataType) -> String {
    match comparable_type(t) {
        DataType::Utf8View => "Utf8".into(),
        DataType::BinaryView => "Binary".into(),
        other => other.to_string(),
    }
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl ComparePlan {
    fn new(
        name_a: &str,
        name_b: &str,
        a: &DataFrame,
        b: &DataFrame,
        key: &[String],
    ) -> Result<ComparePlan, DiffError> {
        let sa = a.schema().as_arrow();
        let sb = b.schema().as_arrow();
        let mut keys = vec![];
        for k in key {
            let field = |s: &Schema, table: &str| {
                s.field_with_name(k)
                    .map(|f| comparable_type(f.data_type()))
                    .map_err(|_| DiffError::KeyColumn {
                        column: k.clone(),
                        table: table.to_string(),
                        columns: column_list(s),
                    })
            };
            let ta = field(sa, name_a)?;
            let tb = field(sb, name_b)?;
            if ta != tb && !can_cast_types(&tb, &ta) {
                return Err(DiffError::KeyType {
                    column: k.clone(),
                    a: type_name(&ta),
                    b: type_name(&tb),
                });
            }
            keys.push(Compared {
                name: k.clone(),
                data_type: ta,
            });
        }
        let mut schema_diff = SchemaDiff::default();
        let mut values = vec![];
        for f in sa.fields() {
            let ta = comparable_type(f.data_type());
            match sb.field_with_name(f.name()) {
                Err(_) => schema_diff.only_in_a.push(ColumnType {
                    name: f.name().clone(),
                    data_type: type_name(f.data_type()),
                }),
                Ok(g) => {
                    let tb = comparable_type(g.data_type());
                    if ta != tb {
                        schema_diff.type_changes.push(TypeChange {
                            name: f.name().clone(),
                            a: type_name(f.data_type()),
                            b: type_name(g.data_type()),
                        });
                    } else if !key.contains(f.name()) {
                        values.push(Compared {
                            name: f.name().clone(),
                            data_type: ta,
                        });
                    }
                }
            }
        }
        for g in sb.fields() {
            if sa.field_with_name(g.name()).is_err() {
                schema_diff.only_in_b.push(ColumnType {
                    name: g.name().clone(),
                    data_type: type_name(g.data_type()),
                });
            }
        }
        Ok(ComparePlan {
            keys,
            values,
            schema_diff,
        })
    }

    /// `k0.., v0..` with the compared types: the same shape for both tables.
    fn project(&self, df: DataFrame) -> Result<DataFrame, DiffError> {
        let schema = df.schema().as_arrow().clone();
        let mut exprs = vec![];
        for (prefix, cols) in [("k", &self.keys), ("v", &self.values)] {
            for (i, c) in cols.iter().enumerate() {
                let mut e = ident(&c.name);
                let has_type = schema
                    .field_with_name(&c.name)
                    .map(|f| f.data_type().clone());
                if has_type.as_ref().ok() != Some(&c.data_type) {
                    e = cast(e, c.data_type.clone());
                }
                exprs.push(e.alias(format!("{prefix}{i}")));
            }
        }
        Ok(df.select(exprs)?)
    }

    fn key_cols(&self) -> Vec<Expr> {
        (0..self.keys.len())
            .map(|i| ident(format!("k{i}")))
            .collect()
    }

    fn value_cols(&self) -> Vec<Expr> {
        (0..self.values.len())
            .map(|i| ident(format!("v{i}")))
            .collect()
    }
}

/// Per bucket: rows, wrapping sum of row hashes, distinct key hashes (when counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BucketSum {
    rows: u64,
    checksum: u64,
    distinct_keys: Option<u64>,
}

async fn checksums(
    plan: &ComparePlan,
    side: DataFrame,
    buckets: u64,
    counter: &Arc<AtomicU64>,
    unique: bool,
) -> Result<HashMap<u64, BucketSum>, DiffError> {
    // The row hash takes the key hash in place of the key columns: same information, fewer
    // bytes to encode.
    let mut with_key_hash = vec![
        RowHash::udf("sluice_key_hash", None)
            .call(plan.key_cols())
            .alias("kh"),
    ];
    with_key_hash.extend(plan.value_cols());
    let mut row = vec![ident("kh")];
    row.extend(plan.value_cols());
    let mut aggs = vec![count(lit(1)).alias("n"), sum(ident("rh")).alias("s")];
    if unique {
        aggs.push(count_distinct(ident("kh")).alias("d"));
    }
    let grouped = side
        .select(with_key_hash)?
        .select(vec![
            (ident("kh") % lit(buckets)).alias("bucket"),
            ident("kh"),
            RowHash::udf("sluice_row_hash", Some(counter.clone()))
                .call(row)
                .alias("rh"),
        ])?
        .aggregate(vec![ident("bucket")], aggs)?;
    let mut out = HashMap::new();
    for batch in grouped.collect().await? {
        let bucket = u64_column(&batch, 0)?;
        let rows = i64_column(&batch, 1)?;
        let sums = u64_column(&batch, 2)?;
        let distinct = if unique {
            Some(i64_column(&batch, 3)?)
        } else {
            None
        };
        for i in 0..batch.num_rows() {
            out.insert(
                bucket.value(i),
                BucketSum {
                    rows: rows.value(i) as u64,
                    checksum: sums.value(i),
                    distinct_keys: distinct.map(|d| d.value(i) as u64),
                },
            );
        }
    }
    Ok(out)
}

fn differing_buckets(a: &HashMap<u64, BucketSum>, b: &HashMap<u64, BucketSum>) -> Vec<u64> {
    let repeats = |s: &BucketSum| s.distinct_keys.is_some_and(|d| d < s.rows);
    let mut out = BTreeSet::new();
    for (bucket, sa) in a {
        if b.get(bucket) != Some(sa) || repeats(sa) {
            out.insert(*bucket);
        }
    }
    for (bucket, sb) in b {
        if !a.contains_key(bucket) || repeats(sb) {
            out.insert(*bucket);
        }
    }
    out.into_iter().collect()
}

/// Runs `fut`, reporting the row counter every 100 ms.
async fn with_progress<T>(
    fut: impl Future<Output = T>,
    counter: &AtomicU64,
    report: &impl Fn(u64),
) -> T {
    let mut fut = std::pin::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = tick.tick() => report(counter.load(Ordering::Relaxed)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn drill_down(
    plan: &ComparePlan,
    side_a: DataFrame,
    side_b: DataFrame,
    buckets: u64,
    differing: &[u64],
    opts: &DiffOptions,
    progress: &impl Fn(DiffProgress),
    out: &mut DiffReport,
) -> Result<(), DiffError> {
    let counter = Arc::new(AtomicU64::new(0));
    let rows_total = out.rows_a + out.rows_b;
    let drilled = differing.len() as u64;
    let report = |done: u64| {
        progress(DiffProgress::DrillDown {
            buckets: drilled,
            rows_done: done,
            rows_total,
        })
    };
    // The rows of the differing buckets, in memory: everything after this reads them several
    // times, and they are few when the tables are alike.
    let pick = |side: DataFrame| -> Result<DataFrame, DiffError> {
        let kh = RowHash::udf("sluice_key_hash", Some(counter.clone())).call(plan.key_cols());
        let mut cols = plan.key_cols();
        cols.extend(plan.value_cols());
        let side = side.select(cols)?;
        // Every bucket differs when the tables have nothing in common: no filter then.
        if drilled == buckets {
            return Ok(side);
        }
        let list = differing.iter().map(|b| lit(*b)).collect();
        Ok(side.filter((kh % lit(buckets)).in_list(list, false))?)
    };
    let picked_a = with_progress(pick(side_a)?.cache(), &counter, &report).await?;
    let picked_b = with_progress(pick(side_b)?.cache(), &counter, &report).await?;
    report(rows_total);
    tracing::debug!(
        rows = out.buckets.rows_drilled,
        "diff: differing buckets read"
    );
    progress(DiffProgress::Classifying);

    // Keys repeated within a table: reported, and kept out of the join on both sides, since
    // any pairing of their rows would be arbitrary.
    let (unique_a, repeated_a) = split_repeated(plan, picked_a)?;
    let (unique_b, repeated_b) = split_repeated(plan, picked_b)?;
    let repeated_a = repeated_a.cache().await?;
    let repeated_b = repeated_b.cache().await?;
    for (side, dups) in [(Side::A, &repeated_a), (Side::B, &repeated_b)] {
        if let Some(d) = duplicates(plan, side, dups.clone(), opts.samples).await? {
            out.duplicates.push(d);
        }
    }
    let unique_a = without_keys(plan, unique_a, repeated_b)?;
    let unique_b = without_keys(plan, unique_b, repeated_a)?;

    // A's columns keep their names; B's get a `b_` prefix, and each side a presence flag.
    let mut b_cols = vec![lit(true).alias("pb")];
    for i in 0..plan.keys.len() {
        b_cols.push(ident(format!("k{i}")).alias(format!("b_k{i}")));
    }
    for i in 0..plan.values.len() {
        b_cols.push(ident(format!("v{i}")).alias(format!("b_v{i}")));
    }
    let mut a_cols = vec![lit(true).alias("pa")];
    a_cols.extend(plan.key_cols());
    a_cols.extend(plan.value_cols());
    let on = (0..plan.keys.len())
        .map(|i| {
            binary_expr(
                ident(format!("k{i}")),
                Operator::IsNotDistinctFrom,
                ident(format!("b_k{i}")),
            )
        })
        .collect::<Vec<_>>();
    let joined = unique_a
        .select(a_cols)?
        .join_on(unique_b.select(b_cols)?, JoinType::Full, on)?;
    let both = ident("pa").is_not_null().and(ident("pb").is_not_null());
    let mut cols = vec![
        ident("pa").is_not_null().alias("in_a"),
        ident("pb").is_not_null().alias("in_b"),
    ];
    for i in 0..plan.keys.len() {
        cols.push(
            coalesce(vec![ident(format!("k{i}")), ident(format!("b_k{i}"))]).alias(format!("k{i}")),
        );
    }
    let mut any_change = lit(false);
    for i in 0..plan.values.len() {
        let ne = both.clone().and(binary_expr(
            ident(format!("v{i}")),
            Operator::IsDistinctFrom,
            ident(format!("b_v{i}")),
        ));
        any_change = any_change.or(ident(format!("ne{i}")));
        cols.push(ne.alias(format!("ne{i}")));
        cols.push(ident(format!("v{i}")));
        cols.push(ident(format!("b_v{i}")));
    }
    let differences = joined
        .select(cols)?
        .filter((!ident("in_a")).or(!ident("in_b")).or(any_change))?;
    let mut classifier = Classifier::new(plan, opts.samples);
    let mut stream = differences.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        classifier.add(&batch?)?;
    }
    classifier.finish(out);
    Ok(())
}

/// Splits picked rows into rows with a key unique in their table and the repeated keys.
fn split_repeated(
    plan: &ComparePlan,
    picked: DataFrame,
) -> Result<(DataFrame, DataFrame), DiffError> {
    let n = count_all_window()
        .partition_by(plan.key_cols())
        .build()?
        .alias("key_rows");
    let counted = picked.window(vec![n])?;
    let mut cols = plan.key_cols();
    cols.extend(plan.value_cols());
    let unique = counted
        .clone()
        .filter(ident("key_rows").eq(lit(1i64)))?
        .select(cols)?;
    let repeated = counted.filter(ident("key_rows").gt(lit(1i64)))?.aggregate(
        plan.key_cols(),
        vec![max(ident("key_rows")).alias("key_rows")],
    )?;
    Ok((unique, repeated))
}

/// `rows` without the keys in `keys` (a key-only frame `k0..`).
fn without_keys(
    plan: &ComparePlan,
    rows: DataFrame,
    keys: DataFrame,
) -> Result<DataFrame, DiffError> {
    let renamed = (0..plan.keys.len())
        .map(|i| ident(format!("k{i}")).alias(format!("r_k{i}")))
        .collect::<Vec<_>>();
    let on = (0..plan.keys.len())
        .map(|i| {
            binary_expr(
                ident(format!("k{i}")),
                Operator::IsNotDistinctFrom,
                ident(format!("r_k{i}")),
            )
        })
        .collect::<Vec<_>>();
    Ok(rows.join_on(keys.select(renamed)?, JoinType::LeftAnti, on)?)
}

async fn duplicates(
    plan: &ComparePlan,
    side: Side,
    repeated: DataFrame,
    samples: usize,
) -> Result<Option<DuplicateKeys>, DiffError> {
    let mut out = DuplicateKeys {
        table: side,
        keys: 0,
        rows: 0,
        samples: vec![],
    };
    let nkeys = plan.keys.len();
    for batch in repeated.collect().await? {
        let rows = i64_column(&batch, nkeys)?;
        let keys = formatters(&batch, 0..nkeys)?;
        for i in 0..batch.num_rows() {
            out.keys += 1;
            out.rows += rows.value(i) as u64;
            if out.samples.len() < samples {
                out.samples.push(DuplicateSample {
                    key: key_values(plan, &keys, i),
                    rows: rows.value(i) as u64,
                });
            }
        }
    }
    // Sampled keys in a stable order, whatever order the aggregation produced.
    out.samples.sort_by(|x, y| key_order(&x.key, &y.key));
    Ok((out.keys > 0).then_some(out))
}

/// Counts and samples the differing rows as they stream out of the join.
struct Classifier<'p> {
    plan: &'p ComparePlan,
    samples: usize,
    only_a: MissingRows,
    only_b: MissingRows,
    changed: u64,
    columns: Vec<(u64, Vec<ValueSample>)>,
}

impl<'p> Classifier<'p> {
    fn new(plan: &'p ComparePlan, samples: usize) -> Classifier<'p> {
        Classifier {
            plan,
            samples,
            only_a: MissingRows::default(),
            only_b: MissingRows::default(),
            changed: 0,
            columns: vec![(0, vec![]); plan.values.len()],
        }
    }

    /// Batch layout: in_a, in_b, k0.., then per compared column ne_i, v_i, b_v_i.
    fn add(&mut self, batch: &RecordBatch) -> Result<(), DiffError> {
        let nkeys = self.plan.keys.len();
        let in_a = bool_column(batch, 0)?;
        let in_b = bool_column(batch, 1)?;
        let keys = formatters(batch, 2..2 + nkeys)?;
        let base = 2 + nkeys;
        let mut flags = vec![];
        for c in 0..self.plan.values.len() {
            let at = base + 3 * c;
            flags.push((bool_column(batch, at)?, formatters(batch, at + 1..at + 3)?));
        }
        for i in 0..batch.num_rows() {
            let (a, b) = (in_a.value(i), in_b.value(i));
            if a && !b {
                self.only_a.count += 1;
                let key = key_values(self.plan, &keys, i);
                keep_first(&mut self.only_a.samples, key, self.samples, |k| k);
            } else if b && !a {
                self.only_b.count += 1;
                let key = key_values(self.plan, &keys, i);
                keep_first(&mut self.only_b.samples, key, self.samples, |k| k);
            } else {
                self.changed += 1;
                for (c, (ne, values)) in flags.iter().enumerate() {
                    if !ne.is_valid(i) || !ne.value(i) {
                        continue;
                    }
                    let (n, samples) = &mut self.columns[c];
                    *n += 1;
                    let sample = ValueSample {
                        key: key_values(self.plan, &keys, i),
                        a: values[0].value(i),
                        b: values[1].value(i),
                    };
                    keep_first(samples, sample, self.samples, |s| &s.key);
                }
            }
        }
        Ok(())
    }

    fn finish(self, out: &mut DiffReport) {
        let mut only_a = self.only_a;
        settle(&mut only_a.samples, self.samples, |k| k);
        let mut only_b = self.only_b;
        settle(&mut only_b.samples, self.samples, |k| k);
        out.only_in_a = only_a;
        out.only_in_b = only_b;
        out.changed = ChangedRows {
            count: self.changed,
            columns: self
                .columns
                .into_iter()
                .zip(&self.plan.values)
                .filter(|((n, _), _)| *n > 0)
                .map(|((count, mut samples), c)| {
                    settle(&mut samples, self.samples, |s| &s.key);
                    ColumnMismatch {
                        column: c.name.clone(),
                        count,
                        samples,
                    }
                })
                .collect(),
        };
    }
}

/// Displays cells of some columns of a batch; NULL is `None`.
struct CellFormatter {
    array: ArrayRef,
}

impl CellFormatter {
    fn value(&self, i: usize) -> Option<String> {
        if self.array.is_null(i) {
            return None;
        }
        let options = FormatOptions::default();
        ArrayFormatter::try_new(self.array.as_ref(), &options)
            .ok()
            .map(|f| f.value(i).to_string())
    }
}

fn formatters(
    batch: &RecordBatch,
    range: std::ops::Range<usize>,
) -> Result<Vec<CellFormatter>, DiffError> {
    range
        .map(|c| {
            if c < batch.num_columns() {
                Ok(CellFormatter {
                    array: batch.column(c).clone(),
                })
            } else {
                Err(internal(format!("column {c} missing from a diff batch")))
            }
        })
        .collect()
}

fn key_values(plan: &ComparePlan, keys: &[CellFormatter], i: usize) -> KeyValues {
    plan.keys
        .iter()
        .zip(keys)
        .map(|(k, f)| (k.name.clone(), f.value(i)))
        .collect()
}

/// Keeps the `n` samples with the lowest keys seen so far (whatever order the join streams rows
/// in, so the report is the same run after run), sorting only now and then.
fn keep_first<T>(samples: &mut Vec<T>, item: T, n: usize, key: impl Fn(&T) -> &KeyValues) {
    if n == 0 {
        return;
    }
    samples.push(item);
    if samples.len() > 4 * n {
        settle(samples, n, key);
    }
}

fn settle<T>(samples: &mut Vec<T>, n: usize, key: impl Fn(&T) -> &KeyValues) {
    samples.sort_by(|x, y| key_order(key(x), key(y)));
    samples.truncate(n);
}

/// Sample order: keys as numbers where they are numbers (so 9 before 10), else as text; NULL
/// first.
fn key_order(x: &KeyValues, y: &KeyValues) -> std::cmp::Ordering {
    for (a, b) in x.values().zip(y.values()) {
        let order = match (a, b) {
            (Some(a), Some(b)) => match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(m), Ok(n)) => m.total_cmp(&n),
                _ => a.cmp(b),
            },
            (a, b) => a.is_some().cmp(&b.is_some()),
        };
        if order.is_ne() {
            return order;
        }
    }
    std::cmp::Ordering::Equal
}

fn internal(message: String) -> DiffError {
    DiffError::Query(DataFusionError::Internal(message))
}

fn typed_column<T: 'static>(batch: &RecordBatch, i: usize) -> Result<&T, DiffError> {
    batch
        .columns()
        .get(i)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            internal(format!(
                "diff batch column {i} has an unexpected type ({:?})",
                batch.columns().get(i).map(|c| c.data_type().clone())
            ))
        })
}

fn u64_column(batch: &RecordBatch, i: usize) -> Result<&UInt64Array, DiffError> {
    typed_column(batch, i)
}

fn i64_column(batch: &RecordBatch, i: usize) -> Result<&Int64Array, DiffError> {
    typed_column(batch, i)
}

fn bool_column(batch: &RecordBatch, i: usize) -> Result<&BooleanArray, DiffError> {
    typed_column(batch, i)
}

/// `sluice_key_hash(..)` / `sluice_row_hash(..)`: a 64-bit hash of the arguments' values per
/// row. Values are encoded with Arrow's row format (injective, NULL-aware) and the bytes hashed
/// with a fixed-seed MurmurHash3-style mix, so equal rows hash equally in both tables and in
/// any batch layout. The optional counter counts rows hashed, for progress.
#[derive(Debug)]
struct RowHash {
    name: &'static str,
    signature: Signature,
    counter: Option<Arc<AtomicU64>>,
}

impl PartialEq for RowHash {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && match (&self.counter, &other.counter) {
                (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Eq for RowHash {}

impl Hash for RowHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.counter.as_ref().map(Arc::as_ptr).hash(state);
    }
}

impl RowHash {
    fn udf(name: &'static str, counter: Option<Arc<AtomicU64>>) -> ScalarUDF {
        ScalarUDF::from(RowHash {
            name,
            signature: Signature::variadic_any(Volatility::Immutable),
            counter,
        })
    }
}

impl ScalarUDFImpl for RowHash {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let rows = args.number_rows;
        if arrays.is_empty() {
            return Ok(ColumnarValue::Scalar(ScalarValue::UInt64(Some(SEED))));
        }
        let fields = arrays
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let encoded = converter.convert_columns(&arrays)?;
        let hashes =
            UInt64Array::from_iter_values((0..rows).map(|i| hash_bytes(encoded.row(i).as_ref())));
        if let Some(c) = &self.counter {
            c.fetch_add(rows as u64, Ordering::Relaxed);
        }
        Ok(ColumnarValue::Array(Arc::new(hashes)))
    }
}

const SEED: u64 = 0x5EED_51C3_D1FF_0001;

/// MurmurHash3's x64 mixing over 8-byte words, then its 64-bit finaliser. Fixed seed: the hash
/// must agree between the two tables; it never leaves the process.
fn hash_bytes(bytes: &[u8]) -> u64 {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let mut h = SEED;
    let mut words = bytes.chunks_exact(8);
    let mix = |h: u64, w: u64| {
        let k = w.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        (h ^ k)
            .rotate_left(27)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729)
    };
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        h = mix(h, u64::from_le_bytes(word));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut word = [0u8; 8];
        word[..tail.len()].copy_from_slice(tail);
        h = mix(h, u64::from_le_bytes(word));
    }
    fmix64(h ^ bytes.len() as u64)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_byte_and_the_length() {
        let base = hash_bytes(b"sluice diff, sixteen+");
        for i in 0..21 {
            let mut changed = b"sluice diff, sixteen+".to_vec();
            changed[i] ^= 1;
            assert_ne!(hash_bytes(&changed), base, "byte {i}");
        }
        assert_ne!(hash_bytes(b"ab"), hash_bytes(b"ab\0"));
    }

    #[test]
    fn buckets_differ_on_count_checksum_presence_and_repeats() {
        let s = |rows, checksum, d| BucketSum {
            rows,
            checksum,
            distinct_keys: d,
        };
        let a = HashMap::from([
            (0, s(2, 7, Some(2))),
            (1, s(2, 7, Some(2))),
            (2, s(3, 9, Some(3))),
            (3, s(2, 5, Some(1))),
        ]);
        let b = HashMap::from([
            (0, s(2, 7, Some(2))),
            (1, s(2, 8, Some(2))),
            (3, s(2, 5, Some(1))),
            (4, s(1, 1, Some(1))),
        ]);
        assert_eq!(differing_buckets(&a, &b), vec![1, 2, 3, 4]);
    }
}
