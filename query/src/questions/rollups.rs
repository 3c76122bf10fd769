//! Per-minute rollups of the API calls: what `api_call_minutes(...)` answers from, so that a
//! question over a day reads thousands of rollup rows instead of millions of calls.
//!
//! Each data file of the tables `api_calls` reads (`spans`, `requests`, `logs`) gets a
//! rollup file in the rollups' table (`schemas::MINUTES`, a Delta table like the others):
//! its calls per minute, service, endpoint and source, with their count, errors, longest
//! duration and a latency sketch (the one `approx_percentile_cont` uses, serialized). A
//! rollup is derived data: it is committed after its file, made from it alone, and removed
//! after it; losing one costs only speed. Which rollups exist is read from the rollups'
//! log, never from a listing.
//!
//! `api_call_minutes(from, to)` takes one snapshot of the three tables and reads
//!
//! - the rollups of the files that have one, for the whole minutes inside the window;
//! - the calls themselves for everything else: the files without a rollup yet, the rows not
//!   yet flushed, and the parts of minutes that the window cuts.
//!
//! Sketches merge by adding counts, so a percentile from rollups equals the one computed
//! over the calls; counts, errors and maxima add up the same way.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{
    MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider, Session,
    TableFunctionArgs, TableFunctionImpl, TableProvider,
};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, ScalarValue, plan_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::{DataSource, DataSourceExec};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::Expr;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::prelude::{SessionContext, col, lit};

use crate::questions::{self, Window, WindowArgs};
use crate::scan::CATALOG;
use crate::scan::file_cache::FileCache;
use crate::scan::source::{Snapshot, Source, TimeRange};
use crate::scan::table::StoreTable;
use crate::scan::unreadable;
use schemas::{MINUTES, NewFile, ObjectMeta, ObjectPath, RollupWriter, Store};

mod buffered;
use buffered::BufferedRollups;

/// Bytes of rollups kept in memory at most: about 1.5 MB per 8M spans as flushed (fewer
/// once compacted), so some days of a busy fleet.
const BUDGET: usize = 256 << 20;

const MINUTE_NS: i64 = Window::MINUTE_NS;

/// The calls of `api_calls` matching `{filter}`, per minute, service and endpoint: the rows
/// of a rollup, and of the parts `api_call_minutes` reads from the calls themselves.
const PER_MINUTE: &str = include_str!("sql/per_minute.sql");

/// The columns of `api_call_minutes`, with what each holds, as docs/questions.md documents them.
pub const COLUMNS: &[(&str, &str)] = &[
    (
        "minute",
        "the minute the calls started in (calls in the window only)",
    ),
    ("service_name", "the service that served them"),
    ("endpoint", "`METHOD route`"),
    (
        "source",
        "where the calls were seen: `span`, `request_log` or `log`, as in `api_calls`",
    ),
    ("calls", "calls"),
    (
        "errors",
        "failed calls (HTTP 5xx, or an error status on a span)",
    ),
    ("max_ms", "the longest call, in milliseconds"),
    (
        "latency",
        "the calls' durations (ms) as a sketch, for `sketch_percentile` and `sketch_merge`",
    ),
    (
        "first_time",
        "when the first of the calls started (null from rollups made before it was kept)",
    ),
    (
        "last_time",
        "when the last of the calls started (null from rollups made before it was kept)",
    ),
    (
        "latency_counts",
        "how many of the calls took at most each of the latency bounds (ms: 1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 7.5, 8, 9, 10, 15, ... 90000, 100000), cumulative: `latency_counts[k]` for the `k`-th bound, from 1",
    ),
    (
        "service_version",
        "the version of the service that served them, as in `api_calls`",
    ),
    (
        "deployment_environment",
        "the environment of the service that served them, as in `api_calls`",
    ),
];

/// Fixed files and rows per table: what one part of a rollup reads.
#[derive(Debug)]
struct Fixed {
    store: Store,
    tables: Vec<(&'static str, Snapshot)>,
}

impl Fixed {
    /// Nothing yet, of files in `store`.
    fn new(store: &Store) -> Self {
        Self {
            store: store.clone(),
            tables: Vec::new(),
        }
    }

    fn part(&mut self, table: &'static str) -> &mut Snapshot {
        if let Some(index) = self.tables.iter().position(|(name, _)| *name == table) {
            return &mut self.tables[index].1;
        }
        self.tables.push((table, Snapshot::default()));
        &mut self.tables.last_mut().expect("just pushed").1
    }
}

impl Source for Fixed {
    fn store(&self) -> &Store {
        &self.store
    }

