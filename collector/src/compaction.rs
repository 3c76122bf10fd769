//! Compaction of closed hours and retention.
//!
//! Once an hour is closed (its end is [`CLOSED_AFTER`] in the past), its small flushed files
//! are merged, a group of at most [`MAX_INPUT_BYTES`] at a time, into files sorted for
//! pruning. Each merge's switch is the output's appearance: before it is stored, a note
//! `.replaced-by-<output>` listing the inputs is stored beside them; readers drop the
//! inputs from a listing only when the output is in that same listing, so a query sees
//! either the inputs or the output, never both and never neither. The inputs are deleted
//! [`Config::compaction_grace`](crate::Config) later, so queries already reading them finish.
//!
//! Retention drops whole hour folders once their hour is older than the retention.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use schemas::{ObjectPath, REPLACED_BY, Store, Table};

use crate::Collector;
use crate::error::{Error, Result, storage};

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
        let store = self.writer.store();
        for table in schemas::TABLES {
            let partitions = store
                .hour_partitions(table.name, None, None)
                .map_err(storage)?;
            for (start, dir) in partitions {
                let end = start + NANOS_PER_HOUR;
                if end <= now_ns.saturating_sub(retention_ns) {
                    self.drop_partition(&dir)?;
                    report.partitions_dropped += 1;
                    continue;
                }
                report.files_deleted += delete_replaced(store, &dir, self.config.compaction_grace)?;
                if end + closed_ns <= now_ns {
                    let replaced = self.compact(table, &dir)?;
                    if replaced > 0 {
                        report.compacted += 1;
                        report.files_replaced += replaced;
                    }
                }
            }
            if report.partitions_dropped > 0
                && let Some(dir) = store.local_path(&store.table(table.name))
            {
                remove_empty_dates(&dir);
            }
        }
        if report != MaintenanceReport::default() {
            self.changed();
        }
        Ok(report)
    }

    /// Runs [`Collector::maintain`] every `compaction_interval` until `shutdown`.
    pub async fn run_maintenance(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut interval = crate::every(self.config.compaction_interval);
        while crate::next_tick(&mut interval, &shutdown).await {
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

    fn drop_partition(&self, dir: &ObjectPath) -> Result<()> {
        // A query reading the hour meanwhile may see part of it: it is past retention.
        self.writer.store().delete_all(dir).map_err(storage)?;
        tracing::info!(partition = %dir, "partition dropped by retention");
        Ok(())
    }

    /// Merges the small live files of one closed partition, in groups of at most
    /// [`MAX_INPUT_BYTES`]; returns how many files it replaced. Files that cannot be read are
    /// left as they are.
    fn compact(&self, table: &'static Table, dir: &ObjectPath) -> Result<usize> {
        let unreadable = self
            .unreadable
            .lock()
            .expect("unreadable files lock")
            .clone();
        // Only this node's files, so that no two nodes merge the same ones; and not those past
        // the flushed mark, a failed flush's, about to be removed.
        let flushed = self.buffer.flushed_through();
        let mut live = Vec::new();
        for file in self.writer.store().live_files(dir).map_err(storage)? {
            let name = file.location.filename().unwrap_or_default();
            let published = schemas::covered_seq(name).is_none_or(|seq| seq <= flushed);
            if self.writer.owns(name) && published && !unreadable.contains(&file.location) {
                live.push((file.location, file.size));
            }
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
    fn merge(
        &self,
        table: &'static Table,
        dir: &ObjectPath,
        inputs: &[ObjectPath],
    ) -> Result<bool> {
        let store = self.writer.store();
        let schema = table.stored_schema();
        let mut batches = Vec::new();
        let mut through = 0;
        for input in inputs {
            let name = input.filename().unwrap_or_default();
            through = through.max(schemas::covered_seq(name).unwrap_or(0));
            match read_conformed(store, input, &schema) {
                Ok(read) => batches.extend(read),
                Err(error) => {
                    tracing::error!(
                        file = %input,
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
            return Err(Error::Storage(format!(
                "compacting {dir} produced {} files instead of one",
                staged.len()
            )));
        };
        let note = dir.clone().join(format!("{REPLACED_BY}{}", output.name()));
        store.put(&note, note_text(inputs)).map_err(storage)?;
        if let Err(error) = self.writer.store_files(&staged) {
            let _ = store.delete(&note);
            return Err(error);
        }
        tracing::debug!(partition = %dir, files = inputs.len(), rows = output.rows, "compacted");
        Ok(true)
    }
}

/// The files (with their sizes) to merge, in groups of two or more, each of at most
/// [`MAX_INPUT_BYTES`] unless one file is bigger; files of [`MERGED_BYTES`] or more are left
/// out. Which rows share a file does not matter to readers: each file is sorted on its own.
fn groups<T>(live: Vec<(T, u64)>) -> Vec<Vec<T>> {
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
fn read_conformed(
    store: &Store,
    path: &ObjectPath,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let file = store.get(path).map_err(storage)?;
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

/// A compaction's note: the names of the files its output replaces, one a line.
fn note_text(inputs: &[ObjectPath]) -> Bytes {
    let mut text = String::new();
    for name in inputs.iter().filter_map(|input| input.filename()) {
        text.push_str(name);
        text.push('\n');
    }
    Bytes::from(text)
}

/// Deletes the inputs of published compactions whose note is older than `grace`; forgets
/// notes of compactions that never published. Returns the files deleted.
fn delete_replaced(store: &Store, dir: &ObjectPath, grace: Duration) -> Result<usize> {
    let objects = store.list(dir).map_err(storage)?;
    let now = chrono::Utc::now();
    let mut deleted = 0;
    for note in &objects {
        let Some(output) = note
            .location
            .filename()
            .and_then(|n| n.strip_prefix(REPLACED_BY))
        else {
            continue;
        };
        let age = (now - note.last_modified).to_std().unwrap_or_default();
        if age < grace {
            continue;
        }
        if objects
            .iter()
            .any(|o| o.location.filename() == Some(output))
        {
            let text = store.get(&note.location).map_err(storage)?;
            let text = String::from_utf8_lossy(&text);
            for input in text.lines().filter(|l| !l.is_empty()) {
                store.delete(&dir.clone().join(input)).map_err(storage)?;
                deleted += 1;
            }
        }
        store.delete(&note.location).map_err(storage)?;
    }
    Ok(deleted)
}

fn remove_empty_dates(table_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(table_dir) else {
        return;
    };
    for entry in entries.flatten() {
        // Fails (and is meant to) unless the folder is empty.
        let _ = std::fs::remove_dir(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_merge_in_groups_under_the_cap_and_big_ones_stay() {
        const MIB: u64 = 1024 * 1024;
        let files = |sizes: &[u64]| -> Vec<(String, u64)> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, bytes)| (i.to_string(), bytes * MIB))
                .collect()
        };
        let names = |groups: Vec<Vec<String>>| -> Vec<Vec<String>> { groups };
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
