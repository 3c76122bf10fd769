//! The DataFusion session answering SQL, read-only: its settings, its limits ([`bounds`],
//! [`running`]) and the runtime queries run on.

pub(crate) mod bounds;
pub mod cluster;
pub(crate) mod running;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use ballista_core::extension::SessionConfigHelperExt;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use futures::StreamExt;
use schemas::priority;
use tokio::sync::Semaphore;

use crate::engine::cluster::Cluster;
use crate::error::{Error, Result};
use crate::output::QueryOutput;
use crate::questions::QuestionSettings;
use crate::questions::rollups::Rollups;
use crate::scan::{CATALOG, Files, ForCluster, Source, StoreTable};
use running::{Admission, Running};

/// What one query may use, and how many may run at once. Each refusal names its limit.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Memory one query's operators may reserve (joins, sorts, aggregates).
    pub memory_per_query: usize,
    /// How long a query may run, planning included.
    pub timeout: Duration,
    /// Rows a result may have; a query over this is refused, not cut.
    pub max_rows: usize,
    /// Queries running at once; one more is refused (503) until one ends.
    pub max_concurrent: usize,
    /// The largest value one function or expression may build; larger is refused.
    pub max_value_bytes: usize,
    /// Spans of one trace the trace APIs return; a longer trace is cut, with a warning.
    pub max_trace_spans: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            memory_per_query: 1024 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            max_rows: 100_000,
            max_concurrent: 8,
            max_value_bytes: 64 * 1024 * 1024,
            max_trace_spans: 20_000,
        }
    }
}

/// Answers read-only SQL over `spans` and `logs`.
#[derive(Clone)]
pub struct Engine {
    ctx: Arc<SessionContext>,
    /// The per-minute rollups: `api_call_minutes`, and what writes them.
    pub(crate) rollups: Arc<Rollups>,
    limits: QueryLimits,
    places: Arc<Semaphore>,
    running: Arc<Running>,
    runtime: Arc<QueryRuntime>,
}

