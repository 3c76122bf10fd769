//! The DataFusion session answering SQL, read-only.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;

use crate::error::{Error, Result};
use crate::questions::QuestionSettings;
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

/// The catalog holding apiscope's tables; also the database name PostgreSQL clients see.
pub const CATALOG: &str = "apiscope";

/// Answers read-only SQL over `spans` and `logs`.
#[derive(Clone)]
pub struct Engine {
    ctx: Arc<SessionContext>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// A session whose tables read from `source`, with the question functions.
    pub async fn new(source: Arc<dyn Source>, settings: QuestionSettings) -> Result<Self> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, "public");
        // A question's plan is made when its table is scanned, inside the query's plan, and
        // the outer optimizer then runs over it again; join reordering there breaks on joins
        // that already carry dynamic filters (DataFusion 55 asserts). The filters are only
        // an optimisation, so joins go without them.
        config
            .options_mut()
            .optimizer
            .enable_join_dynamic_filter_pushdown = false;
        let ctx = SessionContext::new_with_config(config);
        for table in schemas::TABLES {
            let provider = Arc::new(StoreTable::new(table, source.clone()));
            ctx.register_table(table.name, provider)?;
        }
        // The catalog tables and functions that psql's `\d` and Grafana's query builder read.
        setup_pg_catalog(&ctx, CATALOG, EmptyContextProvider)
            .map_err(|error| Error::Internal(format!("pg_catalog: {error}")))?;
        crate::functions::register(&ctx, settings.openapi.clone());
        ctx.register_table("openapi_operations", openapi_operations(&settings.openapi)?)?;
        crate::questions::register(&ctx, &settings).await?;
        Ok(Self { ctx: Arc::new(ctx) })
    }

    /// The session, shared by the HTTP and PostgreSQL front-ends.
    pub(crate) fn context(&self) -> &Arc<SessionContext> {
        &self.ctx
    }

    /// Refuses a plan that would change anything: DDL, DML, `COPY`, `SET`.
    pub(crate) fn check_read_only(plan: &LogicalPlan) -> Result<()> {
        read_only()
            .verify_plan(plan)
            .map_err(|error| Error::ReadOnly(Error::from(error).to_string()))
    }

    /// Plans and runs `sql`, refusing anything that is not a query.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput> {
        let state = self.ctx.state();
        let plan = state.create_logical_plan(sql).await?;
        Self::check_read_only(&plan)?;
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

/// `openapi_operations`: one row per documented operation and response code.
fn openapi_operations(
    openapi: &schemas::routes::OpenApi,
) -> Result<Arc<datafusion::datasource::MemTable>> {
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("method", DataType::Utf8, false),
        Field::new("route", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
    ]));
    let (mut methods, mut routes, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
    for operation in openapi.operations() {
        for status in &operation.statuses {
            methods.push(operation.method.clone());
            routes.push(operation.route.clone());
            statuses.push(status.clone());
        }
    }
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(methods)),
            Arc::new(StringArray::from(routes)),
            Arc::new(StringArray::from(statuses)),
        ],
    )
    .map_err(|error| Error::Internal(error.to_string()))?;
    Ok(Arc::new(datafusion::datasource::MemTable::try_new(
        schema,
        vec![vec![batch]],
    )?))
}
