//! Filters on a non-promoted attribute read only the rows that may hold its key.
//!
//! Every data file records where each attribute key occurs ([`KeyIndex`], in its metadata).
//! A filter that no row without the key can pass (`attributes['db.operation.name'] =
//! 'SELECT'`, `LIKE`, `IN`, `IS NOT NULL`, ...) lets a scan skip the files that lack the key
//! and, in the others, read only the granules that hold it: DataFusion is given those rows as
//! a row selection, and skips whole pages of every column it reads (with the page index,
//! loaded for these scans). The filter is still applied to the rows read.
//!
//! A filter `map['key'] = 'text'` or `map['key'] IN ('text', ...)` ([`Exact`]) is answered
//! outright in a file whose index lists the rows of each value of the key: the scan reads
//! exactly those rows and does not apply the filter, so a count or any other column never
//! decodes the map. The table applies it to the rows of the other files ([`ScanFile::answered`]).
//!
//! The footer read for the index also gives the schema each file is read with
//! ([`read_as::read_schema`]), so every scan, with or without such a filter, goes through
//! [`Footers::select`] and [`attach`].

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetFileReaderFactory, ParquetRowSelection,
};
use datafusion::datasource::physical_plan::{FileScanConfig, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Like, Operator};
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::arrow::parquet_to_arrow_schema;
use datafusion::parquet::basic::{Encoding, PageType};
use datafusion::parquet::file::metadata::{
    ColumnChunkMetaData, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;
use schemas::{KEY_INDEX_KEY, KeyIndex, ObjectMeta, Store};

use crate::scan::blooms::text;
use crate::scan::file_cache::FileCache;
use crate::scan::{read_as, unreadable};

/// Bytes of footers' facts kept at most (an index is a few kilobytes a file).
const BUDGET: usize = 64 << 20;

/// A key of a map column: (column, key).
pub(crate) type Key = (String, String);

/// What scans need from each data file's footer, read once and kept: its key index and the
/// schema to read it with.
#[derive(Debug)]
pub(crate) struct Footers {
    cache: FileCache<Footer>,
    /// The schemas seen (files' own and read schemas), shared by the files that have them.
    schemas: Mutex<Vec<SchemaRef>>,
}

#[derive(Debug, Default)]
struct Footer {
    /// `None` for a file without an index.
    index: Option<KeyIndex>,
    /// See [`read_as::read_schema`].
    read_as: Option<SchemaRef>,
    /// The file's own schema (`None` for a file that cannot be read).
    schema: Option<SchemaRef>,
}

impl Default for Footers {
    fn default() -> Self {
        Self {
            cache: FileCache::new(BUDGET),
            schemas: Mutex::default(),
        }
    }
}

/// A filter that a file's key index can answer exactly: `map['key']` is one of `values`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Exact {
    key: Key,
    values: Vec<String>,
    /// A column whose presence in a file means its map does not hold what the filter asks
    /// about, so its index must not answer it.
    unless_stored: Option<&'static str>,
}

impl Exact {
    /// The filter, answered only in files that do not store `column`.
    pub(crate) fn unless_stored(self, column: &'static str) -> Self {
        Self {
            unless_stored: Some(column),
            ..self
        }
    }
}

/// A file a scan reads, with the rows it reads (`None` for all) and the schema it reads the
/// file with (`None` for the file's own).
pub(crate) struct ScanFile {
    pub(crate) file: ObjectMeta,
    rows: Option<RowSelection>,
    read_as: Option<SchemaRef>,
    /// For each [`Exact`] filter of the scan, whether every row selected passes it.
    pub(crate) answered: Vec<bool>,
}

impl ScanFile {
    /// `file` read whole with its own schema, none of `exact` filters answered.
    pub(crate) fn whole(file: ObjectMeta, exact: usize) -> Self {
        Self {
            file,
            rows: None,
            read_as: None,
            answered: vec![false; exact],
        }
    }