/// The threads queries run on, apart from the ones that receive data: a heavy query takes
/// CPU time, but never the threads that acknowledge ingest. They run at a lower scheduling
/// priority too ([`priority::QUERY_NICE`]), so that where cores are few, queries use the
/// CPU ingest leaves rather than halving ingest: on 2 cores, 4 clients sending heavy
/// statements cut the acknowledgements per second of an OTLP load to 0.64 of a quiet run at
/// equal priority.
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl QueryRuntime {
    fn new() -> Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("apiscope-query")
            .on_thread_start(|| priority::lower_this_thread(priority::QUERY_NICE))
            .enable_all()
            .build()
            .map_err(|error| Error::Internal(format!("cannot start the query runtime: {error}")))?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // Dropped from async code at shutdown, where a blocking drop would panic.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// A session whose tables read from `source`, with the question functions.
    pub async fn new(
        source: Arc<dyn Source>,
        settings: QuestionSettings,
        limits: QueryLimits,
    ) -> Result<Self> {
        Self::build(source, settings, limits, None).await
    }

    /// A session whose statements run on `cluster`, over the committed files of `store`;
    /// statements that read no stored file are answered here.
    pub async fn on_cluster(
        store: schemas::Store,
        settings: QuestionSettings,
        limits: QueryLimits,
        cluster: Cluster,
    ) -> Result<Self> {
        Self::build(Arc::new(Files(store)), settings, limits, Some(cluster)).await
    }

    async fn build(
        source: Arc<dyn Source>,
        settings: QuestionSettings,
        limits: QueryLimits,
        cluster: Option<Cluster>,
    ) -> Result<Self> {
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
        // Filters are evaluated while Parquet is decoded: a selective one (a trace id, an
        // endpoint) decodes its own columns first and the others only for the rows it keeps.
        let parquet = &mut config.options_mut().execution.parquet;
        parquet.pushdown_filters = true;
        parquet.reorder_filters = true;
        if let Some(cluster) = &cluster {
            // Plans are cut into as many tasks a stage as the cluster is told to run, with
            // the settings Ballista plans under itself: no dynamic filters (they do not
            // cross stages), scalar subqueries as joins, joins that spill.
            config = config
                .with_target_partitions(cluster.partitions())
                .with_extension(Arc::new(ForCluster))
                .ballista_restricted_configuration();
        }
        // The shared session (the PostgreSQL front-end runs there) may hold what all the
        // queries allowed at once may hold; an HTTP query gets a pool of its own.
        let total = limits
            .memory_per_query
            .saturating_mul(limits.max_concurrent.max(1));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(total)))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let store = source.store();
        runtime.register_object_store(store.base_url(), store.objects());
        let values = crate::engine::bounds::ValueLimits {
            value: limits.max_value_bytes,
            batch: limits.memory_per_query,
        };
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(crate::engine::bounds::rule(values));
        if let Some(cluster) = cluster {
            state = state.with_query_planner(cluster.planner());
        }
        let state = state.build();
        let ctx = SessionContext::new_with_state(state);
        for table in schemas::TABLES {
            let provider = Arc::new(StoreTable::new(table, source.clone()));
            ctx.register_table(table.name, provider)?;
        }
        // The catalog tables and functions that psql's `\d` and Grafana's query builder read.
        setup_pg_catalog(&ctx, CATALOG, EmptyContextProvider)
            .map_err(|error| Error::Internal(format!("pg_catalog: {error}")))?;
        crate::functions::register(&ctx, settings.openapi.clone());
        crate::engine::bounds::register(&ctx, values);
        ctx.register_table("openapi_operations", openapi_operations(&settings.openapi)?)?;
        let rollups = Arc::new(Rollups::new(&ctx.state(), source).await?);
        ctx.register_udtf("api_call_minutes", rollups.clone());
        crate::questions::register(&ctx, &settings).await?;
        let places = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        Ok(Self {
            ctx: Arc::new(ctx),
            rollups,
            limits,
            places,
            running: Arc::default(),
            runtime: Arc::new(QueryRuntime::new()?),
        })
    }

    /// Computes the per-minute rollups that the store's files lack, for `writer` to write,
    /// and has it remove those whose file is gone (see `api_call_minutes`). Runs on the
    /// query threads.
    pub async fn roll_up(
        &self,
        writer: Arc<dyn schemas::RollupWriter>,
    ) -> Result<crate::questions::rollups::RollupReport> {
        let engine = self.clone();
        let task = self
            .runtime()?
            .spawn(async move { engine.rollups.build(&engine.ctx.state(), writer).await });
        let report = task.await.map_err(Error::from_task)??;
        Ok(report)
    }

    /// Rolls up the rows not yet flushed that arrived since the last time, so that questions
    /// over the current minutes read those rollups instead of the rows (see
    /// `api_call_minutes`); returns how many rows it rolled up. Runs on the query threads.
    pub async fn roll_up_buffer(&self) -> Result<usize> {
        let engine = self.clone();
        let task = self
            .runtime()?
            .spawn(async move { engine.rollups.roll_up_buffer(&engine.ctx.state()).await });
        Ok(task.await.map_err(Error::from_task)??)
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

    /// Plans and runs `sql`, refusing anything that is not a query, and any query over the
    /// limits: memory, time, result rows, queries at once.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput> {
        let started = std::time::Instant::now();
        let answer = self.guarded(sql).await;
        let outcome = answer.as_ref().map_or_else(Error::outcome, |_| "ok");
        record_query("http", outcome, started);
        answer
    }

    async fn guarded(&self, sql: &str) -> Result<QueryOutput> {
        let limits = &self.limits;
        // A memory pool of this query's own.
        let pool = Arc::new(GreedyMemoryPool::new(limits.memory_per_query));
        let admission = self.admit(pool.clone())?;
        let handle = self.runtime()?;
        let engine = self.clone();
        let sql = sql.to_owned();
        let mut task = handle.spawn(async move { engine.run(&sql, pool).await });
        tokio::select! {
            waited = tokio::time::timeout(limits.timeout, &mut task) => match waited {
                Ok(Ok(answer)) => answer,
                Ok(Err(failed)) => Err(Error::from_task(failed)),
                Err(_) => {
                    // Stop the work, not only the wait for it.
                    task.abort();
                    Err(timed_out(limits))
                }
            },
            reason = admission.cancelled() => {
                task.abort();
                Err(Error::ResourcesExhausted(reason))
            }
        }
    }

    /// A place among the queries running at once, held until dropped, for a query whose
    /// operators reserve from `pool`; refused (busy) when `max_concurrent_queries` already
    /// run. HTTP, the CLI and PostgreSQL share them.
    pub(crate) fn admit(&self, pool: Arc<dyn MemoryPool>) -> Result<Admission> {
        let permit = self.places.clone().try_acquire_owned().map_err(|_| {
            Error::Busy(format!(
                "{} queries are running, the most allowed at once (max_concurrent_queries); retry shortly",
                self.limits.max_concurrent
            ))
        })?;
        Ok(self.running.admit(permit, pool))
    }

    /// Cancels the running query that holds the most memory, telling its client `why`;
    /// the bytes it held, or `None` when no query runs. For the daemon's memory ceiling.
    pub fn cancel_largest_query(&self, why: &str) -> Option<usize> {
        self.running.cancel_largest(why)
    }

    /// The memory pool the PostgreSQL front-end's statements share.
    pub(crate) fn shared_pool(&self) -> Arc<dyn MemoryPool> {
        self.ctx.runtime_env().memory_pool.clone()
    }

    /// The runtime queries run on, apart from the one that receives data.
    pub(crate) fn runtime(&self) -> Result<tokio::runtime::Handle> {
        self.runtime
            .handle()
            .cloned()
            .ok_or_else(|| Error::Internal("the query runtime is gone".into()))
    }

    /// The guards in force.
    pub(crate) fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    async fn run(&self, sql: &str, pool: Arc<GreedyMemoryPool>) -> Result<QueryOutput> {
        let limits = &self.limits;
        // A memory pool of this query's own, over the shared session's tables and functions.
        // No spilling: a query over its memory is refused rather than filling the disk the
        // store lives on. The Parquet footers (statistics, page indexes) that earlier queries
        // parsed, and the file statistics planning derives from them, stay in the shared
        // session's caches: a file never changes once written, and a lookup of one trace would
        // otherwise spend most of its time reading footers again, and every query over an
        // hour of small files some milliseconds per file converting their statistics.
        let shared = &self.ctx.runtime_env().cache_manager;
        let caches = CacheManagerConfig::default()
            .with_file_metadata_cache(Some(shared.get_file_metadata_cache()))
            .with_metadata_cache_limit(shared.get_metadata_cache_limit())
            .with_file_statistics_cache(shared.get_file_statistic_cache())
            .with_file_statistics_cache_limit(shared.get_file_statistic_cache_limit());
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(self.ctx.runtime_env().object_store_registry.clone())
            .with_cache_manager(caches)
            .with_memory_pool(pool)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_runtime_env(runtime)
            .build();
        let plan = state.create_logical_plan(sql).await?;
        Self::check_read_only(&plan)?;
        let ctx = SessionContext::new_with_state(state);
        let frame = ctx.execute_logical_plan(plan).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let mut stream = frame.execute_stream().await?;
        let mut batches = Vec::new();
        let mut rows = 0;
        let mut bytes = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|error| self.named(error.into()))?;
            rows += batch.num_rows();
            // The answer is held whole before it is encoded: it counts as the query's memory.
            bytes += batch.get_array_memory_size();
            if bytes > limits.memory_per_query {
                return Err(Error::ResourcesExhausted(format!(
                    "the result holds more than {} bytes (query_memory_limit); select fewer or smaller columns",
                    limits.memory_per_query
                )));
            }
            if rows > limits.max_rows {
                return Err(too_many_rows(limits));
            }
            batches.push(batch);
        }
        Ok(QueryOutput { schema, batches })
    }

    /// `error` with the memory limit named, when it is the memory limit.
    fn named(&self, error: Error) -> Error {
        match error {
            Error::ResourcesExhausted(detail)
                if !detail.contains("max_value_bytes")
                    && !detail.contains("query_memory_limit") =>
            {
                Error::ResourcesExhausted(format!(
                    "the query needs more than {} bytes of memory (query_memory_limit): {detail}",
                    self.limits.memory_per_query
                ))
            }
            other => other,
        }
    }
}

