//! Compaction, retention, and the deletion of files no table lists.
//!
//! While an hour is open, its small files are merged in size tiers ([`tiered_groups`]), so
//! that it holds a bounded number of them however long the flushes go on. Once it is closed
//! (its end is [`CLOSED_AFTER`] in the past), a last merge takes all its small files, a
//! group of at most [`MAX_INPUT_BYTES`] at a time, into files sorted for pruning. Each
//! merge is one commit to the table's log: the output added and its inputs removed, so a
//! query sees either the inputs or the output, never both and never neither; the inputs'
//! rollups then become the output's. Retention is a commit too: every file of an hour older
//! than the retention removed.
//!
//! Each table-hour is maintained by one node: the live node ids ranked by a hash of the
//! table, the hour and the id (rendezvous hashing), the first one. Two nodes that disagree
//! for a moment (one just started or stopped) both try; the log's commit makes the second
//! give up, as both changes carry the hour's transaction id.
//!
//! Removed files are deleted [`Config::compaction_grace`](crate::Config) after their
//! removal, so queries already reading them finish: the node that removed them keeps them
//! until then. A sweep lists an hour's folder and deletes the data files its table does not
//! list and that are older than the grace: the files of a flush that failed before its
//! commit, and those a node removed before it stopped. Each hour is swept once after start
//! and once more after it closed; a dropped hour's folder is deleted whole.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use schemas::{Committed, ObjectPath, REPLACED_BY, ROLLUP_DIR, Store, Table, priority};

use crate::Collector;
use crate::error::{Error, Result, storage};
use crate::merge::Failed;

/// An hour is compacted this long after its end, so that late rows have mostly arrived.
pub const CLOSED_AFTER: Duration = Duration::from_secs(10 * 60);

/// Most input bytes merged into one output: the size of a closed hour's files. A merge
/// streams its inputs ([`crate::merge`]), so the cap bounds the files, not the memory (when
/// a merge held its inputs decoded, some 25 times their size, one hour of 8M spans as one
/// merge took the daemon to 6.5 GB).
const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Files at least this big are left as they are: merging them again would gain little.
const MERGED_BYTES: u64 = MAX_INPUT_BYTES / 2;

/// Most input bytes of a merge in an open hour: half of [`MAX_INPUT_BYTES`], so that a
/// row is rewritten once per tier and its output waits for the closed hour's merge.
const OPEN_INPUT_BYTES: u64 = MAX_INPUT_BYTES / 2;

/// The files of an open hour merge once this many of one size tier are there.
const FAN_IN: usize = 4;

/// The biggest files of the smallest size tier; each tier above holds files up to
/// [`FAN_IN`] times bigger: 256 KiB, 1 MiB, 4 MiB, then up to [`MERGED_BYTES`].
const TIER_BYTES: u64 = 256 * 1024;

const NANOS_PER_HOUR: i64 = 3_600_000_000_000;

/// Runs `job` on a new thread at [`priority::MAINTENANCE_NICE`]; its outcome, or why there is
/// none (the thread could not start, or the job panicked).
async fn in_background<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, String> {
    let (done, outcome) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("apiscope-maintain".into())
        .spawn(move || {
            priority::lower_this_thread(priority::MAINTENANCE_NICE);
            let _ = done.send(job());
        })
        .map_err(|error| format!("cannot start the maintenance thread: {error}"))?;
    outcome
        .await
        .map_err(|_| "the maintenance pass panicked".to_string())
}

/// What one maintenance pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Hour partitions compacted.
    pub compacted: usize,
    /// Input files replaced by outputs.
    pub files_replaced: usize,
    /// Files deleted: removed from their table more than the grace ago, or never committed.
    pub files_deleted: usize,
    /// Hour partitions dropped by retention.
    pub partitions_dropped: usize,
}

