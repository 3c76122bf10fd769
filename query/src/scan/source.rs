//! Where a table's rows come from: the Parquet files of the hours a query needs, plus the
//! rows not yet flushed.

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use schemas::Table;

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
    pub files: Vec<PathBuf>,
    /// Rows not yet in any of those files.
    pub batches: Vec<RecordBatch>,
}

/// Gives consistent snapshots of a table: every row appears in exactly one of the files or
/// the batches.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The files and buffered rows of `table` that may hold rows in `range`.
    fn snapshot(&self, table: &'static Table, range: TimeRange) -> std::io::Result<Snapshot>;

    /// The files of `table` that may hold rows in `range`, for work that does not need
    /// the buffered rows beside them (a source may list them without holding up writers).
    fn files(&self, table: &'static Table, range: TimeRange) -> std::io::Result<Vec<PathBuf>> {
        Ok(self.snapshot(table, range)?.files)
    }
}

/// A data directory with nobody writing to it, or whose writer's buffer is not visible:
/// files only.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl Source for DataDir {
    fn snapshot(&self, table: &'static Table, range: TimeRange) -> std::io::Result<Snapshot> {
        Ok(Snapshot {
            files: list_files(&self.0, table, range)?,
            batches: Vec::new(),
        })
    }
}

/// The live Parquet files of `table` in the hour partitions overlapping `range`.
pub fn list_files(
    data_dir: &Path,
    table: &Table,
    range: TimeRange,
) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in schemas::hour_dirs(data_dir, table.name, range.lo, range.hi)? {
        files.extend(schemas::live_files(&dir)?);
    }
    Ok(files)
}
