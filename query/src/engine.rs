//! The DataFusion session answering SQL, read-only.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};

use crate::error::{Error, Result};
use crate::source::Source;
use crate::table::StoreTable;

/// A finished query's rows.
#[derive(Debug)]
pub struct QueryOutput {
    /// The result's schema (also when there are no rows).
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

/// Answers read-only SQL over `spans` and `logs`.
#[derive(Clone)]
pub struct Engine {
    ctx: SessionContext,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// A session whose tables read from `source`.
    pub fn new(source: Arc<dyn Source>) -> Result<Self> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("apiscope", "public");
        let ctx = SessionContext::new_with_config(config);
        for table in schemas::TABLES {
            let provider = Arc::new(StoreTable::new(table, source.clone()));
            ctx.register_table(table.name, provider)?;
        }
        Ok(Self { ctx })
    }

    /// Plans and runs `sql`, refusing anything that is not a query.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput> {
        let state = self.ctx.state();
        let plan = state.create_logical_plan(sql).await?;
        read_only()
            .verify_plan(&plan)
            .map_err(|error| Error::ReadOnly(Error::from(error).to_string()))?;
        let frame = self.ctx.execute_logical_plan(plan).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await?;
        Ok(QueryOutput { schema, batches })
    }
}

fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}
