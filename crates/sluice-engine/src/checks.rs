//! Data quality checks, run on every batch after the transform and before the commit
//! (write-audit-publish).
//!
//! ```yaml
//! checks:
//!   - not_null: { columns: [order_id, email] }
//!   - unique: { columns: [order_id] }          # scope: table (default) | batch
//!   - range: { column: amount, min: 0, severity: warn }
//!   - accepted_values: { column: status, values: [paid, shipped, refunded] }
//!   - regex: { column: email, pattern: '^[^@]+@[^@]+$', action: drop }
//!   - expression: { name: sane_total, expr: "amount < 100000", error_if: "> 5%", warn_if: "> 0" }
//!   - sql: { name: no_future, query: "SELECT * FROM output WHERE created_at > now()" }
//!   - row_count: { min: 1 }
//!   - schema: { required: { order_id: int64 }, forbidden: [ssn] }
//!   - freshness: { column: created_at, max_age: 30d }
//!   - relationships: { column: customer_id, to: { delta: tables/customers, column: id } }
//! ```
//!
//! Every check has `severity` (`error` | `warn`, default error), optional `warn_if` /
//! `error_if` thresholds (`"> 10"` rows or `"> 5%"` of the rows considered; default: any failing
//! row), an optional `where` SQL filter choosing the rows considered, and a `name` (default: the
//! check kind and its columns). Row-level checks also take an `action`, as Databricks'
//! expectations do: `quarantine` (default: an error-level failure holds the whole batch),
//! `drop` (failing rows are removed and stored in the quarantine table; the rest is published;
//! an error-level failure still holds the batch) or `warn` (record only, never hold).
//!
//! Checks are planned against the transform's output when the pipeline compiles, so a column
//! that does not exist is a spec error at `sluice validate`. They run in DataFusion over the
//! batch's Arrow data: one aggregate scan counts what every check needs (rows considered,
//! failing rows of the predicate checks, freshness maxima, NULL rates); failing rows are read
//! again only for a check that fails and needs them (an error, or a `drop`).
//!
//! NULL handling: `range`, `accepted_values`, `regex`, `relationships` and `unique` ignore NULLs
//! (use `not_null` for those); an `expression` that evaluates to NULL fails.
//!
//! `unique` with `scope: table` also fails rows whose key the sink table already holds; it
//! reads the table through delta-rs with the batch's key range as a filter, so files whose
//! statistics lie outside it are skipped. Fresh keys need no query at all: a single-column key
//! without `where` whose values are distinct and whose range no file's statistics overlap is
//! clean (see `unique_proven`).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::{Deserialize, Serialize};

use crate::first_line;
use crate::transform::{QueryError, read_only_query, sandbox};

/// How bad a failure is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Error,
    Warn,
}

/// What a failing row-level check does to the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Warn,
    Drop,
    Quarantine,
}

/// "fails when more than N rows (or N percent of the rows considered) fail".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ThresholdRepr", into = "String")]
pub struct Threshold {
    pub value: f64,
    pub percent: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ThresholdRepr {
    Number(f64),
    Text(String),
}

impl TryFrom<ThresholdRepr> for Threshold {
    type Error = String;
    fn try_from(r: ThresholdRepr) -> Result<Self, String> {
        match r {
            ThresholdRepr::Number(value) => Ok(Threshold {
                value,
                percent: false,
            }),
            ThresholdRepr::Text(s) => {
                let t = s.trim().trim_start_matches('>').trim();
                let (num, percent) = match t.strip_suffix('%') {
                    Some(n) => (n.trim(), true),
                    None => (t, false),
                };
                let value: f64 = num.parse().map_err(|_| {
                    format!("threshold {s:?} is not valid: write a count like \"> 10\" or a share like \"> 5%\"")
                })?;
                if value < 0.0 || (percent && value > 100.0) {
                    return Err(format!("threshold {s:?} is out of range"));
                }
                Ok(Threshold { value, percent })
            }
        }
    }
}

impl From<Threshold> for String {
    fn from(t: Threshold) -> String {
        if t.percent {
            format!("> {}%", t.value)
        } else {
            format!("> {}", t.value)
        }
    }
}

impl Threshold {
    const ANY: Threshold = Threshold {
        value: 0.0,
        percent: false,
    };

    pub(crate) fn exceeded(&self, failing: u64, considered: u64) -> bool {
        if self.percent {
            considered > 0 && (failing as f64) * 100.0 / (considered as f64) > self.value
        } else {
            failing as f64 > self.value
        }
    }
}

macro_rules! check_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
            /// Name in reports (default: kind and columns).
            #[serde(default)]
            pub name: Option<String>,
            #[serde(default)]
            pub severity: Severity,
            #[serde(default)]
            pub action: Option<Action>,
            #[serde(default)]
            pub warn_if: Option<Threshold>,
            #[serde(default)]
            pub error_if: Option<Threshold>,
            /// SQL predicate choosing the rows the check considers.
            #[serde(default, rename = "where")]
            pub filter: Option<String>,
        }
    };
}

check_struct!(ColumnsCheck { columns: Vec<String> });
check_struct!(UniqueCheck {
    columns: Vec<String>,
    /// `table` (default): a key must be new to the sink table too, not only within the batch.
    #[serde(default)]
    scope: UniqueScope,
});

/// Where a `unique` key must be unique.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UniqueScope {
    /// Within the batch only.
    Batch,
    /// Within the batch and against every row the sink table already holds.
    #[default]
    Table,
}
check_struct!(AcceptedValuesCheck { column: String, values: Vec<serde_json::Value> });
check_struct!(RangeCheck {
    column: String,
    #[serde(default)]
    min: Option<serde_json::Value>,
    #[serde(default)]
    max: Option<serde_json::Value>,
    /// Whether min and max themselves pass (default true).
    #[serde(default = "yes")]
    inclusive: bool,
});
check_struct!(RegexCheck {
    column: String,
    pattern: String
});
check_struct!(ExpressionCheck { expr: String });
check_struct!(
    /// A query over `output` returning the failing rows.
    SqlCheck { query: String }
);
check_struct!(RowCountCheck {
    #[serde(default)]
    min: Option<u64>,
    #[serde(default)]
    max: Option<u64>,
    /// Volume anomaly: the batch's rows must be within this many percent of the median of the
    /// last `last` published batches of the pipeline (judged once 3 batches are known).
    #[serde(default)]
    within_pct_of_median: Option<f64>,
    #[serde(default = "ten")]
    last: usize,
});
check_struct!(SchemaCheck {
    #[serde(default)]
    required: indexmap::IndexMap<String, String>,
    #[serde(default)]
    forbidden: Vec<String>,
});
check_struct!(FreshnessCheck {
    column: String,
    #[serde(with = "humantime_serde")]
    max_age: Duration,
});
check_struct!(RelationshipsCheck {
    column: String,
    to: Reference
});

fn yes() -> bool {
    true
}

fn ten() -> usize {
    10
}

/// Batches of history a relative `row_count` needs before it judges anything.
const MIN_HISTORY: usize = 3;

/// Another table whose column must hold every value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Delta table location, relative to the spec's folder or a URL.
    pub delta: String,
    pub column: String,
}

/// One declared check: a one-key mapping naming its kind (`- not_null: {...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "CheckRepr", into = "CheckRepr")]
pub enum CheckSpec {
    NotNull(ColumnsCheck),
    Unique(UniqueCheck),
    AcceptedValues(AcceptedValuesCheck),
    Range(RangeCheck),
    Regex(RegexCheck),
    Expression(ExpressionCheck),
    Sql(SqlCheck),
    RowCount(RowCountCheck),
    Schema(SchemaCheck),
    Freshness(FreshnessCheck),
    Relationships(RelationshipsCheck),
}

