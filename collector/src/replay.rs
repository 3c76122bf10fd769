//! Bringing back, at start-up, the logged rows that are not yet in a table.
//!
//! Each flush commits a table's files with this node's transaction: the highest WAL
//! sequence it covers. Every row of that table logged at or below it is committed: a flush
//! writes every buffered row of the table up to its sequence, and rows leave the buffer
//! only once their files are committed. So a replayed row is kept only if its record's
//! sequence is above that mark for its table: nothing is lost, nothing doubled, wherever a
//! crash fell (before the files were stored, between storing and committing, or after).

use std::collections::HashMap;
use std::path::Path;

use schemas::Store;

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
    /// The highest sequence seen in the log or in the tables' transactions.
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
    let mut marks: HashMap<&'static str, u64> = HashMap::new();
    for table in schemas::TABLES {
        let flushed = store.flushed_seq(table.name, node).map_err(storage)?;
        marks.insert(table.name, flushed);
    }
    let flushed = marks.values().copied().max().unwrap_or(0);
    let mut report = ReplayReport {
        last_seq: flushed,
        segments: segments.clone(),
        ..ReplayReport::default()
    };
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
            if record.seq <= marks.get(table).copied().unwrap_or(0) {
                report.rows_already_flushed += batch.num_rows();
            } else {
                report.rows_restored += batch.num_rows();
                buffer.push_logged(table, record.seq, batch);
            }
        }
    }
    buffer.advance_to(report.last_seq, &marks);
    Ok(report)
}

fn corrupt(error: WireError) -> Error {
    // The record passed its checksum, so this is not damage on disk but a bug.
    Error::Storage(format!("a checksummed WAL record does not decode: {error}"))
}
