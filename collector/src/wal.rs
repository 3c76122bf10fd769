//! The write-ahead log: what makes an acknowledgement a durability promise.
//!
//! ```text
//! request ─ decode ─ Append ──▶ writer thread: write the group ─ fdatasync ─ push rows to the
//!                                buffer in sequence order ─ acknowledge every request of the group
//! ```
//!
//! Concurrent requests that queue while a sync runs share the next one (group commit). Every
//! record has a sequence number; Parquet files carry the highest sequence they cover in
//! their names, so a replay after a crash skips what is already in Parquet and restores the
//! rest exactly once. Segments (`<data_dir>/wal/<first seq>.wal`) are deleted only after a
//! flush has published every row they hold.

mod record;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use tokio::sync::oneshot;

pub(crate) use record::Kind;

use crate::buffer::Buffer;
use crate::error::{Error, Result};
use crate::faults::{self, Point};
use crate::metrics::Throttle;

/// When an acknowledged request is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged means synced to disk (fdatasync): survives kill -9 and power loss.
    Fsync,
    /// Acknowledged means written to the OS; synced every interval. Survives kill -9; a power
    /// loss can lose the last interval.
    Batch(Duration),
    /// No WAL: acknowledged means buffered in memory. A crash loses what was not flushed.
    None,
}

impl Durability {
    /// Parses `fsync`, `batch` or `none`; `batch` syncs every `interval`.
    pub fn parse(mode: &str, interval: Duration) -> Result<Durability, String> {
        match mode {
            "fsync" => Ok(Durability::Fsync),
            "batch" => Ok(Durability::Batch(interval)),
            "none" => Ok(Durability::None),
            other => Err(format!(
                "unknown durability {other:?}: use fsync, batch or none"
            )),
        }
    }
}

/// Segments are closed past this size.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// How long the writer waits for appends before it looks at what an idle log can do.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// Requests waiting for the writer; past this the receivers refuse (retryably).
const QUEUE_CAPACITY: usize = 1024;

/// Most bytes written in one group before a sync.
const GROUP_BYTES: usize = 32 * 1024 * 1024;

/// One request to log: its record and the rows it becomes.
pub(crate) struct Append {
    pub(crate) kind: Kind,
    pub(crate) received_ns: i64,
    pub(crate) payload: bytes::Bytes,
    pub(crate) batch: RecordBatch,
    pub(crate) done: oneshot::Sender<Result<u64>>,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    /// Highest sequence in the segment; 0 while empty.
    last_seq: u64,
}

/// Shared between the writer thread and the flush.
#[derive(Debug)]
struct Segments {
    closed: Vec<Segment>,
    active_last_seq: u64,
}

/// The log's handle, shared by receivers and the flush.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    sender: Mutex<Option<SyncSender<Append>>>,
    segments: Arc<Mutex<Segments>>,
    rotate: Arc<AtomicBool>,
    bytes_on_disk: Arc<AtomicU64>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The log's folder under the data directory.
pub(crate) fn dir_of(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

/// Segment files in sequence order (the folder is created if missing).
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(storage)?;
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(storage)? {
        let path = entry.map_err(storage)?.path();
        if path.extension().is_some_and(|e| e == "wal") {
            segments.push(path);
        }
    }
    segments.sort();
    Ok(segments)
}

/// Scans one segment's bytes. A damaged tail is moved to `wal/damaged/` and cut off the
/// segment, so the daemon always starts; returns the intact records and the damaged bytes.
pub(crate) fn scan_segment<'a>(
    dir: &Path,
    path: &Path,
    bytes: &'a [u8],
) -> Result<(Vec<record::Record<'a>>, u64)> {
    let scan = record::scan(bytes);
    let Some((offset, reason)) = scan.damage else {
        return Ok((scan.records, 0));
    };
    let damaged = &bytes[offset..];
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("segment");
    let aside = dir.join("damaged").join(format!("{name}.{offset}.bad"));
    std::fs::create_dir_all(dir.join("damaged")).map_err(storage)?;
    std::fs::write(&aside, damaged).map_err(storage)?;
    let file = OpenOptions::new().write(true).open(path).map_err(storage)?;
    file.set_len(offset as u64).map_err(storage)?;
    file.sync_all().map_err(storage)?;
    tracing::warn!(
        segment = %path.display(),
        offset,
        bytes = damaged.len(),
        %reason,
        moved_to = %aside.display(),
        "damaged WAL tail moved aside; every record before it is recovered"
    );
    Ok((scan.records, damaged.len() as u64))
}

