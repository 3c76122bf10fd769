//! Buffered rows to Parquet files: sorted, split by hour, encoded in memory, then stored
//! whole and committed to the table's log ([`Writer::stage`], [`Writer::store_files`],
//! [`Writer::commit`]: the one way any data file enters a table).
//!
//! A flushed file is committed before its rows leave the buffer; the query side counts it
//! only once the buffer's flushed mark has reached the sequence its name carries
//! (`Buffer::flushed_through`), so no row is seen twice.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow::compute::concat;
use arrow::row::{RowConverter, SortField};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use schemas::{
    BLOOM_COLUMN, KEY_INDEX_KEY, KeyIndex, ObjectPath, SCHEMA_VERSION, SCHEMA_VERSION_KEY, Store,
    Table, partition_of,
};

use crate::error::{Error, Result, storage};
use crate::faults::{self, Point};

/// A data file encoded in memory, waiting to be stored.
#[derive(Debug)]
pub struct Staged {
    /// Where it goes in the store.
    pub path: ObjectPath,
    bytes: Bytes,
    /// Rows in the file.
    pub rows: usize,
    /// Its statistics as the table's log keeps them.
    stats: String,
}

impl Staged {
    /// The file's size in bytes.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// The file's name in its partition.
    pub fn name(&self) -> &str {
        self.path.filename().unwrap_or_default()
    }

    /// The file as the table's log lists it.
    pub fn new_file(&self) -> schemas::NewFile {
        schemas::NewFile {
            path: self.path.clone(),
            size: self.bytes.len() as u64,
            stats: self.stats.clone(),
        }
    }
}

/// Writes Parquet files into one store.
#[derive(Debug)]
pub struct Writer {
    store: Store,
    node: String,
    unique: u64,
    sequence: AtomicU64,
}

impl Writer {
    /// A writer for `store`, as the node `node`: file names carry the node id and a random
    /// per-process part, so that no two writers of one store, nor two runs of one node,
    /// name a file alike.
    pub fn new(store: Store, node: &str) -> Self {
        Self {
            store,
            node: node.to_owned(),
            unique: RandomState::new().hash_one(std::process::id()),
            sequence: AtomicU64::new(0),
        }
    }

    /// The store written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stores `staged`. Nothing reads a stored file before it is committed; the files of a
    /// flush that fails before its commit are deleted by the sweep of their hour
    /// (`Collector::maintain`). Blocking.
    pub fn store_files(&self, staged: &[Staged]) -> Result<()> {
        for file in staged {
            let local = self.store.local_path(&file.path).unwrap_or_default();
            faults::check(Point::Publish, &local)
                .and_then(|()| self.store.put(&file.path, file.bytes.clone()))
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Commits a flush's `staged` files of `table` (stored already) with this node's
    /// transaction `through`. Blocking.
    pub fn commit(&self, table: &'static Table, staged: &[Staged], through: u64) -> Result<()> {
        let files: Vec<schemas::NewFile> = staged.iter().map(Staged::new_file).collect();
        let table_dir = self.store.local_path(&self.store.table(table.name));
        faults::check(Point::Commit, &table_dir.unwrap_or_default())
            .and_then(|()| self.store.commit_flush(table, &files, &self.node, through))
            .map_err(storage)
    }

    /// Encodes `batches` of `table` (of its stored schema) as one file per hour partition,
    /// named after `through`, the highest WAL sequence the flush covers. Rows
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
            staged.push(self.write_file(
                table,
                partition,
                batches,
                &places[start..end],
                through,
            )?);
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
        let mut file = self.file(table, partition, through)?;
        let sources: Vec<&RecordBatch> = batches.iter().collect();
        for slice in rows.chunks(ROWS_PER_WRITE) {
            file.write(&schemas::gather(&sources, slice).map_err(storage)?)?;
        }
        file.finish()
    }

    /// A new data file of `table`'s hour `partition`, named after `through`, to be written
    /// a batch at a time, in the order its rows are to be stored.
    pub(crate) fn file(&self, table: &Table, partition: i64, through: u64) -> Result<FileWriter> {
        let path = self
            .store
            .partition(table.name, partition)
            .join(self.file_name(through));
        let writer =
            ArrowWriter::try_new(Vec::new(), table.stored_schema(), Some(properties(through)))
                .map_err(storage)?;
        Ok(FileWriter {
            path,
            writer,
            keys: KeyIndex::new(),
            times: (i64::MAX, i64::MIN),
            rows: 0,
        })
    }
}

/// A data file being encoded in memory ([`Writer::file`]).
pub(crate) struct FileWriter {
    path: ObjectPath,
    writer: ArrowWriter<Vec<u8>>,
    keys: KeyIndex,
    /// The lowest and highest `time` written.
    times: (i64, i64),
    rows: usize,
}

impl FileWriter {
    /// Appends `batch`'s rows (of the table's stored schema).
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.keys.add(batch);
        if let Some(time) = batch
            .column_by_name("time")
            .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        {
            let (lo, hi) = (arrow::compute::min(time), arrow::compute::max(time));
            self.times = (
                self.times.0.min(lo.unwrap_or(i64::MAX)),
                self.times.1.max(hi.unwrap_or(i64::MIN)),
            );
        }
        self.rows += batch.num_rows();
        self.writer.write(batch).map_err(storage)
    }

    /// The file, complete, to be stored.
    pub(crate) fn finish(mut self) -> Result<Staged> {
        self.writer.append_key_value_metadata(KeyValue::new(
            KEY_INDEX_KEY.to_owned(),
            self.keys.to_json(),
        ));
        let bytes = self.writer.into_inner().map_err(storage)?;
        Ok(Staged {
            path: self.path,
            bytes: Bytes::from(bytes),
            rows: self.rows,
            stats: stats(self.rows, self.times),
        })
    }
}

/// A data file's statistics as Delta keeps them: its rows, and the range of `time` to the
/// millisecond (the lowest rounded down, the highest up), which other engines prune with.
fn stats(rows: usize, (lo, hi): (i64, i64)) -> String {
    let mut stats = serde_json::json!({ "numRecords": rows });
    if lo <= hi {
        let millis = |ns: i64, up: bool| {
            let ms = ns.div_euclid(1_000_000) + i64::from(up && ns.rem_euclid(1_000_000) != 0);
            chrono::DateTime::from_timestamp_millis(ms)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        };
        stats["minValues"] = serde_json::json!({ "time": millis(lo, false) });
        stats["maxValues"] = serde_json::json!({ "time": millis(hi, true) });
        stats["nullCount"] = serde_json::json!({ "time": 0 });
    }
    stats.to_string()
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
    /// `<through, 20 digits>-<node>-<run, 16 hex>-<n>.parquet`: sorting by name sorts by WAL
    /// position, and the position and the node are readable without opening the file
    /// ([`schemas::covered_seq`], [`schemas::file_node`]).
    fn file_name(&self, through: u64) -> String {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!(
            "{through:020}-{}-{:016x}-{sequence:06}.parquet",
            self.node, self.unique
        )
    }

    /// Whether the data file named `name` is this node's (files named before node ids were
    /// are every node's: a store had one writer then).
    pub fn owns(&self, name: &str) -> bool {
        schemas::written_by(name, &self.node)
    }
}

/// Parquet key-value metadata key holding the highest WAL sequence a file covers.
pub const WAL_SEQ_KEY: &str = "apiscope.wal_seq";

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
