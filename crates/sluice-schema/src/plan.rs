//! Migration plans: expand/contract steps with DDL for Delta Lake, Apache Iceberg and
//! PostgreSQL.
//!
//! Expand steps are safe to run now: they only add. Contract steps remove what the old
//! version needed and run after a grace period, once every reader and writer is on the
//! new version. Each step carries DDL per dialect, with identifiers quoted for that
//! dialect, or none when the step is a rollout action (move readers, wait).

use std::fmt::{self, Write};

use serde::{Deserialize, Serialize};

use crate::diff::{Change, ChangeKind, Severity, diff};
use crate::schema::{Field, Schema};
use crate::types::{FieldType, TimeUnit};

/// SQL dialects a plan renders DDL for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// Delta Lake through Spark SQL.
    Delta,
    /// Apache Iceberg through Spark SQL.
    Iceberg,
    Postgres,
}

impl Dialect {
    pub const ALL: [Dialect; 3] = [Dialect::Delta, Dialect::Iceberg, Dialect::Postgres];

    pub fn label(self) -> &'static str {
        match self {
            Dialect::Delta => "Delta Lake (Spark SQL)",
            Dialect::Iceberg => "Apache Iceberg (Spark SQL)",
            Dialect::Postgres => "PostgreSQL",
        }
    }

    /// Quotes one identifier: backticks for Spark with embedded backticks doubled, double
    /// quotes for PostgreSQL with embedded double quotes doubled.
    pub fn quote_ident(self, name: &str) -> String {
        match self {
            Dialect::Delta | Dialect::Iceberg => format!("`{}`", name.replace('`', "``")),
            Dialect::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
        }
    }

    /// A table name; dots separate namespace parts (`sales.orders`).
    pub fn quote_table(self, dataset: &str) -> String {
        dataset
            .split('.')
            .map(|part| self.quote_ident(part))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// A string literal with embedded single quotes doubled (and, for Spark, backslashes
    /// escaped, since Spark treats them as escapes in literals).
    pub fn quote_literal(self, text: &str) -> String {
        match self {
            Dialect::Delta | Dialect::Iceberg => {
                format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
            }
            Dialect::Postgres => format!("'{}'", text.replace('\'', "''")),
        }
    }

    /// The dialect's name for a type.
    pub fn type_name(self, t: &FieldType) -> String {
        match self {
            Dialect::Delta | Dialect::Iceberg => self.spark_type(t),
            Dialect::Postgres => postgres_type(t),
        }
    }

    fn spark_type(self, t: &FieldType) -> String {
        match t {
            FieldType::Bool => "BOOLEAN".into(),
            // Iceberg has no 8/16-bit integers; Spark stores them as INT.
            FieldType::Int8 if self == Dialect::Iceberg => "INT".into(),
            FieldType::Int16 if self == Dialect::Iceberg => "INT".into(),
            FieldType::Int8 => "TINYINT".into(),
            FieldType::Int16 => "SMALLINT".into(),
            FieldType::Int32 => "INT".into(),
            FieldType::Int64 => "BIGINT".into(),
            FieldType::Float32 => "FLOAT".into(),
            FieldType::Float64 => "DOUBLE".into(),
            FieldType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
            FieldType::String => "STRING".into(),
            FieldType::Binary => "BINARY".into(),
            FieldType::Date => "DATE".into(),
            FieldType::Timestamp { tz: None, .. } => "TIMESTAMP_NTZ".into(),
            FieldType::Timestamp { tz: Some(_), .. } => "TIMESTAMP".into(),
            FieldType::List(element) => format!("ARRAY<{}>", self.spark_type(element)),
            FieldType::Struct(members) => {
                let members = members
                    .iter()
                    .map(|m| {
                        format!(
                            "{}: {}{}",
                            self.quote_ident(&m.name),
                            self.spark_type(&m.field_type),
                            if m.nullable { "" } else { " NOT NULL" }
                        )
                    })
                    .collect::<Vec<_>>();
                format!("STRUCT<{}>", members.join(", "))
            }
        }
    }

    /// A column path (`address.city`) with each part quoted.
    fn quote_path(self, path: &str) -> String {
        path.split('.')
            .map(|p| self.quote_ident(p))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// An expression converting `column` (already quoted) from `old` to `new`. PostgreSQL's
    /// CAST between text and bytea does not encode: it reads escapes one way and prints hex the
    /// other, so those go through UTF-8 explicitly; it has no boolean -> bigint cast either.
    pub fn convert(self, column: &str, old: &FieldType, new: &FieldType) -> String {
        let target = self.type_name(new);
        match (self, old, new) {
            (Dialect::Postgres, FieldType::String, FieldType::Binary) => {
                format!("convert_to({column}, 'UTF8')")
            }
            (Dialect::Postgres, FieldType::Binary, FieldType::String) => {
                format!("convert_from({column}, 'UTF8')")
            }
            (Dialect::Postgres, FieldType::Bool, t) if t.is_integer() => {
                format!("CAST(CAST({column} AS INTEGER) AS {target})")
            }
            _ => format!("CAST({column} AS {target})"),
        }
    }

    /// A SQL literal for a JSON default in a column of type `t`, if one can be written.
    pub fn literal(self, value: &serde_json::Value, t: &FieldType) -> Option<String> {
        use serde_json::Value;
        Some(match (value, t) {
            (Value::Bool(b), _) => if *b { "TRUE" } else { "FALSE" }.into(),
            (Value::Number(n), _) => n.to_string(),
            (Value::String(s), FieldType::Date) => format!("DATE {}", self.quote_literal(s)),
            (Value::String(s), FieldType::Timestamp { .. }) => {
                format!("TIMESTAMP {}", self.quote_literal(s))
            }
            (Value::String(s), FieldType::Decimal { .. }) => s.clone(),
            (Value::String(s), _) => self.quote_literal(s),
            _ => return None,
        })
    }
}

fn postgres_type(t: &FieldType) -> String {
    match t {
        FieldType::Bool => "BOOLEAN".into(),
        // PostgreSQL has no 1-byte integer.
        FieldType::Int8 | FieldType::Int16 => "SMALLINT".into(),
        FieldType::Int32 => "INTEGER".into(),
        FieldType::Int64 => "BIGINT".into(),
        FieldType::Float32 => "REAL".into(),
        FieldType::Float64 => "DOUBLE PRECISION".into(),
        FieldType::Decimal { precision, scale } => format!("NUMERIC({precision},{scale})"),
        FieldType::String => "TEXT".into(),
        FieldType::Binary => "BYTEA".into(),
        FieldType::Date => "DATE".into(),
        FieldType::Timestamp { unit, tz } => {
            // PostgreSQL keeps microseconds; coarser units are a precision modifier.
            let precision = match unit {
                TimeUnit::Second => "(0)",
                TimeUnit::Millisecond => "(3)",
                TimeUnit::Microsecond | TimeUnit::Nanosecond => "",
            };
            if tz.is_some() {
                format!("TIMESTAMPTZ{precision}")
            } else {
                format!("TIMESTAMP{precision}")
            }
        }
        // Anonymous composite types need CREATE TYPE; JSONB keeps the plan self-contained.
        FieldType::Struct(_) => "JSONB".into(),
        FieldType::List(element) => match element.as_ref() {
            FieldType::Struct(_) | FieldType::List(_) => "JSONB".into(),
            other => format!("{}[]", postgres_type(other)),
        },
    }
}

/// Overall risk of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Risk::Low => "LOW",
            Risk::Medium => "MEDIUM",
            Risk::High => "HIGH",
        })
    }
}

