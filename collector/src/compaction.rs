//! Compaction of closed hours and retention.
//!
//! Once an hour is closed (its end is [`CLOSED_AFTER`] in the past), its small flushed files
//! are merged, a group of at most [`MAX_INPUT_BYTES`] at a time, into files sorted for
//! pruning. Each merge's switch is one rename: before it, a note
//! `.replaced-by-<output>` listing the inputs is written beside them; readers drop the
//! inputs from a listing only when the output is in that same listing, so a query sees
//! either the inputs or the output, never both and never neither. The inputs are deleted
//! [`Config::compaction_grace`](crate::Config) later, so queries already reading them finish.
//!
//! Retention drops whole hour folders once their hour is older than the retention.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use schemas::{REPLACED_BY, Table};

use crate::error::{Error, Result};
use crate::{Collector, writer};

/// An hour is compacted this long after its end, so that late rows have mostly arrived.
pub const CLOSED_AFTER: Duration = Duration::from_secs(10 * 60);

/// Most input bytes merged into one output. A merge holds its inputs decoded and sorted in
/// memory, some 25 times their size in Parquet: one hour of 8M spans (57 files, 335 MB) took
/// the daemon to 6.5 GB as one merge, and to 750 MB in merges of at most 24 MiB.
const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Files at least this big are left as they are: merging them again would gain little.
const MERGED_BYTES: u64 = MAX_INPUT_BYTES / 2;

const NANOS_PER_HOUR: i64 = 3_600_000_000_000;

/// What one maintenance pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Hour partitions compacted.
    pub compacted: usize,
    /// Input files replaced by outputs.
    pub files_replaced: usize,
    /// Replaced files deleted after the grace period.
    pub files_deleted: usize,
    /// Hour partitions dropped by retention.
    pub partitions_dropped: usize,
}

impl Collector {
    /// One pass of compaction and retention over every table, as of `now_ns`. Blocking.
    pub fn maintain(&self, now_ns: i64) -> Result<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        let retention_ns = i64::try_from(self.config.retention.as_nanos()).unwrap_or(i64::MAX);
        let closed_ns = CLOSED_AFTER.as_nanos() as i64;
        for table in schemas::TABLES {
            let partitions =
                schemas::hour_partitions(&self.config.data_dir, table.name, None, None)
                    .map_err(storage)?;
            for (start, dir) in partitions {
                let end = start + NANOS_PER_HOUR;
                if end <= now_ns.saturating_sub(retention_ns) {
                    self.drop_partition(&dir)?;
                    report.partitions_dropped += 1;
                    continue;
                }
                report.files_deleted += delete_replaced(&dir, self.config.compaction_grace)?;
                if end + closed_ns <= now_ns {
                    let replaced = self.compact(table, &dir)?;
                    if replaced > 0 {
                        report.compacted += 1;
                        report.files_replaced += replaced;
                    }
                }
            }
            if report.partitions_dropped > 0 {
                remove_empty_dates(&self.config.data_dir.join(table.name));
            }
        }
        Ok(report)
    }

    /// Runs [`Collector::maintain`] every `compaction_interval` until `shutdown`.
    pub async fn run_maintenance(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut interval = tokio::time::interval(self.config.compaction_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let this = self.clone();
            let now = crate::now_ns();
            let outcome = match tokio::task::spawn_blocking(move || this.maintain(now)).await {
                Ok(Ok(report)) => {
                    metrics::counter!("apiscope_compactions_total")
                        .increment(report.compacted as u64);
                    metrics::counter!("apiscope_compacted_files_total")
                        .increment(report.files_replaced as u64);
                    metrics::counter!("apiscope_retention_dropped_partitions_total")
                        .increment(report.partitions_dropped as u64);
                    if report != MaintenanceReport::default() {
                        tracing::info!(?report, "compaction and retention pass");
                    }
                    "ok"
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "compaction or retention failed; retried next pass");
                    "error"
                }
                Err(error) => {
                    tracing::warn!(%error, "compaction task failed");
                    "error"
                }
            };
            metrics::counter!("apiscope_maintenance_passes_total", "outcome" => outcome)
                .increment(1);
        }
    }

    fn drop_partition(&self, dir: &Path) -> Result<()> {
        // Under the write lock, so that no query lists half a folder.
        self.buffer
            .exclusive(|| std::fs::remove_dir_all(dir))
            .map_err(storage)?;
        tracing::info!(partition = %dir.display(), "partition dropped by retention");
        Ok(())
    }

    /// Merges the small live files of one closed partition, in groups of at most
    /// [`MAX_INPUT_BYTES`]; returns how many files it replaced. Files that cannot be read are
    /// left as they are.
    fn compact(&self, table: &'static Table, dir: &Path) -> Result<usize> {
        let unreadable = self
            .unreadable
            .lock()
            .expect("unreadable files lock")
            .clone();
        let mut live = Vec::new();
        for file in schemas::live_files(dir).map_err(storage)? {
            if unreadable.contains(&file) {
                continue;
            }
            let bytes = std::fs::metadata(&file).map_err(storage)?.len();
            live.push((file, bytes));
        }
        let mut replaced = 0;
        for inputs in groups(live) {
            if self.merge(table, dir, &inputs)? {
                replaced += inputs.len();
            }
        }
        Ok(replaced)
    }

    /// Replaces `inputs` by one file holding their rows, sorted. Merges nothing when one of
    /// them cannot be read: that one is reported and left out from then on, and the others
    /// are merged by the next pass.
    fn merge(&self, table: &'static Table, dir: &Path, inputs: &[PathBuf]) -> Result<bool> {
        let schema = table.stored_schema();
        let mut batches = Vec::new();
        let mut through = 0;
        for input in inputs {
            through = through.max(writer::covered_seq(input).unwrap_or(0));
            match read_conformed(input, &schema) {
                Ok(read) => batches.extend(read),
                Err(error) => {
                    tracing::error!(
                        file = %input.display(),
                        %error,
                        "this Parquet file cannot be read and is left out of compaction; restore it, or move it out of the data directory"
                    );
                    self.unreadable
                        .lock()
                        .expect("unreadable files lock")
                        .insert(input.clone());
                    return Ok(false);
                }
            }
        }
        let staged = self.writer.stage(table, &batches, through)?;
        drop(batches);
        let [output] = staged.as_slice() else {
            writer::discard(&staged);
            return Err(Error::Storage(format!(
                "compacting {} produced {} files instead of one",
                dir.display(),
                staged.len()
            )));
        };
        let note = dir.join(format!("{REPLACED_BY}{}", output.name()));
        let written = write_note(&note, inputs);
        if let Err(error) = written {
            writer::discard(&staged);
            return Err(error);
        }
        if let Err(error) = self.buffer.exclusive(|| writer::publish(&staged)) {
            writer::discard(&staged);
            let _ = std::fs::remove_file(&note);
            return Err(error);
        }
        tracing::debug!(partition = %dir.display(), files = inputs.len(), rows = output.rows, "compacted");
        Ok(true)
    }
}

