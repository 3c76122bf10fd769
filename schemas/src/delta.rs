//! Each table is a Delta Lake table: `<store>/<table>/_delta_log` lists the data files that
//! hold its rows, and nothing else does. A flush stores its files and then commits them;
//! compaction commits its output with the removal of its inputs; retention commits the
//! removal of a whole hour. Readers take the files from the log, never from a listing of
//! the data folders, so a file stored but not committed (a crash between the two) is never
//! read, and is deleted by the pass that deletes removed files.
//!
//! Each commit of a flush carries the writer's node id and the highest WAL sequence it
//! covers as a Delta application transaction (`txn`): after a crash, replay restores the
//! logged rows above it, for that table.
//!
//! The log of each table is kept in memory and brought up to date by reading only the
//! commits after the version held (one LIST of `_delta_log` from that version, then a GET
//! per new commit; a checkpoint every [`CHECKPOINT_INTERVAL`] commits): for reads, once the
//! log held is older than [`REFRESH_AFTER`](crate::logs::REFRESH_AFTER) (in the background
//! from half of it on, so that a busy reader does not wait for it); for each change that
//! must see the files as they are (compaction, retention), first. A
//! commit that only adds files (a flush, rollups) is made on the log as held: if other
//! writers committed since, the commit reads their commits and is tried again after them.
//! Each commit leaves the log held as it made it. Whatever changes the log held publishes
//! its files, and reads take the files published: a busy reader waits for no commit.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{
    CommitBuilder, CommitProperties, FinalizedCommit, TransactionError,
};
use deltalake_core::kernel::{Action, Add, Remove, StructField, StructType, Transaction};
use deltalake_core::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::table::state::DeltaTableState;
use deltalake_core::{DeltaTable, DeltaTableError};
use object_store::ObjectStoreExt;
use object_store::prefix::PrefixStore;

use crate::layout::NANOS_PER_HOUR;
use crate::logs::{Listed, Refresh, TableLog};
use crate::store::{ObjectMeta, ObjectPath, Store};
use crate::{MINUTES, TABLES, Table};

/// Commits between two checkpoints of a table's log.
const CHECKPOINT_INTERVAL: u64 = 100;

/// The application id of the rows in files named before node ids: a store had one writer
/// then, so they count as every node's (see [`Store::flushed_seq`]).
const BEFORE_NODE_IDS: &str = "apiscope-before-node-ids";

/// The partition columns of every table: the UTC day and hour of `time`.
const PARTITION_COLUMNS: [&str; 2] = ["date", "hour"];

/// A data file to commit: where it is, its size, and its statistics as Delta writes them
/// (`{"numRecords": …}`).
#[derive(Debug, Clone)]
pub struct NewFile {
    /// Where it is stored.
    pub path: ObjectPath,
    /// Its size in bytes.
    pub size: u64,
    /// Its statistics, a JSON object.
    pub stats: String,
}

/// What compaction or retention asks the log to do, and whether it was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Committed.
    Done,
    /// Another writer changed the same files or the same hour first: nothing was done.
    GaveUp,
}

impl Store {
    /// The log of `table`, opened on first use.
    fn log_of(&self, table: &'static Table) -> io::Result<TableLog> {
        let mut logs = self.logs.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(log) = logs.get(table.name) {
            return Ok(log.clone());
        }
        let root = self.table(table.name);
        let url = url::Url::parse(&format!("{}/", self.url_of(&root)))
            .map_err(|error| io::Error::other(format!("store {}: {error}", self.name())))?;
        let prefixed = Arc::new(PrefixStore::new(self.objects(), root));
        let log = TableLog {
            log: default_logstore(prefixed, self.objects(), &url, &StorageConfig::default()),
            state: Arc::default(),
            listed: Arc::default(),
            refresh: Arc::default(),
        };
        logs.insert(table.name, log.clone());
        Ok(log)
    }

