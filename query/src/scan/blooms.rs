//! The `trace_id` bloom filters of a table's files, kept in memory once read, so that a
//! lookup by trace id skips the files that cannot hold it without opening them.
//!
//! DataFusion prunes a file's row groups with their bloom filters too, but only after
//! opening it, and it reads the filters again for every query: over 8M spans in 58 files, a
//! lookup of one trace spent most of its 65 ms opening 56 files that the filters ruled out.
//! Files never change once written, so their filters are read once, on the first lookup
//! that needs them, and kept up to a budget (least recently used go first).

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::parquet::bloom_filter::Sbbf;
use datafusion::parquet::file::metadata::ParquetMetaDataReader;

use schemas::{ObjectMeta, Store};

use crate::scan::file_cache::FileCache;

// The column whose bloom filters are kept; files without them are never skipped.
use schemas::BLOOM_COLUMN as COLUMN;

/// Bytes of filters kept at most: about 1 byte a stored span, so some 128M spans.
const BUDGET: usize = 128 << 20;

/// The files' filters, by path.
#[derive(Debug)]
pub(crate) struct Blooms {
    cache: FileCache<Filters>,
}

impl Default for Blooms {
    fn default() -> Self {
        Self {
            cache: FileCache::new(BUDGET),
        }
    }
}

/// One filter per row group of a file; `None` where a group has none (it may hold anything).
#[derive(Debug)]
struct Filters(Vec<Option<Sbbf>>);

impl Filters {
    /// Whether the file may hold any of `values`.
    fn may_hold(&self, values: &[String]) -> bool {
        self.0.iter().any(|group| match group {
            None => true,
            Some(filter) => values.iter().any(|v| filter.check(v.as_bytes())),
        })
    }
}

impl Blooms {
    /// `files` without those whose filters show that they hold none of `values` (trace
    /// ids). Reads the filters of files not seen before: blocking I/O.
    pub(crate) fn keep(
        &self,
        store: &Store,
        files: Vec<ObjectMeta>,
        values: &[String],
    ) -> Vec<ObjectMeta> {
        files
            .into_iter()
            .filter(|file| self.may_hold(store, file, values))
            .collect()
    }

    fn may_hold(&self, store: &Store, file: &ObjectMeta, values: &[String]) -> bool {
        if let Some(filters) = self.cache.get(&file.location) {
            return filters.may_hold(values);
        }
        // A file that cannot be read is left to `Footers::select`, which leaves it out.
        let Ok(groups) = read(store, file) else {
            return true;
        };
        let bytes = groups
            .iter()
            .flatten()
            .map(|filter| filter.num_blocks() * 32)
            .sum();
        let filters = Arc::new(Filters(groups));
        self.cache.insert(&file.location, filters.clone(), bytes);
        filters.may_hold(values)
    }
}

/// The `trace_id` bloom filter of each row group of `file`.
fn read(
    store: &Store,
    file: &ObjectMeta,
) -> datafusion::parquet::errors::Result<Vec<Option<Sbbf>>> {
    let reader = store.reader(file);
    let metadata = ParquetMetaDataReader::new().parse_and_finish(&reader)?;
    let Some(column) = metadata
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().string() == COLUMN)
    else {
        return Ok(vec![None]);
    };
    metadata
        .row_groups()
        .iter()
        .map(|group| Sbbf::read_from_column_chunk(group.column(column), &reader))
        .collect()
}

/// The trace ids `filters` (all of which hold) allow, when one of them allows only some:
/// `trace_id = 'x'`, `trace_id IN ('x', 'y')`, or a disjunction of those (DataFusion writes a
/// short `IN` list so); `None` when they allow any.
pub(crate) fn wanted(filters: &[Expr]) -> Option<Vec<String>> {
    filters
        .iter()
        .flat_map(|filter| split_conjunction(filter))
        .find_map(allowed)
}

fn allowed(expr: &Expr) -> Option<Vec<String>> {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            let value = if is_column(left) {
                text(right)
            } else if is_column(right) {
                text(left)
            } else {
                None
            };
            value.map(|v| vec![v])
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut values = allowed(left)?;
            values.extend(allowed(right)?);
            Some(values)
        }
        Expr::InList(list) if !list.negated && is_column(&list.expr) => {
            list.list.iter().map(text).collect()
        }
        _ => None,
    }
}

fn is_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(column) if column.name == COLUMN)
}

/// A text literal.
pub(crate) fn text(expr: &Expr) -> Option<String> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::Utf8(Some(v))
        | ScalarValue::Utf8View(Some(v))
        | ScalarValue::LargeUtf8(Some(v)) => Some(v.clone()),
        ScalarValue::Dictionary(_, inner) => text(&Expr::Literal(*inner.clone(), None)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Fixtures: files written as the write side would.
mod tests;
