//! Where a table's rows come from: the Parquet files of the hours a query needs, plus the
//! rows not yet flushed.

use arrow::array::RecordBatch;
use schemas::{ObjectMeta, Store, Table};

/// A time range in nanoseconds since the epoch, `lo <= time < hi`; absent bounds are open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive lower bound.
    pub lo: Option<i64>,
    /// Exclusive upper bound.
    pub hi: Option<i64>,
}

/// Everything a scan of one table reads, taken at one instant.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Complete Parquet files of the partitions overlapping the range.
    pub files: Vec<ObjectMeta>,
    /// Rows not yet in any of those files.
    pub batches: Vec<RecordBatch>,
    /// The WAL sequence of each of `batches`, ascending; empty where the source does not
    /// number them. A sequence's rows never change while they are buffered.
    pub sequences: Vec<u64>,
}

/// Gives consistent snapshots of a table: every row appears in exactly one of the files or
/// the batches.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The store the files are in.
    fn store(&self) -> &Store;

    /// The files and buffered rows of `table` that may hold rows in `range`. Blocking: it
    /// lists the store.
    fn snapshot(&self, table: &'static Table, range: TimeRange) -> std::io::Result<Snapshot>;

    /// The files of `table` that may hold rows in `range`, for work that does not need
    /// the buffered rows beside them.
    fn files(&self, table: &'static Table, range: TimeRange) -> std::io::Result<Vec<ObjectMeta>> {
        Ok(self.snapshot(table, range)?.files)
    }

    /// The rows of `table` not yet flushed and their sequences, as a [`Snapshot`] has them,
    /// without its files; none where the source has no buffer.
    fn buffered(&self, _table: &'static Table) -> (Vec<RecordBatch>, Vec<u64>) {
        Default::default()
    }
}

/// A store with nobody writing to it, or whose writer's buffer is not visible: files only.
#[derive(Debug, Clone)]
pub struct Files(pub Store);

impl Source for Files {
    fn store(&self) -> &Store {
        &self.0
    }

    fn snapshot(&self, table: &'static Table, range: TimeRange) -> std::io::Result<Snapshot> {
        Ok(Snapshot {
            files: self.0.table_files(table.name, range.lo, range.hi)?,
            ..Snapshot::default()
        })
    }
}
