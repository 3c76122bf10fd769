//! apiscope's write side: receivers, decoding to Arrow rows, the write-ahead log, the
//! buffer, the Parquet writer, compaction and retention, and the rollup files. Nothing else
//! creates, renames or removes files in the store.
//!
//! ```text
//! OTLP gRPC ─────┐                    ┌─ WAL (group commit, fdatasync) ─┐
//! OTLP HTTP ─────┼─ decode + validate ┤                                 ├─ Buffer (queryable)
//! request logs ──┘ (spans, logs,      └─────────── acknowledge ◀────────┘        │
//!                   requests)                                                    │
//!                                                                              flush
//!                          Parquet (write, fsync, rename) ◀─────────────────────┘
//!                          then the WAL segments it covers are deleted
//! ```
//!
//! A request is acknowledged once its record is synced (in the default `fsync` durability)
//! and its rows are in the buffer, where queries already see them. A flush runs on an
//! interval, when the buffer passes a row count, and at shutdown. At start-up the WAL is
//! replayed: rows not yet in Parquet come back, once.

mod arrow_builders;
mod attributes;
mod buffer;
mod claim;
mod compaction;
pub mod convention;
mod dir_lock;
mod error;
mod faults;
mod logs;
mod merge;
pub mod metrics;
pub mod otlp_grpc;
pub mod otlp_http;
mod protobuf;
mod replay;
mod requests;
mod rollup_files;
pub mod signal;
mod spans;
#[cfg(test)]
mod testing;
mod wal;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use tokio::sync::{Mutex, Notify, oneshot};
use tokio_util::sync::CancellationToken;

pub use buffer::Buffer;
pub use claim::check_node_id;
pub use compaction::{CLOSED_AFTER, MaintenanceReport};
pub use dir_lock::LOCK_FILE;
pub use error::{Error, RETRY_AFTER, Result};
pub use logs::decode_logs;
pub use metrics::Throttle;
pub use protobuf::WireError;
pub use replay::ReplayReport;
pub use requests::decode_requests;
pub use rollup_files::RollupFiles;
pub use spans::SpanDecoder;
pub use wal::Durability;
pub use writer::{WAL_SEQ_KEY, Writer};

/// The rows decoded from one request, and what was refused.
#[derive(Debug)]
pub struct Decoded {
    /// The accepted rows; `None` when nothing was accepted.
    pub batch: Option<RecordBatch>,
    /// The items refused, with why.
    pub rejections: Rejections,
}

impl Decoded {
    /// How many items the request held, accepted or refused.
    pub fn count(&self) -> u64 {
        let rows = self.batch.as_ref().map_or(0, RecordBatch::num_rows);
        rows as u64 + self.rejections.count.max(0) as u64
    }
}

/// The rows of a payload of `kind` (as received, and as the WAL keeps it) received at
/// `received_ns`.
pub(crate) fn decode(
    kind: wal::Kind,
    payload: &[u8],
    received_ns: i64,
    spans: &SpanDecoder,
) -> std::result::Result<Decoded, WireError> {
    match kind {
        wal::Kind::Traces => spans.decode(payload),
        wal::Kind::Logs => decode_logs(payload, received_ns),
        wal::Kind::Requests => Ok(decode_requests(payload, &spans.routes)),
    }
}

/// Items of a request that could not be stored (OTLP partial success).
#[derive(Debug, Default)]
pub struct Rejections {
    /// How many items were refused.
    pub count: i64,
    problems: Vec<String>,
}

impl Rejections {
    const KEPT_PROBLEMS: usize = 10;

    fn reject(&mut self, problem: String) {
        self.count += 1;
        if self.problems.len() < Self::KEPT_PROBLEMS {
            self.problems.push(problem);
        }
    }