    /// Runs `work` on `table`'s log, brought up to date as `access` needs. A table with no
    /// log yet gets one when written to (with the files of an older data directory, if
    /// any); a read finds none (`None`). What `work` committed becomes the log held.
    fn with_log<T: Send + 'static>(
        &self,
        operation: &'static str,
        table: &'static Table,
        access: Access,
        work: impl FnOnce(&mut DeltaTable, &LogStoreRef) -> Work<T> + Send + 'static,
    ) -> io::Result<Option<T>> {
        let log = self.log_of(table)?;
        let working = on_log(self.clone(), table, log, access, work);
        self.block(operation, &self.table(table.name), working)
    }

    /// The files `log` last published, if a read may take them as they are: brought up to
    /// date within [`REFRESH_AFTER`](crate::logs::REFRESH_AFTER) (from half of it on, they
    /// are brought up to date in the background for the reads after). `None`: the read
    /// brings the log up to date itself, after any commit holding it.
    fn published(&self, table: &'static Table, log: &TableLog) -> Option<Arc<Listed>> {
        let listed = log.listed()?;
        if log.refresh.get() == Refresh::Failed {
            return None;
        }
        let age = listed.refreshed.map(|at| at.elapsed());
        if age.is_some_and(|age| age < crate::logs::REFRESH_AFTER / 2) {
            return Some(listed);
        }
        if age.is_some_and(|age| age < crate::logs::REFRESH_AFTER) {
            self.refresh_later(table, log.clone());
            return Some(listed);
        }
        None
    }

    /// Brings `table`'s log up to date on the store's runtime, without waiting for it,
    /// unless that is under way already. Should it fail, the next read does it itself, and
    /// reports the error.
    fn refresh_later(&self, table: &'static Table, log: TableLog) {
        if log.refresh.swap(Refresh::Running) == Refresh::Running {
            return;
        }
        let store = self.clone();
        crate::store::IO.spawn(async move {
            let started = Instant::now();
            let noop = |_: &mut DeltaTable, _: &LogStoreRef| -> Work<()> {
                Box::pin(std::future::ready(Ok(((), None))))
            };
            let done = on_log(store.clone(), table, log.clone(), Access::Refresh, noop).await;
            let failed = done.is_err();
            let path = store.table(table.name);
            // Counted as a read's; the error is the next read's to report.
            let _ = store.recorded("delta_snapshot", &path, started, done);
            log.refresh.set(if failed {
                Refresh::Failed
            } else {
                Refresh::Idle
            });
        });
    }

    /// [`Store::with_log`] for a write: the log exists once it is done.
    fn write_log<T: Send + 'static>(
        &self,
        table: &'static Table,
        access: Access,
        work: impl FnOnce(&mut DeltaTable, &LogStoreRef) -> Work<T> + Send + 'static,
    ) -> io::Result<T> {
        self.with_log("delta_commit", table, access, work)?
            .ok_or_else(|| io::Error::other(format!("table {} has no log", table.name)))
    }

    /// Runs `future` on the store's runtime and waits for it, recording it as `operation`.
    fn block<T: Send + 'static>(
        &self,
        operation: &'static str,
        path: &ObjectPath,
        future: impl Future<Output = Result<T, DeltaError>> + Send + 'static,
    ) -> io::Result<T> {
        let started = Instant::now();
        let done = futures::executor::block_on(crate::store::IO.spawn(future));
        let done = match done {
            Ok(done) => done,
            Err(error) => Err(DeltaError::Io(io::Error::other(error))),
        };
        self.recorded(operation, path, started, done)
    }

    /// Counts `done`, the log's work `operation` on `path` begun at `started`, and words its
    /// error.
    fn recorded<T>(
        &self,
        operation: &'static str,
        path: &ObjectPath,
        started: Instant,
        done: Result<T, DeltaError>,
    ) -> io::Result<T> {
        // The requests it made are counted by the store; this counts the log's work.
        metrics::counter!(
            "apiscope_table_log_calls_total",
            "operation" => operation,
            "outcome" => if done.is_ok() { "ok" } else { "error" }
        )
        .increment(1);
        metrics::histogram!("apiscope_table_log_call_duration_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        done.map_err(|error| match error {
            DeltaError::Io(error) => error,
            DeltaError::Delta(error) => io::Error::other(format!(
                "store {}: {operation} {path} failed: {error}",
                self.name()
            )),
        })
    }

    /// Ensures `table` has a log: at start, so that readers find every table.
    pub fn create_table(&self, table: &'static Table) -> io::Result<()> {
        self.with_log("delta_create", table, Access::Change, |_, _| {
            Box::pin(async { Ok(((), None)) })
        })
        .map(drop)
    }

    /// The live data files of `table` in the hours overlapping `lo_ns..hi_ns`, as its log
    /// lists them.
    pub fn table_files(
        &self,
        table: &str,
        lo_ns: Option<i64>,
        hi_ns: Option<i64>,
    ) -> io::Result<Vec<ObjectMeta>> {
        let files = self.files_by_hour(table, lo_ns, hi_ns)?;
        Ok(files.into_iter().map(|(_, file)| file).collect())
    }

    /// The hours of `table` that hold live files overlapping `lo_ns..hi_ns`, with each
    /// one's folder, sorted by time.
    pub fn hour_partitions(
        &self,
        table: &str,
        lo_ns: Option<i64>,
        hi_ns: Option<i64>,
    ) -> io::Result<Vec<(i64, ObjectPath)>> {
        let mut hours: Vec<i64> = self
            .files_by_hour(table, lo_ns, hi_ns)?
            .into_iter()
            .map(|(start, _)| start)
            .collect();
        hours.sort_unstable();
        hours.dedup();
        Ok(hours
            .into_iter()
            .map(|start| (start, self.partition(table, start)))
            .collect())
    }

    /// The live data files of `table` in the hours overlapping `lo_ns..hi_ns`, each with
    /// the start of its hour, sorted by path.
    ///
    /// They come from the files last published: those of the log held (see
    /// [`Store::published`]). This node's commits are published as they are made, so what
    /// a read returns holds every commit this node finished before it began, and other
    /// nodes' commits older than [`REFRESH_AFTER`](crate::logs::REFRESH_AFTER). A busy
    /// reader finds the log brought up to date in the background and waits for no commit;
    /// the first read after a pause, or after a failed refresh, brings it up to date itself
    /// (and reports its error).
    fn files_by_hour(
        &self,
        table: &str,
        lo_ns: Option<i64>,
        hi_ns: Option<i64>,
    ) -> io::Result<Vec<(i64, ObjectMeta)>> {
        let table = table_named(table)?;
        let log = self.log_of(table)?;
        // After a failed refresh the log held may still look up to date: do it again.
        let access = match log.refresh.get() {
            Refresh::Failed => Access::Refresh,
            _ => Access::Read,
        };
        let listed = match self.published(table, &log) {
            Some(listed) => Some(listed),
            None => self
                .with_log("delta_snapshot", table, access, |_, _| {
                    Box::pin(std::future::ready(Ok(((), None))))
                })?
                .and_then(|()| {
                    log.refresh.set(Refresh::Idle);
                    log.listed()
                }),
        };
        let in_range = |start: i64| {
            lo_ns.is_none_or(|lo| start + NANOS_PER_HOUR > lo) && hi_ns.is_none_or(|hi| start < hi)
        };
        match listed {
            Some(listed) => Ok(listed
                .files
                .iter()
                .filter(|(start, _)| in_range(*start))
                .cloned()
                .collect()),
            // No log yet: a store written before the logs, read as that release listed it
            // until a daemon converts it.
            None => {
                let mut files = Vec::new();
                for (start, partition) in self.listed_partitions(table.name, lo_ns, hi_ns)? {
                    let listed = self.listed_files(&partition)?;
                    files.extend(listed.into_iter().map(|file| (start, file)));
                }
                Ok(files)
            }
        }
    }

    /// The highest WAL sequence of `node` whose rows of `table` are committed: the version
    /// of its application transaction (or of the files named before node ids, if higher).
    pub fn flushed_seq(&self, table: &str, node: &str) -> io::Result<u64> {
        let table = table_named(table)?;
        let node = node.to_owned();
        let highest = self.with_log("delta_txn", table, Access::Read, move |current, log| {
            let snapshot = current.snapshot().cloned();
            let log = log.clone();
            Box::pin(async move {
                let snapshot = snapshot?;
                let mut highest = 0;
                for app in [node.as_str(), BEFORE_NODE_IDS] {
                    let version = snapshot.transaction_version(&log, app).await?;
                    let version = version.and_then(|v| u64::try_from(v).ok());
                    highest = highest.max(version.unwrap_or(0));
                }
                Ok((highest, None))
            })
        })?;
        Ok(highest.unwrap_or(0))
    }

    /// Commits `files` (stored already) to `table`, with `node`'s transaction `through`: the
    /// one way a flush's rows become visible. Concurrent commits of other writers only add
    /// files too, so they never make it fail; it is tried again on a newer version.
    pub fn commit_flush(
        &self,
        table: &'static Table,
        files: &[NewFile],
        node: &str,
        through: u64,
    ) -> io::Result<()> {
        let root = self.table(table.name);
        let actions: Vec<Action> = files
            .iter()
            .map(|file| Action::Add(add(&root, file, true)))
            .collect();
        let txn = Transaction::new_with_last_update(
            node,
            i64::try_from(through).unwrap_or(i64::MAX),
            Some(chrono::Utc::now().timestamp_millis()),
        );
        self.write_log(table, Access::Append, move |current, log| {
            let log = log.clone();
            let snapshot = current.snapshot().cloned();
            Box::pin(async move {
                let snapshot = snapshot?;
                let properties = CommitProperties::default().with_application_transaction(txn);
                let committed = CommitBuilder::from(properties)
                    .with_actions(actions)
                    .build(Some(&snapshot), log, appending())
                    .await?;
                Ok(((), Some(committed.snapshot)))
            })
        })
    }

    /// Adds the rollups `added` (stored already) to the rollups' table and removes `removed`
    /// from it, in one commit; rollups already removed are left out. Gives up when another
    /// writer removed the same rollups meanwhile: the next pass sees what is left to do.
    pub fn commit_rollups(
        &self,
        added: &[NewFile],
        removed: &[ObjectPath],
    ) -> io::Result<Committed> {
        if added.is_empty() && removed.is_empty() {
            return Ok(Committed::Done);
        }
        let root = self.table(MINUTES.name);
        let adds: Vec<Action> = added
            .iter()
            .map(|file| Action::Add(add(&root, file, true)))
            .collect();
        let removes: Vec<String> = removed.iter().map(|path| relative(&root, path)).collect();
        self.write_log(&MINUTES, Access::Append, move |current, log| {
            let log = log.clone();
            let snapshot = current.snapshot().cloned();
            Box::pin(async move {
                let snapshot = snapshot?;
                let live = live_paths(&snapshot);
                let mut actions = adds;
                actions.extend(
                    removes
                        .iter()
                        .filter(|path| live.contains(*path))
                        .map(|path| Action::Remove(remove(&root, &join(&root, path), false))),
                );
                if actions.is_empty() {
                    return Ok((Committed::Done, None));
                }
                let committed = CommitBuilder::default()
                    .with_actions(actions)
                    .build(Some(&snapshot), log, appending())
                    .await;
                outcome(committed)
            })
        })
    }

    /// Replaces `removed` by `added` in one commit (compaction: the same rows, rearranged).
    /// Two writers compacting the same hour conflict through the hour's transaction id: the
    /// second gives up and changes nothing.
    pub fn commit_compaction(
        &self,
        table: &'static Table,
        hour_start_ns: i64,
        removed: &[ObjectPath],
        added: &NewFile,
    ) -> io::Result<Committed> {
        let root = self.table(table.name);
        let mut actions: Vec<Action> = removed
            .iter()
            .map(|path| Action::Remove(remove(&root, path, false)))
            .collect();
        actions.push(Action::Add(add(&root, added, false)));
        let hour = hour_key(hour_start_ns);
        self.commit_change(
            table,
            actions,
            hour,
            DeltaOperation::Optimize {
                predicate: None,
                target_size: i64::try_from(added.size).unwrap_or(i64::MAX),
            },
        )
    }

    /// Removes every live file of the hour starting at `hour_start_ns` from `table`
    /// (retention); returns how many. The files are deleted later (see
    /// the sweep of its hour).
    pub fn commit_drop(&self, table: &'static Table, hour_start_ns: i64) -> io::Result<usize> {
        let files = self.table_files(
            table.name,
            Some(hour_start_ns),
            Some(hour_start_ns + NANOS_PER_HOUR),
        )?;
        if files.is_empty() {
            return Ok(0);
        }
        let root = self.table(table.name);
        let actions = files
            .iter()
            .map(|file| Action::Remove(remove(&root, &file.location, true)))
            .collect();
        let hour = hour_key(hour_start_ns);
        let predicate = format!("date = '{}' AND hour = {}", hour.0, hour.1);
        match self.commit_change(
            table,
            actions,
            hour,
            DeltaOperation::Delete {
                predicate: Some(predicate),
            },
        )? {
            Committed::Done => Ok(files.len()),
            Committed::GaveUp => Ok(0),
        }
    }

    /// Commits a change of one hour's files, marked with the hour's transaction id so that
    /// two changes of the same hour conflict. A conflict gives up.
    fn commit_change(
        &self,
        table: &'static Table,
        actions: Vec<Action>,
        hour: (String, u32),
        operation: DeltaOperation,
    ) -> io::Result<Committed> {
        let app = format!("apiscope-maintenance:date={}/hour={}", hour.0, hour.1);
        self.write_log(table, Access::Change, move |current, log| {
            let log = log.clone();
            let snapshot = current.snapshot().cloned();
            Box::pin(async move {
                let snapshot = snapshot?;
                // Files another writer removed since they were read: the change was made
                // on what is no longer there.
                let live = live_paths(&snapshot);
                let gone = actions.iter().any(|action| {
                    matches!(action, Action::Remove(removed) if !live.contains(&removed.path))
                });
                if gone {
                    count_conflict();
                    return Ok((Committed::GaveUp, None));
                }
                let version = snapshot.transaction_version(&log, &app).await?.unwrap_or(0);
                let txn = Transaction::new_with_last_update(
                    app,
                    version + 1,
                    Some(chrono::Utc::now().timestamp_millis()),
                );
                let properties = CommitProperties::default().with_application_transaction(txn);
                let committed = CommitBuilder::from(properties)
                    .with_actions(actions)
                    .build(Some(&snapshot), log, operation)
                    .await;
                outcome(committed)
            })
        })
    }
}

