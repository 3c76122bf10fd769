//! The merge of sorted data files into one sorted file, a few thousand rows of each input at
//! a time, so that its memory does not grow with the size of its inputs.
//!
//! Each data file is sorted by its table's sort columns ([`schemas::Table::sort_by`]), so
//! the merge repeatedly takes the smallest next row among its inputs. An input out of order
//! (no release wrote one) would only make the output less well sorted: every row is
//! still written once.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};

use crate::error::{Error, Result, storage};

/// Rows decoded from each input at a time. A span decodes to some 1 KiB, so a merge of four
/// holds about 32 MiB of its inputs, where it held all of them decoded (some 25 times their
/// size in Parquet) before.
pub(crate) const READ_ROWS: usize = 8 * 1024;

/// Rows gathered into the output at a time, a quarter of a flush's: the rows taken keep
/// their inputs' batches alive until they are written, and are copied once more as they
/// are gathered, so a merge's memory grows with this.
const ROWS_PER_WRITE: usize = 16 * 1024;

/// Why a merge stopped.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The input at this index could not be read.
    Input(usize, Error),
    /// The output could not be written.
    Output(Error),
}

/// The rows of one input not yet taken: its current batch (in `sources`), their sort keys,
/// and the next one.
struct Window {
    source: usize,
    keys: Rows,
    next: usize,
}