    fn snapshot(&self, table: &'static schemas::Table, _: TimeRange) -> io::Result<Snapshot> {
        let part = self.tables.iter().find(|(name, _)| *name == table.name);
        Ok(part.map_or_else(Snapshot::default, |(_, part)| Snapshot {
            files: part.files.clone(),
            batches: part.batches.clone(),
            sequences: part.sequences.clone(),
        }))
    }
}

/// A session with `state`'s settings, functions and runtime, whose tables (and `api_calls`)
/// read `source`.
async fn session_over(state: &SessionState, source: Arc<dyn Source>) -> Result<SessionContext> {
    let state = SessionStateBuilder::new_from_existing(state.clone())
        .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
        .build();
    let ctx = SessionContext::new_with_state(state);
    let catalog = MemoryCatalogProvider::new();
    datafusion::catalog::CatalogProvider::register_schema(
        &catalog,
        "public",
        Arc::new(MemorySchemaProvider::new()),
    )?;
    ctx.register_catalog(CATALOG, Arc::new(catalog));
    for table in schemas::TABLES {
        ctx.register_table(table.name, Arc::new(StoreTable::new(table, source.clone())))?;
    }
    questions::register_api_calls(&ctx).await?;
    Ok(ctx)
}

/// The rows of `PER_MINUTE` with `filter`, over `source`, planned in `state`.
async fn per_minute(
    state: &SessionState,
    source: Fixed,
    filter: &str,
    columns: Option<&[&str]>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let ctx = session_over(state, Arc::new(source)).await?;
    let sql = PER_MINUTE.replace("{filter}", filter);
    let mut frame = ctx.sql(&sql).await?;
    if let Some(columns) = columns {
        frame = frame.select_columns(columns)?;
    }
    frame.create_physical_plan().await
}

/// `PER_MINUTE` over rows not yet flushed, planned once. Planning the SQL costs more than
/// aggregating a second of rows (about 20 ms against 3 at 30,000 spans/s), so each
/// rollup of buffered rows runs a copy of this plan with its rows put in its scans.
#[derive(Debug)]
struct RowsPlan {
    /// The plan over no rows: its scans of the buffer are empty memory scans.
    plan: Arc<dyn ExecutionPlan>,
}

impl RowsPlan {
    async fn new(state: &SessionState, store: &Store) -> Result<Self> {
        let mut fixed = Fixed::new(store);
        for table in schemas::TABLES {
            fixed.part(table.name);
        }
        let plan = per_minute(state, fixed, "true", None).await?;
        Ok(Self { plan })
    }

    /// The per-minute rollup of `batches`, rows of `table` not yet flushed.
    async fn roll_up(
        &self,
        state: &SessionState,
        table: &schemas::Table,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        let stored = table.stored_schema();
        let mut scans = 0;
        let plan = self
            .plan
            .clone()
            .transform_up(|node| {
                let Some(scan) = node.downcast_ref::<DataSourceExec>() else {
                    return Ok(Transformed::no(node));
                };
                let Some(memory) = scan.data_source().downcast_ref::<MemorySourceConfig>() else {
                    return Ok(Transformed::no(node));
                };
                if memory.original_schema().fields() != stored.fields() {
                    return Ok(Transformed::no(node));
                }
                scans += 1;
                // As many partitions as planned, so that the plan above still fits.
                let mut partitions = vec![Vec::new(); memory.partitions().len().max(1)];
                let count = partitions.len();
                for (index, batch) in batches.iter().enumerate() {
                    partitions[index % count].push(batch.clone());
                }
                let filled = MemorySourceConfig::try_new(
                    &partitions,
                    memory.original_schema(),
                    memory.projection().clone(),
                )?
                .with_limit(memory.fetch());
                let filled: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(filled);
                Ok(Transformed::yes(filled))
            })?
            .data;
        if scans == 0 {
            return Err(DataFusionError::Internal(format!(
                "the rollup plan of buffered rows does not scan {}",
                table.name
            )));
        }
        datafusion::physical_plan::collect(plan, state.task_ctx()).await
    }
}

/// The rollups of rows not yet flushed: the runs kept, and the plan that makes new ones.
#[derive(Debug)]
struct BufferRollups {
    runs: BufferedRollups,
    plan: RowsPlan,
}

impl BufferRollups {
    /// The rollup rows of `table`'s buffered `batches` (`sequences[i]` is the sequence of
    /// `batches[i]`): the kept runs', and the rollup of the other batches, made now and
    /// kept. Also returns how many rows were rolled up now.
    async fn rolled_up(
        &self,
        state: &SessionState,
        table: &'static schemas::Table,
        batches: Vec<RecordBatch>,
        sequences: &[u64],
    ) -> Result<(Vec<RecordBatch>, usize)> {
        let split = self.runs.split(table.name, batches, sequences);
        let mut rows: Vec<RecordBatch> = split
            .rolled
            .iter()
            .flat_map(|run| run.iter().cloned())
            .collect();
        if split.rest.is_empty() {
            return Ok((rows, 0));
        }
        let rolled = split.rest.iter().map(RecordBatch::num_rows).sum();
        let made = self.plan.roll_up(state, table, split.rest).await?;
        rows.extend(made.iter().cloned());
        self.runs.keep(table.name, &split.rest_sequences, made);
        Ok((rows, rolled))
    }
}

/// What one pass of [`Rollups::build`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RollupReport {
    /// Rollups written.
    pub written: usize,
    /// Rollups removed because their file is gone.
    pub removed: usize,
    /// Files given up on: their rollup could not be made, and is not tried again.
    pub failed: usize,
}