/// When a step may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Safe now; old readers and writers keep working.
    Expand,
    /// After the grace period, once nothing uses the old shape.
    Contract,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Expand => "expand",
            Phase::Contract => "contract",
        })
    }
}

/// DDL statements for one step, per dialect. An empty list means the step needs no DDL
/// in that dialect (a rollout action, or handled by sluice on read); `notes` says why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ddl {
    pub delta: Vec<String>,
    pub iceberg: Vec<String>,
    pub postgres: Vec<String>,
}

impl Ddl {
    pub fn for_dialect(&self, dialect: Dialect) -> &[String] {
        match dialect {
            Dialect::Delta => &self.delta,
            Dialect::Iceberg => &self.iceberg,
            Dialect::Postgres => &self.postgres,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.delta.is_empty() && self.iceberg.is_empty() && self.postgres.is_empty()
    }

    fn each(f: impl Fn(Dialect) -> Vec<String>) -> Ddl {
        Ddl {
            delta: f(Dialect::Delta),
            iceberg: f(Dialect::Iceberg),
            postgres: f(Dialect::Postgres),
        }
    }
}

/// One ordered step of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// 1-based position in the plan.
    pub number: usize,
    pub phase: Phase,
    /// Short verb: `add_column`, `backfill`, `dual_write`, `move_readers`, `validate`,
    /// `grace_period`, `drop_column`, `rename_column`, `alter_type`, ...
    pub action: String,
    pub field: String,
    pub description: String,
    pub ddl: Ddl,
    /// The table files must be rewritten (delta-rs cannot apply this change in place).
    pub requires_rewrite: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A migration from one schema version to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub dataset: String,
    pub from_version: u32,
    pub to_version: u32,
    pub risk: Risk,
    pub changes: Vec<Change>,
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn expand_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.phase == Phase::Expand)
    }

    pub fn contract_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.phase == Phase::Contract)
    }

    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// A readable table of steps, followed by the DDL of one dialect per step.
    pub fn render_text(&self, dialect: Dialect) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "migration plan for {} v{} -> v{}: risk {}, {} change(s), {} step(s)",
            self.dataset,
            self.from_version,
            self.to_version,
            self.risk,
            self.changes.len(),
            self.steps.len()
        );
        if self.steps.is_empty() {
            let _ = writeln!(out, "nothing to do");
            return out;
        }
        let rows: Vec<[String; 5]> = self
            .steps
            .iter()
            .map(|s| {
                [
                    s.number.to_string(),
                    s.phase.to_string(),
                    s.action.clone(),
                    s.field.clone(),
                    s.description.clone(),
                ]
            })
            .collect();
        let headers = ["#", "phase", "action", "field", "description"];
        let mut widths = headers.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 5]| {
            let mut text = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i == 4 {
                    text.push_str(cell);
                } else {
                    let _ = write!(text, "{cell:<w$}  ");
                }
            }
            text.trim_end().to_string()
        };
        let _ = writeln!(out, "{}", line(headers));
        for row in &rows {
            let _ = writeln!(
                out,
                "{}",
                line([&row[0], &row[1], &row[2], &row[3], &row[4]])
            );
        }
        let _ = writeln!(out, "\n{}:", dialect.label());
        for step in &self.steps {
            let ddl = step.ddl.for_dialect(dialect);
            if ddl.is_empty() && step.notes.is_empty() && !step.requires_rewrite {
                continue;
            }
            let _ = writeln!(out, "  step {}:", step.number);
            for statement in ddl {
                let _ = writeln!(out, "    {statement};");
            }
            if step.requires_rewrite {
                let _ = writeln!(out, "    -- requires rewriting the table files");
            }
            for note in &step.notes {
                let _ = writeln!(out, "    -- {note}");
            }
        }
        out
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_text(Dialect::Delta))
    }
}