/// The YAML shape of a check. yaml_serde reads externally tagged enums only from YAML tags, so
/// the one-key mapping is a struct of optional kinds; unknown kinds are refused by name with
/// the list of known ones, and nested errors keep their line and column.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_null: Option<ColumnsCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unique: Option<UniqueCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accepted_values: Option<AcceptedValuesCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    range: Option<RangeCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    regex: Option<RegexCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expression: Option<ExpressionCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sql: Option<SqlCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    row_count: Option<RowCountCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<SchemaCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    freshness: Option<FreshnessCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relationships: Option<RelationshipsCheck>,
}

impl TryFrom<CheckRepr> for CheckSpec {
    type Error = String;
    fn try_from(r: CheckRepr) -> Result<Self, String> {
        let mut found = Vec::new();
        if let Some(c) = r.not_null {
            found.push(CheckSpec::NotNull(c));
        }
        if let Some(c) = r.unique {
            found.push(CheckSpec::Unique(c));
        }
        if let Some(c) = r.accepted_values {
            found.push(CheckSpec::AcceptedValues(c));
        }
        if let Some(c) = r.range {
            found.push(CheckSpec::Range(c));
        }
        if let Some(c) = r.regex {
            found.push(CheckSpec::Regex(c));
        }
        if let Some(c) = r.expression {
            found.push(CheckSpec::Expression(c));
        }
        if let Some(c) = r.sql {
            found.push(CheckSpec::Sql(c));
        }
        if let Some(c) = r.row_count {
            found.push(CheckSpec::RowCount(c));
        }
        if let Some(c) = r.schema {
            found.push(CheckSpec::Schema(c));
        }
        if let Some(c) = r.freshness {
            found.push(CheckSpec::Freshness(c));
        }
        if let Some(c) = r.relationships {
            found.push(CheckSpec::Relationships(c));
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err("a check names its kind: not_null, unique, accepted_values, range, regex, expression, sql, row_count, schema, freshness or relationships".into()),
            _ => Err("one check per list item: start each check with its own `- `".into()),
        }
    }
}

impl From<CheckSpec> for CheckRepr {
    fn from(c: CheckSpec) -> CheckRepr {
        let mut r = CheckRepr::default();
        match c {
            CheckSpec::NotNull(c) => r.not_null = Some(c),
            CheckSpec::Unique(c) => r.unique = Some(c),
            CheckSpec::AcceptedValues(c) => r.accepted_values = Some(c),
            CheckSpec::Range(c) => r.range = Some(c),
            CheckSpec::Regex(c) => r.regex = Some(c),
            CheckSpec::Expression(c) => r.expression = Some(c),
            CheckSpec::Sql(c) => r.sql = Some(c),
            CheckSpec::RowCount(c) => r.row_count = Some(c),
            CheckSpec::Schema(c) => r.schema = Some(c),
            CheckSpec::Freshness(c) => r.freshness = Some(c),
            CheckSpec::Relationships(c) => r.relationships = Some(c),
        }
        r
    }
}

/// The fields every check shares.
struct Common<'a> {
    name: &'a Option<String>,
    severity: Severity,
    action: Option<Action>,
    warn_if: Option<Threshold>,
    error_if: Option<Threshold>,
    filter: &'a Option<String>,
}

macro_rules! common {
    ($c:expr) => {
        Common {
            name: &$c.name,
            severity: $c.severity,
            action: $c.action,
            warn_if: $c.warn_if,
            error_if: $c.error_if,
            filter: &$c.filter,
        }
    };
}

impl CheckSpec {
    fn common(&self) -> Common<'_> {
        match self {
            CheckSpec::NotNull(c) => common!(c),
            CheckSpec::Unique(c) => common!(c),
            CheckSpec::AcceptedValues(c) => common!(c),
            CheckSpec::Range(c) => common!(c),
            CheckSpec::Regex(c) => common!(c),
            CheckSpec::Expression(c) => common!(c),
            CheckSpec::Sql(c) => common!(c),
            CheckSpec::RowCount(c) => common!(c),
            CheckSpec::Schema(c) => common!(c),
            CheckSpec::Freshness(c) => common!(c),
            CheckSpec::Relationships(c) => common!(c),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            CheckSpec::NotNull(_) => "not_null",
            CheckSpec::Unique(_) => "unique",
            CheckSpec::AcceptedValues(_) => "accepted_values",
            CheckSpec::Range(_) => "range",
            CheckSpec::Regex(_) => "regex",
            CheckSpec::Expression(_) => "expression",
            CheckSpec::Sql(_) => "sql",
            CheckSpec::RowCount(_) => "row_count",
            CheckSpec::Schema(_) => "schema",
            CheckSpec::Freshness(_) => "freshness",
            CheckSpec::Relationships(_) => "relationships",
        }
    }

    /// The name used in reports.
    pub fn name(&self) -> String {
        if let Some(n) = self.common().name {
            return n.clone();
        }
        let what = match self {
            CheckSpec::NotNull(c) => c.columns.join(","),
            CheckSpec::Unique(c) => c.columns.join(","),
            CheckSpec::AcceptedValues(c) => c.column.clone(),
            CheckSpec::Range(c) => c.column.clone(),
            CheckSpec::Regex(c) => c.column.clone(),
            CheckSpec::Freshness(c) => c.column.clone(),
            CheckSpec::Relationships(c) => c.column.clone(),
            CheckSpec::Expression(c) => c.expr.clone(),
            CheckSpec::Sql(_) | CheckSpec::RowCount(_) | CheckSpec::Schema(_) => String::new(),
        };
        if what.is_empty() {
            self.kind().to_string()
        } else {
            format!("{}({what})", self.kind())
        }
    }

    /// Row-level checks can drop rows; batch-level ones (row_count, schema, freshness, sql)
    /// can only hold or warn.
    fn row_level(&self) -> bool {
        matches!(
            self,
            CheckSpec::NotNull(_)
                | CheckSpec::Unique(_)
                | CheckSpec::AcceptedValues(_)
                | CheckSpec::Range(_)
                | CheckSpec::Regex(_)
                | CheckSpec::Expression(_)
                | CheckSpec::Relationships(_)
        )
    }

    fn action(&self) -> Action {
        let c = self.common();
        match c.action {
            Some(a) => a,
            None if c.severity == Severity::Warn => Action::Warn,
            None => Action::Quarantine,
        }
    }

    /// Pass, warn or error for `failing` of `considered` rows.
    fn level(&self, failing: u64, considered: u64) -> Level {
        let c = self.common();
        if self.action() == Action::Warn || c.severity == Severity::Warn {
            let warn = c.warn_if.or(c.error_if).unwrap_or(Threshold::ANY);
            return if warn.exceeded(failing, considered) {
                Level::Warn
            } else {
                Level::Pass
            };
        }
        if c.error_if
            .unwrap_or(Threshold::ANY)
            .exceeded(failing, considered)
        {
            Level::Error
        } else if c.warn_if.is_some_and(|w| w.exceeded(failing, considered)) {
            Level::Warn
        } else {
            Level::Pass
        }
    }

    /// SQL predicate true for a failing row (NULL counts as not failing unless noted).
    fn failing_predicate(&self) -> Option<String> {
        Some(match self {
            CheckSpec::NotNull(c) => c
                .columns
                .iter()
                .map(|col| format!("{} IS NULL", ident(col)))
                .collect::<Vec<_>>()
                .join(" OR "),
            CheckSpec::AcceptedValues(c) => format!(
                "{col} IS NOT NULL AND {col} NOT IN ({})",
                c.values.iter().map(literal).collect::<Vec<_>>().join(", "),
                col = ident(&c.column)
            ),
            CheckSpec::Range(c) => {
                let col = ident(&c.column);
                let (lo, hi) = if c.inclusive {
                    ("<", ">")
                } else {
                    ("<=", ">=")
                };
                let mut parts = Vec::new();
                if let Some(min) = &c.min {
                    parts.push(format!("{col} {lo} {}", literal(min)));
                }
                if let Some(max) = &c.max {
                    parts.push(format!("{col} {hi} {}", literal(max)));
                }
                if parts.is_empty() {
                    "false".into()
                } else {
                    format!("{col} IS NOT NULL AND ({})", parts.join(" OR "))
                }
            }
            CheckSpec::Regex(c) => format!(
                "{col} IS NOT NULL AND NOT regexp_like({col}, {})",
                literal(&serde_json::Value::String(c.pattern.clone())),
                col = ident(&c.column)
            ),
            CheckSpec::Expression(c) => format!("NOT coalesce(({}), false)", c.expr),
            _ => return None,
        })
    }
}

