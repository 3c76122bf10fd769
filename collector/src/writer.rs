//! Buffered rows to Parquet files: sorted, split by hour, written whole before they appear.
//!
//! A file is written under a temporary name starting with a dot, synced, and only then
//! renamed into its partition, so readers never see a partial file ([`Staged`] and
//! [`publish`]: the one way any file enters the data directory, data and rollups alike).

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow::compute::concat;
use arrow::row::{RowConverter, SortField};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use schemas::{
    BLOOM_COLUMN, KEY_INDEX_KEY, KeyIndex, SCHEMA_VERSION, SCHEMA_VERSION_KEY, Table,
    partition_dir, partition_of,
};

use crate::error::{Error, Result};
use crate::faults::{self, Point};

/// A file written and synced under its temporary name, waiting to be renamed into place.
#[derive(Debug)]
pub struct Staged {
    temporary: PathBuf,
    destination: PathBuf,
    /// Rows in the file.
    pub rows: usize,
}

impl Staged {
    /// Writes the file to be published as `destination`: under a temporary name beside it
    /// (a dot first, so that no reader lists it), filled by `fill`, synced. Nothing is left
    /// behind when it fails. The folder must exist.
    pub fn write(destination: PathBuf, fill: impl FnOnce(File) -> Result<File>) -> Result<Staged> {
        let name = destination
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = destination.with_file_name(format!(".{name}.tmp"));
        let written = File::create(&temporary)
            .map_err(storage)
            .and_then(fill)
            .and_then(|file| file.sync_all().map_err(storage));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
        Ok(Staged {
            temporary,
            destination,
            rows: 0,
        })
    }

    /// The file's name once published.
    pub fn name(&self) -> String {
        self.destination
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Writes Parquet files under one data directory.
#[derive(Debug)]
pub struct Writer {
    data_dir: PathBuf,
    unique: u64,
    sequence: AtomicU64,
}

impl Writer {
    /// A writer for `data_dir`; file names carry a random per-process prefix so that
    /// several writers can share a directory or bucket.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            unique: RandomState::new().hash_one(std::process::id()),
            sequence: AtomicU64::new(0),
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Writes `batches` of `table` (of its stored schema) as one synced temporary file per
    /// hour partition, named after `through`, the highest WAL sequence the flush covers. Rows
    /// are sorted by the table's sort columns within each file. Blocking: run it off the
    /// async runtime.
    ///
    /// Only the sort keys are copied whole; the rows are gathered in sorted order a slice at a
    /// time as they are written, so a flush needs little memory beyond the batches it reads.
    pub fn stage(
        &self,
        table: &Table,
        batches: &[RecordBatch],
        through: u64,
    ) -> Result<Vec<Staged>> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let (partitions, places) = sorted_order(table, batches)?;
        let mut staged = Vec::new();
        let mut start = 0;
        while start < places.len() {
            let partition = partitions[start];
            let mut end = start + 1;
            while end < places.len() && partitions[end] == partition {
                end += 1;
            }
            match self.write_file(table, partition, batches, &places[start..end], through) {
                Ok(file) => staged.push(file),
                Err(error) => {
                    discard(&staged);
                    return Err(error);
                }
            }
            start = end;
        }
        Ok(staged)
    }

    /// Writes the rows of `batches` named by `rows` (batch, row), in that order.
    fn write_file(
        &self,
        table: &Table,
        partition: i64,
        batches: &[RecordBatch],
        rows: &[Place],
        through: u64,
    ) -> Result<Staged> {
        let dir = partition_dir(&self.data_dir, table.name, partition);
        std::fs::create_dir_all(&dir).map_err(storage)?;
        let mut staged = Staged::write(dir.join(self.file_name(through)), |file| {
            let schema = table.stored_schema();
            let mut writer =
                ArrowWriter::try_new(file, schema, Some(properties(through))).map_err(storage)?;
            let sources: Vec<&RecordBatch> = batches.iter().collect();
            let mut keys = KeyIndex::new();
            for slice in rows.chunks(ROWS_PER_WRITE) {
                let gathered = schemas::gather(&sources, slice).map_err(storage)?;
                keys.add(&gathered);
                writer.write(&gathered).map_err(storage)?;
            }
            writer
                .append_key_value_metadata(KeyValue::new(KEY_INDEX_KEY.to_owned(), keys.to_json()));
            writer.into_inner().map_err(storage)
        })?;
        staged.rows = rows.len();
        Ok(staged)
    }
}

/// A row of a flush: (batch, row within the batch).
type Place = (usize, usize);

/// Rows gathered into one batch at a time while a file is written. Per
/// gathered batch, every column pays a fixed cost in the gather and in the Parquet encoders;
/// on 3M spans ingested at full speed the daemon used 12% less CPU than with 16Ki-row
/// batches (and 20% less than with 4Ki), for about 30 MB more peak memory.
const ROWS_PER_WRITE: usize = 64 * 1024;

/// Rows in one Parquet row group. The more of a trace's spans a group holds, the fewer times
/// its id is stored: over 8M generated spans, 16.1 bytes a trace id without a dictionary,
/// 11.7 with one in groups of 64Ki rows, 9.8 in groups of 128Ki and 9.2 in groups of 256Ki (a
/// span 34.8 and 33.9 bytes in all for the last two). A lookup of one trace decodes the
/// `trace_id` column of the groups its bloom filters admit: medians over five ids, 22-41 ms
/// with groups of 128Ki and 28-47 with 256Ki on a busy machine (the ids then read as
/// dictionaries; 19-40 ms since they are read as text); scans went faster with fewer groups
/// (per-endpoint SQL 152 ms against 182).
pub(crate) const ROW_GROUP_ROWS: usize = 256 * 1024;

/// Largest `trace_id` dictionary page of a row group: room for every id of a full group.
const TRACE_DICTIONARY_BYTES: usize = ROW_GROUP_ROWS * 36;

impl Writer {
    /// `<through, 20 digits>-<writer id>-<n>.parquet`: sorting by name sorts by WAL position,
    /// and the position is readable without opening the file.
    fn file_name(&self, through: u64) -> String {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{through:020}-{:016x}-{sequence:06}.parquet", self.unique)
    }
}

/// Parquet key-value metadata key holding the highest WAL sequence a file covers.
pub const WAL_SEQ_KEY: &str = "apiscope.wal_seq";

/// The highest WAL sequence covered by the data file at `path`, from its name.
pub fn covered_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.split('-').next()?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok()
}