/// `30s`, `1m 30s`.
pub(crate) fn humanize(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds.fract() == 0.0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{seconds:.3}s")
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

/// Counts one query and its latency. `protocol` is `http` (the HTTP API and the CLI) or
/// `postgres`.
pub(crate) fn record_query(
    protocol: &'static str,
    outcome: &'static str,
    started: std::time::Instant,
) {
    metrics::counter!("apiscope_queries_total", "protocol" => protocol, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("apiscope_query_duration_seconds", "protocol" => protocol)
        .record(started.elapsed().as_secs_f64());
}

/// The refusal of a query that ran longer than `query_timeout`, on every front-end.
pub(crate) fn timed_out(limits: &QueryLimits) -> Error {
    Error::TimedOut(format!(
        "the query ran longer than {} (query_timeout)",
        humanize(limits.timeout)
    ))
}

/// The refusal of an answer longer than `max_result_rows`, on every front-end.
pub(crate) fn too_many_rows(limits: &QueryLimits) -> Error {
    Error::TooManyRows(format!(
        "the result has more than {} rows (max_result_rows); add a LIMIT, or aggregate",
        limits.max_rows
    ))
}

#[cfg(test)]
mod runtime_tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn query_threads_run_at_a_lower_priority() {
        let runtime = super::QueryRuntime::new().unwrap();
        let handle = runtime.handle().unwrap().clone();
        let nice = std::thread::spawn(move || {
            handle.block_on(async {
                tokio::spawn(async { schemas::priority::this_thread_nice() })
                    .await
                    .unwrap()
            })
        })
        .join()
        .unwrap();
        assert!(
            nice >= schemas::priority::QUERY_NICE,
            "query thread nice {nice}"
        );
    }

    #[tokio::test]
    async fn a_query_that_panics_is_an_internal_error_and_the_next_query_runs() {
        use datafusion::arrow::datatypes::DataType;
        use datafusion::logical_expr::{Volatility, create_udf};

        let dir = tempfile::tempdir().unwrap();
        let source = std::sync::Arc::new(crate::Files(schemas::Store::local(dir.path())));
        let engine = super::Engine::new(source, Default::default(), Default::default())
            .await
            .unwrap();
        let boom = create_udf(
            "boom",
            vec![DataType::Int64],
            DataType::Int64,
            Volatility::Volatile,
            std::sync::Arc::new(|_| panic!("boom went the function")),
        );
        engine.context().register_udf(boom);

        let error = engine
            .query("SELECT boom(count(*)) FROM spans")
            .await
            .unwrap_err();
        assert!(matches!(error, super::Error::Internal(_)), "{error:?}");
        assert_eq!(error.http_status(), 500);
        assert!(
            error.to_string().contains("boom went the function"),
            "{error}"
        );
        let answer = engine.query("SELECT count(*) FROM spans").await.unwrap();
        assert_eq!(
            answer.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            1
        );
    }
}