const REF_TABLE: &str = "__sluice_ref";

/// Quotes an identifier for DataFusion SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        serde_json::Value::Null => "NULL".into(),
        other => other.to_string(),
    }
}

/// Outcome of one check on one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Pass,
    Warn,
    Error,
}

/// The measurement of one check on one batch: stored per pipeline version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub kind: String,
    pub level: Level,
    /// Rows considered (after `where`); for batch-level checks, the batch's rows.
    pub considered: u64,
    pub failing: u64,
    /// Rows removed from the published batch by a `drop` action.
    pub dropped: u64,
    pub detail: String,
}

/// What the checks decided for a batch.
#[derive(Debug, Clone)]
pub struct Audit {
    pub results: Vec<CheckResult>,
    /// The rows to publish (all rows, less dropped ones).
    pub publish: Vec<RecordBatch>,
    /// Rows that failed an error-level check or were dropped, per check, to store in the
    /// quarantine table.
    pub failing_rows: Vec<(String, String, RecordBatch)>,
    /// Set when an error-level check fails: the batch must not be published.
    pub hold: Option<String>,
    /// Null rates of the columns the checks read, one measurement per column (kind
    /// `null_rate`, level pass, `failing` = NULLs of `considered` rows): stored with the
    /// check results so trends and the dashboard can read them. Never holds a batch.
    pub profile: Vec<CheckResult>,
}

/// A pipeline's checks, compiled against its output schema.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    specs: Vec<CheckSpec>,
    /// Resolved reference tables for `relationships`, by check index.
    references: Vec<Option<url::Url>>,
    /// The sink table, for `unique` checks with `scope: table`.
    sink: Option<Arc<crate::sink::DeltaSink>>,
}