    /// A message naming the first problems, for the partial-success response.
    pub fn message(&self) -> String {
        if self.count == 0 {
            return String::new();
        }
        let mut message = format!(
            "{} item(s) rejected: {}",
            self.count,
            self.problems.join("; ")
        );
        if self.count as usize > self.problems.len() {
            message.push_str("; ...");
        }
        message
    }
}

/// How long a request waits for room in a full buffer before it is refused.
pub const ROOM_PATIENCE: Duration = Duration::from_secs(2);

/// Settings of the ingest path.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the write-ahead log and the lock live: always on local disk.
    pub data_dir: std::path::PathBuf,
    /// Where the tables' files go: by default `data_dir` itself.
    pub store: schemas::Store,
    /// This daemon's id among the writers of the store; by default the one kept in
    /// `<data_dir>/node-id`, made on first start.
    pub node_id: Option<String>,
    /// How spans become rows.
    pub spans: SpanDecoder,
    /// Largest request body accepted, counted after decompression.
    pub max_body_bytes: usize,
    /// When an acknowledgement means the data is on disk.
    pub durability: Durability,
    /// Rows the buffer holds before it refuses new requests.
    pub max_buffer_rows: usize,
    /// Arrow memory the buffer holds before it refuses new requests.
    pub max_buffer_bytes: usize,
    /// WAL bytes on disk before new requests are refused.
    pub max_wal_bytes: u64,
    /// Free bytes on the data directory's disk under which new requests are refused, so that
    /// flushes and compaction still have room and release the log.
    pub min_free_bytes: u64,
    /// A flush starts early once this many rows wait.
    pub flush_rows: usize,
    /// A flush runs at least this often while rows wait.
    pub flush_interval: Duration,
    /// Hours older than this are dropped.
    pub retention: Duration,
    /// How often compaction and retention run.
    pub compaction_interval: Duration,
    /// How long files replaced by compaction stay for queries already reading them.
    pub compaction_grace: Duration,
}

impl Config {
    /// Defaults for `data_dir`, with the tables in it.
    pub fn new(data_dir: impl Into<std::path::PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            store: schemas::Store::local(&data_dir),
            node_id: None,
            data_dir,
            spans: SpanDecoder::default(),
            max_body_bytes: 20 * 1024 * 1024,
            durability: Durability::Fsync,
            max_buffer_rows: 500_000,
            max_buffer_bytes: 512 * 1024 * 1024,
            max_wal_bytes: 4 * 1024 * 1024 * 1024,
            min_free_bytes: 256 * 1024 * 1024,
            flush_rows: 200_000,
            flush_interval: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            compaction_interval: Duration::from_secs(10),
            compaction_grace: Duration::from_secs(5 * 60),
        }
    }
}

/// What an accepted request produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rows stored.
    pub accepted: usize,
    /// Items refused (partial success).
    pub rejected: i64,
    /// Why items were refused; empty when none were.
    pub message: String,
    /// The first problems one by one (at most ten).
    pub problems: Vec<String>,
}

/// The ingest path shared by every receiver.
#[derive(Debug)]
pub struct Collector {
    config: Config,
    buffer: Arc<Buffer>,
    writer: Writer,
    claim: claim::Claim,
    wal: wal::Wal,
    flush_lock: Mutex<()>,
    flush_wanted: Notify,
    /// Told after each flush that wrote rows (see [`Collector::flushed`]).
    flushed: Notify,
    closed: CancellationToken,
    /// Data files compaction found it cannot read, left as they are from then on.
    unreadable: std::sync::Mutex<std::collections::HashSet<schemas::ObjectPath>>,
    /// Counts the changes to the store's files (flushes, compactions, drops).
    changes: std::sync::atomic::AtomicU64,
    /// Deletions maintenance owes (see `compaction`).
    deletions: std::sync::Mutex<compaction::Deletions>,
    /// Declared last, so dropped last: the directory is released once the WAL has stopped.
    _owner: dir_lock::Owner,
}

