//! Where a row lives on disk: one folder per table and UTC hour.

use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Timelike};

const NANOS_PER_HOUR: i64 = 3_600 * 1_000_000_000;

/// The start (ns since the epoch) of the UTC hour holding `time_ns`: the partition key.
pub fn partition_of(time_ns: i64) -> i64 {
    time_ns.div_euclid(NANOS_PER_HOUR) * NANOS_PER_HOUR
}

/// `<data_dir>/<table>/date=YYYY-MM-DD/hour=HH` for the hour starting at `hour_start_ns`.
pub fn partition_dir(data_dir: &Path, table: &str, hour_start_ns: i64) -> PathBuf {
    let time = DateTime::from_timestamp_nanos(hour_start_ns);
    data_dir
        .join(table)
        .join(format!("date={}", time.format("%Y-%m-%d")))
        .join(format!("hour={:02}", time.hour()))
}

/// Whether `path` is a complete data file (temporary files start with a dot).
pub fn is_data_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.ends_with(".parquet")
}

/// The hour partitions of `table` that may hold rows with `lo_ns <= time < hi_ns`
/// (either bound may be absent), sorted by time. A missing table folder is no partitions.
pub fn hour_dirs(
    data_dir: &Path,
    table: &str,
    lo_ns: Option<i64>,
    hi_ns: Option<i64>,
) -> io::Result<Vec<PathBuf>> {
    let dirs = hour_partitions(data_dir, table, lo_ns, hi_ns)?;
    Ok(dirs.into_iter().map(|(_, dir)| dir).collect())
}

/// Like [`hour_dirs`], with each partition's start time (ns).
pub fn hour_partitions(
    data_dir: &Path,
    table: &str,
    lo_ns: Option<i64>,
    hi_ns: Option<i64>,
) -> io::Result<Vec<(i64, PathBuf)>> {
    let mut found = Vec::new();
    for date_dir in read_dir_sorted(&data_dir.join(table))? {
        let Some(date) = parse_key(&date_dir, "date=")
            .and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok())
        else {
            continue;
        };
        for hour_dir in read_dir_sorted(&date_dir)? {
            let Some(hour) = parse_key(&hour_dir, "hour=").and_then(|h| h.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(start) = date
                .and_hms_opt(hour, 0, 0)
                .and_then(|t| t.and_utc().timestamp_nanos_opt())
            else {
                continue;
            };
            let end = start + NANOS_PER_HOUR;
            let after_lo = lo_ns.is_none_or(|lo| end > lo);
            let before_hi = hi_ns.is_none_or(|hi| start < hi);
            if after_lo && before_hi {
                found.push((start, hour_dir));
            }
        }
    }
    Ok(found)
}

/// Prefix of the note a compaction leaves beside its output: `.replaced-by-<output>` lists,
/// one per line, the files the output replaces.
pub const REPLACED_BY: &str = ".replaced-by-";

/// The complete data files of one partition folder that hold live rows: every `*.parquet`
/// file, less those that a compaction output present in the same listing replaces. A
/// missing folder has none.
pub fn live_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut files = Vec::new();
    let mut notes = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(output) = name.strip_prefix(REPLACED_BY) {
            notes.push((output.to_owned(), path.clone()));
        } else if is_data_file(&path) {
            files.push(path);
        }
    }
    for (output, note) in notes {
        if !files
            .iter()
            .any(|f| f.file_name().is_some_and(|n| n == output.as_str()))
        {
            // The compaction did not publish its output: the inputs are still the data.
            continue;
        }
        let replaced = match std::fs::read_to_string(&note) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        let replaced: Vec<&str> = replaced.lines().collect();
        files.retain(|f| {
            !f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| replaced.contains(&n))
        });
    }
    files.sort();
    Ok(files)
}

fn parse_key(dir: &Path, prefix: &str) -> Option<String> {
    let name = dir.file_name()?.to_str()?;
    name.strip_prefix(prefix).map(str::to_owned)
}

fn read_dir_sorted(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// The folder, inside each hour partition, that holds its files' per-minute rollups.
pub const ROLLUP_DIR: &str = ".rollup";

/// Where the rollup of data file `file` lives: `.rollup/<same name>` beside it.
pub fn rollup_path(file: &Path) -> Option<PathBuf> {
    Some(file.parent()?.join(ROLLUP_DIR).join(file.file_name()?))
}

/// The data file a rollup was made from.
pub fn rollup_source(rollup: &Path) -> Option<PathBuf> {
    Some(rollup.parent()?.parent()?.join(rollup.file_name()?))
}

/// The write side of the per-minute rollups. The query engine computes a file's rollup
/// (it has the SQL for it) and hands it here; only the write side creates, renames or
/// removes files in the data directory.
pub trait RollupWriter: Send + Sync {
    /// Writes `batches` as the rollup at `rollup`, complete or not at all. Fails with
    /// `NotFound` when the file's partition is gone (retention dropped it meanwhile).
    fn write(
        &self,
        rollup: &Path,
        schema: arrow::datatypes::SchemaRef,
        batches: &[arrow::array::RecordBatch],
    ) -> io::Result<()>;

    /// Removes the rollups in the rollup folder `dir` whose file is gone, and temporary
    /// files a crash left; returns how many.
    fn remove_orphans(&self, dir: &Path) -> io::Result<usize>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_by_utc_hour() {
        // 2026-11-27T10:59:59.999Z and 11:00:00Z fall in neighbouring hours.
        let t = 1_795_777_199_999_000_000_i64;
        let dir = partition_dir(Path::new("/d"), "spans", partition_of(t));
        assert_eq!(dir, Path::new("/d/spans/date=2026-11-27/hour=10"));
        let next = partition_dir(Path::new("/d"), "spans", partition_of(t + 1_000_000));
        assert_eq!(next, Path::new("/d/spans/date=2026-11-27/hour=11"));
    }

    #[test]
    fn hour_dirs_prunes_by_range() {
        let tmp = tempfile::tempdir().unwrap();
        let base = 1_795_773_600_000_000_000_i64; // 2026-11-27T10:00:00Z
        for h in 0..3 {
            std::fs::create_dir_all(partition_dir(
                tmp.path(),
                "spans",
                base + h * NANOS_PER_HOUR,
            ))
            .unwrap();
        }
        let all = hour_dirs(tmp.path(), "spans", None, None).unwrap();
        assert_eq!(all.len(), 3);
        // [10:30, 11:00) touches only hour 10; [10:30, 11:00:00.000000001) touches 10 and 11.
        let half = NANOS_PER_HOUR / 2;
        let only_10 = hour_dirs(
            tmp.path(),
            "spans",
            Some(base + half),
            Some(base + NANOS_PER_HOUR),
        );
        assert_eq!(only_10.unwrap().len(), 1);
        let two = hour_dirs(
            tmp.path(),
            "spans",
            Some(base + half),
            Some(base + NANOS_PER_HOUR + 1),
        );
        assert_eq!(two.unwrap().len(), 2);
        assert!(
            hour_dirs(tmp.path(), "logs", None, None)
                .unwrap()
                .is_empty()
        );
    }
}