/// Runs `work` on `table`'s `log` in `store`, brought up to date as `access` needs (see
/// [`Store::with_log`]), and publishes the log's files when they may have changed.
async fn on_log<T: Send + 'static>(
    store: Store,
    table: &'static Table,
    log: TableLog,
    access: Access,
    work: impl FnOnce(&mut DeltaTable, &LogStoreRef) -> Work<T> + Send + 'static,
) -> Result<Option<T>, DeltaError> {
    let mut guard = log.state.lock().await;
    let held = &mut *guard;
    let refresh = match access {
        Access::Read => !crate::logs::fresh(held.refreshed),
        Access::Append => false,
        Access::Change | Access::Refresh => true,
    };
    let mut changed = false;
    match held.table.as_mut() {
        Some(current) if refresh => {
            let listed = held
                .listed
                .is_some_and(|at| at.elapsed() < crate::logs::LIST_AFTER);
            if !(listed && next_commit_absent(current, &log.log).await?) {
                current.update_incremental(None).await?;
                changed = true;
            }
        }
        Some(_) => {}
        None if matches!(access, Access::Append | Access::Change) => {
            held.table = Some(create(&store, table, &log.log).await?);
            changed = true;
        }
        None => match open(&log.log).await? {
            Some(opened) => {
                held.table = Some(opened);
                changed = true;
            }
            None => return Ok(None),
        },
    }
    // Read from its listing (opened, created or brought up to date).
    if changed {
        held.listed = Some(Instant::now());
    }
    if refresh {
        held.refreshed = Some(Instant::now());
    }
    let current = held.table.as_mut().expect("opened above");
    let (done, committed) = work(current, &log.log).await?;
    if let Some(committed) = committed {
        current.state = Some(committed);
        changed = true;
    }
    let refreshed = held.refreshed;
    if changed {
        let files = listing(&store.table(table.name), current.snapshot()?).into();
        log.publish(Listed { files, refreshed });
    } else if let Some(listed) = log.listed().filter(|_| refresh) {
        // Up to date as it was: the same files, as of now.
        let files = listed.files.clone();
        log.publish(Listed { files, refreshed });
    }
    Ok(Some(done))
}