/// The rollup of `file`, of `table`, stored at `rollup` by `writer` (not committed yet), and
/// its rows as [`load`] reads them back.
async fn roll_up(
    state: &SessionState,
    store: &Store,
    table: &'static str,
    file: &ObjectMeta,
    rollup: &ObjectPath,
    schema: SchemaRef,
    writer: Arc<dyn RollupWriter>,
) -> Result<(NewFile, Vec<RecordBatch>)> {
    let mut fixed = Fixed::new(store);
    fixed.part(table).files.push(file.clone());
    let plan = per_minute(state, fixed, "true", None).await?;
    // Left out of the plan, it would get an empty rollup.
    if unreadable::contains(&file.location) {
        return Err(DataFusionError::Execution(format!(
            "{} cannot be read",
            file.location
        )));
    }
    let rows = datafusion::physical_plan::collect(plan, state.task_ctx())
        .await?
        .iter()
        .map(|batch| schemas::conformed(&schema, batch))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let rollup = rollup.clone();
    let store = store.clone();
    blocking(move || {
        let stored = writer.write(&store, &rollup, schema, &rows)?;
        Ok((stored, rows))
    })
    .await
}

/// Whether every call that the rollup rows `rows` hold of the minute starting at `minute`
/// started in `from..to`, as their first and last times say (rows without them, made before
/// they were kept, say nothing).
fn inside(rows: &[RecordBatch], minute: i64, from: i64, to: i64) -> Result<bool> {
    use arrow::array::{Array, AsArray, PrimitiveArray};
    use arrow::datatypes::TimestampNanosecondType;
    let times = |batch: &'_ RecordBatch,
                 name: &str|
     -> Result<PrimitiveArray<TimestampNanosecondType>> {
        batch
            .column_by_name(name)
            .and_then(|column| column.as_primitive_opt::<TimestampNanosecondType>())
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("a rollup's {name} is not a time")))
    };
    for batch in rows {
        let (minutes, firsts, lasts) = (
            times(batch, "minute")?,
            times(batch, "first_time")?,
            times(batch, "last_time")?,
        );
        for row in 0..batch.num_rows() {
            if minutes.is_null(row) || minutes.value(row) != minute {
                continue;
            }
            let within = firsts.is_valid(row)
                && lasts.is_valid(row)
                && firsts.value(row) >= from
                && lasts.value(row) < to;
            if !within {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Runs the store's blocking `work` off the query threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| DataFusionError::External(Box::new(error)))?
        .map_err(|error| DataFusionError::External(Box::new(error)))
}

/// The store's per-minute rollups: what writes them, and `api_call_minutes([from [, to]])`,
/// the calls in the window per minute, service and endpoint, from rollups where they exist.
#[derive(Debug)]
pub(crate) struct Rollups {
    source: Arc<dyn Source>,
    /// The rows of a rollup, and of `api_call_minutes`.
    schema: SchemaRef,
    /// Rollups read, kept in memory.
    cache: Arc<FileCache<Vec<RecordBatch>>>,
    /// Rollups of rows not yet flushed.
    buffered: Arc<BufferRollups>,
    /// Files whose rollup could not be made, not tried again.
    failed: Mutex<HashSet<ObjectPath>>,
}

impl Rollups {
    /// The rollups of the files in `source`, planned in `state`.
    pub(crate) async fn new(state: &SessionState, source: Arc<dyn Source>) -> Result<Self> {
        let plan = RowsPlan::new(state, source.store()).await?;
        Ok(Self {
            source,
            schema: plan.plan.schema(),
            cache: Arc::new(FileCache::new(BUDGET)),
            buffered: Arc::new(BufferRollups {
                runs: BufferedRollups::default(),
                plan,
            }),
            failed: Mutex::default(),
        })
    }

    /// Computes the rollups missing for the store's live files of the hours `writer` makes,
    /// has it store and commit them, and remove those whose file is gone. A file whose
    /// rollup cannot be made (unreadable, or deleted meanwhile) is reported once, counted
    /// in `failed`, and not tried again; its calls are read instead.
    pub(crate) async fn build(
        &self,
        state: &SessionState,
        writer: Arc<dyn RollupWriter>,
    ) -> Result<RollupReport> {
        let mut report = RollupReport::default();
        let store = self.source.store().clone();
        // The rollups there are, then the files: a rollup is committed after its file.
        let source = self.source.clone();
        let (mut orphans, files) = blocking(move || {
            let rollups = source.store().table_files(MINUTES.name, None, None)?;
            let rollups: HashSet<ObjectPath> = rollups.into_iter().map(|r| r.location).collect();
            let mut files = Vec::new();
            for table in schemas::TABLES {
                for file in source.files(table, TimeRange::default())? {
                    files.push((table.name, file));
                }
            }
            Ok((rollups, files))
        })
        .await?;
        let mut missing = Vec::new();
        for (table, file) in files {
            let Some(rollup) = store.rollup_of(table, &file.location) else {
                continue;
            };
            let given_up = self.failed.lock().contains(&file.location);
            if !orphans.remove(&rollup) && !given_up {
                missing.push((table, file, rollup));
            }
        }
        // Only the hours this node makes: another node makes (and removes) the others'.
        let deciding = writer.clone();
        let naming = store.clone();
        let (missing, orphans) = blocking(move || {
            let mut makes = HashMap::new();
            let mut mine = |table: &str, path: &ObjectPath| -> io::Result<bool> {
                let Some(start) = schemas::hour_start(path.as_ref()) else {
                    return Ok(false);
                };
                if let Some(&decided) = makes.get(&(table.to_owned(), start)) {
                    return Ok(decided);
                }
                let decided = deciding.makes(table, start)?;
                makes.insert((table.to_owned(), start), decided);
                Ok(decided)
            };
            let mut wanted = Vec::new();
            for (table, file, rollup) in missing {
                if mine(table, &file.location)? {
                    wanted.push((table, file, rollup));
                }
            }
            let mut gone = Vec::new();
            for rollup in orphans {
                let made_here = match naming.rollup_source(&rollup) {
                    Some((table, _)) => mine(table.name, &rollup)?,
                    None => true,
                };
                if made_here {
                    gone.push(rollup);
                }
            }
            Ok((wanted, gone))
        })
        .await?;
        let mut added = Vec::new();
        let mut made = Vec::new();
        for (table, file, rollup) in missing {
            let schema = self.schema.clone();
            let writing = writer.clone();
            match roll_up(state, &store, table, &file, &rollup, schema, writing).await {
                Ok((new, rows)) => {
                    added.push(new);
                    made.push((rollup, rows));
                }
                // Reported already, and tried again by the next pass: it may be restored.
                Err(_) if unreadable::contains(&file.location) => {}
                Err(error) => {
                    tracing::warn!(file = %file.location, %error, "cannot write this file's rollup; its calls are read instead");
                    self.failed.lock().insert(file.location);
                    report.failed += 1;
                }
            }
        }
        let (written, removed) = (added.len(), orphans.len());
        let committing = store.clone();
        let committed = blocking(move || writer.commit(&committing, &added, &orphans)).await?;
        // Given up: the rollups stored are swept, and the next pass does it again.
        if committed == schemas::Committed::Done {
            report.written = written;
            report.removed = removed;
            // The next questions find them in memory rather than read them back.
            for (rollup, rows) in made {
                let bytes = rows.iter().map(RecordBatch::get_array_memory_size).sum();
                self.cache.insert(&rollup, Arc::new(rows), bytes);
            }
        }
        Ok(report)
    }

    /// Rolls up the rows not yet flushed that no kept rollup covers, and keeps their
    /// rollups (see `buffered`), so that a question then aggregates only the rows that
    /// arrive after this. Returns how many rows it rolled up.
    pub(crate) async fn roll_up_buffer(&self, state: &SessionState) -> Result<usize> {
        let mut rolled = 0;
        for table in schemas::TABLES {
            let (batches, sequences) = self.source.buffered(table);
            if batches.is_empty() || batches.len() != sequences.len() {
                continue;
            }
            let (_, now) = self
                .buffered
                .rolled_up(state, table, batches, &sequences)
                .await?;
            rolled += now;
        }
        Ok(rolled)
    }
}

impl TableFunctionImpl for Rollups {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let window = WindowArgs::new("api_call_minutes", args.exprs(), args.session())?;
        Ok(Arc::new(MinutesTable {
            window,
            source: self.source.clone(),
            schema: self.schema.clone(),
            cache: self.cache.clone(),
            buffered: self.buffered.clone(),
        }))
    }
}

/// One window of `api_call_minutes`.
#[derive(Debug)]
struct MinutesTable {
    window: WindowArgs,
    source: Arc<dyn Source>,
    schema: SchemaRef,
    cache: Arc<FileCache<Vec<RecordBatch>>>,
    buffered: Arc<BufferRollups>,
}

#[async_trait]
impl TableProvider for MinutesTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(state) = session.as_any().downcast_ref::<SessionState>() else {
            return plan_err!("api_call_minutes runs inside a DataFusion session");
        };
        let Window { from, to } = self.window.window(session)?;
        // The whole minutes inside the window, which rollups can answer.
        let first = from.div_euclid(MINUTE_NS) * MINUTE_NS
            + if from.rem_euclid(MINUTE_NS) == 0 {
                0
            } else {
                MINUTE_NS
            };
        let end = to.div_euclid(MINUTE_NS) * MINUTE_NS;
        let whole = first < end;

        let range = TimeRange {
            lo: Some(from),
            hi: Some(to),
        };
        let store = self.source.store();
        let mut raw = Fixed::new(store);
        let mut rolled = Fixed::new(store);
        let mut rows = Vec::new();
        let mut candidates = Vec::new();
        // Where the planning goes, for the debug log below.
        let (mut snapshots, mut buffered) = (Duration::ZERO, Duration::ZERO);
        for table in schemas::TABLES {
            let began = Instant::now();
            let snapshot = self
                .source
                .snapshot(table, range)
                .map_err(|error| DataFusionError::External(Box::new(error)))?;
            snapshots += began.elapsed();
            let Snapshot {
                files,
                batches,
                sequences,
            } = snapshot;
            for file in files {
                if whole {
                    candidates.push((table.name, file));
                } else {
                    raw.part(table.name).files.push(file);
                }
            }
            if whole && !batches.is_empty() && batches.len() == sequences.len() {
                // The buffered rows' whole minutes from their rollups, kept or made now (and
                // kept), the minutes the window cuts from the rows.
                let began = Instant::now();
                let (made, _) = self
                    .buffered
                    .rolled_up(state, table, batches.clone(), &sequences)
                    .await?;
                buffered += began.elapsed();
                rows.extend(made);
                rolled.part(table.name).batches.extend(batches);
            } else {
                raw.part(table.name).batches.extend(batches);
            }
        }
        // The rollups, from memory or read now; a file whose rollup is missing (not made
        // yet) or unreadable is read itself.
        let cache = self.cache.clone();
        let schema = self.schema.clone();
        let files: Vec<(&'static str, ObjectPath)> = candidates
            .iter()
            .map(|(table, file)| (*table, file.location.clone()))
            .collect();
        let reading = store.clone();
        let began = Instant::now();
        let loaded = blocking(move || {
            let rollups = if files.is_empty() {
                HashSet::new()
            } else {
                let listed = reading.table_files(MINUTES.name, Some(from), Some(to))?;
                listed.into_iter().map(|r| r.location).collect()
            };
            Ok(files
                .iter()
                .map(|(table, file)| {
                    let rollup = reading.rollup_of(table, file)?;
                    rollups
                        .contains(&rollup)
                        .then(|| load(&reading, &cache, &rollup, &schema))
                        .flatten()
                })
                .collect::<Vec<_>>())
        })
        .await?;
        tracing::debug!(
            snapshots_ms = snapshots.as_secs_f64() * 1e3,
            buffered_ms = buffered.as_secs_f64() * 1e3,
            rollups_ms = began.elapsed().as_secs_f64() * 1e3,
            files = candidates.len(),
            "api_call_minutes: the tables' snapshots, the buffered rows' rollups, the files' rollups"
        );
        for ((table, file), rollup) in candidates.into_iter().zip(loaded) {
            match rollup {
                Some(batches) => {
                    rows.extend(batches.iter().cloned());
                    rolled.part(table).files.push(file);
                }
                None => raw.part(table).files.push(file),
            }
        }
        let any_rolled = !rolled.tables.is_empty();

        // Each part reads only the columns asked for (none for `count(*)`: then the
        // narrowest, dropped on top).
        let all: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let mut columns: Vec<&str> = match projection {
            Some(projection) => projection.iter().map(|&index| all[index]).collect(),
            None => all.clone(),
        };
        let counting = columns.is_empty();
        if counting {
            columns.push("minute");
        }
        let columns = Some(columns.as_slice());

        let mut inputs = Vec::new();
        let nothing_raw = raw
            .tables
            .iter()
            .all(|(_, part)| part.files.is_empty() && part.batches.is_empty());
        if !any_rolled || !nothing_raw {
            let filter = Window::filter("time", from, to);
            inputs.push(per_minute(state, raw, &filter, columns).await?);
        }
        if any_rolled {
            // A minute the window cuts is read from the rollups too when every call they
            // hold of it started inside the window: the current minute, for a window that
            // ends now. Otherwise its part in the window is read from the calls themselves.
            let starts_inside = from < first && inside(&rows, first - MINUTE_NS, from, to)?;
            let ends_inside = end < to && inside(&rows, end, from, to)?;
            let (lo, hi) = (
                first - if starts_inside { MINUTE_NS } else { 0 },
                end + if ends_inside { MINUTE_NS } else { 0 },
            );
            inputs.push(self.read_rollups(state, rows, lo, hi, columns).await?);
            let mut cuts = Vec::new();
            if from < first && !starts_inside {
                cuts.push(format!("({})", Window::filter("time", from, first)));
            }
            if end < to && !ends_inside {
                cuts.push(format!("({})", Window::filter("time", end, to)));
            }
            if !cuts.is_empty() {
                inputs.push(per_minute(state, rolled, &cuts.join(" OR "), columns).await?);
            }
        }
        let union = UnionExec::try_new(inputs)?;
        if counting {
            let nothing: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::new();
            return Ok(Arc::new(ProjectionExec::try_new(nothing, union)?));
        }
        Ok(union)
    }
}