/// The deletions maintenance owes.
#[derive(Debug, Default)]
pub(crate) struct Deletions {
    /// Hour folders swept since start, with whether the hour was closed then.
    swept: HashMap<ObjectPath, bool>,
    /// Files removed from their table (merges' inputs, rollups of files gone), deleted once
    /// their instant has passed.
    files: Vec<(ObjectPath, Instant)>,
    /// Folders of dropped hours, deleted whole once their instant has passed.
    folders: Vec<(ObjectPath, Instant)>,
}

impl Deletions {
    /// The entries of `owed` whose instant has passed, taken out of it.
    fn due(owed: &mut Vec<(ObjectPath, Instant)>) -> Vec<ObjectPath> {
        let now = Instant::now();
        let (due, later) = std::mem::take(owed)
            .into_iter()
            .partition(|(_, at)| *at <= now);
        *owed = later;
        due.into_iter().map(|(path, _)| path).collect()
    }
}

impl Collector {
    /// One pass of compaction and retention over every table, as of `now_ns`. Blocking.
    pub fn maintain(&self, now_ns: i64) -> Result<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        let retention_ns = i64::try_from(self.config.retention.as_nanos()).unwrap_or(i64::MAX);
        let closed_ns = CLOSED_AFTER.as_nanos() as i64;
        let grace = self.config.compaction_grace;
        let store = self.writer.store();
        // The rollups' table is kept and swept like the others, and never merged: each of
        // its files is the rollup of one data file.
        for table in schemas::TABLES.iter().copied().chain([&schemas::MINUTES]) {
            let partitions = store
                .hour_partitions(table.name, None, None)
                .map_err(storage)?;
            for (start, dir) in partitions {
                if !self.maintains(table.name, start)? {
                    continue;
                }
                let end = start + NANOS_PER_HOUR;
                if end <= now_ns.saturating_sub(retention_ns) {
                    if store.commit_drop(table, start).map_err(storage)? > 0 {
                        tracing::info!(partition = %dir, "partition dropped by retention");
                        report.partitions_dropped += 1;
                        self.deletions().folders.push((dir, Instant::now() + grace));
                    }
                    continue;
                }
                let closed = end + closed_ns <= now_ns;
                let merges = if closed {
                    Merges::Final
                } else {
                    Merges::Tiered
                };
                let replaced = if table.name == schemas::MINUTES.name {
                    0
                } else {
                    self.compact(table, start, &dir, merges)?
                };
                if replaced > 0 {
                    report.compacted += 1;
                    report.files_replaced += replaced;
                }
                let swept = self.deletions().swept.get(&dir).copied();
                if swept.is_none() || (closed && swept == Some(false)) {
                    let pending: HashSet<ObjectPath> = self
                        .deletions()
                        .files
                        .iter()
                        .map(|(path, _)| path.clone())
                        .collect();
                    report.files_deleted += sweep(store, table, start, &dir, grace, &pending)?;
                    self.deletions().swept.insert(dir, closed);
                }
            }
        }
        report.files_deleted += self.delete_due()?;
        if report != MaintenanceReport::default() {
            self.changed();
        }
        Ok(report)
    }

    /// Whether this node maintains `table`'s hour starting at `start` (see [`owner`]).
    pub(crate) fn maintains(&self, table: &str, start: i64) -> Result<bool> {
        let nodes = self.claim.live_nodes()?;
        Ok(owner(&nodes, table, start) == self.claim.node())
    }

    fn deletions(&self) -> std::sync::MutexGuard<'_, Deletions> {
        self.deletions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes `removed` (files just removed from their table) once the grace has passed.
    pub(crate) fn removed(&self, removed: &[ObjectPath]) {
        let at = Instant::now() + self.config.compaction_grace;
        let mut deletions = self.deletions();
        deletions
            .files
            .extend(removed.iter().map(|path| (path.clone(), at)));
    }

    /// Deletes the files removed, and the folders of hours dropped, more than the grace ago.
    fn delete_due(&self) -> Result<usize> {
        let (files, folders) = {
            let mut deletions = self.deletions();
            (
                Deletions::due(&mut deletions.files),
                Deletions::due(&mut deletions.folders),
            )
        };
        let store = self.writer.store();
        let mut deleted = 0;
        for (i, file) in files.iter().enumerate() {
            if let Err(error) = store.delete(file) {
                // Owed still: the next pass tries again.
                self.removed(&files[i..]);
                return Err(storage(error));
            }
            deleted += 1;
        }
        for dir in folders {
            deleted += store.delete_all(&dir).map_err(storage)?;
            if let Some(date) = schemas::parent(&dir).and_then(|d| store.local_path(&d)) {
                // Fails (and is meant to) unless the day's folder is empty.
                let _ = std::fs::remove_dir(date);
            }
        }
        Ok(deleted)
    }

    /// Runs [`Collector::maintain`] every `compaction_interval` until `shutdown`, each pass on
    /// a thread of its own at [`priority::MAINTENANCE_NICE`]: a merge can wait, so it takes
    /// the CPU that acknowledging data and answering queries leave.
    pub async fn run_maintenance(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut interval = crate::every(self.config.compaction_interval);
        while crate::next_tick(&mut interval, &shutdown).await {
            let this = self.clone();
            let now = crate::now_ns();
            let outcome = match in_background(move || this.maintain(now)).await {
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
                    tracing::warn!(%error, "compaction pass failed");
                    "error"
                }
            };
            metrics::counter!("apiscope_maintenance_passes_total", "outcome" => outcome)
                .increment(1);
        }
    }

    /// Merges the small live files of one hour as `merges` says; returns how many files it
    /// replaced. Files that cannot be read are left as they are.
    pub(crate) fn compact(
        &self,
        table: &'static Table,
        start: i64,
        dir: &ObjectPath,
        merges: Merges,
    ) -> Result<usize> {
        let unreadable = self
            .unreadable
            .lock()
            .expect("unreadable files lock")
            .clone();
        // Not this node's files whose rows are still buffered: a flush committed them and
        // has not yet dropped the rows.
        let flushed = self.buffer.flushed_through(table.name);
        let mut live = Vec::new();
        let files = self
            .writer
            .store()
            .table_files(table.name, Some(start), Some(start + NANOS_PER_HOUR))
            .map_err(storage)?;
        for file in files {
            let name = file.location.filename().unwrap_or_default();
            let published = !self.writer.owns(name)
                || schemas::covered_seq(name).is_none_or(|seq| seq <= flushed);
            if published && !unreadable.contains(&file.location) {
                live.push((file.location, file.size));
            }
        }
        let mut replaced = 0;
        let groups = match merges {
            Merges::Tiered => tiered_groups(live),
            Merges::Final => groups(live),
        };
        for inputs in groups {
            if self.merge(table, start, dir, &inputs)? {
                replaced += inputs.len();
            }
        }
        Ok(replaced)
    }

    /// Replaces `inputs` by one file holding their rows, sorted. Merges nothing when one of
    /// them cannot be read (that one is reported and left out from then on, and the others
    /// are merged by the next pass), or when another node changed the hour first.
    fn merge(
        &self,
        table: &'static Table,
        start: i64,
        dir: &ObjectPath,
        inputs: &[ObjectPath],
    ) -> Result<bool> {
        let store = self.writer.store();
        let schema = table.stored_schema();
        let mut runs = Vec::new();
        for input in inputs {
            match read_conformed(store, input, &schema) {
                Ok(batches) => runs.push(batches),
                Err(error) => return Ok(self.left_out(input, &error)),
            }
        }
        // Named after no sequence: its rows are committed, whoever logged them.
        let mut output = self.writer.file(table, start, 0)?;
        let merged =
            crate::merge::merge_sorted(&schema, table.sort_by, runs, |batch| output.write(batch));
        match merged {
            Ok(()) => {}
            Err(Failed::Input(i, error)) => return Ok(self.left_out(&inputs[i], &error)),
            Err(Failed::Output(error)) => return Err(error),
        }
        let output = output.finish()?;
        let staged = std::slice::from_ref(&output);
        self.writer.store_files(staged)?;
        let committed = store
            .commit_compaction(table, start, inputs, &output.new_file())
            .map_err(storage)?;
        if committed == Committed::GaveUp {
            tracing::info!(partition = %dir, "another node changed this hour first; its compaction is left to it");
            let _ = store.delete(&output.path);
            return Ok(false);
        }
        self.removed(inputs);
        tracing::debug!(partition = %dir, files = inputs.len(), rows = output.rows, "compacted");
        if let Err(error) = self.carry_rollups(table, start, inputs, &output.path) {
            tracing::debug!(partition = %dir, %error, "the output's rollup is left to the rollup pass");
        }
        Ok(true)
    }

    /// Leaves `input`, which cannot be read, out of compaction from now on, and says so;
    /// false, as nothing was merged.
    fn left_out(&self, input: &ObjectPath, error: &Error) -> bool {
        tracing::error!(
            file = %input,
            %error,
            "this Parquet file cannot be read and is left out of compaction; restore it, or move it out of the data directory"
        );
        self.unreadable
            .lock()
            .expect("unreadable files lock")
            .insert(input.clone());
        false
    }

    /// Gives a merge's `output` the rollups of its `inputs` when each has one: their rows
    /// together are the output's rollup, so the rollup pass need not read the output, and
    /// `api_call_minutes` reads one rollup where it read several. Otherwise the rollup pass
    /// makes the output's from the file, as for any file.
    fn carry_rollups(
        &self,
        table: &'static Table,
        start: i64,
        inputs: &[ObjectPath],
        output: &ObjectPath,
    ) -> Result<()> {
        let store = self.writer.store();
        let rollup_of = |file: &ObjectPath| {
            store
                .rollup_of(table.name, file)
                .ok_or_else(|| Error::Storage(format!("{file} has no rollup path")))
        };
        let rollups = inputs.iter().map(rollup_of).collect::<Result<Vec<_>>>()?;
        let live: HashSet<ObjectPath> = store
            .table_files(
                schemas::MINUTES.name,
                Some(start),
                Some(start + NANOS_PER_HOUR),
            )
            .map_err(storage)?
            .into_iter()
            .map(|file| file.location)
            .collect();
        if !rollups.iter().all(|rollup| live.contains(rollup)) {
            return Ok(());
        }
        let schema = schemas::MINUTES.stored_schema();
        let mut rows = Vec::new();
        for rollup in &rollups {
            let batches = read_rollup(store, rollup, &schema)?;
            // An older release's rollup: the rollup pass makes the output's from its file.
            let Some(batches) = batches else {
                return Ok(());
            };
            for batch in batches {
                rows.push(batch?);
            }
        }
        let stored = crate::rollup_files::store_rollup(store, &rollup_of(output)?, schema, &rows)
            .map_err(storage)?;
        if store.commit_rollups(&[stored], &rollups).map_err(storage)? == Committed::Done {
            self.removed(&rollups);
        }
        Ok(())
    }
}