    /// The schema the file is read with, when it is not the file's own.
    #[cfg(test)]
    pub(crate) fn read_as(&self) -> Option<&SchemaRef> {
        self.read_as.as_ref()
    }
}

impl Footers {
    /// Each of `files` with the rows that may hold all of `keys` (all rows when there are no
    /// keys) and that pass the `exact` filters its index answers, without the files that have
    /// no such rows, nor those whose footer cannot be read (see [`unreadable`]). Reads the
    /// footers of files not seen before: blocking I/O. Fails when the store cannot be
    /// reached: leaving its files out would answer wrong.
    pub(crate) fn select(
        &self,
        store: &Store,
        files: Vec<ObjectMeta>,
        keys: &[Key],
        exact: &[Exact],
    ) -> std::io::Result<Vec<ScanFile>> {
        unreadable::forget_gone(store);
        let mut footers = Vec::with_capacity(files.len());
        for file in files {
            if let Some(footer) = self.footer(store, &file)? {
                footers.push((file, footer));
            }
        }
        Ok(footers
            .into_iter()
            .filter_map(|(file, footer)| {
                let read_as = footer.read_as.clone();
                let mut answered = vec![false; exact.len()];
                let Some(index) = footer.index.as_ref() else {
                    return Some(ScanFile {
                        file,
                        rows: None,
                        read_as,
                        answered,
                    });
                };
                // The rows that may hold every key, and those of the values asked for where the
                // index lists them.
                let mut selection: Option<RowSelection> = None;
                let mut keep = |rows: Vec<Range<usize>>| {
                    let these =
                        RowSelection::from_consecutive_ranges(rows.into_iter(), index.rows());
                    selection = Some(match selection.take() {
                        None => these,
                        Some(before) => before.intersection(&these),
                    });
                };
                for (column, key) in keys {
                    if let Some(rows) = index.rows_with(column, key) {
                        keep(rows);
                    }
                }
                for (filter, answered) in exact.iter().zip(&mut answered) {
                    if filter
                        .unless_stored
                        .is_some_and(|stored| footer.stores(stored))
                    {
                        continue;
                    }
                    let (column, key) = &filter.key;
                    if let Some(rows) = index.rows_with_values(column, key, &filter.values) {
                        *answered = true;
                        keep(rows);
                    }
                }
                let rows = match selection {
                    Some(rows) if !rows.selects_any() => return None,
                    Some(rows) if rows.row_count() == index.rows() => None,
                    rows => rows,
                };
                Some(ScanFile {
                    file,
                    rows,
                    read_as,
                    answered,
                })
            })
            .collect())
    }

    /// The footer facts of `file`; `None` when its footer cannot be read, or the file is
    /// gone; an error when the store cannot be reached.
    fn footer(&self, store: &Store, file: &ObjectMeta) -> std::io::Result<Option<Arc<Footer>>> {
        if let Some(footer) = self.cache.get(&file.location) {
            return Ok(Some(footer));
        }
        let (mut footer, bytes) = match read(store, file) {
            Ok(read) => read,
            Err(error) => {
                unreadable::report(store, &file.location, &error)?;
                return Ok(None);
            }
        };
        unreadable::recovered(&file.location);
        footer.read_as = footer.read_as.take().map(|schema| self.shared(schema));
        footer.schema = footer.schema.take().map(|schema| self.shared(schema));
        let footer = Arc::new(footer);
        self.cache.insert(&file.location, footer.clone(), bytes);
        Ok(Some(footer))
    }
}

impl Footers {
    /// `schema`, or the same schema seen before (most files have the same).
    fn shared(&self, schema: SchemaRef) -> SchemaRef {
        let mut seen = self.schemas.lock();
        match seen.iter().find(|known| **known == schema) {
            Some(known) => known.clone(),
            None => {
                seen.push(schema.clone());
                schema
            }
        }
    }
}