impl Checks {
    /// Validates checks against the output schema by planning them. `base_dir` resolves
    /// relative reference tables. Errors name the check (index, name) and the reason.
    pub async fn compile(
        specs: &[CheckSpec],
        output: SchemaRef,
        base_dir: &std::path::Path,
    ) -> Result<Checks, (usize, String)> {
        let mut references = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let fail = |m: String| (i, format!("check {}: {m}", spec.name()));
            let c = spec.common();
            if c.action == Some(Action::Drop) && !spec.row_level() {
                return Err(fail(format!(
                    "action `drop` needs a row-level check; {} checks the batch as a whole: use quarantine or warn",
                    spec.kind()
                )));
            }
            let columns: Vec<&String> = match spec {
                CheckSpec::NotNull(ColumnsCheck { columns, .. })
                | CheckSpec::Unique(UniqueCheck { columns, .. }) => {
                    if columns.is_empty() {
                        return Err(fail("list at least one column".into()));
                    }
                    columns.iter().collect()
                }
                CheckSpec::AcceptedValues(c) => vec![&c.column],
                CheckSpec::Range(c) => vec![&c.column],
                CheckSpec::Regex(c) => {
                    regex_syntax_ok(&c.pattern).map_err(fail)?;
                    vec![&c.column]
                }
                CheckSpec::Freshness(c) => vec![&c.column],
                CheckSpec::Relationships(c) => vec![&c.column],
                CheckSpec::Schema(c) => {
                    for (_, ty) in &c.required {
                        ty.parse::<sluice_schema::FieldType>()
                            .map_err(|e| fail(e.to_string()))?;
                    }
                    vec![]
                }
                _ => vec![],
            };
            for col in columns {
                if output.index_of(col).is_err() {
                    return Err(fail(format!(
                        "column {col:?} is not in the transform's output ({})",
                        output
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            if let CheckSpec::Regex(c) = spec
                && !matches!(
                    output
                        .field_with_name(&c.column)
                        .map(|f| f.data_type().clone()),
                    Ok(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
                )
            {
                return Err(fail(format!(
                    "regex needs a text column; {:?} is not text: cast it in the transform (CAST(x AS VARCHAR) AS x_text) and check that",
                    c.column
                )));
            }
            if let CheckSpec::Freshness(c) = spec {
                let t = output
                    .field_with_name(&c.column)
                    .map(|f| f.data_type().clone());
                if !matches!(
                    t,
                    Ok(DataType::Timestamp(..) | DataType::Date32 | DataType::Date64)
                ) {
                    return Err(fail(format!(
                        "freshness needs a timestamp or date column; {:?} is {:?}",
                        c.column,
                        t.ok()
                    )));
                }
            }
            let reference = match spec {
                CheckSpec::Relationships(c) => Some(
                    crate::sink::table_url(&c.to.delta, base_dir)
                        .map_err(|e| fail(e.to_string()))?,
                ),
                _ => None,
            };
            references.push(reference);
        }
        let checks = Checks {
            specs: specs.to_vec(),
            references,
            sink: None,
        };
        // Plan every query against an empty batch: bad SQL, bad `where`, bad types surface now,
        // and so does SQL that is not one read-only query. Each check is planned against its
        // own catalog: `output`, and for `relationships` its reference table.
        let empty = RecordBatch::new_empty(output.clone());
        for (i, spec) in checks.specs.iter().enumerate() {
            let ctx = checks.context(vec![empty.clone()], output.clone())?;
            if let CheckSpec::Relationships(c) = spec {
                // The reference table may not exist yet (its column is checked at run): plan
                // against an empty stand-in holding the referenced column.
                register_reference_stand_in(&ctx, &output, c)
                    .map_err(|e| (i, format!("check {}: {}", spec.name(), first_line(&e))))?;
            }
            for sql in checks.queries(i) {
                // Planned down to the physical plan: what DataFusion cannot run (a subquery
                // inside an expression) is refused here, not on every batch.
                let planned = match read_only_query(&ctx, &sql).await {
                    Ok(df) => df
                        .create_physical_plan()
                        .await
                        .map(|_| ())
                        .map_err(QueryError::Plan),
                    Err(e) => Err(e),
                };
                if let Err(e) = planned {
                    let why = match e {
                        QueryError::NotReadOnly(why) => {
                            format!("must be one read-only query over `output`: {why}")
                        }
                        QueryError::Plan(e) if e.to_string().contains("Subquery") => {
                            "a subquery cannot run inside an `expr` or a `where` filter; write the check as a `sql` query over `output`".into()
                        }
                        QueryError::Plan(e) => first_line(&e),
                    };
                    return Err((i, format!("check {}: {why}", spec.name())));
                }
            }
        }
        Ok(checks)
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The table the batches are published to: `unique` checks with `scope: table` compare
    /// against it.
    pub fn with_sink(mut self, sink: Arc<crate::sink::DeltaSink>) -> Checks {
        self.sink = Some(sink);
        self
    }

    /// How many recent batch row counts the checks want (0: none).
    pub fn history_wanted(&self) -> usize {
        self.specs
            .iter()
            .filter_map(|s| match s {
                CheckSpec::RowCount(c) if c.within_pct_of_median.is_some() => Some(c.last),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// The output columns the checks read, once each, in spec order.
    fn checked_columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for spec in &self.specs {
            let cols: Vec<&str> = match spec {
                CheckSpec::NotNull(c) => c.columns.iter().map(String::as_str).collect(),
                CheckSpec::Unique(c) => c.columns.iter().map(String::as_str).collect(),
                CheckSpec::AcceptedValues(c) => vec![&c.column],
                CheckSpec::Range(c) => vec![&c.column],
                CheckSpec::Regex(c) => vec![&c.column],
                CheckSpec::Freshness(c) => vec![&c.column],
                CheckSpec::Relationships(c) => vec![&c.column],
                _ => vec![],
            };
            for c in cols {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// One aggregate scan of the batch for what every check needs counted: the rows each
    /// check considers (its `where`), the failing rows of every predicate check (not_null,
    /// accepted_values, range, regex, expression), the newest value of each freshness column
    /// and the NULLs of every checked column. A passing batch, the common case, is read once;
    /// failing rows are fetched only for checks that fail.
    async fn scan(
        &self,
        ctx: &SessionContext,
        schema: &SchemaRef,
    ) -> Result<Scan, DataFusionError> {
        let mut select = vec!["count(*)".to_string()];
        let mut slots = Vec::with_capacity(self.specs.len());
        for spec in &self.specs {
            let filter = spec
                .common()
                .filter
                .clone()
                .unwrap_or_else(|| "true".into());
            select.push(format!(
                "count(*) FILTER (WHERE coalesce(({filter}), false))"
            ));
            let considered = select.len() - 1;
            let failing = spec.failing_predicate().map(|pred| {
                select.push(format!(
                    "count(*) FILTER (WHERE coalesce(({filter}) AND ({pred}), false))"
                ));
                select.len() - 1
            });
            let newest = match spec {
                CheckSpec::Freshness(c) => {
                    select.push(format!(
                        "max({}) FILTER (WHERE coalesce(({filter}), false))",
                        ident(&c.column)
                    ));
                    Some(select.len() - 1)
                }
                _ => None,
            };
            slots.push((considered, failing, newest));
        }
        let columns: Vec<&str> = self
            .checked_columns()
            .into_iter()
            .filter(|c| schema.index_of(c).is_ok())
            .collect();
        let first_null = select.len();
        select.extend(columns.iter().map(|c| format!("count({})", ident(c))));
        let select: Vec<String> = select
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e} AS __sluice_a{i}"))
            .collect();
        let rows = read_only_query(ctx, &format!("SELECT {} FROM output", select.join(", ")))
            .await?
            .collect()
            .await?;
        let b = rows
            .into_iter()
            .find(|b| b.num_rows() == 1)
            .ok_or_else(|| DataFusionError::Internal("the check scan returned no row".into()))?;
        let int = |i: usize| -> u64 {
            b.column(i)
                .as_primitive_opt::<Int64Type>()
                .map(|a| a.value(0).max(0) as u64)
                .unwrap_or(0)
        };
        let total = int(0);
        let mut scan = Scan::default();
        for (considered, failing, newest) in slots {
            scan.considered.push(int(considered));
            scan.failing.push(failing.map(int));
            scan.newest.push(match newest {
                Some(i) => millis_at(b.column(i))?,
                None => None,
            });
        }
        scan.profile = columns
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let nulls = total - int(first_null + k).min(total);
                CheckResult {
                    name: format!("null_rate({c})"),
                    kind: "null_rate".into(),
                    level: Level::Pass,
                    considered: total,
                    failing: nulls,
                    dropped: 0,
                    detail: if total == 0 {
                        "no rows".into()
                    } else {
                        format!(
                            "{nulls} of {total} NULL ({:.2}%)",
                            nulls as f64 * 100.0 / total as f64
                        )
                    },
                }
            })
            .collect();
        Ok(scan)
    }

    pub fn specs(&self) -> &[CheckSpec] {
        &self.specs
    }

    fn context(
        &self,
        batches: Vec<RecordBatch>,
        schema: SchemaRef,
    ) -> Result<SessionContext, (usize, String)> {
        let batches = if batches.is_empty() {
            vec![RecordBatch::new_empty(schema)]
        } else {
            batches
        };
        let (batches, schema) = numbered(&batches).map_err(|e| (0, e.to_string()))?;
        // The aggregate scan is per-row work (predicates, regular expressions, counts): a large
        // batch is cut into one slice per core, so a worker's checks do not wait on one core
        // while the other idles. Small batches stay whole (a split costs more than it saves).
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let parts = if rows >= SPLIT_ROWS {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_PARTS))
        } else {
            1
        };
        let partitions = split_rows(batches, parts);
        let ctx = sandbox(SessionConfig::new().with_target_partitions(partitions.len()));
        let table = MemTable::try_new(schema, partitions).map_err(|e| (0, e.to_string()))?;
        ctx.register_table("output", Arc::new(table))
            .map_err(|e| (0, e.to_string()))?;
        Ok(ctx)
    }

    /// The queries a check runs (used for planning at compile time).
    fn queries(&self, i: usize) -> Vec<String> {
        let spec = &self.specs[i];
        let filter = spec
            .common()
            .filter
            .clone()
            .unwrap_or_else(|| "true".into());
        let mut out = vec![format!("SELECT count(*) FROM output WHERE {filter}")];
        // The shape of the check's part of the aggregate scan (see `scan`).
        let failing = spec
            .failing_predicate()
            .map(|pred| {
                format!(", count(*) FILTER (WHERE coalesce(({filter}) AND ({pred}), false))")
            })
            .unwrap_or_default();
        out.push(format!(
            "SELECT count(*) FILTER (WHERE coalesce(({filter}), false)){failing} FROM output"
        ));
        if let Some(sql) = spec.failing_rows_sql(&filter) {
            out.push(sql);
        }
        match spec {
            CheckSpec::Sql(c) => out.push(c.query.clone()),
            CheckSpec::Freshness(c) => out.push(format!(
                "SELECT max({}) FROM output WHERE {filter}",
                ident(&c.column)
            )),
            _ => {}
        }
        out
    }

    /// Runs every check on the transform's output.
    ///
    /// `recent_rows` are the row counts of the pipeline's latest published batches, newest
    /// first (only relative `row_count` checks read them; see [`Checks::history_wanted`]).
    pub async fn audit(
        &self,
        batches: Vec<RecordBatch>,
        schema: SchemaRef,
        recent_rows: &[u64],
    ) -> Result<Audit, DataFusionError> {
        let mut audit = Audit {
            results: Vec::new(),
            publish: batches.clone(),
            failing_rows: Vec::new(),
            hold: None,
            profile: Vec::new(),
        };
        if self.specs.is_empty() {
            return Ok(audit);
        }
        let ctx = self
            .context(batches, schema.clone())
            .map_err(|(_, e)| DataFusionError::Plan(e))?;
        let scan = self.scan(&ctx, &schema).await?;
        audit.profile = scan.profile;
        let mut drop_rows: std::collections::HashSet<i64> = std::collections::HashSet::new();
        for (i, spec) in self.specs.iter().enumerate() {
            let filter = spec
                .common()
                .filter
                .clone()
                .unwrap_or_else(|| "true".into());
            let considered = scan.considered[i];
            let unique_proven = match spec {
                CheckSpec::Unique(c) if c.filter.is_none() => {
                    let sink = self
                        .sink
                        .as_deref()
                        .filter(|_| c.scope == UniqueScope::Table);
                    unique_proven(&audit.publish, c, sink).await?
                }
                _ => false,
            };
            let (failing, detail, rows) = match spec {
                CheckSpec::Unique(_) if unique_proven => {
                    (0, format!("0 of {considered} row(s) fail"), None)
                }
                CheckSpec::RowCount(c) => {
                    let low = c.min.is_some_and(|m| considered < m);
                    let high = c.max.is_some_and(|m| considered > m);
                    let mut detail = format!(
                        "{considered} rows; expected {}..{}",
                        c.min.map(|m| m.to_string()).unwrap_or_default(),
                        c.max.map(|m| m.to_string()).unwrap_or_default()
                    );
                    let mut anomaly = false;
                    if let Some(pct) = c.within_pct_of_median {
                        let recent: Vec<u64> = recent_rows.iter().take(c.last).copied().collect();
                        match median(&recent) {
                            Some(m) if recent.len() >= MIN_HISTORY => {
                                let off = if m > 0.0 {
                                    (considered as f64 - m).abs() * 100.0 / m
                                } else if considered == 0 {
                                    0.0
                                } else {
                                    f64::INFINITY
                                };
                                anomaly = off > pct;
                                detail.push_str(&format!(
                                    "; {off:.0}% from the median {m:.0} of the last {} batches (allowed {pct}%)",
                                    recent.len()
                                ));
                            }
                            _ => detail.push_str(&format!(
                                "; {} of {MIN_HISTORY} batches of history needed to judge volume",
                                recent.len()
                            )),
                        }
                    }
                    (u64::from(low || high || anomaly), detail, None)
                }
                CheckSpec::Schema(c) => {
                    let mut problems = Vec::new();
                    for (col, ty) in &c.required {
                        let want = ty
                            .parse::<sluice_schema::FieldType>()
                            .map(|t| t.to_arrow())
                            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
                        match schema.field_with_name(col) {
                            Err(_) => problems.push(format!("missing column {col:?}")),
                            Ok(f) if f.data_type() != &want => problems
                                .push(format!("column {col:?} is {} not {want}", f.data_type())),
                            Ok(_) => {}
                        }
                    }
                    for col in &c.forbidden {
                        if schema.index_of(col).is_ok() {
                            problems.push(format!("forbidden column {col:?} is present"));
                        }
                    }
                    (problems.len() as u64, problems.join("; "), None)
                }
                CheckSpec::Freshness(c) => {
                    let newest = scan.newest[i];
                    let limit = sluice_core::now_millis() - c.max_age.as_millis() as i64;
                    match newest {
                        None if considered == 0 => (0, "no rows".into(), None),
                        None => (1, format!("{:?} has no values", c.column), None),
                        Some(ms) => {
                            let age = Duration::from_millis(
                                (sluice_core::now_millis() - ms).max(0) as u64,
                            );
                            let stale = ms < limit;
                            (
                                u64::from(stale),
                                format!(
                                    "newest {} is {} old (max {})",
                                    c.column,
                                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                                    humantime::format_duration(c.max_age)
                                ),
                                None,
                            )
                        }
                    }
                }
                CheckSpec::Sql(c) => {
                    let rows = read_only_query(&ctx, &c.query).await?.collect().await?;
                    let n: usize = rows.iter().map(|b| b.num_rows()).sum();
                    (
                        n as u64,
                        format!("query returned {n} failing row(s)"),
                        Some(rows),
                    )
                }
                // Counted in the scan, and no row is needed (passing, or a warning that drops
                // nothing): no second look at the rows.
                _ if scan.failing[i].is_some_and(|n| {
                    n == 0
                        || (spec.level(n, considered) != Level::Error
                            && spec.action() != Action::Drop)
                }) =>
                {
                    let n = scan.failing[i].unwrap_or(0);
                    (n, format!("{n} of {considered} row(s) fail"), None)
                }
                _ => {
                    if let (CheckSpec::Relationships(c), Some(url)) = (spec, &self.references[i]) {
                        register_reference(&ctx, url, &c.to.column).await?;
                    }
                    let sql = match (spec, &self.sink) {
                        (CheckSpec::Unique(c), sink) => {
                            let existing = match sink {
                                Some(sink) if c.scope == UniqueScope::Table => {
                                    register_existing_keys(&ctx, sink, &c.columns).await?
                                }
                                _ => false,
                            };
                            // The common case, fresh keys: counting is cheaper than joining.
                            if unique_clean(&ctx, c, &filter, existing).await? {
                                None
                            } else {
                                Some(unique_sql(c, &filter, existing))
                            }
                        }
                        _ => spec.failing_rows_sql(&filter),
                    };
                    let sql = sql.unwrap_or_else(|| "SELECT * FROM output WHERE false".into());
                    let rows = read_only_query(&ctx, &sql).await?.collect().await?;
                    let n: usize = rows.iter().map(|b| b.num_rows()).sum();
                    (
                        n as u64,
                        format!("{n} of {considered} row(s) fail"),
                        Some(rows),
                    )
                }
            };
            let level = spec.level(failing, considered);
            let mut dropped = 0;
            if failing > 0
                && spec.action() == Action::Drop
                && let Some(rows) = &rows
            {
                dropped = failing;
                for b in rows {
                    if let Some(ids) = b
                        .column_by_name(ROW_ID)
                        .and_then(|c| c.as_primitive_opt::<Int64Type>())
                    {
                        drop_rows.extend(ids.values().iter().copied());
                    }
                }
            }
            if let Some(rows) = rows
                && failing > 0
                && (level == Level::Error || dropped > 0)
            {
                for b in rows.into_iter().filter(|b| b.num_rows() > 0) {
                    audit
                        .failing_rows
                        .push((spec.name(), detail.clone(), strip_helper_columns(b)));
                }
            }
            if level == Level::Error && audit.hold.is_none() {
                audit.hold = Some(format!("check {} failed: {detail}", spec.name()));
            }
            audit.results.push(CheckResult {
                name: spec.name(),
                kind: spec.kind().to_string(),
                level,
                considered,
                failing,
                dropped,
                detail,
            });
        }
        if audit.hold.is_none() && !drop_rows.is_empty() {
            let mut offset = 0i64;
            let mut publish = Vec::with_capacity(audit.publish.len());
            for b in &audit.publish {
                let keep: arrow::array::BooleanArray = (0..b.num_rows() as i64)
                    .map(|i| Some(!drop_rows.contains(&(offset + i))))
                    .collect();
                offset += b.num_rows() as i64;
                publish.push(arrow::compute::filter_record_batch(b, &keep)?);
            }
            audit.publish = publish;
        }
        Ok(audit)
    }
}

/// The helper column numbering the rows of `output`, so failing rows can be dropped by id.
const ROW_ID: &str = "__sluice_row";

impl CheckSpec {
    /// Rows of `output` considered by the check and failing it, with their row ids.
    fn failing_rows_sql(&self, filter: &str) -> Option<String> {
        if let CheckSpec::Unique(c) = self {
            return Some(unique_sql(c, filter, false));
        }
        if let CheckSpec::Relationships(c) = self {
            // An anti-join: DataFusion cannot run a subquery inside a projection.
            return Some(format!(
                "SELECT o.* FROM output o LEFT JOIN (SELECT DISTINCT {rc} AS __sluice_key FROM {REF_TABLE}) r \
                 ON o.{col} = r.__sluice_key \
                 WHERE coalesce(({filter}) AND o.{col} IS NOT NULL AND r.__sluice_key IS NULL, false)",
                col = ident(&c.column),
                rc = ident(&c.to.column)
            ));
        }
        let pred = self.failing_predicate()?;
        Some(format!(
            "SELECT * FROM (SELECT *, coalesce(({filter}) AND ({pred}), false) AS __sluice_fail FROM output) WHERE __sluice_fail"
        ))
    }
}

/// Rows of `output` whose key (no part of it NULL, as in dbt) appears more than once among
/// the rows considered or, with `existing`, is already in the table (the [`EXISTING_KEYS`]
/// view). Hash joins against the duplicated keys, not a window: no sort of the batch.
fn unique_sql(c: &UniqueCheck, filter: &str, existing: bool) -> String {
    let keys: Vec<String> = c.columns.iter().map(|k| ident(k)).collect();
    let present = |q: &str| {
        keys.iter()
            .map(|k| format!("{q}{k} IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let on = |alias: &str, prefix: &str| {
        keys.iter()
            .enumerate()
            .map(|(i, k)| format!("o.{k} = {alias}.{prefix}{i}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let dup_keys = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} AS __sluice_d{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        "SELECT o.* FROM output o LEFT JOIN (SELECT {dup_keys} FROM output \
         WHERE coalesce(({filter}) AND {}, false) GROUP BY {} HAVING count(*) > 1) d ON {}",
        present(""),
        keys.join(", "),
        on("d", "__sluice_d")
    );
    let mut seen = "d.__sluice_d0 IS NOT NULL".to_string();
    if existing {
        sql.push_str(&format!(
            " LEFT JOIN {EXISTING_KEYS} e ON {}",
            on("e", "__sluice_k")
        ));
        seen.push_str(" OR e.__sluice_k0 IS NOT NULL");
    }
    sql.push_str(&format!(
        " WHERE coalesce(({filter}) AND {} AND ({seen}), false)",
        present("o.")
    ));
    sql
}

/// Whether no key repeats among the rows considered and the table holds none of the batch's
/// key range: two counts, no join.
async fn unique_clean(
    ctx: &SessionContext,
    c: &UniqueCheck,
    filter: &str,
    existing: bool,
) -> Result<bool, DataFusionError> {
    let keys: Vec<String> = c.columns.iter().map(|k| ident(k)).collect();
    let present = keys
        .iter()
        .map(|k| format!("{k} IS NOT NULL"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let dups = count(
        ctx,
        &format!(
            "SELECT count(*) FROM (SELECT {k} FROM output WHERE coalesce(({filter}) AND {present}, false) GROUP BY {k} HAVING count(*) > 1)",
            k = keys.join(", ")
        ),
    )
    .await?;
    if dups > 0 {
        return Ok(false);
    }
    Ok(!existing || count(ctx, &format!("SELECT count(*) FROM {EXISTING_KEYS}")).await? == 0)
}

/// A proof without a query that an unfiltered single-column `unique` check passes, for the
/// common case of fresh keys: the batch's non-NULL keys are all distinct (strictly ascending,
/// as ids from an upstream extract usually are, or else all distinct in a hash set), and, with
/// `sink` (scope table), no data file's statistics overlap the batch's key range. `false` when
/// it cannot prove it (a repeated key, a key type not handled here, files without statistics):
/// then the queries decide and find the failing rows.
async fn unique_proven(
    batches: &[RecordBatch],
    c: &UniqueCheck,
    sink: Option<&crate::sink::DeltaSink>,
) -> Result<bool, DataFusionError> {
    let [column] = c.columns.as_slice() else {
        return Ok(false);
    };
    let arrays: Vec<&dyn Array> = batches
        .iter()
        .filter_map(|b| b.column_by_name(column).map(|a| a.as_ref()))
        .collect();
    if arrays.len() != batches.len() {
        return Ok(false);
    }
    let keys = match arrays.as_slice() {
        [] => return Ok(true),
        [one] => arrow::array::make_array(one.to_data()),
        many => arrow::compute::concat(many)?,
    };
    let Some(range) = distinct_key_range(&keys)? else {
        return Ok(false);
    };
    let (Some(sink), Some((min, max))) = (sink, range) else {
        return Ok(true);
    };
    let may_hold = sink
        .may_hold_range(column, &min, &max)
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(may_hold == Some(false))
}

/// The smallest and largest key of a batch (`None`: no key that is not NULL).
type KeyRange = Option<(ScalarValue, ScalarValue)>;

/// The smallest and largest key of a column whose non-NULL values are all distinct
/// (`Some(None)`: no non-NULL value). `None` when a value repeats or the column's type is not
/// one handled here (integers, dates, timestamps, strings).
fn distinct_key_range(keys: &arrow::array::ArrayRef) -> Result<Option<KeyRange>, DataFusionError> {
    let t = keys.data_type();
    let bounds = if (t.is_integer() && t != &DataType::UInt64)
        || matches!(
            t,
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
        ) {
        let Ok(ints) = arrow::compute::cast(keys, &DataType::Int64) else {
            return Ok(None);
        };
        let ints = ints.as_primitive::<Int64Type>();
        distinct_bounds(ints.len(), |i| ints.is_valid(i).then(|| ints.value(i)))
    } else if let Some(s) = keys.as_string_opt::<i32>() {
        distinct_bounds(s.len(), |i| s.is_valid(i).then(|| s.value(i)))
    } else if let Some(s) = keys.as_string_opt::<i64>() {
        distinct_bounds(s.len(), |i| s.is_valid(i).then(|| s.value(i)))
    } else if let Some(s) = keys.as_string_view_opt() {
        distinct_bounds(s.len(), |i| s.is_valid(i).then(|| s.value(i)))
    } else {
        return Ok(None);
    };
    Ok(match bounds {
        None => None,
        Some(None) => Some(None),
        Some(Some((lo, hi))) => Some(Some((
            ScalarValue::try_from_array(keys, lo)?,
            ScalarValue::try_from_array(keys, hi)?,
        ))),
    })
}

/// The row indexes of the smallest and largest of `len` values if no non-NULL value repeats
/// (`Some(None)`: all NULL): one comparison per row when they ascend, a hash set otherwise.
fn distinct_bounds<T: Ord + std::hash::Hash + Copy>(
    len: usize,
    value: impl Fn(usize) -> Option<T>,
) -> Option<Option<(usize, usize)>> {
    let mut ascending = true;
    let mut last: Option<T> = None;
    let mut lo: Option<(usize, T)> = None;
    let mut hi: Option<(usize, T)> = None;
    for i in 0..len {
        let Some(v) = value(i) else { continue };
        ascending &= last.is_none_or(|l| l < v);
        last = Some(v);
        if lo.is_none_or(|(_, l)| v < l) {
            lo = Some((i, v));
        }
        if hi.is_none_or(|(_, h)| v > h) {
            hi = Some((i, v));
        }
    }
    if !ascending {
        let mut seen = ahash::AHashSet::with_capacity(len);
        for i in 0..len {
            if let Some(v) = value(i)
                && !seen.insert(v)
            {
                return None;
            }
        }
    }
    Some(lo.zip(hi).map(|((l, _), (h, _))| (l, h)))
}

async fn count(ctx: &SessionContext, sql: &str) -> Result<u64, DataFusionError> {
    let rows = read_only_query(ctx, sql).await?.collect().await?;
    Ok(rows
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(0)
                .as_primitive_opt::<Int64Type>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0)
        .max(0) as u64)
}

/// The view of keys the sink table already holds, for `unique` checks with `scope: table`.
const EXISTING_KEYS: &str = "__sluice_existing";
/// The sink table, registered for checks that read it.
const SINK_TABLE: &str = "__sluice_sink";

/// Registers [`EXISTING_KEYS`]: the table's distinct keys, read only from files whose
/// statistics overlap the batch's key range (ids that grow over time read a few recent files,
/// not the whole table). `false` when there is nothing to compare with: no table yet, a key
/// column the table does not have, or no non-NULL key in the batch.
async fn register_existing_keys(
    ctx: &SessionContext,
    sink: &crate::sink::DeltaSink,
    columns: &[String],
) -> Result<bool, DataFusionError> {
    use datafusion::common::{Column, ScalarValue};
    use datafusion::logical_expr::{Expr, lit};
    if ctx.table_exist(EXISTING_KEYS)? {
        ctx.deregister_table(EXISTING_KEYS)?;
    }
    if !ctx.table_exist(SINK_TABLE)?
        && !sink
            .register(ctx, SINK_TABLE)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
    {
        return Ok(false);
    }
    let table = ctx.table(SINK_TABLE).await?;
    if columns
        .iter()
        .any(|k| table.schema().field_with_unqualified_name(k).is_err())
    {
        return Ok(false);
    }
    let bounds = columns
        .iter()
        .map(|k| format!("min({k}), max({k})", k = ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = read_only_query(ctx, &format!("SELECT {bounds} FROM output"))
        .await?
        .collect()
        .await?;
    let Some(b) = rows.first().filter(|b| b.num_rows() == 1) else {
        return Ok(false);
    };
    let mut filter: Option<Expr> = None;
    let mut keys = Vec::new();
    for (i, k) in columns.iter().enumerate() {
        let column = Expr::Column(Column::new_unqualified(k));
        let min = ScalarValue::try_from_array(b.column(2 * i), 0)?;
        let max = ScalarValue::try_from_array(b.column(2 * i + 1), 0)?;
        if min.is_null() || max.is_null() {
            return Ok(false);
        }
        let range = column.clone().between(lit(min), lit(max));
        filter = Some(match filter {
            Some(f) => f.and(range),
            None => range,
        });
        keys.push(column.alias(format!("__sluice_k{i}")));
    }
    let mut existing = table;
    if let Some(f) = filter {
        existing = existing.filter(f)?;
    }
    let existing = existing.select(keys)?.distinct()?;
    ctx.register_table(EXISTING_KEYS, existing.into_view())?;
    Ok(true)
}

/// Batches below this many rows are checked in one partition.
const SPLIT_ROWS: usize = 64 * 1024;
/// At most this many partitions for one batch's checks.
const MAX_PARTS: usize = 4;

/// Cuts `batches` into `parts` partitions of contiguous rows (zero-copy slices).
fn split_rows(batches: Vec<RecordBatch>, parts: usize) -> Vec<Vec<RecordBatch>> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if parts <= 1 || rows == 0 {
        return vec![batches];
    }
    let per = rows.div_ceil(parts);
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new()];
    let mut room = per;
    for b in batches {
        let mut offset = 0;
        while offset < b.num_rows() {
            if room == 0 {
                out.push(Vec::new());
                room = per;
            }
            let take = room.min(b.num_rows() - offset);
            if let Some(last) = out.last_mut() {
                last.push(b.slice(offset, take));
            }
            offset += take;
            room -= take;
        }
    }
    out
}

/// Appends the row-id column to each batch (ids run on across batches).
fn numbered(batches: &[RecordBatch]) -> Result<(Vec<RecordBatch>, SchemaRef), DataFusionError> {
    let mut out = Vec::with_capacity(batches.len());
    let mut next = 0i64;
    let mut schema = None;
    for b in batches {
        let ids = arrow::array::Int64Array::from_iter_values(next..next + b.num_rows() as i64);
        next += b.num_rows() as i64;
        let mut fields: Vec<_> = b.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            ROW_ID,
            DataType::Int64,
            false,
        )));
        let s = Arc::new(arrow::datatypes::Schema::new(fields));
        let mut cols = b.columns().to_vec();
        cols.push(Arc::new(ids));
        out.push(RecordBatch::try_new(s.clone(), cols)?);
        schema = Some(s);
    }
    Ok((
        out,
        schema.unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty())),
    ))
}

fn strip_helper_columns(b: RecordBatch) -> RecordBatch {
    let keep: Vec<usize> = b
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.name().starts_with("__sluice_"))
        .map(|(i, _)| i)
        .collect();
    b.project(&keep).unwrap_or(b)
}

/// What the one aggregate scan of a batch found, per check (see [`Checks::scan`]).
#[derive(Default)]
struct Scan {
    considered: Vec<u64>,
    /// Failing rows of predicate checks; `None` for the others.
    failing: Vec<Option<u64>>,
    /// Newest value (ms since the epoch) of freshness checks.
    newest: Vec<Option<i64>>,
    profile: Vec<CheckResult>,
}

/// The first value of a timestamp or date column as milliseconds since the epoch.
fn millis_at(col: &arrow::array::ArrayRef) -> Result<Option<i64>, DataFusionError> {
    if col.is_empty() || col.is_null(0) {
        return Ok(None);
    }
    let col = arrow::compute::cast(
        col,
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
    )?;
    let ts = col.as_primitive::<arrow::datatypes::TimestampMillisecondType>();
    Ok((!ts.is_null(0)).then(|| ts.value(0)))
}

/// An empty [`REF_TABLE`] with the referenced column typed like the checked one, to plan a
/// `relationships` check before the reference table exists.
fn register_reference_stand_in(
    ctx: &SessionContext,
    output: &SchemaRef,
    c: &RelationshipsCheck,
) -> Result<(), DataFusionError> {
    let field = output.field_with_name(&c.column)?;
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        field.clone().with_name(&c.to.column),
    ]));
    let table = MemTable::try_new(schema, vec![vec![]])?;
    ctx.register_table(REF_TABLE, Arc::new(table))?;
    Ok(())
}

async fn register_reference(
    ctx: &SessionContext,
    url: &url::Url,
    column: &str,
) -> Result<(), DataFusionError> {
    if ctx.table_exist(REF_TABLE)? {
        ctx.deregister_table(REF_TABLE)?;
    }
    let sink = crate::sink::DeltaSink::new(url.clone());
    let batches = sink
        .read_all()
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let Some(first) = batches.first() else {
        return Err(DataFusionError::Plan(format!(
            "reference table {url} is empty or does not exist yet"
        )));
    };
    if first.schema().index_of(column).is_err() {
        return Err(DataFusionError::Plan(format!(
            "reference table {url} has no column {column:?}"
        )));
    }
    let table = MemTable::try_new(first.schema(), vec![batches])?;
    ctx.register_table(REF_TABLE, Arc::new(table))?;
    Ok(())
}

fn regex_syntax_ok(pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern)
        .map(|_| ())
        .map_err(|e| format!("pattern {pattern:?} is not a valid regular expression: {e}"))
}

/// The check name under which rows left out by `source.bad_rows: drop` are stored.
pub const BAD_ROWS: &str = "bad_rows";

/// One row of the quarantine table.
struct QuarantineEntry {
    check: String,
    reason: String,
    /// The row as JSON (checks) or as the file had it (bad rows).
    row: String,
    file: Option<String>,
    line: Option<i64>,
    column: Option<String>,
    /// CSV bad rows: the file's header, as a JSON array of names, for replaying the row.
    header: Option<String>,
}

/// Rows held back by checks, as one batch of the quarantine table: which batch, pipeline
/// version, check and reason, and the row itself as JSON (so the table's schema stays the same
/// whatever the pipeline's output columns are, across versions).
pub fn quarantine_records(
    pipeline: &str,
    version: i64,
    batch_id: &str,
    rows: &[(String, String, RecordBatch)],
) -> Result<RecordBatch, String> {
    let mut entries = Vec::new();
    for (check, reason, batch) in rows {
        let mut writer = arrow_json::LineDelimitedWriter::new(Vec::new());
        writer.write(batch).map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())?;
        let text = String::from_utf8(writer.into_inner()).map_err(|e| e.to_string())?;
        for line in text.lines().filter(|l| !l.is_empty()) {
            entries.push(QuarantineEntry {
                check: check.clone(),
                reason: reason.clone(),
                row: line.to_string(),
                file: None,
                line: None,
                column: None,
                header: None,
            });
        }
    }
    quarantine_batch(pipeline, version, batch_id, entries)
}

