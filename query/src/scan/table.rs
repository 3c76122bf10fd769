//! The table provider behind every stored table (`spans`, `logs`, `requests`): Parquet
//! files of the hours a query's time filter keeps, united with the rows not yet flushed.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DFSchema, ScalarValue, plan_datafusion_err};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr_rewriter::unnormalize_col;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, col,
};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExecBuilder;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use schemas::Table;

use crate::scan::blooms::{self, Blooms};
use crate::scan::key_index::{self, Footers, ScanFile};
use crate::scan::pairs_map;
use crate::scan::read_as::LookupBeforeCast;
use crate::scan::source::{Source, TimeRange};

/// One stored table.
#[derive(Debug)]
pub(crate) struct StoreTable {
    table: &'static Table,
    schema: SchemaRef,
    /// The schema of its files and buffered rows: no computed columns.
    stored: SchemaRef,
    source: Arc<dyn Source>,
    /// The files' trace id filters, for lookups by trace id.
    blooms: Arc<Blooms>,
    /// Where the files hold each attribute key (for filters on attributes), and how to read
    /// their maps.
    footers: Arc<Footers>,
}

impl StoreTable {
    pub(crate) fn new(table: &'static Table, source: Arc<dyn Source>) -> Self {
        Self {
            table,
            schema: table.schema(),
            stored: table.stored_schema(),
            source,
            blooms: Arc::default(),
            footers: Arc::default(),
        }
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters prune partitions and row groups, and are applied again on the rows; those
        // the key indexes may answer, the scan applies itself where they do not, and those on
        // computed columns it applies to the stored columns.
        Ok(filters
            .iter()
            .map(|filter| {
                if !self.prunes(filter) || key_index::exact(filter, &self.stored).is_some() {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let range = time_range(filters);
        let source = self.source.clone();
        let table = self.table;
        let snapshot = tokio::task::spawn_blocking(move || source.snapshot(table, range))
            .await
            .map_err(|error| DataFusionError::External(Box::new(error)))?
            .map_err(|error| DataFusionError::External(Box::new(error)))?;

        // Files and buffer hold the stored columns; the computed ones (`Column::computed`)
        // are evaluated over them in one projection on top.
        let wanted = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let (read, outputs) = self.plan_columns(state, &wanted)?;
        // A filter on a computed column cannot prune the files; it is applied to the rows,
        // before the computed columns are.
        let (filters, computed): (Vec<Expr>, Vec<Expr>) = filters
            .iter()
            .cloned()
            .partition(|filter| self.prunes(filter));

        let mut files = snapshot.files;
        if let Some(trace_ids) = blooms::wanted(&filters) {
            let blooms = self.blooms.clone();
            let source = self.source.clone();
            files =
                tokio::task::spawn_blocking(move || blooms.keep(source.store(), files, &trace_ids))
                    .await
                    .map_err(|error| DataFusionError::External(Box::new(error)))?;
        }

        let keys = key_index::wanted(&filters, &self.stored);
        // Filters the key indexes may answer outright (told DataFusion: exact), and the others.
        let mut answerable = Vec::new();
        let mut inexact = Vec::new();
        for filter in filters.iter().cloned() {
            match key_index::exact(&filter, &self.stored) {
                Some(exact) => answerable.push(Answerable {
                    exact,
                    otherwise: filter,
                }),
                None => inexact.push(filter),
            }
        }
        let mut computed_filters = Vec::new();
        for filter in computed {
            // Files written before a column was computed may hold it as stored, and their
            // indexes answer for it there.
            let exact = self.stored_where_no(&filter).and_then(|column| {
                key_index::exact(&filter, &self.stored).map(|exact| exact.unless_stored(column))
            });
            let over_stored = self.over_stored(state, filter)?;
            match exact {
                Some(exact) => answerable.push(Answerable {
                    exact,
                    otherwise: over_stored,
                }),
                None => computed_filters.push(over_stored),
            }
        }
        let exact: Vec<key_index::Exact> = answerable.iter().map(|a| a.exact.clone()).collect();
        // A plan for the cluster reads whole files as they are: row selections and read
        // types do not cross the wire, so no filter is left to the indexes there.
        let on_cluster = crate::scan::plans_for_cluster(state);
        let files = if on_cluster {
            files
                .into_iter()
                .map(|file| ScanFile::whole(file, exact.len()))
                .collect()
        } else {
            let footers = self.footers.clone();
            let source = self.source.clone();
            tokio::task::spawn_blocking(move || {
                footers.select(source.store(), files, &keys, &exact)
            })
            .await
            .map_err(|error| DataFusionError::External(Box::new(error)))?
            .map_err(|error| DataFusionError::External(Box::new(error)))?
        };

        // Files are scanned in groups by which exact filters their indexes answered; each
        // group applies the others to its rows.
        let mut groups: BTreeMap<Vec<bool>, Vec<ScanFile>> = BTreeMap::new();
        for file in files {
            groups.entry(file.answered.clone()).or_default().push(file);
        }
        let mut inputs = Vec::new();
        for (answered, files) in groups {
            let unanswered: Vec<&Answerable> = answerable
                .iter()
                .zip(&answered)
                .filter(|(_, answered)| !**answered)
                .map(|(filter, _)| filter)
                .collect();
            // Answered filters would only make the scan decode their columns again.
            let mut pruning = inexact.clone();
            pruning.extend(
                unanswered
                    .iter()
                    .filter(|filter| self.prunes(&filter.otherwise))
                    .map(|filter| filter.otherwise.clone()),
            );
            let mut applied: Vec<&Expr> = unanswered.iter().map(|f| &f.otherwise).collect();
            applied.extend(&computed_filters);
            let columns = self.with_columns_of(&read, &applied)?;
            let mut urls = Vec::with_capacity(files.len());
            for file in &files {
                urls.push(ListingTableUrl::parse(
                    self.source.store().url_of(&file.file.location),
                )?);
            }
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet");
            let mut config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(self.stored.clone());
            if !on_cluster {
                config = config.with_expr_adapter_factory(Arc::new(LookupBeforeCast));
            }
            // File statistics (for planning) are kept across queries in the session's cache,
            // checked against each file's size and modification time.
            let statistics = state.runtime_env().cache_manager.get_file_statistic_cache();
            let table = ListingTable::try_new(config)?.with_cache(statistics);
            // A limit holds for rows that pass every filter, so not below a filter.
            let limit = limit.filter(|_| applied.is_empty());
            let scan = table.scan(state, Some(&columns), &pruning, limit).await?;
            let scan = key_index::attach(scan, files, state.runtime_env())?;
            inputs.push(filter(state, scan, &applied, read.len())?);
        }
        if !snapshot.batches.is_empty() || inputs.is_empty() {
            let mut applied: Vec<&Expr> = answerable.iter().map(|f| &f.otherwise).collect();
            applied.extend(&computed_filters);
            let columns = self.with_columns_of(&read, &applied)?;
            let limit = limit.filter(|_| applied.is_empty());
            // The buffered batches in as many partitions as the query runs at once, so that
            // filtering them (a map lookup, say) uses every core it may.
            let partitions = state.config().target_partitions().max(1);
            let mut split = vec![Vec::new(); partitions.min(snapshot.batches.len()).max(1)];
            let count = split.len();
            for (n, batch) in snapshot.batches.into_iter().enumerate() {
                split[n % count].push(batch);
            }
            let buffered = MemTable::try_new(self.stored.clone(), split)?;
            let scan = buffered
                .scan(state, Some(&columns), &filters, limit)
                .await?;
            inputs.push(filter(state, scan, &applied, read.len())?);
        }
        let scan = UnionExec::try_new(inputs)?;
        if outputs
            .iter()
            .all(|(expr, _)| matches!(expr, Expr::Column(_)))
        {
            return Ok(scan);
        }
        let scanned = DFSchema::try_from(scan.schema())?;
        let mut exprs = Vec::with_capacity(outputs.len());
        for (expr, name) in outputs {
            exprs.push((state.create_physical_expr(expr, &scanned)?, name.to_owned()));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, scan)?))
    }
}

/// A column a scan gives: its expression over the stored columns, and its name.
type Output = (Expr, &'static str);

/// A filter the key indexes may answer outright, and what applies it over the stored columns
/// to the rows of files whose index does not.
struct Answerable {
    exact: key_index::Exact,
    otherwise: Expr,
}

impl StoreTable {
    /// For the table's columns `wanted`: the stored columns to read (in the order first
    /// needed, so without computed columns the order of `wanted`), and each wanted column as
    /// an expression over them, with its name.
    fn plan_columns(
        &self,
        state: &dyn Session,
        wanted: &[usize],
    ) -> Result<(Vec<usize>, Vec<Output>)> {
        let mut read = Vec::new();
        let mut outputs = Vec::with_capacity(wanted.len());
        for &index in wanted {
            let column = &self.table.columns[index];
            let expr = match column.computed {
                None => col(column.name),
                Some(sql) => self.over_stored_sql(state, sql)?,
            };
            self.add_columns_of(&mut read, &expr)?;
            outputs.push((expr, column.name));
        }
        Ok((read, outputs))
    }

    /// `filter` over the stored columns: each computed column it uses replaced by its
    /// expression.
    fn over_stored(&self, state: &dyn Session, filter: Expr) -> Result<Expr> {
        filter
            .transform_up(|expr| {
                let Expr::Column(used) = &expr else {
                    return Ok(Transformed::no(expr));
                };
                let computed = self.table.columns.iter().find_map(|column| {
                    (column.name == used.name)
                        .then_some(column.computed)
                        .flatten()
                });
                match computed {
                    Some(sql) => Ok(Transformed::yes(self.over_stored_sql(state, sql)?)),
                    None => Ok(Transformed::no(expr)),
                }
            })
            .data()
    }

    /// The expression `sql` over the stored columns, typed and simplified as a query's
    /// expressions are (`arrow_cast` becomes a cast).
    fn over_stored_sql(&self, state: &dyn Session, sql: &str) -> Result<Expr> {
        let stored = DFSchema::try_from(self.stored.clone())?;
        let expr = session_state(state)?.create_logical_expr(sql, &stored)?;
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(stored.clone()))
                .build(),
        );
        simplifier.simplify(simplifier.coerce(expr, &stored)?)
    }
}

impl StoreTable {
    /// Whether `filter` may prune files: every column it uses is stored as it is read. (A
    /// computed column may share its name with a stored one it is computed from.)
    fn prunes(&self, filter: &Expr) -> bool {
        filter
            .column_refs()
            .iter()
            .all(|used| self.table.is_stored_as_read(&used.name))
    }

