//! Rows accepted but not yet in Parquet, readable by queries until their file is visible.
//!
//! The buffer and the set of visible files change together: a flush renames its files into
//! place and drops the rows they hold under one write lock, and a query takes its list of
//! files and its copy of the rows under the read lock. So a query sees every row exactly
//! once, whether it is still buffered or already flushed.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use arrow::array::RecordBatch;

use crate::error::{Error, Result};

/// The unflushed rows of every table.
#[derive(Debug)]
pub struct Buffer {
    inner: RwLock<Inner>,
    max_rows: usize,
}

#[derive(Debug, Default)]
struct Inner {
    tables: HashMap<&'static str, Vec<RecordBatch>>,
    rows: usize,
}

impl Buffer {
    /// A buffer refusing new rows while it holds more than `max_rows`.
    pub fn new(max_rows: usize) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            max_rows,
        }
    }

    /// Adds a batch to `table`; refuses (retryably) when the buffer is over its limit.
    pub fn push(&self, table: &'static str, batch: RecordBatch) -> Result<usize> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if inner.rows >= self.max_rows {
            return Err(Error::Overloaded { rows: inner.rows });
        }
        inner.rows += batch.num_rows();
        inner.tables.entry(table).or_default().push(batch);
        Ok(inner.rows)
    }

    /// Rows waiting in all tables.
    pub fn rows(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .rows
    }

    /// A copy of `table`'s rows, together with what `while_locked` returns when run under the
    /// same lock (the query side lists visible files there).
    pub fn snapshot_with<T>(
        &self,
        table: &str,
        while_locked: impl FnOnce() -> T,
    ) -> (Vec<RecordBatch>, T) {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let batches = inner.tables.get(table).cloned().unwrap_or_default();
        let listed = while_locked();
        (batches, listed)
    }

    /// A copy of `table`'s rows, for a flush.
    pub fn pending(&self, table: &str) -> Vec<RecordBatch> {
        self.snapshot_with(table, || ()).0
    }

    /// Makes a flush visible: runs `publish` (the renames) and, if it succeeds, drops the
    /// first `flushed` batches of `table`, all under the write lock.
    pub fn publish<E>(
        &self,
        table: &str,
        flushed: usize,
        publish: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        publish()?;
        let Inner { tables, rows } = &mut *inner;
        if let Some(batches) = tables.get_mut(table) {
            for batch in batches.drain(..flushed.min(batches.len())) {
                *rows -= batch.num_rows();
            }
        }
        Ok(())
    }
}
