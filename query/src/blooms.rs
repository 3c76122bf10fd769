//! The `trace_id` bloom filters of a table's files, kept in memory once read, so that a
//! lookup by trace id skips the files that cannot hold it without opening them.
//!
//! DataFusion prunes a file's row groups with their bloom filters too, but only after
//! opening it, and it reads the filters again for every query: over 8M spans in 58 files, a
//! lookup of one trace spent most of its 65 ms opening 56 files that the filters ruled out.
//! Files never change once written, so their filters are read once, on the first lookup
//! that needs them, and kept up to a budget (least recently used go first).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::parquet::bloom_filter::Sbbf;
use datafusion::parquet::file::metadata::ParquetMetaDataReader;

use crate::file_cache::FileCache;

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
    pub(crate) fn keep(&self, files: Vec<PathBuf>, values: &[String]) -> Vec<PathBuf> {
        files
            .into_iter()
            .filter(|file| self.may_hold(file, values))
            .collect()
    }

    fn may_hold(&self, file: &Path, values: &[String]) -> bool {
        if let Some(filters) = self.cache.get(file) {
            return filters.may_hold(values);
        }
        // A file that cannot be read is left to `Footers::select`, which leaves it out.
        let Ok(groups) = read(file) else {
            return true;
        };
        let bytes = groups
            .iter()
            .flatten()
            .map(|filter| filter.num_blocks() * 32)
            .sum();
        let filters = Arc::new(Filters(groups));
        self.cache.insert(file, filters.clone(), bytes);
        filters.may_hold(values)
    }
}

/// The `trace_id` bloom filter of each row group of `file`.
fn read(file: &Path) -> datafusion::parquet::errors::Result<Vec<Option<Sbbf>>> {
    let reader = std::fs::File::open(file)?;
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
mod tests {
    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::{col, lit};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;

    use super::*;

    fn write(path: &Path, ids: &[&str]) {
        let schema = Arc::new(Schema::new(vec![Field::new(COLUMN, DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(ids.to_vec()))],
        )
        .unwrap();
        let properties = WriterProperties::builder()
            .set_bloom_filter_enabled(true)
            .set_max_row_group_row_count(Some(2))
            .build();
        let mut writer = ArrowWriter::try_new(
            std::fs::File::create(path).unwrap(),
            schema,
            Some(properties),
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn over_its_budget_the_least_recently_used_go_and_answers_stay_right() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|n| dir.path().join(format!("{n}.parquet")));
        // Row groups of two rows: `a` has two, the others one.
        write(&a, &["a1", "a2", "a3"]);
        write(&b, &["b1"]);
        write(&c, &["c1", "c2"]);
        let one = read(&b).unwrap()[0].as_ref().unwrap().num_blocks() * 32;
        // Room for two single-group files, or for `a` alone.
        let blooms = Blooms {
            cache: FileCache::new(2 * one),
        };
        let all = vec![a.clone(), b.clone(), c.clone()];
        let ids = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        for _ in 0..3 {
            assert_eq!(blooms.keep(all.clone(), &ids(&["a3"])), vec![a.clone()]);
            assert_eq!(
                blooms.keep(all.clone(), &ids(&["b1", "c2"])),
                [b.clone(), c.clone()]
            );
            assert_eq!(
                blooms.keep(all.clone(), &ids(&["nope"])),
                Vec::<PathBuf>::new()
            );
            let (files, _) = blooms.cache.held();
            assert!(files < 3, "nothing was let go");
        }
        // A file that cannot be read is kept, for the scan to report.
        let gone = dir.path().join("gone.parquet");
        assert_eq!(blooms.keep(vec![gone.clone()], &ids(&["a1"])), [gone]);
    }

    #[test]
    fn only_filters_that_bound_the_trace_id_name_ids() {
        let id = |v: &str| col(COLUMN).eq(lit(v));
        assert_eq!(
            wanted(&[col("span_name").eq(lit("x")).and(id("a"))]),
            Some(vec!["a".to_owned()])
        );
        assert_eq!(
            wanted(&[lit("a")
                .eq(col(COLUMN))
                .or(col(COLUMN).in_list(vec![lit("b")], false))]),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        for any in [
            id("a").or(col("span_id").eq(lit("b"))),
            col(COLUMN).in_list(vec![lit("a")], true),
            col(COLUMN).not_eq(lit("a")),
            col(COLUMN).eq(col("span_id")),
            col("span_id").eq(lit("a")),
        ] {
            assert_eq!(wanted(std::slice::from_ref(&any)), None, "{any}");
        }
    }
}