    /// For a filter on computed columns that files lacking one stored column hold as they are
    /// read ([`schemas::Column::stored_where_no`]): that column.
    fn stored_where_no(&self, filter: &Expr) -> Option<&'static str> {
        let mut lacking = None;
        for used in filter.column_refs() {
            if self.table.is_stored_as_read(&used.name) {
                continue;
            }
            let column = self.table.columns.iter().find(|c| c.name == used.name)?;
            let stored_where_no = column.stored_where_no?;
            if lacking.is_some_and(|before| before != stored_where_no) {
                return None;
            }
            lacking = Some(stored_where_no);
        }
        lacking
    }

    /// The stored columns `read`, then those `filters` use that `read` lacks.
    fn with_columns_of(&self, read: &[usize], filters: &[&Expr]) -> Result<Vec<usize>> {
        let mut columns = read.to_vec();
        for filter in filters {
            self.add_columns_of(&mut columns, filter)?;
        }
        Ok(columns)
    }

    /// Appends to `columns` the stored columns `expr` uses that it lacks.
    fn add_columns_of(&self, columns: &mut Vec<usize>, expr: &Expr) -> Result<()> {
        for used in expr.column_refs() {
            let index = self.stored.index_of(&used.name)?;
            if !columns.contains(&index) {
                columns.push(index);
            }
        }
        Ok(())
    }
}