/// The files (with their sizes) to merge, in groups of two or more, each of at most
/// [`MAX_INPUT_BYTES`] unless one file is bigger; files of [`MERGED_BYTES`] or more are left
/// out. Which rows share a file does not matter to readers: each file is sorted on its own.
fn groups(live: Vec<(PathBuf, u64)>) -> Vec<Vec<PathBuf>> {
    let mut groups = Vec::new();
    let mut group = Vec::new();
    let mut group_bytes = 0;
    for (file, bytes) in live {
        if bytes >= MERGED_BYTES {
            continue;
        }
        if !group.is_empty() && group_bytes + bytes > MAX_INPUT_BYTES {
            groups.push(std::mem::take(&mut group));
            group_bytes = 0;
        }
        group.push(file);
        group_bytes += bytes;
    }
    groups.push(group);
    groups.retain(|group| group.len() > 1);
    groups
}

/// Reads a Parquet file as batches of `schema`: columns the file predates are null.
fn read_conformed(path: &Path, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(storage)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|builder| builder.build())
        .map_err(storage)?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(storage)?;
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|field| {
                batch
                    .column_by_name(field.name())
                    .cloned()
                    .unwrap_or_else(|| new_null_array(field.data_type(), batch.num_rows()))
            })
            .collect();
        batches.push(RecordBatch::try_new(schema.clone(), columns).map_err(storage)?);
    }
    Ok(batches)
}

fn write_note(note: &Path, inputs: &[PathBuf]) -> Result<()> {
    let mut text = String::new();
    for input in inputs {
        if let Some(name) = input.file_name().and_then(|n| n.to_str()) {
            text.push_str(name);
            text.push('\n');
        }
    }
    let mut file = File::create(note).map_err(storage)?;
    file.write_all(text.as_bytes()).map_err(storage)?;
    file.sync_all().map_err(storage)?;
    if let Some(dir) = note.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(storage)?;
    }
    Ok(())
}

/// Deletes the inputs of published compactions whose note is older than `grace`; forgets
/// notes of compactions that never published. Returns the files deleted.
fn delete_replaced(dir: &Path, grace: Duration) -> Result<usize> {
    let mut deleted = 0;
    for entry in std::fs::read_dir(dir).map_err(storage)? {
        let note = entry.map_err(storage)?.path();
        let Some(output) = note
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(REPLACED_BY))
        else {
            continue;
        };
        let age = std::fs::metadata(&note)
            .and_then(|m| m.modified())
            .map(|modified| {
                SystemTime::now()
                    .duration_since(modified)
                    .unwrap_or_default()
            })
            .map_err(storage)?;
        if age < grace {
            continue;
        }
        if dir.join(output).exists() {
            let text = std::fs::read_to_string(&note).map_err(storage)?;
            for input in text.lines().filter(|l| !l.is_empty()) {
                match std::fs::remove_file(dir.join(input)) {
                    Ok(()) => deleted += 1,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(storage(error)),
                }
            }
        }
        std::fs::remove_file(&note).map_err(storage)?;
    }
    Ok(deleted)
}

fn remove_empty_dates(table_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(table_dir) else {
        return;
    };
    for entry in entries.flatten() {
        // Fails (and is meant to) unless the folder is empty.
        let _ = std::fs::remove_dir(entry.path());
    }
}

fn storage(error: impl std::fmt::Display) -> Error {
    Error::Storage(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_merge_in_groups_under_the_cap_and_big_ones_stay() {
        const MIB: u64 = 1024 * 1024;
        let files = |sizes: &[u64]| -> Vec<(PathBuf, u64)> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, bytes)| (PathBuf::from(i.to_string()), bytes * MIB))
                .collect()
        };
        let names = |groups: Vec<Vec<PathBuf>>| -> Vec<Vec<String>> {
            groups
                .into_iter()
                .map(|g| g.iter().map(|p| p.display().to_string()).collect())
                .collect()
        };
        // 5 MiB flush files: three to a group; the lone last one waits for company.
        assert_eq!(
            names(groups(files(&[5, 5, 5, 5, 5, 5, 5]))),
            [["0", "1", "2"], ["3", "4", "5"]]
        );
        // Earlier merges' outputs (8 MiB or more) stay; the small files around them merge.
        assert_eq!(names(groups(files(&[20, 1, 2, 8, 3]))), [["1", "2", "4"]]);
        // One file alone, or none: nothing to do.
        assert!(groups(files(&[1])).is_empty());
        assert!(groups(files(&[])).is_empty());
    }
}