/// The node that maintains `table`'s hour starting at `start` among the live `nodes`: the
/// one whose hash with the table and hour is highest. Every node ranks alike, and a node
/// joining or leaving moves only the hours it wins or held.
fn owner<'a>(nodes: &'a [String], table: &str, start: i64) -> &'a str {
    let weight = |node: &str| {
        // FNV-1a: the same on every node and every build.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in table.bytes().chain(start.to_le_bytes()).chain(node.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Its last bytes barely reach the high bits: mixed as splitmix64 finishes.
        hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        hash ^ (hash >> 31)
    };
    nodes
        .iter()
        .max_by_key(|node| (weight(node), node.as_str()))
        .map_or("", String::as_str)
}

/// Deletes the files of one hour folder that `table`'s log does not list, that are older
/// than `grace` and not `pending` (removed less than the grace ago): files of flushes that
/// failed before their commit, files removed before a restart, and the notes of compactions
/// and rollups of releases before the logs. Returns how many.
fn sweep(
    store: &Store,
    table: &'static Table,
    start: i64,
    dir: &ObjectPath,
    grace: Duration,
    pending: &HashSet<ObjectPath>,
) -> Result<usize> {
    let live: HashSet<ObjectPath> = store
        .table_files(table.name, Some(start), Some(start + NANOS_PER_HOUR))
        .map_err(storage)?
        .into_iter()
        .map(|file| file.location)
        .collect();
    let now = chrono::Utc::now();
    let mut deleted = 0;
    for object in store.list(dir).map_err(storage)? {
        let name = object.location.filename().unwrap_or_default();
        let old = (now - object.last_modified).to_std().unwrap_or_default() >= grace;
        let unlisted = schemas::is_data_file(name)
            && !live.contains(&object.location)
            && !pending.contains(&object.location);
        if old && (unlisted || name.starts_with(REPLACED_BY)) {
            store.delete(&object.location).map_err(storage)?;
            deleted += 1;
        }
    }
    // Where a release before the rollups' table kept the hour's rollups.
    deleted += store
        .delete_all(&dir.clone().join(ROLLUP_DIR))
        .map_err(storage)?;
    Ok(deleted)
}