impl Collector {
    /// Opens the store under `config.data_dir`: claims the directory (see [`LOCK_FILE`]),
    /// replays the WAL, then starts logging. Blocking (it reads the log): call it before
    /// serving.
    pub fn open(config: Config) -> Result<(Self, ReplayReport)> {
        let owner = dir_lock::Owner::claim(&config.data_dir)?;
        if config.min_free_bytes > 0 && free_bytes(&config.data_dir).is_none() {
            tracing::warn!(
                data_dir = %config.data_dir.display(),
                "the filesystem of the data directory reports no size: min_free_bytes cannot be checked, and ingest is not paused for a full disk"
            );
        }
        let buffer = Arc::new(Buffer::new(config.max_buffer_rows, config.max_buffer_bytes));
        let node = match &config.node_id {
            Some(node) => node.clone(),
            None => claim::stored_node_id(&config.data_dir)?,
        };
        claim::check_node_id(&node).map_err(Error::Storage)?;
        let claim = claim::Claim::take(&config.store, &node, &config.data_dir)?;
        // Every table has a log before anything reads it; a data directory written before
        // the logs is converted here (see `schemas::Store`).
        for table in schemas::TABLES.iter().copied().chain([&schemas::MINUTES]) {
            config.store.create_table(table).map_err(error::storage)?;
        }
        let report = replay::replay(
            &config.data_dir,
            &config.store,
            &node,
            &config.spans,
            &buffer,
        )?;
        let wal = wal::Wal::start(
            wal::dir_of(&config.data_dir),
            config.durability,
            report.last_seq + 1,
            report.segments.clone(),
            buffer.clone(),
        )?;
        let collector = Self {
            buffer,
            writer: Writer::new(config.store.clone(), &node),
            claim,
            wal,
            config,
            flush_lock: Mutex::new(()),
            flush_wanted: Notify::new(),
            flushed: Notify::new(),
            closed: CancellationToken::new(),
            unreadable: std::sync::Mutex::default(),
            changes: std::sync::atomic::AtomicU64::new(0),
            deletions: std::sync::Mutex::default(),
            _owner: owner,
        };
        Ok((collector, report))
    }

    /// This daemon's node id, which its files carry.
    pub fn node_id(&self) -> &str {
        self.claim.node()
    }