impl Wal {
    /// Starts the writer thread after replay. `next_seq` is the first sequence to assign;
    /// `existing` are the segments left by earlier runs (released by a later flush).
    pub(crate) fn start(
        dir: PathBuf,
        durability: Durability,
        next_seq: u64,
        existing: Vec<PathBuf>,
        buffer: Arc<Buffer>,
    ) -> Result<Wal> {
        let mut closed = Vec::new();
        let mut bytes_on_disk = 0;
        for path in existing {
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            bytes_on_disk += bytes;
            closed.push(Segment {
                path,
                bytes,
                last_seq: next_seq.saturating_sub(1),
            });
        }
        let segments = Arc::new(Mutex::new(Segments {
            closed,
            active_last_seq: 0,
        }));
        let rotate = Arc::new(AtomicBool::new(false));
        let bytes_on_disk = Arc::new(AtomicU64::new(bytes_on_disk));
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
        let mut writer = Writer {
            dir: dir.clone(),
            durability,
            next_seq,
            file: None,
            segments: segments.clone(),
            rotate: rotate.clone(),
            bytes_on_disk: bytes_on_disk.clone(),
            buffer,
            unsynced_since: None,
            failures_log: Throttle::new(),
        };
        if durability != Durability::None {
            writer.open_segment().map_err(storage)?;
        }
        let handle = std::thread::Builder::new()
            .name("apiscope-wal".into())
            .spawn(move || writer.run(receiver))
            .map_err(storage)?;
        Ok(Wal {
            dir,
            sender: Mutex::new(Some(sender)),
            segments,
            rotate,
            bytes_on_disk,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Queues `append`; refuses (retryably) when the writer is too far behind.
    pub(crate) fn submit(&self, append: Append) -> Result<()> {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sender) = sender.as_ref() else {
            return Err(Error::ShuttingDown);
        };
        match sender.try_send(append) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Error::Overloaded {
                what: format!("{QUEUE_CAPACITY} requests are waiting for the write-ahead log"),
            }),
            Err(TrySendError::Disconnected(_)) => Err(Error::ShuttingDown),
        }
    }

    /// Bytes of all segments on disk.
    pub(crate) fn bytes_on_disk(&self) -> u64 {
        self.bytes_on_disk.load(Ordering::Relaxed)
    }

    /// Deletes every closed segment whose records all have sequence <= `seq` (they are in
    /// Parquet now), and closes the active segment if it holds such records, so that the
    /// next flush can release it too.
    pub(crate) fn release_through(&self, seq: u64) {
        let mut segments = self.segments.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = Vec::new();
        for segment in segments.closed.drain(..) {
            if segment.last_seq > seq {
                kept.push(segment);
                continue;
            }
            match std::fs::remove_file(&segment.path) {
                Ok(()) => {
                    self.bytes_on_disk
                        .fetch_sub(segment.bytes, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%error, segment = %segment.path.display(), "cannot delete a released WAL segment");
                    kept.push(segment);
                }
            }
        }
        segments.closed = kept;
        if segments.active_last_seq != 0 && segments.active_last_seq <= seq {
            self.rotate.store(true, Ordering::Relaxed);
        }
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
    }

