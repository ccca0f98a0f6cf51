//! Applies the Delta Lake DDL that `sluice schema plan` generates (Spark SQL) to a Delta table
//! through delta-rs, so a plan can be carried out without Spark and its statements are proven
//! valid against a real table.
//!
//! | statement                                   | through delta-rs                         |
//! |---------------------------------------------|------------------------------------------|
//! | `ALTER TABLE t ADD COLUMNS (c TYPE ...)`    | add columns                              |
//! | `ALTER TABLE t ALTER COLUMN c DROP NOT NULL`| drop the NOT NULL constraint             |
//! | `ALTER TABLE t ALTER COLUMN c SET NOT NULL` | a `c IS NOT NULL` CHECK constraint (checked against every row, enforced on writes) |
//! | `ALTER TABLE t ALTER COLUMN c COMMENT '..'` | the field's `comment` metadata           |
//! | `ALTER TABLE t ALTER COLUMN c SET/DROP DEFAULT` | not in delta-rs (no column defaults feature): [`Applied::Unsupported`] |
//! | `ALTER TABLE t SET TBLPROPERTIES (...)`     | table properties ([`Applied::Unsupported`] for features delta-rs lacks) |
//! | `UPDATE t SET c = expr [WHERE p]`           | update                                   |
//! | `SELECT ...` (a plan's validation query)    | run by DataFusion over the table         |
//! | `DROP COLUMN`, `RENAME COLUMN`, `ALTER COLUMN c TYPE` | not in place: [`Applied::NeedsRewrite`], done by `sluice schema migrate` |

use std::collections::HashMap;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::{MetadataValue, StructField};
use deltalake::{DeltaTable, DeltaTableError};
use sluice_schema::FieldType;
use url::Url;