impl MinutesTable {
    /// The rollup rows `rows` of the minutes `first <= minute < end`.
    async fn read_rollups(
        &self,
        state: &SessionState,
        rows: Vec<RecordBatch>,
        first: i64,
        end: i64,
        columns: Option<&[&str]>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let table = MemTable::try_new(self.schema.clone(), vec![rows])?;
        let ctx = SessionContext::new_with_state(state.clone());
        let mut frame = ctx.read_table(Arc::new(table))?.filter(
            col("minute")
                .gt_eq(time_literal(first))
                .and(col("minute").lt(time_literal(end))),
        )?;
        if let Some(columns) = columns {
            frame = frame.select_columns(columns)?;
        }
        frame.create_physical_plan().await
    }
}

/// The rows of the rollup at `path`, from `cache` or read now; `None` when it does not read
/// as `schema` (gone, or damaged) or lacks what questions need (made by an older release).
fn load(
    store: &Store,
    cache: &FileCache<Vec<RecordBatch>>,
    path: &ObjectPath,
    schema: &SchemaRef,
) -> Option<Arc<Vec<RecordBatch>>> {
    if let Some(rows) = cache.get(path) {
        return Some(rows);
    }
    type Read = std::result::Result<Option<Vec<RecordBatch>>, Box<dyn std::error::Error>>;
    let read = || -> Read {
        let builder = ParquetRecordBatchReaderBuilder::try_new(store.get(path)?)?;
        if !schemas::rollup_complete(builder.schema(), schema) {
            return Ok(None);
        }
        let mut rows = Vec::new();
        for batch in builder.build()? {
            rows.push(schemas::conformed(schema, &batch?)?);
        }
        Ok(Some(rows))
    };
    match read() {
        Ok(None) => {
            tracing::debug!(rollup = %path, "a rollup made by an older release; its file is read instead");
            None
        }
        Ok(Some(rows)) => {
            let bytes = rows.iter().map(RecordBatch::get_array_memory_size).sum();
            let rows = Arc::new(rows);
            cache.insert(path, rows.clone(), bytes);
            Some(rows)
        }
        Err(error) => {
            tracing::warn!(rollup = %path, %error, "unreadable rollup; its file is read instead");
            None
        }
    }
}

