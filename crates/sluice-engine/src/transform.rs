//! The SQL transform: one query over the table `input` (the batch), run by DataFusion.
//!
//! Every piece of SQL a spec carries (the transform, `sql` and `expression` checks, `where`
//! filters) is planned by [`read_only_query`]: one query, reading only the tables the context
//! holds. A spec is run by every worker on every machine, so it must not be able to write a
//! file (`COPY ... TO`), open one (`CREATE EXTERNAL TABLE ... LOCATION`), change a table
//! (`INSERT`) or the session (`SET`).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::dialect_from_str;

/// Why SQL from a spec was not planned.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Not one read-only query: several statements, or one that writes, defines or sets
    /// something. The message says which.
    #[error("{0}")]
    NotReadOnly(String),
    /// A query that does not plan (a missing column or table, a type error, a syntax error).
    #[error(transparent)]
    Plan(#[from] DataFusionError),
}

impl From<QueryError> for DataFusionError {
    fn from(e: QueryError) -> DataFusionError {
        match e {
            QueryError::NotReadOnly(m) => DataFusionError::Plan(m),
            QueryError::Plan(e) => e,
        }
    }
}

/// A context for spec SQL: its catalog holds only what the caller registers (no
/// `information_schema`, no tables named by a path or URL, which DataFusion only resolves after
/// `enable_url_table`), and its table functions (`generate_series`, `range`) read no files.
pub(crate) fn sandbox(config: SessionConfig) -> SessionContext {
    SessionContext::new_with_config(config.with_information_schema(false))
}

/// Plans `sql` as one read-only query over the tables `ctx` holds. Two guards, both needed:
/// the text must parse as exactly one query (so `COPY`, `CREATE EXTERNAL TABLE`, `INSERT`,
/// `EXPLAIN`, `SET` and a second statement are refused before anything is planned), and the
/// plan must pass DataFusion's [`SQLOptions`] with DDL, DML and statements all refused (so a
/// query that would still define or write something, such as `SELECT ... INTO t`, is refused
/// before it runs). These are the steps of [`SessionContext::sql_with_options`], kept apart so
/// a refusal reads as one rather than as a planning error. Nothing is executed here: DDL runs
/// only in `execute_logical_plan`, after the check.
pub(crate) async fn read_only_query(
    ctx: &SessionContext,
    sql: &str,
) -> Result<DataFrame, QueryError> {
    let state = ctx.state();
    let statement = one_query(&state, sql)?;
    let plan = state.statement_to_plan(statement).await?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| {
            QueryError::NotReadOnly(format!(
                "the query would change something ({}); only reading is allowed",
                crate::first_line(&e).trim_start_matches("Error during planning: ")
            ))
        })?;
    Ok(ctx.execute_logical_plan(plan).await?)
}

/// Parses `sql` with the session's dialect and returns its one statement if it is a query.
fn one_query(state: &SessionState, sql: &str) -> Result<Statement, QueryError> {
    let dialect_name = state.config().options().sql_parser.dialect;
    let dialect = dialect_from_str(dialect_name).ok_or_else(|| {
        QueryError::Plan(DataFusionError::Plan(format!(
            "unsupported SQL dialect {dialect_name}"
        )))
    })?;
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(dialect.as_ref())
        .build()?
        .parse_statements()?;
    if statements.len() != 1 {
        return Err(QueryError::NotReadOnly(format!(
            "found {} statements; write one query (SELECT ... FROM ...) without `;` between statements",
            statements.len()
        )));
    }
    let Some(statement) = statements.pop_front() else {
        return Err(QueryError::NotReadOnly("no query found".into()));
    };
    let is_query =
        matches!(&statement, Statement::Statement(s) if matches!(**s, SqlStatement::Query(_)));
    if !is_query {
        return Err(QueryError::NotReadOnly(format!(
            "`{}` is not a query; only one SELECT (or WITH ... SELECT) is allowed: sluice writes the result itself",
            statement_head(&statement)
        )));
    }
    Ok(statement)
}