impl Footer {
    /// Whether the file stores `column`.
    fn stores(&self, column: &str) -> bool {
        self.schema
            .as_ref()
            .is_some_and(|schema| schema.field_with_name(column).is_ok())
    }
}

/// The footer facts of `file`, and about the memory they take.
fn read(store: &Store, file: &ObjectMeta) -> datafusion::parquet::errors::Result<(Footer, usize)> {
    let reader = store.reader(file);
    let metadata = ParquetMetaDataReader::new().parse_and_finish(&reader)?;
    let pairs = metadata.file_metadata().key_value_metadata();
    let text = pairs
        .and_then(|pairs| pairs.iter().find(|pair| pair.key == KEY_INDEX_KEY))
        .and_then(|pair| pair.value.as_deref());
    // An index that does not count the file's rows is not this file's: no index.
    let rows = metadata.file_metadata().num_rows();
    let index = text
        .and_then(KeyIndex::from_json)
        .filter(|index| index.rows() as i64 == rows);
    let schema = parquet_to_arrow_schema(metadata.file_metadata().schema_descr(), pairs)?;
    let read_as = read_as::read_schema(&schema, &dictionary_encoded(&metadata));
    let bytes = text.map_or(0, str::len) * 2 + 64;
    Ok((
        Footer {
            index,
            read_as,
            // Without the file's metadata (the index among it), which no scan needs here.
            schema: Some(Arc::new(Schema::new(schema.fields().clone()))),
        },
        bytes,
    ))
}

/// The top-level columns of a file whose every data page is dictionary-encoded, with small
/// dictionaries: read as dictionaries, they cost no copy of their strings, and a comparison
/// with a constant compares the dictionary's few values once per batch. (A column whose
/// dictionary overflowed to plain pages would have to be hashed into a new dictionary: it is
/// read as it is.)
fn dictionary_encoded(metadata: &ParquetMetaData) -> Vec<String> {
    let descr = metadata.file_metadata().schema_descr();
    let groups = metadata.row_groups();
    (0..descr.num_columns())
        .filter(|&index| descr.column(index).path().parts().len() == 1 && !groups.is_empty())
        .filter(|&index| {
            groups.iter().all(|group| {
                let chunk = group.column(index);
                let dictionary_bytes = chunk
                    .dictionary_page_offset()
                    .map(|start| chunk.data_page_offset() - start);
                dictionary_bytes.is_some_and(|bytes| bytes <= MAX_DICTIONARY_READ_BYTES)
                    && only_dictionary_pages(chunk)
            })
        })
        .map(|index| descr.column(index).name().to_owned())
        .collect()
}

/// Largest dictionary page (as stored) of a column read as a dictionary. A comparison with a
/// dictionary column compares every value of the dictionary for each batch of rows, so a
/// dictionary of nearly as many values as its row group has rows (`trace_id`, one value per
/// trace) costs more than the strings themselves: a lookup of one trace over 8M spans
/// compared a group's 100,000 ids for each of its 32 batches. Endpoints, services, clients
/// and the like stay under 5 KiB in files of a quarter million spans; trace ids take 2 MiB.
const MAX_DICTIONARY_READ_BYTES: i64 = 64 * 1024;

