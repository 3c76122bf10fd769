//! Rows of several batches gathered into one batch, in a given order: what a flush and a
//! compaction write, and the resource attributes of each row a query reads. Arrow's
//! `interleave` does it for every type, but it moves a map column (the attributes) one entry
//! at a time: an index per entry, then a copy per key and per value. A row's keys and values
//! lie next to each other in its batch, so here a map is gathered a row at a time: one copy
//! for its keys' bytes and one for its values'.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, MapArray, NullBufferBuilder, RecordBatch, RecordBatchOptions,
    StringArray, StructArray, new_null_array,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::interleave;
use arrow::datatypes::DataType;
use arrow::error::ArrowError;

/// The rows `rows` ((batch, row within it)) of `batches`, in that order, as one batch of
/// the first batch's schema.
pub fn gather(
    batches: &[&RecordBatch],
    rows: &[(usize, usize)],
) -> Result<RecordBatch, ArrowError> {
    let Some(first) = batches.first() else {
        return Err(ArrowError::InvalidArgumentError(
            "no batches to gather rows from".into(),
        ));
    };
    let schema = first.schema();
    let columns = (0..schema.fields().len())
        .map(|column| {
            let arrays: Vec<&dyn Array> = batches
                .iter()
                .map(|batch| batch.column(column).as_ref())
                .collect();
            gather_column(&arrays, rows)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    RecordBatch::try_new_with_options(schema, columns, &options)
}

/// The items `rows` ((array, item within it)) of `arrays`, which share a type, in that order.
pub fn gather_column(
    arrays: &[&dyn Array],
    rows: &[(usize, usize)],
) -> Result<ArrayRef, ArrowError> {
    if let Some(first) = arrays.first()
        && arrays.iter().all(|array| array.null_count() == array.len())
    {
        // A column no row has (the map earlier schemas stored resources in).
        return Ok(new_null_array(first.data_type(), rows.len()));
    }
    match gather_string_map(arrays, rows) {
        Some(map) => map,
        None => interleave(arrays, rows),
    }
}

/// `rows` of `arrays` when they are maps of strings to strings without null entries; `None`
/// for anything else, which `interleave` gathers.
fn gather_string_map(
    arrays: &[&dyn Array],
    rows: &[(usize, usize)],
) -> Option<Result<ArrayRef, ArrowError>> {
    let DataType::Map(field, ordered) = arrays.first()?.data_type() else {
        return None;
    };
    let maps: Vec<&MapArray> = arrays
        .iter()
        .map(|array| array.as_map_opt())
        .collect::<Option<_>>()?;
    if maps.iter().any(|map| map.entries().null_count() > 0) {
        return None;
    }
    let strings = |column: usize| -> Option<Vec<&StringArray>> {
        maps.iter()
            .map(|map| map.entries().column(column).as_string_opt::<i32>())
            .collect()
    };
    let (keys, values) = (strings(0)?, strings(1)?);

    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0i32);
    let mut nulls = NullBufferBuilder::new(rows.len());
    let mut ranges = Vec::with_capacity(rows.len());
    let mut entries = 0usize;
    for &(array, row) in rows {
        let map = maps[array];
        let range = map.value_offsets()[row] as usize..map.value_offsets()[row + 1] as usize;
        entries += range.len();
        let Ok(end) = i32::try_from(entries) else {
            return Some(Err(ArrowError::OffsetOverflowError(entries)));
        };
        offsets.push(end);
        nulls.append(map.is_valid(row));
        ranges.push((array, range));
    }
    let gathered = (|| {
        let entries_type = maps[0].entries().fields().clone();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(gather_ranges(&keys, &ranges, entries)?),
            Arc::new(gather_ranges(&values, &ranges, entries)?),
        ];
        let entries = StructArray::try_new(entries_type, columns, None)?;
        let map = MapArray::try_new(
            field.clone(),
            OffsetBuffer::new(offsets.into()),
            entries,
            nulls.finish(),
            *ordered,
        )?;
        Ok(Arc::new(map) as ArrayRef)
    })();
    Some(gathered)
}

