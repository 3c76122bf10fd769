//! Bringing back, at start-up, the logged rows that are not yet in Parquet.
//!
//! Each Parquet file's name carries the highest WAL sequence its flush covered. For one table
//! and hour, every row logged at or below the highest such sequence is already in Parquet:
//! a flush writes every buffered row of that hour up to its sequence, and rows leave the
//! buffer only once their file is visible. So a replayed row is kept only if its record's
//! sequence is above that mark for its table and hour: nothing is lost, nothing doubled.

use std::collections::HashMap;
use std::path::Path;

use schemas::Store;

use arrow::array::{Array, BooleanArray, RecordBatch, TimestampNanosecondArray};
use arrow::compute::filter_record_batch;

use crate::buffer::Buffer;
use crate::error::{Error, Result, storage};
use crate::wal;
use crate::{Decoded, SpanDecoder, WireError};

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Intact records read.
    pub records: usize,
    /// Rows put back in the buffer.
    pub rows_restored: usize,
    /// Rows skipped because they were already in Parquet.
    pub rows_already_flushed: usize,
    /// Bytes of damaged log moved aside.
    pub damaged_bytes: u64,
    /// The highest sequence seen in the log or in file names.
    pub last_seq: u64,
    /// The segments read, to be released by a later flush.
    pub segments: Vec<std::path::PathBuf>,
}

/// Replays the WAL under `data_dir` into `buffer`, less the rows in `store`'s files.
pub(crate) fn replay(
    data_dir: &Path,
    store: &Store,
    node: &str,
    spans: &SpanDecoder,
    buffer: &Buffer,
) -> Result<ReplayReport> {
    let dir = wal::dir_of(data_dir);
    let segments = wal::list_segments(&dir)?;
    let flushed = highest_file_seq(store, node)?;
    let mut report = ReplayReport {
        last_seq: flushed,
        segments: segments.clone(),
        ..ReplayReport::default()
    };
    let mut marks = FlushMarks::new(store, node);
    // One segment in memory at a time: the log may be as large as max_wal_bytes.
    for path in &segments {
        let bytes = std::fs::read(path).map_err(storage)?;
        let (records, damaged_bytes) = wal::scan_segment(&dir, path, &bytes)?;
        report.damaged_bytes += damaged_bytes;
        report.records += records.len();
        for record in &records {
            report.last_seq = report.last_seq.max(record.seq);
            let table = record.kind.table();
            let decoded = crate::decode(record.kind, record.payload, record.received_ns, spans);
            let Decoded {
                batch: Some(batch), ..
            } = decoded.map_err(corrupt)?
            else {
                continue;
            };
            let kept = marks.unflushed_rows(table, record.seq, &batch)?;
            report.rows_already_flushed += batch.num_rows() - kept.num_rows();
            report.rows_restored += kept.num_rows();
            if kept.num_rows() > 0 {
                buffer.push_logged(table, record.seq, kept);
            }
        }
    }
    buffer.advance_to(report.last_seq, flushed);
    Ok(report)
}

fn corrupt(error: WireError) -> Error {
    // The record passed its checksum, so this is not damage on disk but a bug.
    Error::Storage(format!("a checksummed WAL record does not decode: {error}"))
}

/// The highest WAL sequence named by any of `node`'s data files.
fn highest_file_seq(store: &Store, node: &str) -> Result<u64> {
    let mut highest = 0;
    for table in schemas::TABLES {
        for (_, partition) in store
            .hour_partitions(table.name, None, None)
            .map_err(storage)?
        {
            for seq in file_seqs(store, node, &partition)? {
                highest = highest.max(seq);
            }
        }
    }
    Ok(highest)
}

/// The sequences named by `node`'s data files in one partition (files of other nodes hold
/// their own logs' rows).
fn file_seqs(store: &Store, node: &str, partition: &schemas::ObjectPath) -> Result<Vec<u64>> {
    let objects = store.list(partition).map_err(storage)?;
    Ok(objects
        .iter()
        .filter_map(|object| object.location.filename())
        .filter(|name| schemas::is_data_file(name))
        .filter(|name| schemas::written_by(name, node))
        .filter_map(schemas::covered_seq)
        .collect())
}

/// The highest flushed sequence per table and hour, read from file names on first use.
struct FlushMarks<'a> {
    store: &'a Store,
    node: &'a str,
    marks: HashMap<(&'static str, i64), u64>,
}

impl<'a> FlushMarks<'a> {
    fn new(store: &'a Store, node: &'a str) -> Self {
        Self {
            store,
            node,
            marks: HashMap::new(),
        }
    }

    fn mark(&mut self, table: &'static str, partition: i64) -> Result<u64> {
        if let Some(mark) = self.marks.get(&(table, partition)) {
            return Ok(*mark);
        }
        let path = self.store.partition(table, partition);
        let mark = file_seqs(self.store, self.node, &path)?
            .into_iter()
            .max()
            .unwrap_or(0);
        self.marks.insert((table, partition), mark);
        Ok(mark)
    }

    /// The rows of `batch` (logged as `seq`) whose hour has not been flushed past `seq`.
    fn unflushed_rows(
        &mut self,
        table: &'static str,
        seq: u64,
        batch: &RecordBatch,
    ) -> Result<RecordBatch> {
        let time = batch
            .column(0)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .ok_or_else(|| Error::Storage("the first column is not the time".into()))?;
        let mut keep = Vec::with_capacity(time.len());
        for row in 0..time.len() {
            let partition = schemas::partition_of(time.value(row));
            keep.push(seq > self.mark(table, partition)?);
        }
        filter_record_batch(batch, &BooleanArray::from(keep)).map_err(storage)
    }
}