/// Rows left out of a batch by `source.bad_rows: drop`, as one batch of the quarantine table:
/// check `bad_rows`, the file, line and column, the reason, and in `row` the raw text.
pub fn bad_row_records(
    pipeline: &str,
    version: i64,
    batch_id: &str,
    file: &str,
    header: Option<&[String]>,
    rows: &[crate::source::BadRow],
) -> Result<RecordBatch, String> {
    let header = header
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| e.to_string())?;
    let entries = rows
        .iter()
        .map(|r| QuarantineEntry {
            check: BAD_ROWS.to_string(),
            reason: r.reason.clone(),
            row: r.raw.clone(),
            file: Some(file.to_string()),
            line: Some(r.line as i64),
            column: r.column.clone(),
            header: header.clone(),
        })
        .collect();
    quarantine_batch(pipeline, version, batch_id, entries)
}

fn quarantine_batch(
    pipeline: &str,
    version: i64,
    batch_id: &str,
    entries: Vec<QuarantineEntry>,
) -> Result<RecordBatch, String> {
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    let n = entries.len();
    let now = sluice_core::now_millis() * 1000;
    // `file`, `line`, `column` and `header` came with bad rows; nullable, so tables written
    // before them take them in by schema merge.
    let schema = Arc::new(Schema::new(vec![
        Field::new("batch_id", DataType::Utf8, false),
        Field::new("pipeline", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("check", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("row", DataType::Utf8, false),
        Field::new(
            "quarantined_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("file", DataType::Utf8, true),
        Field::new("line", DataType::Int64, true),
        Field::new("column", DataType::Utf8, true),
        Field::new("header", DataType::Utf8, true),
    ]));
    let text = |f: fn(&QuarantineEntry) -> Option<&str>| -> Arc<StringArray> {
        Arc::new(entries.iter().map(f).collect::<StringArray>())
    };
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![batch_id; n])),
            Arc::new(StringArray::from(vec![pipeline; n])),
            Arc::new(Int64Array::from(vec![version; n])),
            text(|e| Some(e.check.as_str())),
            text(|e| Some(e.reason.as_str())),
            text(|e| Some(e.row.as_str())),
            Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
            text(|e| e.file.as_deref()),
            Arc::new(entries.iter().map(|e| e.line).collect::<Int64Array>()),
            text(|e| e.column.as_deref()),
            text(|e| e.header.as_deref()),
        ],
    )
    .map_err(|e| e.to_string())
}