/// Renames staged files into place and syncs their folders, making them visible. All or
/// nothing: if one rename fails, the files already renamed are taken back.
pub(crate) fn publish(staged: &[Staged]) -> Result<()> {
    for (i, file) in staged.iter().enumerate() {
        let renamed = faults::check(Point::Rename, &file.destination)
            .and_then(|()| std::fs::rename(&file.temporary, &file.destination));
        if let Err(error) = renamed {
            for done in &staged[..i] {
                if let Err(undo) = std::fs::rename(&done.destination, &done.temporary) {
                    tracing::error!(%undo, file = %done.destination.display(), "cannot take back a published file; its rows may appear twice");
                }
            }
            return Err(storage(error));
        }
    }
    for file in staged {
        if let Some(dir) = file.destination.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(storage)?;
        }
    }
    Ok(())
}

/// Removes staged files that will not be published (after a failed flush).
pub(crate) fn discard(staged: &[Staged]) {
    for file in staged {
        let _ = std::fs::remove_file(&file.temporary);
    }
}

fn properties(through: u64) -> WriterProperties {
    let mut builder = WriterProperties::builder();
    // Times sorted within each service and endpoint differ little from one row to the next;
    // durations are small integers; the bytes of a float compress best split into streams.
    // Measured on 200k generated spans: 6 bytes per span less than dictionary then plain.
    let encodings = [
        ("time", Encoding::DELTA_BINARY_PACKED),
        ("duration_ns", Encoding::DELTA_BINARY_PACKED),
        ("duration_ms", Encoding::BYTE_STREAM_SPLIT),
        // Random ids, (nearly) unique per row: a dictionary would only be built to be given
        // up, and plain encoding stores a 4-byte length before each. With the lengths apart
        // (and delta-encoded to almost nothing), zstd takes hex text to its 4 bits a digit:
        // on 8M spans 8.1 bytes a span id instead of 8.9.
        ("span_id", Encoding::DELTA_LENGTH_BYTE_ARRAY),
        ("parent_span_id", Encoding::DELTA_LENGTH_BYTE_ARRAY),
        // Paths carry ids, so most are distinct; sorted by endpoint, neighbours share all but
        // the id, which zstd finds without a dictionary: on 8M spans 0.75 bytes a path
        // instead of 1.15.
        ("url_path", Encoding::DELTA_LENGTH_BYTE_ARRAY),
    ];
    for (column, encoding) in encodings {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), encoding);
    }
    // Minimum and maximum prune nothing here: random ids span the whole range in every page,
    // and no query reads the map's keys and values by range (the key index serves them).
    // Computing them compared every value written: string comparisons went from 10% to 7.4%
    // of the daemon's CPU at full speed (perf, 1.5M spans).
    let unranged = [
        &["trace_id"][..],
        &["span_id"],
        &["parent_span_id"],
        &["attributes", "entries", "keys"],
        &["attributes", "entries", "values"],
        &["resource"],
    ];
    for path in unranged {
        let path = ColumnPath::new(path.iter().map(|part| part.to_string()).collect());
        builder = builder.set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    builder
        // A trace's spans share its id, and a row group holds most spans of the traces in it:
        // each id once in the group's dictionary and a small index per row. The dictionary of
        // a full group of spans in hex (36 bytes an id with its length) needs more than the
        // default 1 MiB; past the limit a group's remaining pages are written plain.
        .set_column_dictionary_page_size_limit(ColumnPath::from("trace_id"), TRACE_DICTIONARY_BYTES)
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        // See `ROW_GROUP_ROWS` for what the size of a group trades: stored ids against the
        // rows a trace lookup decodes once the bloom filters have ruled out the other groups.
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_column_bloom_filter_enabled(ColumnPath::from(BLOOM_COLUMN), true)
        .set_column_bloom_filter_max_ndv(ColumnPath::from(BLOOM_COLUMN), ROW_GROUP_ROWS as u64)
        // At 1% (128 KiB for a full group) a trace lookup over 8M spans decodes the groups
        // holding the trace and no others; at the default 5%, four more. Pages of at most
        // 8,192 rows: the columns of the rows found are decoded a page at a time.
        .set_column_bloom_filter_fpp(ColumnPath::from(BLOOM_COLUMN), 0.01)
        .set_data_page_row_count_limit(8192)
        .set_key_value_metadata(Some(vec![
            KeyValue::new(SCHEMA_VERSION_KEY.to_owned(), SCHEMA_VERSION.to_owned()),
            KeyValue::new(WAL_SEQ_KEY.to_owned(), through.to_string()),
        ]))
        .build()
}