/// The strings of `ranges` ((array, range of its items)) of `arrays`, one after another:
/// `count` of them in all.
fn gather_ranges(
    arrays: &[&StringArray],
    ranges: &[(usize, Range<usize>)],
    count: usize,
) -> Result<StringArray, ArrowError> {
    let bytes: usize = ranges
        .iter()
        .map(|(array, range)| {
            let offsets = arrays[*array].value_offsets();
            (offsets[range.end] - offsets[range.start]) as usize
        })
        .sum();
    if i32::try_from(bytes).is_err() {
        return Err(ArrowError::OffsetOverflowError(bytes));
    }
    let with_nulls = arrays.iter().any(|array| array.null_count() > 0);
    let mut offsets = Vec::with_capacity(count + 1);
    offsets.push(0i32);
    let mut data = Vec::with_capacity(bytes);
    let mut nulls = NullBufferBuilder::new(if with_nulls { count } else { 0 });
    for (array, range) in ranges {
        let array = arrays[*array];
        let source = &array.value_offsets()[range.start..=range.end];
        // Each item keeps its length; the items move from `source[0]` to `data.len()`.
        let shift = data.len() as i32 - source[0];
        offsets.extend(source[1..].iter().map(|offset| offset + shift));
        data.extend_from_slice(
            &array.values()[source[0] as usize..source[source.len() - 1] as usize],
        );
        if with_nulls {
            for item in range.clone() {
                nulls.append(array.is_valid(item));
            }
        }
    }
    StringArray::try_new(
        OffsetBuffer::new(offsets.into()),
        data.into(),
        if with_nulls { nulls.finish() } else { None },
    )
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, MapBuilder, StringBuilder};
    use arrow::compute::interleave_record_batch;
    use arrow::datatypes::{Field, Schema};

    use super::*;

    /// A batch of an id column and an `attributes` map whose row `i` holds `entries(start +
    /// i)` (a value of `None` is a null value; no entries at all and a null map alternate).
    fn batch(start: usize, rows: usize) -> RecordBatch {
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for i in start..start + rows {
            match i % 7 {
                3 => map.append(true).unwrap(),
                5 => map.append(false).unwrap(),
                _ => {
                    for entry in 0..i % 4 + 1 {
                        map.keys().append_value(format!("key.{}", (i + entry) % 3));
                        if (i + entry) % 5 == 0 {
                            map.values().append_null();
                        } else {
                            map.values().append_value("v".repeat((i * entry) % 11));
                        }
                    }
                    map.append(true).unwrap();
                }
            }
        }
        let map = map.finish();
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("attributes", map.data_type().clone(), true),
        ]);
        let ids = Int64Array::from_iter_values((start..start + rows).map(|i| i as i64));
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ids), Arc::new(map)]).unwrap()
    }

    #[test]
    fn maps_gather_as_arrow_interleaves_them() {
        // Three batches, one of them a slice (its offsets start past zero).
        let batches = [batch(0, 40), batch(40, 60).slice(7, 50), batch(100, 25)];
        let sources: Vec<&RecordBatch> = batches.iter().collect();
        let rows: Vec<(usize, usize)> = (0..300)
            .map(|i| (i % 3, (i * 37 + i / 3) % [40, 50, 25][i % 3]))
            .collect();
        let maps: Vec<&dyn Array> = sources.iter().map(|b| b.column(1).as_ref()).collect();
        assert!(
            gather_string_map(&maps, &rows).is_some(),
            "not left to interleave"
        );
        let gathered = gather(&sources, &rows).unwrap();
        assert_eq!(gathered, interleave_record_batch(&sources, &rows).unwrap());
        let map = gathered.column(1).as_map();
        assert!(map.null_count() > 0 && map.values().null_count() > 0);
        assert!(map.entries().len() > 300);

        // Keys have no nulls, values some: both ways of copying ran. And no rows at all.
        let none = gather(&sources, &[]).unwrap();
        assert_eq!(none.num_rows(), 0);
        assert_eq!(none, interleave_record_batch(&sources, &[]).unwrap());
    }
}