/// Whether `current` is the log as it stands: the commit after its version is not there.
/// Commits are numbered one after another and none is ever replaced, so this is one request
/// (a HEAD, no body) where bringing the log up to date lists `_delta_log`. Commits are
/// cleaned up only two days after a checkpoint follows them (see [`create_with`]), far
/// longer than [`LIST_AFTER`](crate::logs::LIST_AFTER), after which the log is listed again.
async fn next_commit_absent(current: &DeltaTable, log: &LogStoreRef) -> Result<bool, DeltaError> {
    let Some(version) = current.version() else {
        return Ok(false);
    };
    let next = deltalake_core::logstore::commit_uri_from_version(Some(version + 1));
    match log.object_store(None).head(&next).await {
        Ok(_) => Ok(false),
        Err(object_store::Error::NotFound { .. }) => Ok(true),
        Err(error) => Err(DeltaTableError::from(error).into()),
    }
}

/// How a piece of work brings a table's log up to date first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// A read: unless brought up to date within [`REFRESH_AFTER`](crate::logs::REFRESH_AFTER).
    Read,
    /// A commit that only adds files (or removes files no other writer removes): not at
    /// all, as the commit reads what other writers committed since, if anything, and is
    /// tried again after it.
    Append,
    /// A change that must see the files as they are: always.
    Change,
    /// A read that must see the log as it is now (for the reads to come, in the
    /// background, or after a failed one): always.
    Refresh,
}