/// The rows of `plan` that pass all of `filters`, with its first `keep` columns.
fn filter(
    state: &dyn Session,
    plan: Arc<dyn ExecutionPlan>,
    filters: &[&Expr],
    keep: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let Some(predicate) = conjunction(filters.iter().map(|filter| (*filter).clone())) else {
        return Ok(plan);
    };
    let schema = DFSchema::try_from(plan.schema())?;
    // Lookups in computed maps are made without building the maps.
    let predicate = pairs_map::value_in_place(
        state.create_physical_expr(unnormalize_col(predicate), &schema)?,
    )?;
    let width = plan.schema().fields().len();
    let projection = (keep < width).then(|| (0..keep).collect());
    let filtered = FilterExecBuilder::new(predicate, plan)
        .apply_projection(projection)?
        .build()?;
    Ok(Arc::new(filtered))
}

fn session_state(session: &dyn Session) -> Result<&SessionState> {
    session
        .as_any()
        .downcast_ref::<SessionState>()
        .ok_or_else(|| plan_datafusion_err!("computed columns need a DataFusion session state"))
}

/// The range of `time` that `filters` (all of which must hold) allow.
pub(crate) fn time_range(filters: &[Expr]) -> TimeRange {
    let mut range = TimeRange::default();
    let mut raise_lo = |lo: i64| range.lo = Some(range.lo.map_or(lo, |old| old.max(lo)));
    let mut bounds: Vec<(Operator, i64)> = Vec::new();
    for filter in filters {
        for conjunct in split_conjunction(filter) {
            collect_bounds(conjunct, &mut bounds);
        }
    }
    let mut his = Vec::new();
    for (op, value) in bounds {
        match op {
            Operator::GtEq => raise_lo(value),
            Operator::Gt => raise_lo(value.saturating_add(1)),
            Operator::Eq => {
                raise_lo(value);
                his.push(value.saturating_add(1));
            }
            Operator::Lt => his.push(value),
            Operator::LtEq => his.push(value.saturating_add(1)),
            _ => {}
        }
    }
    range.hi = his.into_iter().min();
    range
}

/// Bounds on `time` in one conjunct, as `time <op> value` pairs.
fn collect_bounds(expr: &Expr, bounds: &mut Vec<(Operator, i64)>) {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if is_time(left)
                && let Some(value) = timestamp_ns(right)
            {
                bounds.push((*op, value));
            } else if is_time(right)
                && let Some(value) = timestamp_ns(left)
                && let Some(swapped) = op.swap()
            {
                bounds.push((swapped, value));
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_time(expr) => {
            if let Some(low) = timestamp_ns(low) {
                bounds.push((Operator::GtEq, low));
            }
            if let Some(high) = timestamp_ns(high) {
                bounds.push((Operator::LtEq, high));
            }
        }
        _ => {}
    }
}

fn is_time(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(column) if column.name == "time")
}

/// A timestamp literal in nanoseconds, whatever its unit.
fn timestamp_ns(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Fixtures: files written as the write side would.
mod tests;