/// What applying one statement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Changed the table in place; says how.
    InPlace(String),
    /// A query ran; its first column's first value (a validation count), if numeric.
    Query(Option<i64>),
    /// delta-rs cannot make this change in place: the table must be rewritten (`schema migrate`).
    NeedsRewrite(String),
    /// A table feature delta-rs does not implement (column defaults, type widening): the
    /// statement is for Spark; sluice does without it (it fills defaults itself when it
    /// upgrades records, and rewrites for type changes).
    Unsupported(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DdlError {
    #[error("cannot read the statement at byte {at}: {reason}: {sql}")]
    Syntax {
        sql: String,
        at: usize,
        reason: String,
    },
    #[error("{sql}: {source}")]
    Delta {
        sql: String,
        #[source]
        source: DeltaTableError,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Ident(String),
    Str(String),
    Sym(char),
}

/// Tokens with their byte offsets (start, end).
fn tokenize(sql: &str) -> Result<Vec<(usize, usize, Tok)>, DdlError> {
    let bad = |at: usize, reason: &str| DdlError::Syntax {
        sql: sql.to_string(),
        at,
        reason: reason.to_string(),
    };
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
        } else if c == '`' {
            let start = i;
            let mut s = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(bad(start, "unterminated `identifier`")),
                    Some(b'`') if b.get(i + 1) == Some(&b'`') => {
                        s.push('`');
                        i += 2;
                    }
                    Some(b'`') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        let ch = sql[i..].chars().next().unwrap_or('?');
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push((start, i, Tok::Ident(s)));
        } else if c == '\'' {
            let start = i;
            let mut s = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(bad(start, "unterminated 'string'")),
                    Some(b'\\') => {
                        let ch = sql[i + 1..].chars().next().unwrap_or('\\');
                        s.push(ch);
                        i += 1 + ch.len_utf8();
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        let ch = sql[i..].chars().next().unwrap_or('?');
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push((start, i, Tok::Str(s)));
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let start = i;
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((start, i, Tok::Word(sql[start..i].to_string())));
        } else {
            out.push((i, i + c.len_utf8(), Tok::Sym(c)));
            i += c.len_utf8();
        }
    }
    Ok(out)
}

struct Parser<'a> {
    sql: &'a str,
    toks: Vec<(usize, usize, Tok)>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, reason: impl Into<String>) -> DdlError {
        DdlError::Syntax {
            sql: self.sql.to_string(),
            at: self.toks.get(self.pos).map_or(self.sql.len(), |t| t.0),
            reason: reason.into(),
        }
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.2)
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn kw(&mut self, kw: &str) -> Result<(), DdlError> {
        if self.is_kw(kw) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(format!("expected {kw}")))
        }
    }
    fn sym(&mut self, c: char) -> Result<(), DdlError> {
        if self.peek() == Some(&Tok::Sym(c)) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(format!("expected {c:?}")))
        }
    }
    fn name(&mut self) -> Result<String, DdlError> {
        match self.peek().cloned() {
            Some(Tok::Ident(s)) | Some(Tok::Word(s)) => {
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.err("expected a name")),
        }
    }
    /// `a`.`b` -> ["a", "b"]
    fn path(&mut self) -> Result<Vec<String>, DdlError> {
        let mut parts = vec![self.name()?];
        while self.peek() == Some(&Tok::Sym('.')) {
            self.pos += 1;
            parts.push(self.name()?);
        }
        Ok(parts)
    }
    fn string(&mut self) -> Result<String, DdlError> {
        match self.peek().cloned() {
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.err("expected a 'string'")),
        }
    }
    /// The text from the current token to the end (or to `stop` keyword at depth 0), in
    /// standard SQL for delta-rs's expression parser: Spark's `ident` and 'it\'s' become
    /// "ident" and 'it''s'.
    fn rest_until(&mut self, stop: Option<&str>) -> String {
        let first = self.pos;
        let mut depth = 0i32;
        while let Some(t) = self.peek() {
            match t {
                Tok::Sym('(') => depth += 1,
                Tok::Sym(')') => depth -= 1,
                Tok::Word(w) if depth == 0 && stop.is_some_and(|s| w.eq_ignore_ascii_case(s)) => {
                    break;
                }
                _ => {}
            }
            self.pos += 1;
        }
        let mut out = String::new();
        let mut at = self.toks.get(first).map_or(self.sql.len(), |t| t.0);
        for (start, end, tok) in &self.toks[first..self.pos] {
            out.push_str(&self.sql[at..*start]);
            match tok {
                Tok::Ident(name) => out.push_str(&format!("\"{}\"", name.replace('"', "\"\""))),
                Tok::Str(text) => out.push_str(&format!("'{}'", text.replace('\'', "''"))),
                // Spark type names DataFusion spells differently.
                Tok::Word(w) if w.eq_ignore_ascii_case("TIMESTAMP_NTZ") => {
                    out.push_str("TIMESTAMP")
                }
                Tok::Word(w) if w.eq_ignore_ascii_case("BINARY") => out.push_str("BYTEA"),
                Tok::Word(w) if w.eq_ignore_ascii_case("STRING") => out.push_str("VARCHAR"),
                _ => out.push_str(&self.sql[*start..*end]),
            }
            at = *end;
        }
        out.trim().to_string()
    }
    /// A Spark type, up to `,` or `)` at depth 0 or NOT / COMMENT.
    fn spark_type(&mut self) -> Result<FieldType, DdlError> {
        let start = self.pos;
        let mut depth = 0i32;
        let mut text = String::new();
        while let Some(t) = self.peek().cloned() {
            match &t {
                Tok::Sym('<') | Tok::Sym('(') => depth += 1,
                Tok::Sym('>') | Tok::Sym(')') if depth > 0 => depth -= 1,
                Tok::Sym(',') | Tok::Sym(')') if depth == 0 => break,
                Tok::Word(w)
                    if depth == 0
                        && (w.eq_ignore_ascii_case("NOT") || w.eq_ignore_ascii_case("COMMENT")) =>
                {
                    break;
                }
                _ => {}
            }
            text.push_str(&match t {
                Tok::Word(w) => format!("{w} "),
                Tok::Ident(s) => format!("`{}` ", s.replace('`', "``")),
                Tok::Str(s) => format!("'{s}' "),
                Tok::Sym(c) => format!("{c} "),
            });
            self.pos += 1;
        }
        spark_to_field_type(text.trim()).map_err(|e| {
            self.pos = start;
            self.err(e)
        })
    }
}

/// `DECIMAL ( 12 , 2 )`, `ARRAY < BIGINT >`, `STRUCT < `a` : INT NOT NULL >` -> sluice types.
fn spark_to_field_type(text: &str) -> Result<FieldType, String> {
    let canonical = text
        .replace(' ', "")
        .replace("NOTNULL", " not null")
        .to_ascii_lowercase();
    let mapped = map_spark(&canonical);
    mapped
        .parse::<FieldType>()
        .map_err(|e| format!("type {text:?}: {e}"))
}

