//! The DataFusion session answering SQL, read-only.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::cast::as_string_array;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::logical_expr::{ColumnarValue, LogicalPlan, Volatility, create_udf};
use datafusion::scalar::ScalarValue;
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
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, "public");
        let ctx = SessionContext::new_with_config(config);
        for table in schemas::TABLES {
            let provider = Arc::new(StoreTable::new(table, source.clone()));
            ctx.register_table(table.name, provider)?;
        }
        // The catalog tables and functions that psql's `\d` and Grafana's query builder read.
        setup_pg_catalog(&ctx, CATALOG, EmptyContextProvider)
            .map_err(|error| Error::Internal(format!("pg_catalog: {error}")))?;
        ctx.register_udf(current_setting());
        ctx.register_udf(crate::json::TO_JSON.as_ref().clone());
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

/// The server settings clients read with `current_setting(name)`: Grafana and drivers ask
/// for `server_version_num` to pick their SQL dialect.
const SETTINGS: &[(&str, &str)] = &[
    ("server_version", "16.6"),
    ("server_version_num", "160006"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("search_path", "public"),
    ("timezone", "UTC"),
    ("datestyle", "ISO, MDY"),
    ("intervalstyle", "postgres"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("max_identifier_length", "63"),
    ("transaction_read_only", "on"),
    ("default_transaction_read_only", "on"),
];

fn setting(name: &str) -> Result<&'static str, DataFusionError> {
    let wanted = name.to_ascii_lowercase();
    SETTINGS
        .iter()
        .find(|(key, _)| *key == wanted)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            DataFusionError::Execution(format!("unrecognized configuration parameter \"{name}\""))
        })
}

fn current_setting() -> datafusion::logical_expr::ScalarUDF {
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| match &args[0] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))) => Ok(ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(setting(name)?.to_owned())),
            )),
            ColumnarValue::Scalar(_) => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None))),
            ColumnarValue::Array(names) => {
                let names = as_string_array(names)?;
                let values = names
                    .iter()
                    .map(|name| name.map(setting).transpose())
                    .collect::<Result<StringArray, _>>()?;
                Ok(ColumnarValue::Array(Arc::new(values) as ArrayRef))
            }
        }),
    )
}