/// How an hour's files are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merges {
    /// While the hour is open: [`FAN_IN`] files of one size tier at a time.
    Tiered,
    /// Once it is closed: every small file, in groups under [`MAX_INPUT_BYTES`].
    Final,
}

/// The size tier of a file of `bytes`: 0 up to [`TIER_BYTES`], and each tier above for
/// files up to [`FAN_IN`] times bigger than the one below.
fn tier(bytes: u64) -> u32 {
    let mut tier = 0;
    let mut cap = TIER_BYTES;
    while bytes > cap {
        cap = cap.saturating_mul(FAN_IN as u64);
        tier += 1;
    }
    tier
}

/// The files (with their sizes) of an open hour to merge: within each size tier, in the
/// order given, groups of [`FAN_IN`] files, or fewer (two at least) where one more would
/// pass [`OPEN_INPUT_BYTES`]; files of [`MERGED_BYTES`] or more are left out. A tier's
/// last files wait for company, so a row is rewritten about once per tier, and an hour
/// holds at most `FAN_IN - 1` files of each tier up to 4 MiB once merged; files over 4 MiB
/// rarely merge before the hour closes (two fit under the cap only when close to 4 MiB).
fn tiered_groups<T>(live: Vec<(T, u64)>) -> Vec<Vec<T>> {
    let mut tiers: std::collections::BTreeMap<u32, Vec<(T, u64)>> = Default::default();
    for (file, bytes) in live {
        if bytes < MERGED_BYTES {
            tiers.entry(tier(bytes)).or_default().push((file, bytes));
        }
    }
    let mut groups = Vec::new();
    for files in tiers.into_values() {
        let mut group = Vec::new();
        let mut group_bytes = 0;
        for (file, bytes) in files {
            if group.len() >= 2 && group_bytes + bytes > OPEN_INPUT_BYTES {
                groups.push(std::mem::take(&mut group));
                group_bytes = 0;
            }
            group.push(file);
            group_bytes += bytes;
            if group.len() == FAN_IN {
                groups.push(std::mem::take(&mut group));
                group_bytes = 0;
            }
        }
    }
    groups
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

/// Reads the rollup at `path` as batches of `schema`; `None` when an older release made it
/// without some of the columns (see [`schemas::rollup_complete`]).
fn read_rollup(
    store: &Store,
    path: &ObjectPath,
    schema: &SchemaRef,
) -> Result<Option<impl Iterator<Item = Result<RecordBatch>> + use<>>> {
    let builder = open_parquet(store, path)?;
    if !schemas::rollup_complete(builder.schema(), schema) {
        return Ok(None);
    }
    conformed_batches(builder, schema).map(Some)
}

/// Reads a Parquet file as batches of `schema` ([`merge::READ_ROWS`](crate::merge::READ_ROWS)
/// rows at a time): columns the file predates are null.
fn read_conformed(
    store: &Store,
    path: &ObjectPath,
    schema: &SchemaRef,
) -> Result<impl Iterator<Item = Result<RecordBatch>> + use<>> {
    conformed_batches(open_parquet(store, path)?, schema)
}

fn open_parquet(
    store: &Store,
    path: &ObjectPath,
) -> Result<ParquetRecordBatchReaderBuilder<bytes::Bytes>> {
    let file = store.get(path).map_err(storage)?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(storage)
}

/// The batches `builder` reads, as `schema`.
fn conformed_batches(
    builder: ParquetRecordBatchReaderBuilder<bytes::Bytes>,
    schema: &SchemaRef,
) -> Result<impl Iterator<Item = Result<RecordBatch>> + use<>> {
    let reader = builder
        .with_batch_size(crate::merge::READ_ROWS)
        .build()
        .map_err(storage)?;
    let schema = schema.clone();
    Ok(reader
        .map(move |batch| schemas::conformed(&schema, &batch.map_err(storage)?).map_err(storage)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_maintenance_pass_runs_below_queries_and_a_panic_in_it_is_an_error() {
        let nice = in_background(priority::this_thread_nice).await.unwrap();
        assert!(
            nice >= priority::MAINTENANCE_NICE,
            "maintenance thread nice {nice}"
        );
        let panicked = in_background(|| -> usize { panic!("a merge went wrong") }).await;
        assert_eq!(panicked, Err("the maintenance pass panicked".to_string()));
    }

    #[test]
    fn each_hour_has_one_owner_and_a_leaving_node_moves_only_its_hours() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "c"].map(String::from).to_vec();
        let hours: Vec<i64> = (0..300).map(|h| h * NANOS_PER_HOUR).collect();
        let mut held = HashMap::new();
        for hour in &hours {
            *held.entry(owner(&three, "spans", *hour)).or_insert(0) += 1;
            let now = owner(&two, "spans", *hour);
            if owner(&three, "spans", *hour) != "b" {
                assert_eq!(now, owner(&three, "spans", *hour));
            }
        }
        // Each node maintains about a third of the hours.
        assert!(held.values().all(|n| (70..130).contains(n)), "{held:?}");
    }

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

    #[test]
    fn an_open_hour_merges_four_files_of_one_tier_at_a_time() {
        const KIB: u64 = 1024;
        let files = |sizes: &[u64]| -> Vec<(usize, u64)> {
            sizes.iter().map(|kib| kib * KIB).enumerate().collect()
        };
        assert_eq!(tier(0), 0);
        assert_eq!(tier(256 * KIB), 0);
        assert_eq!(tier(256 * KIB + 1), 1);
        assert_eq!(tier(4096 * KIB + 1), 3);
        // Five flushes of tier 0 and three of tier 1: four of tier 0 merge, the rest wait.
        let sizes = [10, 20, 600, 30, 700, 40, 50, 800];
        assert_eq!(tiered_groups(files(&sizes)), [vec![0, 1, 3, 5]]);
        // Files of 3,000 KiB: three would pass the open hour's cap of 8 MiB, so two at a
        // time; files of 8 MiB or more stay as they are, and two of 5,000 KiB pass the cap.
        let sizes = [3000, 3000, 9000, 3000, 3000, 3000, 5000, 5000];
        assert_eq!(tiered_groups(files(&sizes)), [vec![0, 1], vec![3, 4]]);
        assert!(tiered_groups(files(&[10, 10, 10])).is_empty());
    }
}