/// Every row of `batches` as (batch, row), sorted by hour partition and then by the table's
/// sort columns, with each sorted row's partition beside it.
///
/// The sort columns end with `time` (checked by the schemas' tests). The partition and the
/// columns before `time` are converted to comparable bytes, and each distinct value of those
/// gets a rank; rows are then sorted on (rank, time) as one integer. Sorting 200k spans
/// by their bytes compared them some 3.6M times; the ranks compare each distinct
/// (service, endpoint) a few times instead.
fn sorted_order(table: &Table, batches: &[RecordBatch]) -> Result<(Vec<i64>, Vec<Place>)> {
    let mut times = Vec::new();
    let mut places = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let time = batch
            .column_by_name("time")
            .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
            .ok_or_else(|| Error::Storage(format!("table {} has no time column", table.name)))?;
        // `time` is never null: the decoders always set it.
        times.extend_from_slice(time.values());
        places.extend((0..batch.num_rows()).map(|row| (b, row)));
    }
    let partitions = Int64Array::from_iter_values(times.iter().map(|t| partition_of(*t)));
    // The partition and the sort columns before `time`, as one comparable byte string a row.
    let mut prefix: Vec<ArrayRef> = vec![Arc::new(partitions.clone())];
    for name in table.sort_by.iter().filter(|name| **name != "time") {
        let columns: Vec<&dyn Array> = batches
            .iter()
            .filter_map(|batch| batch.column_by_name(name).map(|c| c.as_ref()))
            .collect();
        if columns.len() == batches.len() {
            prefix.push(concat(&columns).map_err(storage)?);
        }
    }
    let fields = prefix
        .iter()
        .map(|k| SortField::new(k.data_type().clone()))
        .collect();
    let rows = RowConverter::new(fields)
        .and_then(|converter| converter.convert_columns(&prefix))
        .map_err(storage)?;
    drop(prefix);
    let ranks = ranks(&rows);
    // Rank above, time below (its sign bit flipped, so that it orders as unsigned).
    let mut keys: Vec<(u128, u32)> = (0..places.len())
        .map(|i| {
            let time = (times[i] as u64) ^ (1 << 63);
            ((u128::from(ranks[i]) << 64) | u128::from(time), i as u32)
        })
        .collect();
    keys.sort_unstable();
    let sorted_partitions = keys
        .iter()
        .map(|&(_, i)| partitions.value(i as usize))
        .collect();
    let sorted_places = keys.iter().map(|&(_, i)| places[i as usize]).collect();
    Ok((sorted_partitions, sorted_places))
}

