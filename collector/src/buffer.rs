//! Rows accepted but not yet in Parquet, readable by queries until their file is visible.
//!
//! Each table has a flushed mark: every row of it logged up to that sequence is in a
//! committed file. A flush commits a table's files and then, under the write lock, drops
//! the rows they hold and moves that table's mark; a query takes its copy of the rows and
//! the mark under the read lock, then reads the table's log, and leaves out this node's
//! files named after a later sequence. So a query sees every row exactly once, whether it
//! is still buffered or already flushed.
//!
//! Every batch carries the WAL sequence number of the request it came from. Batches arrive
//! in sequence order (the WAL writer pushes them after each sync), so "every batch up to
//! the last sequence" is always a complete prefix of the log.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use arrow::array::RecordBatch;
use tokio::sync::Notify;

use crate::error::{Error, Result};

/// The unflushed rows of every table.
#[derive(Debug)]
pub struct Buffer {
    inner: RwLock<Inner>,
    max_rows: usize,
    max_bytes: usize,
    /// Told whenever a flush takes rows out.
    emptied: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    tables: HashMap<&'static str, Vec<(u64, RecordBatch)>>,
    rows: usize,
    bytes: usize,
    last_seq: u64,
    /// Per table, every row of it logged up to this sequence is in a committed file.
    flushed: HashMap<&'static str, u64>,
    /// When each buffered sequence arrived, oldest first.
    arrived: std::collections::VecDeque<(u64, std::time::Instant)>,
}

/// Everything waiting to be flushed, up to one sequence number.
#[derive(Debug)]
pub struct Pending {
    /// Every logged request up to this sequence is in `tables`.
    pub through: u64,
    /// The waiting batches of each table.
    pub tables: Vec<(&'static str, Vec<RecordBatch>)>,
}

impl Buffer {
    /// A buffer refusing new requests while it holds more than `max_rows` rows or
    /// `max_bytes` bytes of Arrow memory.
    pub fn new(max_rows: usize, max_bytes: usize) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            max_rows,
            max_bytes,
            emptied: Notify::new(),
        }
    }

    /// Waits until the buffer admits a request, or `patience` has passed. A sender faster
    /// than the flushes is slowed down to their pace instead of being refused at once (and
    /// retrying, which costs it and us the request again).
    pub async fn room(&self, patience: Duration) {
        let wait = async {
            loop {
                let emptied = self.emptied.notified();
                if self.admit().is_ok() {
                    return;
                }
                emptied.await;
            }
        };
        let _ = tokio::time::timeout(patience, wait).await;
    }

    /// Whether a new request may be taken; refuses (retryably) when over a limit.
    pub fn admit(&self) -> Result<()> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        if inner.rows >= self.max_rows {
            return Err(Error::Overloaded {
                what: format!(
                    "{} rows are waiting to be written (max_buffer_rows)",
                    inner.rows
                ),
            });
        }
        if inner.bytes >= self.max_bytes {
            return Err(Error::Overloaded {
                what: format!(
                    "{} bytes are waiting to be written (max_buffer_bytes)",
                    inner.bytes
                ),
            });
        }
        Ok(())
    }

    /// Adds the rows of the logged request `seq`; sequences must only grow.
    pub fn push_logged(&self, table: &'static str, seq: u64, batch: RecordBatch) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.rows += batch.num_rows();
        inner.bytes += batch.get_array_memory_size();
        inner.last_seq = inner.last_seq.max(seq);
        if inner.arrived.back().is_none_or(|(last, _)| *last < seq) {
            inner.arrived.push_back((seq, std::time::Instant::now()));
        }
        inner.tables.entry(table).or_default().push((seq, batch));
    }

    /// Records that every sequence up to `seq` is known, and that every row of each table
    /// up to its sequence in `flushed` is in a committed file (after a replay).
    pub fn advance_to(&self, seq: u64, flushed: &HashMap<&'static str, u64>) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.last_seq = inner.last_seq.max(seq);
        for (table, through) in flushed {
            let mark = inner.flushed.entry(table).or_default();
            *mark = (*mark).max(*through);
        }
    }

    /// Rows waiting in all tables.
    pub fn rows(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .rows
    }

    /// A copy of `table`'s rows with their sequences, and the sequence every row up to which is in a committed
    /// file: together, with the files whose name carries a sequence up to that one
    /// ([`schemas::covered_seq`]), every row exactly once.
    pub fn snapshot(&self, table: &str) -> (Vec<(u64, RecordBatch)>, u64) {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let batches = inner.tables.get(table).cloned().unwrap_or_default();
        (batches, inner.mark(table))
    }

    /// How long the oldest row not yet in a stored file has waited; `None` when none waits.
    pub fn oldest_unflushed(&self) -> Option<Duration> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.arrived.front().map(|(_, at)| at.elapsed())
    }

    /// Every row of `table` up to this sequence is in a committed file; its files of later
    /// sequences are not yet the data (their rows are still here).
    pub fn flushed_through(&self, table: &str) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .mark(table)
    }

    /// A copy of everything waiting, for a flush.
    pub fn pending(&self) -> Pending {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let tables = inner
            .tables
            .iter()
            .filter(|(_, batches)| !batches.is_empty())
            .map(|(table, batches)| (*table, batches.iter().map(|(_, b)| b.clone()).collect()))
            .collect();
        Pending {
            through: inner.last_seq,
            tables,
        }
    }

    /// Makes a flush of `table` visible once its files are committed: drops its batches up
    /// to sequence `through` and moves its flushed mark there, at once.
    pub fn publish(&self, table: &'static str, through: u64) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        let Inner {
            tables,
            rows,
            bytes,
            flushed,
            ..
        } = &mut *inner;
        if let Some(batches) = tables.get_mut(table) {
            batches.retain(|(seq, batch)| {
                let done = *seq <= through;
                if done {
                    *rows -= batch.num_rows();
                    *bytes -= batch.get_array_memory_size();
                }
                !done
            });
        }
        let mark = flushed.entry(table).or_default();
        *mark = (*mark).max(through);
        self.emptied.notify_waiters();
    }

    /// Records that a flush through `through` committed every table it had rows of: no row
    /// logged up to it waits any more.
    pub fn flushed_all(&self, through: u64) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        while inner
            .arrived
            .front()
            .is_some_and(|(seq, _)| *seq <= through)
        {
            inner.arrived.pop_front();
        }
    }
}

impl Inner {
    fn mark(&self, table: &str) -> u64 {
        self.flushed.get(table).copied().unwrap_or_default()
    }
}