const COLUMN_MAPPING_NOTE: &str =
    "Delta needs column mapping ('delta.columnMapping.mode' = 'name') to drop or rename a column";

/// PostgreSQL has no `try_cast` (and `pg_input_is_valid` only from 16, and only from text):
/// a session-local function that runs the very cast the backfill will run and reports whether
/// it fails. `pg_temp` keeps it out of the database; it is gone when the session ends.
const POSTGRES_FITS_FUNCTION: &str = "CREATE OR REPLACE FUNCTION pg_temp.sluice_fits(value anyelement, target text) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN EXECUTE format('SELECT CAST($1 AS %s)', target) USING value; RETURN true; EXCEPTION WHEN others THEN RETURN false; END $$";

const DELTA_REWRITE_NOTE: &str = "delta-rs cannot change a column type in place: sluice rewrites the table (overwrite with the new schema); Spark with 'delta.enableTypeWidening' can run the ALTER instead";

/// Builds the plan from `from` (version `from_version`) to `to` (version `to_version`).
pub fn plan(dataset: &str, from: &Schema, from_version: u32, to: &Schema, to_version: u32) -> Plan {
    let changes = diff(from, to);
    let mut builder = Builder {
        table: dataset.to_string(),
        steps: Vec::new(),
    };
    for change in &changes {
        builder.add_change(change, from, to);
    }
    // Expand steps first, then contract, keeping each phase's order.
    builder.steps.sort_by_key(|s| s.phase);
    for (i, step) in builder.steps.iter_mut().enumerate() {
        step.number = i + 1;
    }
    Plan {
        dataset: dataset.to_string(),
        from_version,
        to_version,
        risk: risk_of(&changes),
        changes,
        steps: builder.steps,
    }
}

fn risk_of(changes: &[Change]) -> Risk {
    let high = changes.iter().any(|c| {
        c.severity == Severity::Destructive
            || matches!(c.kind, ChangeKind::NarrowType | ChangeKind::ChangeType)
    });
    if high {
        Risk::High
    } else if changes.iter().any(|c| c.severity >= Severity::Warning) {
        Risk::Medium
    } else {
        Risk::Low
    }
}

struct Builder {
    table: String,
    steps: Vec<Step>,
}