fn time_literal(ns: i64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(
        Some(ns),
        Some("UTC".into()),
    ))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Fixtures: files written as the write side would.
mod tests {
    use super::*;

    #[test]
    fn a_damaged_or_gone_rollup_is_no_rollup_and_a_read_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let file = store.partition("spans", 0).join("1-a-0.parquet");
        let rollup = store.rollup_of("spans", &file).unwrap();
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("calls", arrow::datatypes::DataType::Int64, false),
            arrow::datatypes::Field::new(
                "latency_counts",
                schemas::ColumnType::Counts.data_type(),
                true,
            ),
        ]));
        let cache = FileCache::new(1 << 20);
        assert!(load(&store, &cache, &rollup, &schema).is_none(), "gone");
        let damaged = bytes::Bytes::from_static(b"PAR1 not parquet");
        store.put(&rollup, damaged).unwrap();
        assert!(load(&store, &cache, &rollup, &schema).is_none(), "damaged");

        let counts =
            arrow::array::ListArray::from_iter_primitive::<arrow::datatypes::Int64Type, _, _>(
                vec![Some(vec![Some(3)]), Some(vec![Some(4)])],
            );
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::Int64Array::from(vec![3, 4])),
                Arc::new(counts),
            ],
        )
        .unwrap();
        // Made by a release before latency counts: no rollup for the questions.
        let older = batch.project(&[0]).unwrap();
        collector::RollupFiles::default()
            .write(&store, &rollup, older.schema(), &[older])
            .unwrap();
        assert!(load(&store, &cache, &rollup, &schema).is_none(), "older");
        collector::RollupFiles::default()
            .write(
                &store,
                &rollup,
                schema.clone(),
                std::slice::from_ref(&batch),
            )
            .unwrap();
        let other = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("calls", arrow::datatypes::DataType::Utf8, false),
        ]));
        assert!(
            load(&store, &cache, &rollup, &other).is_none(),
            "another format"
        );
        assert_eq!(
            *load(&store, &cache, &rollup, &schema).unwrap(),
            std::slice::from_ref(&batch)
        );
        // Kept in memory: read again without the file.
        store.delete(&rollup).unwrap();
        assert_eq!(*load(&store, &cache, &rollup, &schema).unwrap(), [batch]);
        assert_eq!(cache.held().0, 1);
    }

    /// The rows of `api_call_minutes` as a rollup holds them: the columns of the rollups'
    /// table, so that other readers of the Delta table read them as its log says.
    #[tokio::test]
    async fn a_rollup_holds_the_columns_of_the_rollups_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let source = Arc::new(crate::scan::source::Files(store.clone()));
        let engine = crate::Engine::new(source, Default::default(), Default::default())
            .await
            .unwrap();
        let made: Vec<(String, arrow::datatypes::DataType)> = engine
            .rollups
            .schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let table: Vec<(String, arrow::datatypes::DataType)> = MINUTES
            .stored_schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(made, table);
    }

    /// A rollup made before the first and last times were kept reads with them null, and
    /// such a row cannot vouch for a minute the window cuts; a row with them can, when both
    /// lie in the window.
    #[test]
    fn a_cut_minute_is_whole_in_the_rollups_only_when_its_times_say_so() {
        use arrow::array::{ArrayRef, TimestampNanosecondArray};
        let schema = MINUTES.stored_schema();
        let minute = 1_795_791_600_000_000_000_i64;
        let time = |ns: i64| -> ArrayRef {
            Arc::new(TimestampNanosecondArray::from(vec![ns]).with_timezone("UTC"))
        };
        let text =
            |value: &str| -> ArrayRef { Arc::new(arrow::array::StringArray::from(vec![value])) };
        let number =
            |value: i64| -> ArrayRef { Arc::new(arrow::array::Int64Array::from(vec![value])) };
        let old: Vec<ArrayRef> = vec![
            time(minute),
            text("orders"),
            text("POST /v2/orders"),
            text("span"),
            number(2),
            number(0),
            Arc::new(arrow::array::Float64Array::from(vec![8.0])),
            Arc::new(arrow::array::BinaryArray::from(vec![&b""[..]])),
        ];
        let old_schema = Arc::new(arrow::datatypes::Schema::new(
            schema.fields()[..old.len()].to_vec(),
        ));
        let old = RecordBatch::try_new(old_schema, old.clone()).unwrap();
        let read = schemas::conformed(&schema, &old).unwrap();
        assert_eq!(read.num_columns(), schema.fields().len());
        assert_eq!(read.column_by_name("last_time").unwrap().null_count(), 1);
        let (from, to) = (minute - 3_600_000_000_000, minute + 30_000_000_000);
        assert!(!inside(std::slice::from_ref(&read), minute, from, to).unwrap());
        // Another minute's rows say nothing about this one.
        assert!(inside(std::slice::from_ref(&read), minute + MINUTE_NS, from, to).unwrap());

        let with_times = |first: i64, last: i64| {
            let mut columns = old.columns().to_vec();
            let counts = arrow::array::new_null_array(&schemas::ColumnType::Counts.data_type(), 1);
            columns.extend([
                time(first),
                time(last),
                counts,
                text("1.0.0"),
                text("production"),
            ]);
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        };
        let second = 1_000_000_000;
        let early = with_times(minute + second, minute + 20 * second);
        assert!(inside(std::slice::from_ref(&early), minute, from, to).unwrap());
        let late = with_times(minute + second, to);
        assert!(!inside(&[early.clone(), late], minute, from, to).unwrap());
        let before = with_times(minute + second, minute + 20 * second);
        assert!(!inside(&[before], minute, minute + 2 * second, to).unwrap());
    }

    /// Two HTTP calls logged as OTLP log records at 15:00 (a 503 in 12 ms, a 200 in 8).
    fn logs() -> bytes::Bytes {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
        use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        use prost::Message;

        use crate::questions::slt::{number, text};
        let records = [(503, 12), (200, 8)]
            .into_iter()
            .enumerate()
            .map(|(n, (status, ms))| LogRecord {
                time_unix_nano: 1_795_791_600_000_000_000 + n as u64 * 1_000_000_000,
                attributes: vec![
                    text("http.request.method", "POST"),
                    text("http.route", "/v2/orders"),
                    number("http.response.status_code", status),
                    number("duration_ms", ms),
                ],
                ..LogRecord::default()
            })
            .collect();
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![text("service.name", "orders")],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        }
        .encode_to_vec()
        .into()
    }

    /// The fixture's requests, traces and logs ingested and flushed, and an engine over
    /// the files.
    async fn fixture_in_files() -> (tempfile::TempDir, Store, crate::Engine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let collector = collector::Collector::open(collector::Config::new(dir.path()))
            .unwrap()
            .0;
        let collector = Arc::new(collector);
        let requests = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/requests.ndjson"),
        )
        .unwrap();
        let ingesting = collector.clone();
        tokio::task::spawn_blocking(move || {
            ingesting.ingest_requests(bytes::Bytes::from(requests))?;
            ingesting.ingest_traces(crate::questions::slt::traces())?;
            ingesting.ingest_logs(logs())
        })
        .await
        .unwrap()
        .unwrap();
        collector.flush().await.unwrap();

        let source = Arc::new(crate::scan::source::Files(store.clone()));
        let engine = crate::Engine::new(source.clone(), Default::default(), Default::default())
            .await
            .unwrap();
        (dir, store, engine)
    }

    #[tokio::test]
    async fn a_rollup_made_here_is_kept_in_memory_as_it_reads_back() {
        let (_dir, store, engine) = fixture_in_files().await;
        let report = engine
            .roll_up(Arc::new(collector::RollupFiles::default()))
            .await
            .unwrap();
        let rollups = store.table_files(MINUTES.name, None, None).unwrap();
        assert_eq!(report.written, rollups.len());
        assert!(rollups.len() >= 3, "one rollup per table: {rollups:?}");
        let kept = &engine.rollups.cache;
        let schema = &engine.rollups.schema;
        for rollup in rollups {
            let held = kept.get(&rollup.location).expect("kept once committed");
            let read = load(&store, &FileCache::new(1 << 20), &rollup.location, schema).unwrap();
            let rows =
                |batches: &[RecordBatch]| arrow::compute::concat_batches(schema, batches).unwrap();
            assert_eq!(rows(&held), rows(&read), "{}", rollup.location);
        }
    }

    /// The plan made once for buffered rows, given a table's rows, rolls them up as the
    /// SQL planned over the same rows in files does: for each table `api_calls` reads.
    #[tokio::test]
    async fn the_plan_made_once_rolls_up_each_table_s_rows_as_its_files_are() {
        let (_dir, store, engine) = fixture_in_files().await;
        let state = engine.context().state();
        let sorted = |batches: Vec<RecordBatch>| async move {
            let ctx = SessionContext::new();
            let schema = batches[0].schema();
            ctx.register_table(
                "t",
                Arc::new(MemTable::try_new(schema, vec![batches]).unwrap()),
            )
            .unwrap();
            let frame = ctx
                .sql("SELECT * FROM t ORDER BY 1, 2, 3, 4")
                .await
                .unwrap();
            arrow::util::pretty::pretty_format_batches(&frame.collect().await.unwrap())
                .unwrap()
                .to_string()
        };
        for &table in schemas::TABLES {
            let files = store.table_files(table.name, None, None).unwrap();
            let mut rows = Vec::new();
            for file in &files {
                let read =
                    ParquetRecordBatchReaderBuilder::try_new(store.get(&file.location).unwrap());
                for batch in read.unwrap().build().unwrap() {
                    rows.push(batch.unwrap());
                }
            }
            let made = engine
                .rollups
                .buffered
                .plan
                .roll_up(&state, table, rows)
                .await
                .unwrap();
            let mut fixed = Fixed::new(&store);
            fixed.part(table.name).files = files;
            let plan = per_minute(&state, fixed, "true", None).await.unwrap();
            let planned = datafusion::physical_plan::collect(plan, state.task_ctx())
                .await
                .unwrap();
            let calls: i64 = made
                .iter()
                .map(|b| {
                    arrow::compute::sum(
                        b.column(4)
                            .as_any()
                            .downcast_ref::<arrow::array::Int64Array>()
                            .unwrap(),
                    )
                    .unwrap_or(0)
                })
                .sum();
            assert!(calls >= 2, "{}: {calls} calls", table.name);
            assert_eq!(sorted(made).await, sorted(planned).await, "{}", table.name);
        }
    }

    #[tokio::test]
    async fn a_file_whose_footer_cannot_be_read_gets_no_rollup_until_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let hour = store.partition("spans", 1_764_237_600_000_000_000);
        let damaged = hour.join("1-a-0.parquet");
        let garbage = bytes::Bytes::from_static(b"not parquet at all");
        store.put(&damaged, garbage).unwrap();
        let source = Arc::new(crate::scan::source::Files(store.clone()));
        let engine = crate::Engine::new(source, Default::default(), Default::default())
            .await
            .unwrap();
        // Not an empty rollup (the scan leaves the file out), and not given up on: tried
        // again by each pass, in case it is restored.
        for _ in 0..2 {
            let report = engine
                .roll_up(Arc::new(collector::RollupFiles::default()))
                .await;
            assert_eq!(report.unwrap(), RollupReport::default());
            let rollup = store.rollup_of("spans", &damaged).unwrap();
            assert!(store.head(&rollup).unwrap().is_none());
        }
    }
}