fn map_spark(t: &str) -> String {
    if let Some(inner) = t.strip_prefix("array<").and_then(|s| s.strip_suffix('>')) {
        return format!("list<{}>", map_spark(inner));
    }
    if let Some(inner) = t.strip_prefix("struct<").and_then(|s| s.strip_suffix('>')) {
        let mut members = Vec::new();
        let mut depth = 0;
        let mut cur = String::new();
        for c in inner.chars() {
            match c {
                '<' => depth += 1,
                '>' => depth -= 1,
                ',' if depth == 0 => {
                    members.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        members.push(cur);
        let members: Vec<String> = members
            .iter()
            .map(|m| match m.split_once(':') {
                Some((name, ty)) => {
                    let (ty, not_null) = match ty.strip_suffix(" not null") {
                        Some(t) => (t, " not null"),
                        None => (ty, ""),
                    };
                    format!("{name}: {}{not_null}", map_spark(ty))
                }
                None => m.clone(),
            })
            .collect();
        return format!("struct<{}>", members.join(", "));
    }
    match t {
        "boolean" => "bool".into(),
        "tinyint" => "int8".into(),
        "smallint" => "int16".into(),
        "int" | "integer" => "int32".into(),
        "bigint" => "int64".into(),
        "float" => "float32".into(),
        "double" => "float64".into(),
        "timestamp" => "timestamp(us, UTC)".into(),
        "timestamp_ntz" => "timestamp(us)".into(),
        other => other.to_string(),
    }
}

/// Applies one statement of a plan's Delta DDL to the table at `url`.
pub async fn apply_delta_statement(url: &Url, sql: &str) -> Result<Applied, DdlError> {
    let delta = |source: DeltaTableError| DdlError::Delta {
        sql: sql.to_string(),
        source,
    };
    let mut p = Parser {
        sql,
        toks: tokenize(sql)?,
        pos: 0,
    };
    let table = deltalake::open_table(url.clone()).await.map_err(delta)?;
    if p.is_kw("SELECT") {
        return query(&table, sql).await.map_err(delta);
    }
    if p.is_kw("UPDATE") {
        p.pos += 1;
        p.path()?;
        p.kw("SET")?;
        let column = p.path()?.join(".");
        p.sym('=')?;
        let value = p.rest_until(Some("WHERE"));
        let mut update = table.update().with_update(column.as_str(), value.as_str());
        if p.is_kw("WHERE") {
            p.pos += 1;
            update = update.with_predicate(p.rest_until(None));
        }
        let (_, metrics) = update.await.map_err(delta)?;
        return Ok(Applied::InPlace(format!(
            "updated {} row(s) of {column}",
            metrics.num_updated_rows
        )));
    }
    p.kw("ALTER")?;
    p.kw("TABLE")?;
    p.path()?;
    if p.is_kw("ADD") {
        p.pos += 1;
        let many = p.is_kw("COLUMNS");
        if !many {
            p.kw("COLUMN")?;
        } else {
            p.pos += 1;
            p.sym('(')?;
        }
        let mut fields = Vec::new();
        loop {
            let path = p.path()?;
            let t = p.spark_type()?;
            let mut nullable = true;
            let mut comment = None;
            loop {
                if p.is_kw("NOT") {
                    p.pos += 1;
                    p.kw("NULL")?;
                    nullable = false;
                } else if p.is_kw("COMMENT") {
                    p.pos += 1;
                    comment = Some(p.string()?);
                } else {
                    break;
                }
            }
            if path.len() > 1 {
                return Ok(Applied::NeedsRewrite(format!(
                    "delta-rs adds top-level columns only; {} is nested",
                    path.join(".")
                )));
            }
            let arrow = arrow::datatypes::Field::new(
                &path[0],
                crate::sink::delta_type(&t.to_arrow()),
                nullable,
            );
            let mut field: StructField = (&arrow).try_into_kernel().map_err(|e| {
                delta(DeltaTableError::Generic(format!(
                    "no Delta type for {t}: {e}"
                )))
            })?;
            if let Some(c) = comment {
                field = field.with_metadata([("comment", MetadataValue::String(c))]);
            }
            fields.push(field);
            if many && p.peek() == Some(&Tok::Sym(',')) {
                p.pos += 1;
                continue;
            }
            break;
        }
        if many {
            p.sym(')')?;
        }
        let names: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
        table
            .add_columns()
            .with_fields(fields)
            .await
            .map_err(delta)?;
        return Ok(Applied::InPlace(format!("added {}", names.join(", "))));
    }
    if p.is_kw("DROP") {
        return Ok(Applied::NeedsRewrite(
            "delta-rs cannot drop a column in place (Delta needs column mapping mode 'name')"
                .into(),
        ));
    }
    if p.is_kw("RENAME") {
        return Ok(Applied::NeedsRewrite(
            "delta-rs cannot rename a column in place (Delta needs column mapping mode 'name')"
                .into(),
        ));
    }
    if p.is_kw("SET") {
        p.pos += 1;
        p.kw("TBLPROPERTIES")?;
        p.sym('(')?;
        let mut props = HashMap::new();
        loop {
            let k = p.string()?;
            p.sym('=')?;
            let v = p.string()?;
            props.insert(k, v);
            if p.peek() == Some(&Tok::Sym(',')) {
                p.pos += 1;
                continue;
            }
            break;
        }
        p.sym(')')?;
        let keys: Vec<String> = props.keys().cloned().collect();
        return match table.set_tbl_properties().with_properties(props).await {
            Ok(_) => Ok(Applied::InPlace(format!("set {}", keys.join(", ")))),
            Err(e) if e.to_string().contains("Error parsing property") => Ok(Applied::Unsupported(
                format!("delta-rs does not know {}: {e}", keys.join(", ")),
            )),
            Err(e) => Err(delta(e)),
        };
    }
    p.kw("ALTER")?;
    p.kw("COLUMN")?;
    let path = p.path()?;
    let column = path.join(".");
    if p.is_kw("TYPE") {
        return Ok(Applied::NeedsRewrite(format!(
            "delta-rs cannot change the type of {column} in place"
        )));
    }
    if p.is_kw("COMMENT") {
        p.pos += 1;
        let text = p.string()?;
        return field_metadata(table, &column, "comment", text)
            .await
            .map_err(delta);
    }
    if p.is_kw("DROP") {
        p.pos += 1;
        if p.is_kw("NOT") {
            return match table
                .drop_column_not_null()
                .with_column(column.as_str())
                .await
            {
                Ok(_) => Ok(Applied::InPlace(format!("{column} is nullable"))),
                // Applying a plan twice is harmless.
                Err(e) if e.to_string().contains("already nullable") => {
                    Ok(Applied::InPlace(format!("{column} was already nullable")))
                }
                Err(e) => Err(delta(e)),
            };
        }
        p.kw("DEFAULT")?;
        return Ok(no_defaults(&column));
    }
    p.kw("SET")?;
    if p.is_kw("NOT") {
        let name = format!("{}_not_null", column.replace('.', "_"));
        let quoted = path
            .iter()
            .map(|s| format!("`{}`", s.replace('`', "``")))
            .collect::<Vec<_>>()
            .join(".");
        table
            .add_constraint()
            .with_constraint(name.as_str(), format!("{quoted} IS NOT NULL").as_str())
            .await
            .map_err(delta)?;
        return Ok(Applied::InPlace(format!(
            "CHECK constraint {name}: {column} IS NOT NULL (every row checked)"
        )));
    }
    p.kw("DEFAULT")?;
    Ok(no_defaults(&column))
}

/// Delta column defaults need the `allowColumnDefaults` table feature, which delta-rs cannot
/// enable; writing the default's metadata without it would make Spark refuse the table.
fn no_defaults(column: &str) -> Applied {
    Applied::Unsupported(format!(
        "delta-rs cannot set column defaults (no allowColumnDefaults feature); sluice fills {column}'s default itself when it upgrades records"
    ))
}

async fn field_metadata(
    table: DeltaTable,
    column: &str,
    key: &str,
    value: String,
) -> Result<Applied, DeltaTableError> {
    let what = format!("{column}.{key} = {value}");
    table
        .update_field_metadata()
        .with_field_name(column)
        .with_metadata(HashMap::from([(
            key.to_string(),
            MetadataValue::String(value),
        )]))
        .await?;
    Ok(Applied::InPlace(what))
}

/// Runs a plan's validation query with DataFusion, the table registered under the name the
/// query uses (Spark's backticks and backslash escapes read by the Databricks dialect).
async fn query(table: &DeltaTable, sql: &str) -> Result<Applied, DeltaTableError> {
    let generic = |e: &dyn std::fmt::Display| DeltaTableError::Generic(e.to_string());
    let toks = tokenize(sql).map_err(|e| generic(&e))?;
    let from = toks
        .iter()
        .position(|(_, _, t)| matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case("FROM")))
        .and_then(|i| toks.get(i + 1))
        .map(|(_, _, t)| match t {
            Tok::Ident(s) | Tok::Word(s) => s.clone(),
            _ => String::new(),
        })
        .ok_or_else(|| generic(&"the query has no FROM table"))?;
    let config = datafusion::prelude::SessionConfig::new()
        .set_str("datafusion.sql_parser.dialect", "Databricks")
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let ctx = datafusion::prelude::SessionContext::new_with_config(config);
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| generic(&e))?;
    ctx.register_table(
        from.as_str(),
        table.table_provider().await.map_err(|e| generic(&e))?,
    )
    .map_err(|e| generic(&e))?;
    let rows = ctx
        .sql(sql)
        .await
        .map_err(|e| generic(&e))?
        .collect()
        .await
        .map_err(|e| generic(&e))?;
    let first = rows.iter().find(|b| b.num_rows() > 0).and_then(|b| {
        b.column(0)
            .as_primitive_opt::<Int64Type>()
            .map(|a| a.value(0))
    });
    Ok(Applied::Query(first))
}