/// Whether Iceberg can change `old` to `new` in place (its documented promotions).
fn iceberg_in_place(old: &FieldType, new: &FieldType) -> bool {
    let int32ish =
        |t: &FieldType| matches!(t, FieldType::Int8 | FieldType::Int16 | FieldType::Int32);
    match (old, new) {
        (o, FieldType::Int64) if int32ish(o) => true,
        (o, n) if int32ish(o) && int32ish(n) => true,
        (FieldType::Float32, FieldType::Float64) => true,
        (
            FieldType::Decimal {
                precision: p1,
                scale: s1,
            },
            FieldType::Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s1 == s2 && p2 >= p1,
        _ => false,
    }
}

impl Builder {
    fn table(&self, d: Dialect) -> String {
        d.quote_table(&self.table)
    }

    fn push(
        &mut self,
        phase: Phase,
        action: &str,
        field: &str,
        description: String,
        ddl: Ddl,
    ) -> &mut Step {
        self.steps.push(Step {
            number: 0,
            phase,
            action: action.to_string(),
            field: field.to_string(),
            description,
            ddl,
            requires_rewrite: false,
            notes: Vec::new(),
        });
        let last = self.steps.len() - 1;
        &mut self.steps[last]
    }

    fn add_column_ddl(&self, name: &str, t: &FieldType, doc: Option<&str>) -> Ddl {
        Ddl::each(|d| {
            let comment = doc
                .filter(|_| d != Dialect::Postgres)
                .map(|doc| format!(" COMMENT {}", d.quote_literal(doc)))
                .unwrap_or_default();
            let column = format!("{} {}{comment}", d.quote_path(name), d.type_name(t));
            match d {
                Dialect::Delta => vec![format!(
                    "ALTER TABLE {} ADD COLUMNS ({column})",
                    self.table(d)
                )],
                Dialect::Iceberg => {
                    vec![format!("ALTER TABLE {} ADD COLUMN {column}", self.table(d))]
                }
                Dialect::Postgres if name.contains('.') => Vec::new(),
                Dialect::Postgres => {
                    let mut statements =
                        vec![format!("ALTER TABLE {} ADD COLUMN {column}", self.table(d))];
                    if let Some(doc) = doc {
                        statements.push(format!(
                            "COMMENT ON COLUMN {}.{} IS {}",
                            self.table(d),
                            d.quote_ident(name),
                            d.quote_literal(doc)
                        ));
                    }
                    statements
                }
            }
        })
    }

    fn drop_column_ddl(&self, name: &str) -> Ddl {
        Ddl::each(|d| {
            if d == Dialect::Postgres && name.contains('.') {
                return Vec::new();
            }
            vec![format!(
                "ALTER TABLE {} DROP COLUMN {}",
                self.table(d),
                d.quote_path(name)
            )]
        })
    }

    fn set_not_null_ddl(&self, name: &str) -> Ddl {
        Ddl::each(|d| {
            vec![format!(
                "ALTER TABLE {} ALTER COLUMN {} SET NOT NULL",
                self.table(d),
                d.quote_path(name)
            )]
        })
    }

    fn count_nulls_ddl(&self, name: &str) -> Ddl {
        Ddl::each(|d| {
            vec![format!(
                "SELECT COUNT(*) AS nulls FROM {} WHERE {} IS NULL",
                self.table(d),
                d.quote_path(name)
            )]
        })
    }

    fn comment_ddl(&self, name: &str, text: &str) -> Ddl {
        Ddl::each(|d| match d {
            Dialect::Postgres if name.contains('.') => Vec::new(),
            Dialect::Postgres => vec![format!(
                "COMMENT ON COLUMN {}.{} IS {}",
                self.table(d),
                d.quote_ident(name),
                d.quote_literal(text)
            )],
            _ => vec![format!(
                "ALTER TABLE {} ALTER COLUMN {} COMMENT {}",
                self.table(d),
                d.quote_path(name),
                d.quote_literal(text)
            )],
        })
    }

    fn add_change(&mut self, change: &Change, from: &Schema, to: &Schema) {
        let path = change.field.as_str();
        let new_field = to.field(path);
        let old_field = change
            .old_field
            .as_deref()
            .and_then(|n| from.field(n))
            .or_else(|| from.field(path));
        match change.kind {
            ChangeKind::AddNullableField => {
                let t = type_at(to, path);
                if let Some(t) = t {
                    let ddl =
                        self.add_column_ddl(path, &t, new_field.and_then(|f| f.doc.as_deref()));
                    self.push(
                        Phase::Expand,
                        "add_column",
                        path,
                        format!("add nullable column {path} {t}"),
                        ddl,
                    );
                }
            }
            ChangeKind::AddDefaultedField => {
                if let Some(field) = new_field {
                    self.add_defaulted(field);
                }
            }
            ChangeKind::AddRequiredField => {
                if let Some(t) = type_at(to, path) {
                    self.add_required(path, &t, new_field);
                }
            }
            ChangeKind::DropField => self.drop(path),
            ChangeKind::RenameField => {
                if let (Some(old), Some(new)) = (old_field, new_field) {
                    self.rename(old, new);
                }
            }
            ChangeKind::WidenType | ChangeKind::NarrowType | ChangeKind::ChangeType
                if change.field == split_path(path).0
                    && new_field.is_some()
                    && from.field(path).is_none() =>
            {
                // The field was renamed too: the rename's new column already has the new type.
            }
            ChangeKind::WidenType | ChangeKind::NarrowType | ChangeKind::ChangeType => {
                if let (Some(old_t), Some(new_t)) = (type_at_old(from, change), type_at(to, path)) {
                    let stays_required = !path.contains(['.', '['])
                        && old_field.is_some_and(|f| !f.nullable)
                        && new_field.is_some_and(|f| !f.nullable);
                    self.retype(change.kind, path, &old_t, &new_t, stays_required);
                }
            }
            ChangeKind::MakeRequired => {
                let ddl = self.count_nulls_ddl(path);
                let step = self.push(
                    Phase::Expand,
                    "validate",
                    path,
                    format!("check that {path} has no nulls; stop writers from producing them"),
                    ddl,
                );
                step.notes
                    .push("the count must be 0 before the contract step".into());
                let ddl = self.set_not_null_ddl(path);
                let step = self.push(
                    Phase::Contract,
                    "set_not_null",
                    path,
                    format!("make {path} required"),
                    ddl,
                );
                step.notes.push(
                    "Delta and PostgreSQL check existing rows and fail if a null remains".into(),
                );
            }
            ChangeKind::MakeNullable => {
                let ddl = Ddl::each(|d| {
                    vec![format!(
                        "ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL",
                        self.table(d),
                        d.quote_path(path)
                    )]
                });
                let step = self.push(
                    Phase::Expand,
                    "drop_not_null",
                    path,
                    format!("make {path} nullable"),
                    ddl,
                );
                step.notes
                    .push("upgrade readers before writers start writing nulls".into());
            }
            ChangeKind::ChangeDefault => {
                if let Some(field) = new_field {
                    let ddl = self.default_ddl(field);
                    let step = self.push(
                        Phase::Expand,
                        "set_default",
                        path,
                        format!("change the default of {path}"),
                        ddl,
                    );
                    step.notes
                        .push("sluice applies defaults when upgrading old records on read".into());
                }
            }
            ChangeKind::DeprecateField => {
                let ddl = self.comment_ddl(path, "DEPRECATED");
                self.push(
                    Phase::Expand,
                    "deprecate",
                    path,
                    format!("mark {path} deprecated"),
                    ddl,
                );
            }
            ChangeKind::ChangeDoc => {
                let doc = new_field.and_then(|f| f.doc.clone()).unwrap_or_default();
                let ddl = self.comment_ddl(path, &doc);
                self.push(
                    Phase::Expand,
                    "comment",
                    path,
                    format!("update the comment of {path}"),
                    ddl,
                );
            }
            ChangeKind::UndeprecateField
            | ChangeKind::ChangeConstraints
            | ChangeKind::ChangeAliases => {
                let step = self.push(
                    Phase::Expand,
                    "registry_only",
                    path,
                    format!("{}: recorded in the registry", change.kind.name()),
                    Ddl::default(),
                );
                step.notes.push(
                    "no table change: sluice enforces this when reading and validating".into(),
                );
            }
        }
    }

    fn default_ddl(&self, field: &Field) -> Ddl {
        Ddl::each(|d| {
            let target = format!(
                "ALTER TABLE {} ALTER COLUMN {}",
                self.table(d),
                d.quote_ident(&field.name)
            );
            match (d, &field.default) {
                (Dialect::Iceberg, _) => Vec::new(),
                (_, None) => vec![format!("{target} DROP DEFAULT")],
                (_, Some(v)) => match d.literal(v, &field.field_type) {
                    Some(literal) => {
                        let mut statements = Vec::new();
                        if d == Dialect::Delta {
                            statements.push(format!(
                                "ALTER TABLE {} SET TBLPROPERTIES ('delta.feature.allowColumnDefaults' = 'supported')",
                                self.table(d)
                            ));
                        }
                        statements.push(format!("{target} SET DEFAULT {literal}"));
                        statements
                    }
                    None => Vec::new(),
                },
            }
        })
    }

    fn add_defaulted(&mut self, field: &Field) {
        let name = field.name.as_str();
        let mut ddl = self.add_column_ddl(name, &field.field_type, field.doc.as_deref());
        let defaults = self.default_ddl(field);
        for d in Dialect::ALL {
            let extra = defaults.for_dialect(d).to_vec();
            match d {
                Dialect::Delta => ddl.delta.extend(extra),
                Dialect::Iceberg => ddl.iceberg.extend(extra),
                Dialect::Postgres => {
                    // `ADD COLUMN ... DEFAULT` gives existing rows the default (what sluice
                    // readers see for them), so a later SET NOT NULL finds no null; adding the
                    // column and then the default would leave old rows null.
                    let literal = field
                        .default
                        .as_ref()
                        .and_then(|v| d.literal(v, &field.field_type));
                    match (literal, ddl.postgres.first_mut()) {
                        (Some(literal), Some(add)) => {
                            add.push_str(" DEFAULT ");
                            add.push_str(&literal);
                        }
                        _ => ddl.postgres.extend(extra),
                    }
                }
            }
        }
        let step = self.push(
            Phase::Expand,
            "add_column",
            name,
            format!("add column {name} {} with a default", field.field_type),
            ddl,
        );
        step.notes.push(
            "existing rows read the default through sluice; Iceberg keeps no column default before format v3".into(),
        );
        if !field.nullable {
            // Delta and Iceberg give rows written before the column NULL (a column default
            // applies to new writes only): write the default into them before SET NOT NULL.
            let table = |d: Dialect| self.table(d);
            let fill = Ddl::each(|d| match d {
                Dialect::Postgres => Vec::new(),
                _ => field
                    .default
                    .as_ref()
                    .and_then(|v| d.literal(v, &field.field_type))
                    .map(|literal| {
                        let col = d.quote_path(name);
                        vec![format!(
                            "UPDATE {} SET {col} = {literal} WHERE {col} IS NULL",
                            table(d)
                        )]
                    })
                    .unwrap_or_default(),
            });
            let step = self.push(
                Phase::Expand,
                "backfill",
                name,
                format!("write the default into existing rows of {name}"),
                fill,
            );
            step.notes
                .push("PostgreSQL filled existing rows when the column was added".into());
            let not_null = self.set_not_null_ddl(name);
            self.push(
                Phase::Contract,
                "set_not_null",
                name,
                format!("make {name} required once every row has a value"),
                not_null,
            );
        }
    }

    fn add_required(&mut self, path: &str, t: &FieldType, field: Option<&Field>) {
        let doc = field.and_then(|f| f.doc.as_deref());
        let ddl = self.add_column_ddl(path, t, doc);
        self.push(
            Phase::Expand,
            "add_column",
            path,
            format!("add {path} {t} as nullable first, so old writers keep working"),
            ddl,
        );
        let step = self.push(
            Phase::Expand,
            "backfill",
            path,
            format!("give every existing row a value for {path}"),
            Ddl::default(),
        );
        step.notes.push(
            "there is no default to backfill with: choose a value, or add a default to the schema"
                .into(),
        );
        let step = self.push(
            Phase::Expand,
            "dual_write",
            path,
            format!("deploy writers that always set {path}"),
            Ddl::default(),
        );
        step.notes.push("no DDL: a pipeline deployment".into());
        let ddl = self.count_nulls_ddl(path);
        self.push(
            Phase::Contract,
            "validate",
            path,
            format!("check that no row lacks {path}"),
            ddl,
        );
        let ddl = self.set_not_null_ddl(path);
        self.push(
            Phase::Contract,
            "set_not_null",
            path,
            format!("make {path} required"),
            ddl,
        );
    }

    fn drop(&mut self, path: &str) {
        let ddl = self.comment_ddl(path, "DEPRECATED: will be dropped");
        self.push(
            Phase::Expand,
            "deprecate",
            path,
            format!("mark {path} deprecated"),
            ddl,
        );
        let step = self.push(
            Phase::Expand,
            "stop_reading",
            path,
            format!("move every reader and transform off {path}"),
            Ddl::default(),
        );
        step.notes
            .push("no DDL: change the queries and pipelines that use it".into());
        let step = self.push(
            Phase::Contract,
            "grace_period",
            path,
            "wait out the grace period; watch that nothing still reads it".into(),
            Ddl::default(),
        );
        step.notes.push("no DDL".into());
        let ddl = self.drop_column_ddl(path);
        let step = self.push(
            Phase::Contract,
            "drop_column",
            path,
            format!("drop {path}"),
            ddl,
        );
        step.notes.push(format!(
            "{COLUMN_MAPPING_NOTE}; the data stays in older table versions until VACUUM"
        ));
    }

    /// A step proving every value of `column` converts to `new` before anything depends on it.
    fn validate_fit(&mut self, column: &str, new: &FieldType) {
        let ddl = Ddl::each(|d| {
            let col = d.quote_path(column);
            match d {
                Dialect::Delta | Dialect::Iceberg => vec![format!(
                    "SELECT COUNT(*) AS misfits FROM {} WHERE {col} IS NOT NULL AND try_cast({col} AS {}) IS NULL",
                    self.table(d),
                    d.type_name(new)
                )],
                Dialect::Postgres => vec![
                    POSTGRES_FITS_FUNCTION.to_string(),
                    format!(
                        "SELECT COUNT(*) AS misfits FROM {} WHERE {col} IS NOT NULL AND NOT pg_temp.sluice_fits({col}, {})",
                        self.table(d),
                        d.quote_literal(&d.type_name(new))
                    ),
                ],
            }
        });
        let step = self.push(
            Phase::Expand,
            "validate",
            column,
            format!("check that every value of {column} fits {new}"),
            ddl,
        );
        step.notes
            .push("the count must be 0; otherwise fix or quarantine those rows first".into());
        if matches!(
            new,
            FieldType::Decimal { .. } | FieldType::Float32 | FieldType::Date
        ) {
            step.notes.push("a cast that rounds (fewer decimal places, float precision, dropping the time of day) also loses data: compare the cast value with the original".into());
        }
    }

    fn rename(&mut self, old: &Field, new: &Field) {
        let (from, to) = (old.name.as_str(), new.name.as_str());
        let ddl = self.add_column_ddl(to, &new.field_type, new.doc.as_deref());
        self.push(
            Phase::Expand,
            "add_column",
            to,
            format!("add {to} next to {from}"),
            ddl,
        );
        // A rename that also changes the type copies through a cast, checked first unless
        // it is a widening.
        let retyped = old.field_type != new.field_type;
        if retyped && !old.field_type.promotes_to(&new.field_type) {
            self.validate_fit(from, &new.field_type);
        }
        let ddl = Ddl::each(|d| {
            let source = if retyped {
                d.convert(&d.quote_ident(from), &old.field_type, &new.field_type)
            } else {
                d.quote_ident(from)
            };
            vec![format!(
                "UPDATE {} SET {} = {source} WHERE {} IS NULL",
                self.table(d),
                d.quote_ident(to),
                d.quote_ident(to)
            )]
        });
        self.push(
            Phase::Expand,
            "backfill",
            to,
            format!("copy {from} into {to}"),
            ddl,
        );
        let step = self.push(
            Phase::Expand,
            "dual_write",
            to,
            format!("deploy writers that write both {from} and {to}"),
            Ddl::default(),
        );
        step.notes.push("no DDL: a pipeline deployment".into());
        let step = self.push(
            Phase::Expand,
            "move_readers",
            to,
            format!("move every reader from {from} to {to}"),
            Ddl::default(),
        );
        step.notes.push("sluice readers follow the rename by field id already; SQL and BI readers need their queries changed".into());
        let ddl = self.drop_column_ddl(from);
        let step = self.push(
            Phase::Contract,
            "drop_column",
            from,
            format!("drop the old column {from}"),
            ddl,
        );
        step.notes.push(format!(
            "alternative with no copy: ALTER TABLE ... RENAME COLUMN {from} TO {to} (Delta needs column mapping mode 'name'); it breaks name-based readers at once"
        ));
        // The copy was added nullable so old writers keep working; a field required before and
        // after gets its constraint back. (Nullable -> required is the MakeRequired change's.)
        if !old.nullable && !new.nullable {
            let ddl = self.set_not_null_ddl(to);
            self.push(
                Phase::Contract,
                "set_not_null",
                to,
                format!("make {to} required, as {from} was"),
                ddl,
            );
        }
    }

    /// `stays_required`: the column is NOT NULL before and after, so the swapped-in column
    /// must get the constraint back.
    fn retype(
        &mut self,
        kind: ChangeKind,
        path: &str,
        old: &FieldType,
        new: &FieldType,
        stays_required: bool,
    ) {
        let in_place_everywhere =
            kind == ChangeKind::WidenType && iceberg_in_place(old, new) && !path.contains('[');
        if in_place_everywhere {
            let ddl = Ddl::each(|d| {
                let target = format!(
                    "ALTER TABLE {} ALTER COLUMN {}",
                    self.table(d),
                    d.quote_path(path)
                );
                match d {
                    Dialect::Delta => vec![
                        format!(
                            "ALTER TABLE {} SET TBLPROPERTIES ('delta.enableTypeWidening' = 'true')",
                            self.table(d)
                        ),
                        format!("{target} TYPE {}", d.type_name(new)),
                    ],
                    Dialect::Iceberg => vec![format!("{target} TYPE {}", d.type_name(new))],
                    Dialect::Postgres => vec![format!(
                        "{target} TYPE {ty} USING {col}::{ty}",
                        ty = d.type_name(new),
                        col = d.quote_ident(path)
                    )],
                }
            });
            let step = self.push(
                Phase::Expand,
                "alter_type",
                path,
                format!("widen {path} from {old} to {new}"),
                ddl,
            );
            step.requires_rewrite = true;
            step.notes.push(DELTA_REWRITE_NOTE.into());
            return;
        }
        if path.contains(['.', '[']) {
            // Nested members and list elements cannot be re-typed by DDL in these dialects.
            let step = self.push(
                Phase::Expand,
                "rewrite",
                path,
                format!("rewrite the table converting {path} from {old} to {new}"),
                Ddl::default(),
            );
            step.requires_rewrite = true;
            step.notes.push("nested types cannot be altered in place; sluice rewrites the table, converting every value and failing on any that does not fit".into());
            return;
        }
        // Everything else goes through a new column: write it, prove every value fits, swap.
        let column = path.to_string();
        let temp = format!("{column}__new");
        let ddl = self.add_column_ddl(&temp, new, None);
        self.push(
            Phase::Expand,
            "add_column",
            &temp,
            format!("add {temp} as {new}"),
            ddl,
        );
        if kind != ChangeKind::WidenType {
            self.validate_fit(&column, new);
        }
        let ddl = Ddl::each(|d| {
            vec![format!(
                "UPDATE {} SET {} = {}",
                self.table(d),
                d.quote_ident(&temp),
                d.convert(&d.quote_path(&column), old, new)
            )]
        });
        let step = self.push(
            Phase::Expand,
            "backfill",
            &temp,
            format!("fill {temp} from {column}"),
            ddl,
        );
        step.requires_rewrite = true;
        step.notes
            .push("dual-write both columns until the swap".into());
        let ddl = Ddl::each(|d| {
            let mut statements = vec![
                format!(
                    "ALTER TABLE {} DROP COLUMN {}",
                    self.table(d),
                    d.quote_ident(&column)
                ),
                format!(
                    "ALTER TABLE {} RENAME COLUMN {} TO {}",
                    self.table(d),
                    d.quote_ident(&temp),
                    d.quote_ident(&column)
                ),
            ];
            if stays_required {
                statements.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {} SET NOT NULL",
                    self.table(d),
                    d.quote_ident(&column)
                ));
            }
            statements
        });
        let step = self.push(
            Phase::Contract,
            "swap",
            &column,
            format!("replace {column} ({old}) with {temp} ({new})"),
            ddl,
        );
        step.notes.push(COLUMN_MAPPING_NOTE.into());
    }
}

/// The type at a path (`a`, `a.b`, `a[]`) in a schema.
fn type_at(schema: &Schema, path: &str) -> Option<FieldType> {
    let (head, rest) = split_path(path);
    let field = schema.field(head)?;
    descend(&field.field_type, rest)
}

fn type_at_old(from: &Schema, change: &Change) -> Option<FieldType> {
    change
        .before
        .as_deref()
        .and_then(|t| t.parse().ok())
        .or_else(|| type_at(from, &change.field))
}

fn split_path(path: &str) -> (&str, &str) {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    (&path[..end], &path[end..])
}

fn descend(t: &FieldType, rest: &str) -> Option<FieldType> {
    if rest.is_empty() {
        return Some(t.clone());
    }
    if let Some(after) = rest.strip_prefix("[]") {
        return match t {
            FieldType::List(element) => descend(element, after),
            _ => None,
        };
    }
    let rest = rest.strip_prefix('.')?;
    let end = rest.find(['.', '[']).unwrap_or(rest.len());
    match t {
        FieldType::Struct(members) => {
            let member = members.iter().find(|m| m.name == rest[..end])?;
            descend(&member.field_type, &rest[end..])
        }
        _ => None,
    }
}