    /// Stops the writer after it has logged everything queued.
    pub(crate) fn close(&self) {
        drop(
            self.sender
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        if let Some(handle) = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = handle.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    durability: Durability,
    next_seq: u64,
    file: Option<(File, Segment)>,
    segments: Arc<Mutex<Segments>>,
    rotate: Arc<AtomicBool>,
    bytes_on_disk: Arc<AtomicU64>,
    buffer: Arc<Buffer>,
    unsynced_since: Option<Instant>,
    /// Failed writes come one per group while the disk is full.
    failures_log: Throttle,
}

impl Writer {
    fn run(mut self, receiver: Receiver<Append>) {
        let idle = match self.durability {
            Durability::Batch(interval) => interval,
            _ => IDLE_TICK,
        };
        loop {
            let first = match receiver.recv_timeout(idle) {
                Ok(append) => append,
                Err(RecvTimeoutError::Timeout) => {
                    self.sync_if_due(idle);
                    self.close_if_released();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            let mut group_bytes = group[0].payload.len();
            while group_bytes < GROUP_BYTES {
                match receiver.try_recv() {
                    Ok(append) => {
                        group_bytes += append.payload.len();
                        group.push(append);
                    }
                    Err(_) => break,
                }
            }
            self.commit(group);
        }
        if let Err(error) = self.close_segment() {
            tracing::warn!(%error, "closing the WAL segment failed");
        }
    }

    /// Logs one group (unless durability is `none`), then makes its rows visible and
    /// acknowledges it, in sequence order.
    fn commit(&mut self, group: Vec<Append>) {
        let first_seq = self.next_seq;
        if self.durability != Durability::None
            && let Err(error) = self.log(first_seq, &group)
        {
            if let Some(unlogged) = self.failures_log.admit(Instant::now()) {
                tracing::warn!(%error, requests = group.len(), failures_not_logged = unlogged, "WAL write failed; requests refused");
            }
            fail_all(group, &error);
            return;
        }
        self.next_seq += group.len() as u64;
        for (i, append) in group.into_iter().enumerate() {
            let seq = first_seq + i as u64;
            self.buffer
                .push_logged(append.kind.table(), seq, append.batch);
            let _ = append.done.send(Ok(seq));
        }
    }

    /// Appends the group's records to the active segment and syncs them (in `fsync` mode).
    fn log(&mut self, first_seq: u64, group: &[Append]) -> std::io::Result<()> {
        let full = self
            .file
            .as_ref()
            .is_some_and(|(_, s)| s.bytes >= SEGMENT_BYTES);
        if self.rotate.swap(false, Ordering::Relaxed) || full || self.file.is_none() {
            self.close_segment()?;
            self.open_segment()?;
        }
        let mut bytes = Vec::with_capacity(group.iter().map(|a| a.payload.len() + 32).sum());
        for (i, append) in group.iter().enumerate() {
            let seq = first_seq + i as u64;
            record::encode(
                &mut bytes,
                seq,
                append.received_ns,
                append.kind,
                &append.payload,
            );
        }
        self.write_and_sync(&bytes)?;
        metrics::counter!("apiscope_wal_appends_total").increment(group.len() as u64);
        metrics::counter!("apiscope_wal_groups_total").increment(1);
        metrics::counter!("apiscope_wal_written_bytes_total").increment(bytes.len() as u64);
        metrics::gauge!("apiscope_wal_bytes")
            .set(self.bytes_on_disk.load(Ordering::Relaxed) as f64);
        let last_seq = first_seq + group.len() as u64 - 1;
        if let Some((_, segment)) = &mut self.file {
            segment.last_seq = last_seq;
        }
        let mut segments = self.segments.lock().unwrap_or_else(PoisonError::into_inner);
        segments.active_last_seq = last_seq;
        Ok(())
    }

    fn write_and_sync(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let Some((file, segment)) = &mut self.file else {
            return Err(std::io::Error::other("no open WAL segment"));
        };
        let good_len = segment.bytes;
        let path = segment.path.clone();
        let written = faults::check(Point::WalWrite, &path)
            .and_then(|()| file.write_all(bytes))
            .and_then(|()| match self.durability {
                Durability::Fsync => faults::check(Point::WalSync, &path).and_then(|()| {
                    let started = Instant::now();
                    let synced = file.sync_data();
                    metrics::histogram!("apiscope_wal_sync_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    synced
                }),
                _ => Ok(()),
            });
        if let Err(error) = written {
            // Cut a partly written group off, so the segment stays a sequence of whole
            // records; if even that fails, continue in a fresh segment.
            let restored = file.set_len(good_len).and_then(|()| {
                use std::io::Seek;
                file.seek(std::io::SeekFrom::Start(good_len)).map(|_| ())
            });
            if restored.is_err() {
                // The next group opens a fresh segment.
                self.file = None;
            }
            return Err(error);
        }
        segment.bytes += bytes.len() as u64;
        self.bytes_on_disk
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if self.unsynced_since.is_none() && self.durability != Durability::Fsync {
            self.unsynced_since = Some(Instant::now());
        }
        Ok(())
    }

    fn sync_if_due(&mut self, interval: Duration) {
        let Some(since) = self.unsynced_since else {
            return;
        };
        if since.elapsed() < interval {
            return;
        }
        if let Some((file, _)) = &self.file {
            let started = Instant::now();
            let synced = file.sync_data();
            metrics::histogram!("apiscope_wal_sync_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            match synced {
                Ok(()) => self.unsynced_since = None,
                Err(error) => tracing::warn!(%error, "WAL sync failed; retrying"),
            }
        }
    }

    fn open_segment(&mut self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{:020}.wal", self.next_seq));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let bytes = file.metadata()?.len();
        File::open(&self.dir)?.sync_all()?;
        self.file = Some((
            file,
            Segment {
                path,
                bytes,
                last_seq: 0,
            },
        ));
        Ok(())
    }

    /// Closes the active segment once a flush has covered it, so that the next flush can
    /// delete it without waiting for another append (none comes while ingest is refused for
    /// lack of disk space, the very time its bytes are needed back).
    fn close_if_released(&mut self) {
        if !self.rotate.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Err(error) = self.close_segment() {
            tracing::warn!(%error, "closing the WAL segment failed");
        }
    }

    fn close_segment(&mut self) -> std::io::Result<()> {
        let Some((file, segment)) = self.file.take() else {
            return Ok(());
        };
        file.sync_data()?;
        self.unsynced_since = None;
        let mut segments = self.segments.lock().unwrap_or_else(PoisonError::into_inner);
        segments.active_last_seq = 0;
        if segment.last_seq == 0 {
            drop(segments);
            // Nothing was logged in it.
            let _ = std::fs::remove_file(&segment.path);
            return Ok(());
        }
        segments.closed.push(segment);
        Ok(())
    }
}

fn fail_all(group: Vec<Append>, error: &std::io::Error) {
    for append in group {
        let _ = append
            .done
            .send(Err(Error::Storage(format!("write-ahead log: {error}"))));
    }
}

/// A failed operation on the log, named as one.
fn storage(error: impl std::fmt::Display) -> Error {
    Error::Storage(format!("write-ahead log: {error}"))
}