/// A row of the quarantine table, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantinedRow {
    pub batch_id: String,
    pub version: i64,
    pub check: String,
    pub reason: String,
    pub row: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Bad rows: the text of the line as the file had it (the same as `row`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(skip)]
    pub header: Option<Vec<String>>,
}

/// Reads quarantine table batches back into rows (columns a table written by an older sluice
/// lacks read as absent).
pub fn read_quarantined(batches: &[RecordBatch]) -> Result<Vec<QuarantinedRow>, String> {
    let mut out = Vec::new();
    for b in batches {
        let text = |name: &str| -> Result<Option<Vec<Option<String>>>, String> {
            let Some(col) = b.column_by_name(name) else {
                return Ok(None);
            };
            let col = arrow::compute::cast(col, &DataType::Utf8).map_err(|e| e.to_string())?;
            let s = col.as_string::<i32>();
            Ok(Some(
                (0..s.len())
                    .map(|i| s.is_valid(i).then(|| s.value(i).to_string()))
                    .collect(),
            ))
        };
        let needed = |name: &str| -> Result<Vec<Option<String>>, String> {
            text(name)?.ok_or_else(|| format!("the quarantine table has no column {name:?}"))
        };
        let (ids, versions, checks, reasons, rows) = (
            needed("batch_id")?,
            needed("version")?,
            needed("check")?,
            needed("reason")?,
            needed("row")?,
        );
        let n = ids.len();
        let none = || vec![None; n];
        let files = text("file")?.unwrap_or_else(none);
        let lines = text("line")?.unwrap_or_else(none);
        let columns = text("column")?.unwrap_or_else(none);
        let headers = text("header")?.unwrap_or_else(none);
        for i in 0..n {
            let check = checks[i].clone().unwrap_or_default();
            let row = rows[i].clone().unwrap_or_default();
            out.push(QuarantinedRow {
                batch_id: ids[i].clone().unwrap_or_default(),
                version: versions[i]
                    .as_deref()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                raw: (check == BAD_ROWS).then(|| row.clone()),
                check,
                reason: reasons[i].clone().unwrap_or_default(),
                row,
                file: files[i].clone(),
                line: lines[i].as_deref().and_then(|v| v.parse().ok()),
                column: columns[i].clone(),
                header: headers[i]
                    .as_deref()
                    .and_then(|h| serde_json::from_str(h).ok()),
            });
        }
    }
    Ok(out)
}

