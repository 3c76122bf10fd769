//! Filters on a non-promoted attribute read only the rows that may hold its key.
//!
//! Every data file records where each attribute key occurs ([`KeyIndex`], in its metadata).
//! A filter that no row without the key can pass (`attributes['db.operation.name'] =
//! 'SELECT'`, `LIKE`, `IN`, `IS NOT NULL`, ...) lets a scan skip the files that lack the key
//! and, in the others, read only the granules that hold it: DataFusion is given those rows as
//! a row selection, and skips whole pages of every column it reads (with the page index,
//! loaded for these scans). The filter is still applied to the rows read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetFileReaderFactory, ParquetRowSelection,
};
use datafusion::datasource::physical_plan::{FileScanConfig, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Like, Operator};
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;
use schemas::{KEY_INDEX_KEY, KeyIndex};

use crate::blooms::text;
use crate::file_cache::FileCache;

/// Bytes of indexes kept at most (an index is a few kilobytes a file).
const BUDGET: usize = 64 << 20;

/// A key of a map column: (column, key).
pub(crate) type Key = (String, String);

/// The key indexes of a table's files, read once and kept.
#[derive(Debug)]
pub(crate) struct KeyIndexes {
    /// `None` for a file without an index.
    cache: FileCache<Option<KeyIndex>>,
}

impl Default for KeyIndexes {
    fn default() -> Self {
        Self {
            cache: FileCache::new(BUDGET),
        }
    }
}

/// The rows of one file a scan reads: `None` for all of them.
pub(crate) type Selected = (PathBuf, Option<RowSelection>);

impl KeyIndexes {
    /// Each of `files` with the rows that may hold all of `keys`, without the files that
    /// hold none. Reads the indexes of files not seen before: blocking I/O.
    pub(crate) fn select(&self, files: Vec<PathBuf>, keys: &[Key]) -> Vec<Selected> {
        files
            .into_iter()
            .filter_map(|file| {
                let index = self.index(&file);
                let Some(index) = index.as_ref().as_ref() else {
                    return Some((file, None));
                };
                let mut selection: Option<RowSelection> = None;
                for (column, key) in keys {
                    let Some(rows) = index.rows_with(column, key) else {
                        continue;
                    };
                    let these =
                        RowSelection::from_consecutive_ranges(rows.into_iter(), index.rows());
                    selection = Some(match selection {
                        None => these,
                        Some(before) => before.intersection(&these),
                    });
                }
                match selection {
                    Some(rows) if !rows.selects_any() => None,
                    Some(rows) if rows.row_count() == index.rows() => Some((file, None)),
                    rows => Some((file, rows)),
                }
            })
            .collect()
    }

    fn index(&self, file: &Path) -> Arc<Option<KeyIndex>> {
        if let Some(index) = self.cache.get(file) {
            return index;
        }
        // A file that cannot be read is left to the scan to report.
        let Ok((index, bytes)) = read(file) else {
            return Arc::new(None);
        };
        let index = Arc::new(index);
        self.cache.insert(file, index.clone(), bytes);
        index
    }
}

/// The key index of `file`, and about the memory it takes.
fn read(file: &Path) -> datafusion::parquet::errors::Result<(Option<KeyIndex>, usize)> {
    let reader = std::fs::File::open(file)?;
    let metadata = ParquetMetaDataReader::new().parse_and_finish(&reader)?;
    let text = metadata
        .file_metadata()
        .key_value_metadata()
        .and_then(|pairs| pairs.iter().find(|pair| pair.key == KEY_INDEX_KEY))
        .and_then(|pair| pair.value.as_deref());
    // An index that does not count the file's rows is not this file's: no index.
    let rows = metadata.file_metadata().num_rows();
    let index = text
        .and_then(KeyIndex::from_json)
        .filter(|index| index.rows() as i64 == rows);
    let bytes = text.map_or(0, str::len) * 2 + 64;
    Ok((index, bytes))
}

/// The keys of map columns of `schema` that every row `filters` keep must hold.
pub(crate) fn wanted(filters: &[Expr], schema: &Schema) -> Vec<Key> {
    filters
        .iter()
        .flat_map(|filter| split_conjunction(filter))
        .filter_map(|conjunct| needed(conjunct, schema))
        .collect()
}