/// The start of a statement, enough to recognise it in an error message.
fn statement_head(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(4).collect();
    let head = words.join(" ");
    if text.split_whitespace().count() > 4 {
        format!("{head} ...")
    } else {
        head
    }
}

/// A SQL transform, ready to plan and run.
#[derive(Debug, Clone)]
pub struct SqlTransform {
    sql: String,
}

impl SqlTransform {
    pub fn new(sql: impl Into<String>) -> SqlTransform {
        SqlTransform { sql: sql.into() }
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    fn context() -> SessionContext {
        // One partition per batch: parallelism comes from workers, each running its own batch,
        // so DataFusion does not repartition a batch across threads the workers already use.
        sandbox(SessionConfig::new().with_target_partitions(1))
    }

    /// Plans the query against the input columns and returns the output schema. This is what
    /// `sluice validate` and start-up use to refuse a query that does not fit the input, or
    /// that is not one read-only query over `input`.
    pub async fn output_schema(&self, input: SchemaRef) -> Result<SchemaRef, QueryError> {
        let ctx = Self::context();
        let table = MemTable::try_new(input, vec![vec![]])?;
        ctx.register_table("input", Arc::new(table))?;
        let df = read_only_query(&ctx, &self.sql).await?;
        Ok(Arc::new(df.schema().as_arrow().clone()))
    }

    /// Runs the query over one batch.
    pub async fn run(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>, DataFusionError> {
        let ctx = Self::context();
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        ctx.register_table("input", Arc::new(table))?;
        read_only_query(&ctx, &self.sql).await?.collect().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    async fn refusal(sql: &str) -> String {
        match SqlTransform::new(sql).output_schema(input()).await {
            Err(QueryError::NotReadOnly(m)) => m,
            other => panic!("{sql:?} was not refused as a write: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_query_over_input_plans() {
        let out = SqlTransform::new("WITH t AS (SELECT id FROM input) SELECT id * 2 AS d FROM t")
            .output_schema(input())
            .await
            .unwrap();
        assert_eq!(out.field(0).name(), "d");
    }

    #[tokio::test]
    async fn statements_that_are_not_queries_are_refused_before_planning() {
        for (sql, head) in [
            (
                "COPY (SELECT id FROM input) TO '/tmp/x.csv' STORED AS CSV",
                "COPY",
            ),
            (
                "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE",
            ),
            ("INSERT INTO input SELECT * FROM input", "INSERT INTO input"),
            ("EXPLAIN SELECT id FROM input", "EXPLAIN"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("CREATE VIEW v AS SELECT id FROM input", "CREATE VIEW"),
            ("DROP TABLE input", "DROP TABLE"),
        ] {
            let m = refusal(sql).await;
            assert!(m.contains(head) && m.contains("not a query"), "{sql}: {m}");
        }
        let m = refusal("SELECT id FROM input; SELECT name FROM input").await;
        assert!(m.contains("found 2 statements"), "{m}");
    }

    /// A query that parses as a query but defines a table is caught by the second guard.
    #[tokio::test]
    async fn select_into_is_refused_by_the_plan_check() {
        let m = refusal("SELECT id INTO copied FROM input").await;
        assert!(m.contains("DDL not supported"), "{m}");
    }

    /// Nothing but `input` can be named: no path, no URL, no catalog table.
    #[tokio::test]
    async fn only_input_can_be_read() {
        for sql in [
            "SELECT * FROM '/etc/passwd'",
            "SELECT * FROM 'file:///etc/passwd'",
            "SELECT * FROM information_schema.tables",
            "SELECT * FROM other",
        ] {
            match SqlTransform::new(sql).output_schema(input()).await {
                Err(QueryError::Plan(e)) => {
                    assert!(e.to_string().contains("not found"), "{sql}: {e}")
                }
                other => panic!("{sql:?} planned: {other:?}"),
            }
        }
    }
}