/// Merges `inputs` (batches of `schema`, each input sorted by the columns `sort_by`) into
/// batches sorted alike, handed to `write` in order.
pub(crate) fn merge_sorted<I>(
    schema: &SchemaRef,
    sort_by: &[&str],
    inputs: Vec<I>,
    mut write: impl FnMut(&RecordBatch) -> Result<()>,
) -> std::result::Result<(), Failed>
where
    I: Iterator<Item = Result<RecordBatch>>,
{
    let key_columns: Vec<usize> = sort_by
        .iter()
        .filter_map(|name| schema.index_of(name).ok())
        .collect();
    let fields = key_columns
        .iter()
        .map(|&i| SortField::new(schema.field(i).data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(|e| Failed::Output(storage(e)))?;
    let count = inputs.len();
    let mut inputs = inputs;
    let mut sources: Vec<RecordBatch> = Vec::new();
    // The next batch of input `i` with rows, as a window; none once the input is done.
    let mut load = |i: usize, sources: &mut Vec<RecordBatch>| -> std::result::Result<_, Failed> {
        for batch in inputs[i].by_ref() {
            let batch = batch.map_err(|e| Failed::Input(i, e))?;
            if batch.num_rows() == 0 {
                continue;
            }
            let columns: Vec<ArrayRef> = key_columns
                .iter()
                .map(|&c| batch.column(c).clone())
                .collect();
            let keys = converter
                .convert_columns(&columns)
                .map_err(|e| Failed::Input(i, storage(e)))?;
            sources.push(batch);
            return Ok(Some(Window {
                source: sources.len() - 1,
                keys,
                next: 0,
            }));
        }
        Ok(None)
    };
    let mut windows = Vec::new();
    for i in 0..count {
        windows.push(load(i, &mut sources)?);
    }
    let mut taken: Vec<(usize, usize)> = Vec::with_capacity(ROWS_PER_WRITE);
    let mut put = |sources: &[RecordBatch], taken: &mut Vec<(usize, usize)>| {
        if taken.is_empty() {
            return Ok(());
        }
        let sources: Vec<&RecordBatch> = sources.iter().collect();
        let batch = schemas::gather(&sources, taken).map_err(|e| Failed::Output(storage(e)))?;
        taken.clear();
        write(&batch).map_err(Failed::Output)
    };
    loop {
        // The input whose next row sorts first: a scan, as a merge has a few inputs.
        let mut least: Option<usize> = None;
        for (i, window) in windows.iter().enumerate() {
            let Some(window) = window else { continue };
            let better = least
                .and_then(|l| windows[l].as_ref())
                .is_none_or(|l| window.keys.row(window.next) < l.keys.row(l.next));
            if better {
                least = Some(i);
            }
        }
        let Some(i) = least else { break };
        let window = windows[i].as_mut().expect("the least input has a window");
        taken.push((window.source, window.next));
        window.next += 1;
        if window.next == window.keys.num_rows() {
            windows[i] = load(i, &mut sources)?;
        }
        if taken.len() == ROWS_PER_WRITE {
            put(&sources, &mut taken)?;
            // Only the windows' batches are referred to now: the others are let go.
            let mut kept = Vec::with_capacity(windows.len());
            for window in windows.iter_mut().flatten() {
                kept.push(sources[window.source].clone());
                window.source = kept.len() - 1;
            }
            sources = kept;
        }
    }
    put(&sources, &mut taken)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use proptest::prelude::*;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("endpoint", DataType::Utf8, true),
            Field::new("time", DataType::Int64, false),
            Field::new("id", DataType::Int64, false),
        ]))
    }

    /// Rows (endpoint, time, id) as batches of at most `rows` rows.
    fn batches(rows: &[(Option<String>, i64, i64)], size: usize) -> Vec<Result<RecordBatch>> {
        rows.chunks(size.max(1))
            .map(|chunk| {
                let endpoints: StringArray = chunk.iter().map(|r| r.0.clone()).collect();
                let times = Int64Array::from_iter_values(chunk.iter().map(|r| r.1));
                let ids = Int64Array::from_iter_values(chunk.iter().map(|r| r.2));
                Ok(RecordBatch::try_new(
                    schema(),
                    vec![Arc::new(endpoints), Arc::new(times), Arc::new(ids)],
                )
                .unwrap())
            })
            .collect()
    }

    fn row() -> impl Strategy<Value = (Option<String>, i64)> {
        (
            prop::option::weighted(0.9, prop::sample::select(vec!["/a", "/b", "/c/d"])),
            0i64..50,
        )
            .prop_map(|(endpoint, time)| (endpoint.map(String::from), time))
    }

    proptest! {
        /// Every row of every input comes out once; sorted inputs come out sorted, as one
        /// sort of all rows would have them.
        #[test]
        fn a_merge_of_sorted_inputs_is_their_rows_sorted(
            inputs in prop::collection::vec(prop::collection::vec(row(), 0..40), 0..6),
            size in 1usize..9,
            sorted in any::<bool>(),
        ) {
            let mut id = 0;
            let mut all = Vec::new();
            let mut runs = Vec::new();
            for mut rows in inputs {
                if sorted {
                    rows.sort();
                }
                let rows: Vec<_> = rows
                    .into_iter()
                    .map(|(endpoint, time)| { id += 1; (endpoint, time, id) })
                    .collect();
                all.extend(rows.iter().cloned());
                runs.push(batches(&rows, size).into_iter());
            }
            let mut out = Vec::new();
            merge_sorted(&schema(), &["endpoint", "time"], runs, |batch| {
                let endpoints = batch.column(0).as_string::<i32>();
                let times = batch.column(1).as_primitive::<Int64Type>();
                let ids = batch.column(2).as_primitive::<Int64Type>();
                for i in 0..batch.num_rows() {
                    let endpoint = endpoints.is_valid(i).then(|| endpoints.value(i).to_owned());
                    out.push((endpoint, times.value(i), ids.value(i)));
                }
                Ok(())
            })
            .unwrap();
            let mut ids: Vec<i64> = out.iter().map(|r| r.2).collect();
            ids.sort_unstable();
            prop_assert_eq!(ids, (1..=id).collect::<Vec<_>>());
            if sorted {
                // Nulls first, as the row format orders them.
                let keys: Vec<_> = out.iter().map(|r| (r.0.clone(), r.1)).collect();
                let mut expected = keys.clone();
                expected.sort();
                prop_assert_eq!(keys, expected);
            }
        }
    }

    #[test]
    fn an_input_that_fails_is_named() {
        let good = batches(&[(Some("/a".into()), 1, 1)], 1).into_iter();
        let bad = vec![Err(Error::Storage("torn page".into()))].into_iter();
        let failed = merge_sorted(
            &schema(),
            &["endpoint", "time"],
            vec![good, bad],
            |_| Ok(()),
        );
        assert!(matches!(failed, Err(Failed::Input(1, _))), "{failed:?}");
    }
}