/// The key without which `expr` is never true: `expr` is null whenever `map['key']` is.
fn needed(expr: &Expr, schema: &Schema) -> Option<Key> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if null_in_null_out(*op) => {
            lookup(left, schema).or_else(|| lookup(right, schema))
        }
        Expr::Like(Like { expr, .. })
        | Expr::SimilarTo(Like { expr, .. })
        | Expr::IsNotNull(expr)
        | Expr::Between(Between { expr, .. }) => lookup(expr, schema),
        Expr::InList(list) => lookup(&list.expr, schema),
        _ => None,
    }
}

/// Comparisons: null when either side is.
fn null_in_null_out(op: Operator) -> bool {
    use Operator::*;
    matches!(
        op,
        Eq | NotEq
            | Lt
            | LtEq
            | Gt
            | GtEq
            | LikeMatch
            | ILikeMatch
            | NotLikeMatch
            | NotILikeMatch
            | RegexMatch
            | RegexIMatch
            | RegexNotMatch
            | RegexNotIMatch
    )
}

/// `map['key']` (a map column of `schema` and a text key), possibly cast.
fn lookup(expr: &Expr, schema: &Schema) -> Option<Key> {
    match expr {
        Expr::Cast(cast) => lookup(&cast.expr, schema),
        Expr::TryCast(cast) => lookup(&cast.expr, schema),
        Expr::ScalarFunction(call) if call.name() == "get_field" => {
            let [Expr::Column(column), key] = call.args.as_slice() else {
                return None;
            };
            let field = schema.field_with_name(&column.name).ok()?;
            if !matches!(field.data_type(), DataType::Map(..)) {
                return None;
            }
            Some((column.name.clone(), text(key)?))
        }
        _ => None,
    }
}

/// `plan` with the rows of `selected` attached to their files, read with page indexes so
/// that pages without selected rows are skipped.
pub(crate) fn attach(
    plan: Arc<dyn ExecutionPlan>,
    selected: Vec<Selected>,
    runtime: &RuntimeEnv,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut rows = HashMap::new();
    for (file, selection) in selected {
        if let Some(selection) = selection {
            let url = ListingTableUrl::parse(file.to_string_lossy())?;
            rows.insert(url.prefix().clone(), selection);
        }
    }
    if rows.is_empty() {
        return Ok(plan);
    }
    plan.transform_down(|node| {
        let Some(scan) = node.downcast_ref::<DataSourceExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(config) = scan.data_source().downcast_ref::<FileScanConfig>() else {
            return Ok(Transformed::no(node));
        };
        let Some(parquet) = config.file_source.downcast_ref::<ParquetSource>() else {
            return Ok(Transformed::no(node));
        };
        let mut config = config.clone();
        for group in &mut config.file_groups {
            let files = std::mem::take(group).into_inner();
            *group = files
                .into_iter()
                .map(|file| match rows.get(&file.object_meta.location) {
                    Some(selection) => {
                        file.with_extension(ParquetRowSelection::new(selection.clone()))
                    }
                    None => file,
                })
                .collect::<Vec<_>>()
                .into();
        }
        let store = runtime.object_store(&config.object_store_url)?;
        let cached = CachedParquetFileReaderFactory::new(
            store,
            runtime.cache_manager.get_file_metadata_cache(),
        );
        let factory = Arc::new(WithPageIndex(cached));
        config.file_source = Arc::new(parquet.clone().with_parquet_file_reader_factory(factory));
        Ok(Transformed::yes(
            DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>
        ))
    })
    .map(|transformed| transformed.data)
}

/// Readers whose metadata includes the page index, which DataFusion loads only for its own
/// page pruning: without it, a row selection saves decoding but every page is still read
/// and decompressed. Kept in the metadata cache with the footer.
#[derive(Debug)]
struct WithPageIndex(CachedParquetFileReaderFactory);

impl ParquetFileReaderFactory for WithPageIndex {
    fn create_reader(
        &self,
        partition_index: usize,
        file: datafusion::datasource::listing::PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let reader = self
            .0
            .create_reader(partition_index, file, metadata_size_hint, metrics)?;
        Ok(Box::new(PageIndexReader(reader)))
    }
}

struct PageIndexReader(Box<dyn AsyncFileReader + Send>);

impl AsyncFileReader for PageIndexReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<bytes::Bytes>> {
        self.0.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Vec<bytes::Bytes>>> {
        self.0.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, datafusion::parquet::errors::Result<Arc<ParquetMetaData>>> {
        let options = options
            .cloned()
            .unwrap_or_default()
            .with_page_index_policy(PageIndexPolicy::Optional);
        async move { self.0.get_metadata(Some(&options)).await }.boxed()
    }
}