/// Work on a table's log, done under its lock: what it returns, and the log as its commit
/// left it, if it committed.
type Work<T> = std::pin::Pin<
    Box<dyn Future<Output = Result<(T, Option<DeltaTableState>), DeltaError>> + Send + 'static>,
>;

/// A commit's outcome for compaction, retention and rollups: given up on a conflict.
fn outcome(
    committed: Result<FinalizedCommit, DeltaTableError>,
) -> Result<(Committed, Option<DeltaTableState>), DeltaError> {
    match committed {
        Ok(committed) => Ok((Committed::Done, Some(committed.snapshot))),
        Err(DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(_),
        }) => {
            count_conflict();
            Ok((Committed::GaveUp, None))
        }
        Err(error) => Err(error.into()),
    }
}

/// An error of the log: the crate's, or the store's own.
pub(crate) enum DeltaError {
    Delta(DeltaTableError),
    Io(io::Error),
}

impl From<DeltaTableError> for DeltaError {
    fn from(error: DeltaTableError) -> Self {
        DeltaError::Delta(error)
    }
}

impl From<io::Error> for DeltaError {
    fn from(error: io::Error) -> Self {
        DeltaError::Io(error)
    }
}

/// The files `snapshot` lists, in the table at `root`, each with the start of its hour,
/// sorted by path.
fn listing(root: &ObjectPath, snapshot: &DeltaTableState) -> Vec<(i64, ObjectMeta)> {
    let mut files = Vec::new();
    for file in snapshot.log_data().iter() {
        let relative = file.path();
        let Some(start) = crate::layout::hour_start(&relative) else {
            continue;
        };
        let last_modified = chrono::DateTime::from_timestamp_millis(file.modification_time());
        files.push((
            start,
            ObjectMeta {
                location: join(root, &relative),
                last_modified: last_modified.unwrap_or_default(),
                size: u64::try_from(file.size()).unwrap_or_default(),
                e_tag: None,
                version: None,
            },
        ));
    }
    files.sort_by(|(_, a), (_, b)| a.location.cmp(&b.location));
    files
}

/// The paths (relative to the table) of the files `snapshot` lists.
fn live_paths(snapshot: &DeltaTableState) -> std::collections::HashSet<String> {
    snapshot
        .log_data()
        .iter()
        .map(|file| file.path().into_owned())
        .collect()
}

/// Counts a change given up because another writer changed the same hour first (the caller
/// says what it gave up).
fn count_conflict() {
    metrics::counter!("apiscope_delta_conflicts_total").increment(1);
}

/// The table named `name`.
fn table_named(name: &str) -> io::Result<&'static Table> {
    TABLES
        .iter()
        .copied()
        .chain([&MINUTES])
        .find(|table| table.name == name)
        .ok_or_else(|| io::Error::other(format!("no table named {name}")))
}

/// The log of `table` as it is; `None` when it has none.
async fn open(log: &LogStoreRef) -> Result<Option<DeltaTable>, DeltaError> {
    if !log.is_delta_table_location().await? {
        return Ok(None);
    }
    let mut opened = DeltaTable::new(log.clone());
    opened.load().await?;
    Ok(Some(opened))
}

/// The log of `table`, created if it has none: with the files of a store written before
/// the logs, if there are any (the one conversion, done by the write side).
async fn create(
    store: &Store,
    table: &'static Table,
    log: &LogStoreRef,
) -> Result<DeltaTable, DeltaError> {
    if let Some(opened) = open(log).await? {
        return with_every_column(table, opened).await;
    }
    let store = store.clone();
    let legacy = tokio::task::spawn_blocking(move || legacy_files(&store, table))
        .await
        .map_err(|error| DeltaError::Io(io::Error::other(error)))??;
    create_with(table, log, legacy).await
}

/// `opened` with every column of `table` in its log's schema. Columns are only ever added
/// (nullable, see [`conformed`](crate::tables::conformed)): the log of a table created by an
/// older release gets those it lacks in one commit, so that other Delta readers see them
/// too. Another writer adding them first is no error.
async fn with_every_column(
    table: &'static Table,
    opened: DeltaTable,
) -> Result<DeltaTable, DeltaError> {
    let wanted = delta_schema(table)?;
    let missing = |log: &DeltaTable| -> Result<Vec<StructField>, DeltaError> {
        let schema = log.snapshot()?.schema();
        Ok(wanted
            .fields()
            .filter(|field| schema.field(field.name()).is_none())
            .cloned()
            .collect())
    };
    let fields = missing(&opened)?;
    if fields.is_empty() {
        return Ok(opened);
    }
    let log = opened.log_store();
    match opened.add_columns().with_fields(fields).await {
        Ok(evolved) => Ok(evolved),
        Err(error) => {
            let mut reloaded = DeltaTable::new(log);
            reloaded.load().await?;
            if missing(&reloaded)?.is_empty() {
                Ok(reloaded)
            } else {
                Err(error.into())
            }
        }
    }
}