fn median(v: &[u64]) -> Option<f64> {
    let mut v = v.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[Option<i64>]) -> arrow::array::ArrayRef {
        Arc::new(arrow::array::Int64Array::from(v.to_vec()))
    }

    #[test]
    fn batches_split_into_contiguous_partitions() {
        let batch = |from: i64, n: i64| {
            let a = ints(&(from..from + n).map(Some).collect::<Vec<_>>());
            RecordBatch::try_from_iter([("id", a)]).unwrap()
        };
        let ids = |parts: &[Vec<RecordBatch>]| -> Vec<Vec<i64>> {
            parts
                .iter()
                .map(|p| {
                    p.iter()
                        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                        .collect()
                })
                .collect()
        };
        let parts = split_rows(vec![batch(0, 5), batch(5, 2)], 2);
        assert_eq!(ids(&parts), vec![vec![0, 1, 2, 3], vec![4, 5, 6]]);
        let parts = split_rows(vec![batch(0, 7)], 3);
        assert_eq!(ids(&parts), vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        assert_eq!(split_rows(vec![batch(0, 3)], 1).len(), 1);
        assert_eq!(split_rows(vec![batch(0, 0)], 2).len(), 1);
    }

    #[test]
    fn distinct_keys_are_proven_and_repeats_are_not() {
        let range = |a: arrow::array::ArrayRef| {
            distinct_key_range(&a)
                .unwrap()
                .map(|r| r.map(|(lo, hi)| (lo.to_string(), hi.to_string())))
        };
        let pair = |lo: &str, hi: &str| Some(Some((lo.to_string(), hi.to_string())));
        // Ascending (one comparison a row), shuffled (the hash set), NULLs skipped.
        assert_eq!(
            range(ints(&[Some(1), None, Some(2), Some(9)])),
            pair("1", "9")
        );
        assert_eq!(
            range(ints(&[Some(5), Some(-3), None, Some(7)])),
            pair("-3", "7")
        );
        assert_eq!(range(ints(&[None, None])), Some(None));
        assert_eq!(range(ints(&[])), Some(None));
        // A repeat, adjacent or not, proves nothing; nor does equal-then-ascending.
        assert_eq!(range(ints(&[Some(1), Some(1)])), None);
        assert_eq!(range(ints(&[Some(3), Some(1), Some(2), Some(3)])), None);
        assert_eq!(range(ints(&[Some(1), Some(2), Some(2), Some(3)])), None);
        // Strings and timestamps keep their type in the range.
        let s: arrow::array::ArrayRef =
            Arc::new(arrow::array::StringArray::from(vec!["b", "a", "c"]));
        assert_eq!(range(s), pair("a", "c"));
        let s: arrow::array::ArrayRef =
            Arc::new(arrow::array::StringArray::from(vec!["b", "a", "b"]));
        assert_eq!(range(s), None);
        let ts: arrow::array::ArrayRef =
            Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![3, 1, 2]));
        let (lo, _) = distinct_key_range(&ts).unwrap().unwrap().unwrap();
        assert!(
            matches!(lo, ScalarValue::TimestampMicrosecond(Some(1), _)),
            "{lo:?}"
        );
        // Types it does not handle: the queries decide.
        let f: arrow::array::ArrayRef = Arc::new(arrow::array::Float64Array::from(vec![1.0]));
        assert_eq!(range(f), None);
    }
}