/// Whether the chunk's page encoding statistics say all its data pages are dictionary-encoded.
fn only_dictionary_pages(chunk: &ColumnChunkMetaData) -> bool {
    let dictionary = |encoding: Encoding| {
        matches!(
            encoding,
            Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY
        )
    };
    if let Some(mask) = chunk.page_encoding_stats_mask() {
        return mask.is_only(Encoding::RLE_DICTIONARY) || mask.is_only(Encoding::PLAIN_DICTIONARY);
    }
    chunk.page_encoding_stats().is_some_and(|stats| {
        stats
            .iter()
            .filter(|page| matches!(page.page_type, PageType::DATA_PAGE | PageType::DATA_PAGE_V2))
            .all(|page| dictionary(page.encoding))
    })
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

/// `filter` as an [`Exact`] filter: `map['key'] = 'text'` (either way round) or
/// `map['key'] IN ('text', ...)`, over a map of text of `schema`.
pub(crate) fn exact(filter: &Expr, schema: &Schema) -> Option<Exact> {
    match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            let (key, value) = match (text_lookup(left, schema), text_lookup(right, schema)) {
                (Some(key), None) => (key, text(right)?),
                (None, Some(key)) => (key, text(left)?),
                _ => return None,
            };
            Some(Exact {
                key,
                values: vec![value],
                unless_stored: None,
            })
        }
        Expr::InList(list) if !list.negated => {
            let key = text_lookup(&list.expr, schema)?;
            let values = list.list.iter().map(text).collect::<Option<Vec<_>>>()?;
            Some(Exact {
                key,
                values,
                unless_stored: None,
            })
        }
        _ => None,
    }
}

/// `map['key']` over a map of text values, as is or cast to text: it compares as the text
/// the index lists.
fn text_lookup(expr: &Expr, schema: &Schema) -> Option<Key> {
    match expr {
        Expr::Cast(cast)
            if matches!(cast.field.data_type(), DataType::Utf8 | DataType::Utf8View) =>
        {
            text_lookup(&cast.expr, schema)
        }
        Expr::ScalarFunction(_) => {
            let key = lookup(expr, schema)?;
            let DataType::Map(entries, _) = schema.field_with_name(&key.0).ok()?.data_type() else {
                return None;
            };
            let DataType::Struct(fields) = entries.data_type() else {
                return None;
            };
            (fields.len() == 2 && fields[1].data_type() == &DataType::Utf8).then_some(key)
        }
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

/// `plan` reading each of `files` with its read schema and only its selected rows; with
/// page indexes where rows are selected, so that pages without selected rows are skipped.
pub(crate) fn attach(
    plan: Arc<dyn ExecutionPlan>,
    files: Vec<ScanFile>,
    runtime: &RuntimeEnv,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut by_location = HashMap::new();
    let mut selects = false;
    for file in files {
        if file.rows.is_none() && file.read_as.is_none() {
            continue;
        }
        selects |= file.rows.is_some();
        by_location.insert(file.file.location, (file.rows, file.read_as));
    }
    if by_location.is_empty() {
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
            let statistics = group.file_statistics(None).cloned();
            let files = std::mem::take(group).into_inner();
            *group = files
                .into_iter()
                .map(|mut file| {
                    let Some((rows, read_as)) = by_location.get(&file.object_meta.location) else {
                        return file;
                    };
                    if let Some(rows) = rows {
                        file = file.with_extension(ParquetRowSelection::new(rows.clone()));
                        // The file's counts are no longer those of the rows read.
                        if let Some(known) = file.statistics.take() {
                            file.statistics = Some(Arc::new(known.as_ref().clone().to_inexact()));
                        }
                    }
                    if let Some(schema) = read_as {
                        file = file.with_arrow_schema(schema.clone());
                    }
                    file
                })
                .collect::<Vec<_>>()
                .into();
            if let Some(statistics) = statistics {
                let statistics = if selects {
                    statistics.to_inexact()
                } else {
                    statistics
                };
                *group = std::mem::take(group).with_statistics(Arc::new(statistics));
            }
        }
        if selects {
            // Nor are the scan's: a count must not be answered from them.
            let statistics = config.statistics().to_inexact();
            config = FileScanConfigBuilder::from(config)
                .with_statistics(statistics)
                .build();
            let store = runtime.object_store(&config.object_store_url)?;
            let cached = CachedParquetFileReaderFactory::new(
                store,
                runtime.cache_manager.get_file_metadata_cache(),
            );
            let factory = Arc::new(WithPageIndex(cached));
            config.file_source =
                Arc::new(parquet.clone().with_parquet_file_reader_factory(factory));
        }
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