/// Creates the log of `table` with `actions` in its first commit; another writer creating it
/// first is no error.
async fn create_with(
    table: &'static Table,
    log: &LogStoreRef,
    actions: Vec<Action>,
) -> Result<DeltaTable, DeltaError> {
    let created = CreateBuilder::new()
        .with_log_store(log.clone())
        .with_table_name(table.name)
        .with_columns(delta_schema(table)?.fields().cloned())
        .with_partition_columns(partition_columns())
        .with_configuration_property(
            deltalake_core::TableProperty::CheckpointInterval,
            Some(CHECKPOINT_INTERVAL.to_string()),
        )
        .with_configuration_property(
            deltalake_core::TableProperty::LogRetentionDuration,
            Some("interval 2 days"),
        )
        .with_actions(actions)
        .await;
    match created {
        Ok(created) => Ok(created),
        Err(DeltaTableError::Transaction {
            source: TransactionError::VersionAlreadyExists(_),
        }) => {
            let mut opened = DeltaTable::new(log.clone());
            opened.load().await?;
            Ok(opened)
        }
        Err(error) => Err(error.into()),
    }
}

/// The columns of `table` in the log: the stored ones, then the partition columns.
fn delta_schema(table: &Table) -> Result<StructType, DeltaError> {
    let stored = table.stored_schema();
    let mut fields: Vec<arrow::datatypes::Field> =
        stored.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(arrow::datatypes::Field::new(
        "date",
        arrow::datatypes::DataType::Date32,
        false,
    ));
    fields.push(arrow::datatypes::Field::new(
        "hour",
        arrow::datatypes::DataType::Int32,
        false,
    ));
    let schema = arrow::datatypes::Schema::new(fields);
    (&schema)
        .try_into_kernel()
        .map_err(|error| DeltaError::Delta(DeltaTableError::from(error)))
}

/// The operation of a commit that adds files (and may remove rollups).
fn appending() -> DeltaOperation {
    DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(partition_columns()),
        predicate: None,
    }
}

fn partition_columns() -> Vec<String> {
    PARTITION_COLUMNS.iter().map(|c| c.to_string()).collect()
}

/// The files of a data directory of a release before the log, with the transactions their
/// names carry: every data file not replaced by a compaction's output.
fn legacy_files(store: &Store, table: &'static Table) -> io::Result<Vec<Action>> {
    let root = store.table(table.name);
    let mut actions = Vec::new();
    let mut txns: HashMap<String, u64> = HashMap::new();
    for (_, partition) in store.listed_partitions(table.name, None, None)? {
        for file in store.listed_files(&partition)? {
            let name = file.location.filename().unwrap_or_default().to_owned();
            if let Some(seq) = crate::covered_seq(&name) {
                let app = crate::file_node(&name).unwrap_or(BEFORE_NODE_IDS);
                let highest = txns.entry(app.to_owned()).or_default();
                *highest = (*highest).max(seq);
            }
            let new = NewFile {
                path: file.location.clone(),
                size: file.size,
                stats: String::from("{}"),
            };
            let mut added = add(&root, &new, true);
            added.stats = None;
            added.modification_time = file.last_modified.timestamp_millis();
            actions.push(Action::Add(added));
        }
    }
    let now = chrono::Utc::now().timestamp_millis();
    for (app, seq) in txns {
        actions.push(Action::Txn(Transaction::new_with_last_update(
            app,
            i64::try_from(seq).unwrap_or(i64::MAX),
            Some(now),
        )));
    }
    Ok(actions)
}

/// An `add` action for `file` of the table at `root`.
fn add(root: &ObjectPath, file: &NewFile, data_change: bool) -> Add {
    let relative = relative(root, &file.path);
    Add {
        partition_values: partition_values(&relative),
        path: relative,
        size: i64::try_from(file.size).unwrap_or(i64::MAX),
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change,
        stats: Some(file.stats.clone()),
        ..Add::default()
    }
}

/// A `remove` action for the file at `path` of the table at `root`.
fn remove(root: &ObjectPath, path: &ObjectPath, data_change: bool) -> Remove {
    let relative = relative(root, path);
    Remove {
        partition_values: Some(partition_values(&relative)),
        path: relative,
        data_change,
        deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
        extended_file_metadata: None,
        size: None,
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
    }
}

/// `path` relative to the table's folder `root`: `date=…/hour=…/<name>`.
fn relative(root: &ObjectPath, path: &ObjectPath) -> String {
    match path.prefix_match(root) {
        Some(parts) => parts
            .map(|p| p.as_ref().to_owned())
            .collect::<Vec<_>>()
            .join("/"),
        None => path.to_string(),
    }
}

/// The object at `relative` (a path in the log) inside the table's folder `root`.
fn join(root: &ObjectPath, relative: &str) -> ObjectPath {
    relative
        .split('/')
        .filter(|part| !part.is_empty())
        .fold(root.clone(), |path, part| path.join(part))
}

