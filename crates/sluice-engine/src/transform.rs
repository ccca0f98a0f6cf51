//! The SQL transform: one query over the table `input` (the batch), run by DataFusion.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};

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
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        SessionContext::new_with_config(config)
    }

    /// Plans the query against the input columns and returns the output schema. This is what
    /// `sluice validate` and start-up use to refuse a query that does not fit the input.
    pub async fn output_schema(&self, input: SchemaRef) -> Result<SchemaRef, DataFusionError> {
        let ctx = Self::context();
        let table = MemTable::try_new(input, vec![vec![]])?;
        ctx.register_table("input", Arc::new(table))?;
        let df = ctx.sql(&self.sql).await?;
        Ok(Arc::new(df.schema().as_arrow().clone()))
    }

    /// Runs the query over one batch.
    pub async fn run(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>, DataFusionError> {
        let ctx = Self::context();
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        ctx.register_table("input", Arc::new(table))?;
        ctx.sql(&self.sql).await?.collect().await
    }
}