/// Each row's rank among the distinct rows of `rows`, in their order.
fn ranks(rows: &arrow::row::Rows) -> Vec<u32> {
    let mut distinct: std::collections::HashMap<&[u8], u32> = std::collections::HashMap::new();
    let mut first_of: Vec<&[u8]> = Vec::new();
    let mut ids = Vec::with_capacity(rows.num_rows());
    let mut last: Option<(&[u8], u32)> = None;
    for row in rows.iter() {
        let bytes = row.data();
        // Neighbouring rows of a request mostly share their service and endpoint.
        let id = match last {
            Some((previous, id)) if previous == bytes => id,
            _ => *distinct.entry(bytes).or_insert_with(|| {
                first_of.push(bytes);
                first_of.len() as u32 - 1
            }),
        };
        last = Some((bytes, id));
        ids.push(id);
    }
    let mut by_value: Vec<u32> = (0..first_of.len() as u32).collect();
    by_value.sort_unstable_by_key(|&id| first_of[id as usize]);
    let mut rank_of = vec![0u32; first_of.len()];
    for (rank, id) in by_value.into_iter().enumerate() {
        rank_of[id as usize] = rank as u32;
    }
    ids.into_iter().map(|id| rank_of[id as usize]).collect()
}

/// A failed file operation or Parquet encoding, as the write side reports it.
pub(crate) fn storage(error: impl std::fmt::Display) -> Error {
    Error::Storage(error.to_string())
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, StringArray, TimestampNanosecondArray};
    use arrow::compute::{SortColumn, lexsort_to_indices};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    #[test]
    fn rows_sort_by_partition_then_sort_columns_as_arrow_sorts_them() {
        const HOUR: i64 = 3_600_000_000_000;
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new("service_name", DataType::Utf8, false),
            Field::new("endpoint", DataType::Utf8, true),
        ]));
        // Times around the epoch and hours apart, equal keys, null endpoints, and text that
        // sorts differently as bytes than by length.
        let batch = |seed: i64, rows: i64| {
            let times = (0..rows).map(|i| (seed * 7919 + i * 104_729) % (5 * HOUR) - 2 * HOUR);
            let services = (0..rows).map(|i| ["b", "a", "ab"][((seed + i) % 3) as usize]);
            let endpoints = (0..rows).map(|i| match (seed * 31 + i) % 5 {
                0 => None,
                1 => Some("GET /z"),
                2 => Some("GET /a/b"),
                3 => Some("POST /"),
                _ => Some("GET /a"),
            });
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(
                        TimestampNanosecondArray::from_iter_values(times).with_timezone("UTC"),
                    ),
                    Arc::new(StringArray::from_iter_values(services)),
                    Arc::new(StringArray::from_iter(endpoints)),
                ],
            )
            .unwrap()
        };
        let batches: Vec<RecordBatch> = (0..7).map(|seed| batch(seed, 50 + seed * 13)).collect();
        let (partitions, places) = sorted_order(&schemas::SPANS, &batches).unwrap();

        let all = arrow::compute::concat_batches(&schema, &batches).unwrap();
        let time = all
            .column(0)
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let hours = Int64Array::from_iter_values(time.values().iter().map(|t| partition_of(*t)));
        let columns = [
            Arc::new(hours) as ArrayRef,
            all.column(1).clone(),
            all.column(2).clone(),
            all.column(0).clone(),
        ];
        let sort: Vec<SortColumn> = columns
            .iter()
            .map(|values| SortColumn {
                values: values.clone(),
                options: None,
            })
            .collect();
        let expected = lexsort_to_indices(&sort, None).unwrap();

        // Rows with equal keys may come in any order: compare the keys.
        let offsets: Vec<usize> = batches
            .iter()
            .scan(0, |at, b| {
                let first = *at;
                *at += b.num_rows();
                Some(first)
            })
            .collect();
        let key = |row: usize| {
            let text = |c: usize| {
                let column = all.column(c).as_string::<i32>();
                column.is_valid(row).then(|| column.value(row).to_owned())
            };
            (time.value(row), text(1), text(2))
        };
        let got: Vec<_> = places.iter().map(|&(b, r)| key(offsets[b] + r)).collect();
        let want: Vec<_> = expected.values().iter().map(|&r| key(r as usize)).collect();
        assert_eq!(got.len(), all.num_rows());
        let sorted_hours: Vec<i64> = got.iter().map(|k| partition_of(k.0)).collect();
        assert_eq!(partitions, sorted_hours);
        assert_eq!(got, want);
        assert!(
            partitions.iter().any(|p| *p < 0),
            "hours before 1970 are sorted too"
        );
    }
}