/// The partition values of the file at `relative`: `date` and `hour` of its folder.
fn partition_values(relative: &str) -> HashMap<String, Option<String>> {
    let mut values = HashMap::new();
    for part in relative.split('/') {
        if let Some(date) = part.strip_prefix("date=") {
            values.insert("date".to_owned(), Some(date.to_owned()));
        } else if let Some(hour) = part.strip_prefix("hour=") {
            let hour = hour
                .parse::<u32>()
                .map_or(hour.to_owned(), |h| h.to_string());
            values.insert("hour".to_owned(), Some(hour));
        }
    }
    values
}

/// The `date` and `hour` values of the hour starting at `start_ns`.
fn hour_key(start_ns: i64) -> (String, u32) {
    use chrono::Timelike;
    let time = chrono::DateTime::from_timestamp_nanos(start_ns);
    (time.format("%Y-%m-%d").to_string(), time.hour())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::REFRESH_AFTER;
    use std::time::Duration;

    #[test]
    fn hours_and_partition_values_come_from_the_path() {
        let relative = "date=2026-12-06/hour=05/00000000000000000007-a-00ff-000001.parquet";
        assert_eq!(
            crate::layout::hour_start(relative),
            Some(1_796_533_200_000_000_000)
        );
        let values = partition_values(relative);
        assert_eq!(values["date"].as_deref(), Some("2026-12-06"));
        assert_eq!(values["hour"].as_deref(), Some("5"));
        assert_eq!(
            hour_key(1_796_533_200_000_000_000),
            ("2026-12-06".into(), 5)
        );
    }

    const HOUR: i64 = 1_796_533_200_000_000_000;

    fn stored(store: &Store, name: &str) -> NewFile {
        let path = store.partition("spans", HOUR).join(name);
        store
            .put(&path, bytes::Bytes::from_static(b"rows"))
            .unwrap();
        NewFile {
            path,
            size: 4,
            stats: r#"{"numRecords":1}"#.into(),
        }
    }

    fn names(store: &Store) -> Vec<String> {
        store
            .table_files("spans", None, None)
            .unwrap()
            .iter()
            .map(|f| f.location.filename().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn flushes_compactions_and_retention_are_commits_that_another_reader_sees() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let spans = crate::TABLES[0];
        assert!(store.table_files("spans", None, None).unwrap().is_empty());
        assert_eq!(store.flushed_seq("spans", "a").unwrap(), 0);

        let first = stored(&store, "00000000000000000003-a-01-000000.parquet");
        store
            .commit_flush(spans, std::slice::from_ref(&first), "a", 3)
            .unwrap();
        // Stored and not committed: no reader sees it.
        let second = stored(&store, "00000000000000000005-b-02-000000.parquet");
        let reader = Store::local(dir.path());
        assert_eq!(names(&reader), [first.path.filename().unwrap()]);
        store
            .commit_flush(spans, std::slice::from_ref(&second), "b", 5)
            .unwrap();
        assert_eq!(names(&store).len(), 2, "the writer sees its commit at once");
        std::thread::sleep(REFRESH_AFTER);
        assert_eq!(names(&reader).len(), 2, "a reader sees it within a second");
        assert_eq!(reader.flushed_seq("spans", "a").unwrap(), 3);
        assert_eq!(reader.flushed_seq("spans", "b").unwrap(), 5);
        assert_eq!(
            reader.hour_partitions("spans", None, None).unwrap(),
            [(HOUR, store.partition("spans", HOUR))]
        );
        assert!(
            reader
                .hour_partitions("spans", Some(HOUR + 3_600_000_000_000), None)
                .unwrap()
                .is_empty()
        );

        // Two compactions of the same hour from the same version: the second gives up.
        let merged = stored(&store, "00000000000000000000-a-01-000001.parquet");
        let other = stored(&store, "00000000000000000000-b-02-000001.parquet");
        let inputs = [first.path.clone(), second.path.clone()];
        let racing = Store::local(dir.path());
        racing.table_files("spans", None, None).unwrap();
        assert_eq!(
            store
                .commit_compaction(spans, HOUR, &inputs, &merged)
                .unwrap(),
            Committed::Done
        );
        assert_eq!(
            racing
                .commit_compaction(spans, HOUR, &inputs, &other)
                .unwrap(),
            Committed::GaveUp
        );
        std::thread::sleep(REFRESH_AFTER);
        assert_eq!(names(&reader), [merged.path.filename().unwrap()]);
        // The transactions of the flushes are kept.
        assert_eq!(reader.flushed_seq("spans", "b").unwrap(), 5);

        assert_eq!(store.commit_drop(spans, HOUR).unwrap(), 1);
        std::thread::sleep(REFRESH_AFTER);
        assert!(names(&reader).is_empty());
    }

    #[test]
    fn a_log_made_by_an_older_release_gets_the_columns_added_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let spans = crate::TABLES[0];
        let added = ["http_request_body_size", "http_response_body_size"];
        let older: Vec<_> = spans
            .columns
            .iter()
            .filter(|column| !added.contains(&column.name))
            .cloned()
            .collect();
        let older: &'static Table = Box::leak(Box::new(Table {
            columns: Box::leak(older.into_boxed_slice()),
            ..*spans
        }));
        let log = store.log_of(spans).unwrap().log;
        let columns = |log: &LogStoreRef| {
            let log = log.clone();
            store
                .block("test", &store.table("spans"), async move {
                    let opened = open(&log).await?.expect("a log");
                    let schema = opened.snapshot()?.schema();
                    Ok(schema
                        .fields()
                        .map(|f| f.name().clone())
                        .collect::<Vec<_>>())
                })
                .unwrap()
        };
        store
            .block("test", &store.table("spans"), {
                let log = log.clone();
                async move { create_with(older, &log, Vec::new()).await.map(drop) }
            })
            .unwrap();
        assert!(!columns(&log).iter().any(|c| added.contains(&c.as_str())));

        let first = stored(&store, "00000000000000000003-a-01-000000.parquet");
        let writer = Store::local(dir.path());
        writer
            .commit_flush(spans, std::slice::from_ref(&first), "a", 3)
            .unwrap();
        let evolved = columns(&log);
        assert_eq!(evolved[evolved.len() - 2..], added, "added at the end");
        let mut every = evolved.clone();
        every.sort();
        let mut wanted: Vec<String> = delta_schema(spans)
            .unwrap_or_else(|_| panic!("the schema of spans"))
            .fields()
            .map(|f| f.name().clone())
            .collect();
        wanted.sort();
        assert_eq!(every, wanted, "every column");
        assert_eq!(names(&writer), [first.path.filename().unwrap()]);
        // A second writer opening the evolved log changes nothing.
        Store::local(dir.path()).create_table(spans).unwrap();
        assert_eq!(columns(&log), evolved);
    }

    /// A store in a new directory, whose `spans` holds one file flushed by node `a`.
    fn flushed_once() -> (tempfile::TempDir, Store, NewFile) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let first = stored(&store, "00000000000000000003-a-01-000000.parquet");
        store
            .commit_flush(crate::TABLES[0], std::slice::from_ref(&first), "a", 3)
            .unwrap();
        (dir, store, first)
    }

    #[test]
    fn a_read_takes_the_files_published_and_never_waits_for_a_commit() {
        let (dir, store, first) = flushed_once();
        let spans = crate::TABLES[0];
        // A read brings the log up to date; another node commits; half a second later, this
        // node's log is held, as a commit holds it across its I/O.
        assert_eq!(names(&store).len(), 1);
        let other = Store::local(dir.path());
        let second = stored(&other, "00000000000000000005-b-02-000000.parquet");
        other
            .commit_flush(spans, std::slice::from_ref(&second), "b", 5)
            .unwrap();
        std::thread::sleep(REFRESH_AFTER / 2);
        let log = store.log_of(spans).unwrap();
        let held = log.state.blocking_lock();
        let (sender, received) = std::sync::mpsc::channel();
        let reading = store.clone();
        std::thread::spawn(move || sender.send(names(&reading)));
        let read = received
            .recv_timeout(Duration::from_secs(30))
            .expect("a read waited for the log's lock");
        assert_eq!(
            read,
            [first.path.filename().unwrap()],
            "the files published"
        );
        // Once the log is free, it is brought up to date for the reads after.
        drop(held);
        eventually("the other node's commit is read", || {
            names(&store).len() == 2
        });

        // A refresh that fails in the background is done again by the next read, which
        // reports its error.
        let third = stored(&other, "00000000000000000007-b-03-000000.parquet");
        other
            .commit_flush(spans, std::slice::from_ref(&third), "b", 7)
            .unwrap();
        let commits = dir.path().join("spans").join("_delta_log");
        let newest = std::fs::read_dir(&commits)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .max()
            .unwrap();
        std::fs::write(&newest, b"not a commit").unwrap();
        eventually("the damaged commit is reported", || {
            store.table_files("spans", None, None).is_err()
        });
    }

    #[test]
    fn a_log_without_a_next_commit_is_up_to_date_without_being_listed() {
        let (dir, store, _) = flushed_once();
        let spans = crate::TABLES[0];
        let reader = Store::local(dir.path());
        assert_eq!(names(&reader).len(), 1);
        let log = reader.log_of(spans).unwrap();
        let files = || log.listed().unwrap().files.clone();
        let before = files();

        // A second later nothing was committed: the log is found up to date as it was.
        std::thread::sleep(REFRESH_AFTER);
        assert_eq!(names(&reader).len(), 1);
        assert!(Arc::ptr_eq(&files(), &before), "the log was listed again");
        assert!(crate::logs::fresh(log.listed().unwrap().refreshed));

        // Another node's commit is the next one: read a second later.
        let second = stored(&store, "00000000000000000005-b-02-000000.parquet");
        store
            .commit_flush(spans, std::slice::from_ref(&second), "b", 5)
            .unwrap();
        std::thread::sleep(REFRESH_AFTER);
        assert_eq!(names(&reader).len(), 2);
        let after = files();
        assert!(!Arc::ptr_eq(&after, &before));

        // Listed long ago: listed again, even with nothing new.
        log.state.blocking_lock().listed = Instant::now().checked_sub(crate::logs::LIST_AFTER);
        std::thread::sleep(REFRESH_AFTER);
        assert_eq!(names(&reader).len(), 2);
        assert!(
            !Arc::ptr_eq(&files(), &after),
            "the log was not listed again"
        );
    }

    /// Waits (30 s at most) until `check` holds, which it must within moments.
    fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check() {
            assert!(Instant::now() < deadline, "{what}: not within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