    /// Keeps this daemon's claim on its node id (see `claim`) until `shutdown`, checking it
    /// every few seconds; once it is lost, ingest is refused.
    pub async fn run_claim(self: Arc<Self>, shutdown: CancellationToken) {
        let mut interval = every(claim::RENEW_EVERY);
        while next_tick(&mut interval, &shutdown).await {
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.claim.renew()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot renew the node id's claim"),
                Err(error) => tracing::warn!(%error, "the claim's renewal failed"),
            }
        }
    }

    /// How many times the store's files have changed since start: what was listed at one
    /// count still holds while the count stays.
    pub fn store_changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    fn changed(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Why ingest is refused now, whatever the request, if it is: the daemon is shutting
    /// down, or the disk is under `min_free_bytes`. What `/readyz` reports.
    pub fn not_accepting(&self) -> Option<Error> {
        self.closed_or_lost().or_else(|| self.disk_too_full())
    }

    /// Why no request is stored now, whatever the disk: the daemon is shutting down, or it
    /// lost its claim on its node id.
    fn closed_or_lost(&self) -> Option<Error> {
        if self.closed.is_cancelled() {
            return Some(Error::ShuttingDown);
        }
        self.claim.lost()
    }

    /// A full disk would leave no room for the flush that releases the log: the daemon
    /// could take nothing more until someone freed space. Refusing a little earlier lets the
    /// flushes go on, and ingest resumes by itself once they have released the log.
    fn disk_too_full(&self) -> Option<Error> {
        let free = free_bytes(&self.config.data_dir)?;
        (free < self.config.min_free_bytes).then(|| Error::Overloaded {
            what: format!(
                "the disk of the data directory has {free} bytes free, under min_free_bytes ({})",
                self.config.min_free_bytes
            ),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The buffer of unflushed rows, for the query side.
    pub fn buffer(&self) -> Arc<Buffer> {
        self.buffer.clone()
    }

    /// Stores the valid spans of `request`, an `ExportTraceServiceRequest` in protobuf;
    /// returns once they are logged and queryable. Blocking: call it off the async runtime.
    pub fn ingest_traces(&self, request: Bytes) -> Result<Outcome> {
        self.ingest(wal::Kind::Traces, request).1
    }

    /// Stores the valid log records of `request`, an `ExportLogsServiceRequest` in
    /// protobuf; returns once they are logged and queryable. Blocking: call it off the async
    /// runtime.
    pub fn ingest_logs(&self, request: Bytes) -> Result<Outcome> {
        self.ingest(wal::Kind::Logs, request).1
    }

    /// Decodes and stores a payload of `kind`: how many items it held (0 when it does not
    /// decode), and what became of them.
    pub(crate) fn ingest(&self, kind: wal::Kind, payload: Bytes) -> (u64, Result<Outcome>) {
        let received_ns = now_ns();
        let decoded = match decode(kind, &payload, received_ns, &self.config.spans) {
            Ok(decoded) => decoded,
            Err(error) => return (0, Err(error.into())),
        };
        let count = decoded.count();
        let result = self.accept(kind, received_ns, decoded, payload);
        (count, result)
    }

    /// Stores the valid lines of a request log `body` (newline-delimited JSON); returns
    /// once they are logged and queryable. Blocking: call it off the async runtime.
    pub fn ingest_requests(&self, body: Bytes) -> Result<Outcome> {
        self.ingest(wal::Kind::Requests, body).1
    }

    fn accept(
        &self,
        kind: wal::Kind,
        received_ns: i64,
        decoded: Decoded,
        payload: Bytes,
    ) -> Result<Outcome> {
        if let Some(refused) = self.closed_or_lost() {
            return Err(refused);
        }
        let mut outcome = Outcome {
            rejected: decoded.rejections.count,
            message: decoded.rejections.message(),
            problems: decoded.rejections.problems.clone(),
            ..Outcome::default()
        };
        let Some(batch) = decoded.batch else {
            return Ok(outcome);
        };
        self.buffer.admit()?;
        let wal_bytes = self.wal.bytes_on_disk();
        if wal_bytes >= self.config.max_wal_bytes {
            self.flush_wanted.notify_one();
            return Err(Error::Overloaded {
                what: format!("the write-ahead log holds {wal_bytes} bytes (max_wal_bytes)"),
            });
        }
        if let Some(paused) = self.disk_too_full() {
            self.flush_wanted.notify_one();
            return Err(paused);
        }
        outcome.accepted = batch.num_rows();
        let (done, logged) = oneshot::channel();
        // The request as received (minus transport encoding) is what the WAL keeps: replay
        // decodes it again, with the time it was first received.
        let payload = match self.config.durability {
            Durability::None => Bytes::new(),
            Durability::Fsync | Durability::Batch(_) => payload,
        };
        self.wal.submit(wal::Append {
            kind,
            received_ns,
            payload,
            batch,
            done,
        })?;
        logged.blocking_recv().map_err(|_| Error::ShuttingDown)??;
        if self.buffer.rows() >= self.config.flush_rows {
            self.flush_wanted.notify_one();
        }
        Ok(outcome)
    }

    /// Writes every buffered row to Parquet, makes the files visible, then deletes the WAL
    /// segments they cover. One flush runs at a time; returns the rows written.
    pub async fn flush(self: &Arc<Self>) -> Result<usize> {
        let _one_at_a_time = self.flush_lock.lock().await;
        let started = std::time::Instant::now();
        let pending = self.buffer.pending();
        let through = pending.through;
        let rows = if pending.tables.is_empty() {
            0
        } else {
            let this = self.clone();
            let written = tokio::task::spawn_blocking(move || this.write_pending(pending))
                .await
                .map_err(|error| Error::Storage(format!("flush task failed: {error}")))
                .and_then(|written| written);
            let outcome = if written.is_ok() { "ok" } else { "error" };
            ::metrics::counter!("apiscope_flushes_total", "outcome" => outcome).increment(1);
            ::metrics::histogram!("apiscope_flush_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            let rows = written?;
            ::metrics::counter!("apiscope_flushed_rows_total").increment(rows as u64);
            self.flushed.notify_one();
            rows
        };
        self.wal.release_through(through);
        ::metrics::gauge!("apiscope_wal_bytes").set(self.wal.bytes_on_disk() as f64);
        Ok(rows)
    }

    /// Returns once a flush has written rows since the last call returned (at once if one
    /// has): for the one task that follows new files, such as the rollups'.
    pub async fn flushed(&self) {
        self.flushed.notified().await;
    }

    /// Writes and commits each table's pending rows in turn; a table committed stays
    /// committed (its rows leave the buffer) when a later one fails.
    fn write_pending(&self, pending: buffer::Pending) -> Result<usize> {
        let mut rows = 0;
        let mut files = 0;
        for (name, batches) in &pending.tables {
            let Some(table) = schemas::TABLES.iter().copied().find(|t| t.name == *name) else {
                continue;
            };
            let staged = self.writer.stage(table, batches, pending.through)?;
            self.writer.store_files(&staged)?;
            self.writer.commit(table, &staged, pending.through)?;
            self.buffer.publish(table.name, pending.through);
            self.changed();
            rows += staged.iter().map(|s| s.rows).sum::<usize>();
            files += staged.len();
        }
        self.buffer.flushed_all(pending.through);
        tracing::debug!(rows, files, through = pending.through, "flushed");
        Ok(rows)
    }

    /// Flushes on the configured interval and when enough rows wait, until `shutdown`;
    /// then refuses new data, flushes what remains and closes the WAL.
    pub async fn run_flusher(self: Arc<Self>, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.flush_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => {}
                _ = self.flush_wanted.notified() => {}
            }
            if let Err(error) = self.flush().await {
                tracing::warn!(%error, rows = self.buffer.rows(), "flush failed; rows stay buffered and logged, and the flush is retried");
            }
        }
        self.closed.cancel();
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || this.wal.close()).await;
        match self.flush().await {
            Ok(rows) => tracing::info!(rows, "final flush done"),
            Err(error) => {
                tracing::error!(%error, rows = self.buffer.rows(), "final flush failed; the rows stay in the write-ahead log for the next start")
            }
        }
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || this.claim.release()).await;
    }
}

/// An interval whose missed ticks are delayed rather than bunched.
fn every(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// Waits for the next tick of `interval`; `false` when `shutdown` comes first.
async fn next_tick(interval: &mut tokio::time::Interval, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = interval.tick() => true,
    }
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
}

/// Bytes this process may still write on the filesystem holding `dir`; `None` when the
/// filesystem does not say.
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    free_of(stat.f_blocks, stat.f_bavail, stat.f_frsize)
}

/// The free bytes a `statvfs` reports. A filesystem that reports no size at all (0 blocks
/// in total, as some FUSE filesystems do) says nothing about its free space: it is not full.
fn free_of(blocks: u64, available_blocks: u64, block_size: u64) -> Option<u64> {
    if blocks == 0 {
        return None;
    }
    Some(available_blocks.saturating_mul(block_size))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod free_space_tests {
    #[test]
    fn a_filesystem_that_reports_no_size_is_not_full() {
        assert_eq!(super::free_of(0, 0, 4096), None);
        assert_eq!(super::free_of(100, 0, 4096), Some(0));
        assert_eq!(super::free_of(100, 10, 4096), Some(40960));
    }
}
