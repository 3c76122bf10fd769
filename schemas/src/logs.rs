//! The tables' Delta logs as a store holds them in memory (read and written in `delta`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use deltalake_core::DeltaTable;
use deltalake_core::logstore::LogStoreRef;

/// A read brings a table's log up to date only if it was last brought up to date longer ago
/// than this: other nodes' commits appear within it (this node's own at once), and a busy
/// query side lists `_delta_log` at most once a second per table.
pub(crate) const REFRESH_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A log brought up to date by looking for its next commit only (see
/// `delta::next_commit_absent`) is listed in full again once it was last listed this long
/// ago.
pub(crate) const LIST_AFTER: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Whether a log brought up to date at `refreshed` (if ever) is still up to date for reads.
pub(crate) fn fresh(refreshed: Option<std::time::Instant>) -> bool {
    refreshed.is_some_and(|at| at.elapsed() < REFRESH_AFTER)
}

/// One table's log: where it is, the state last read, and its files as last published.
#[derive(Clone)]
pub(crate) struct TableLog {
    pub(crate) log: LogStoreRef,
    pub(crate) state: Arc<tokio::sync::Mutex<Held>>,
    /// The live files of the state held, published each time the state changes (under the
    /// lock of `state`), so that a read need not wait while a commit holds that lock.
    pub(crate) listed: Arc<RwLock<Option<Arc<Listed>>>>,
    /// Whether the log is being brought up to date for reads, in the background.
    pub(crate) refresh: Arc<Refreshing>,
}

/// Where bringing a table's log up to date for reads stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// Not under way; the last one, if any, succeeded.
    Idle,
    /// Under way in the background.
    Running,
    /// The last one failed: the next read does it itself.
    Failed,
}

/// A [`Refresh`] that threads share.
#[derive(Debug, Default)]
pub(crate) struct Refreshing(AtomicU8);

impl Refreshing {
    pub(crate) fn get(&self) -> Refresh {
        Self::from(self.0.load(Ordering::Acquire))
    }

    pub(crate) fn set(&self, refresh: Refresh) {
        self.0.store(refresh as u8, Ordering::Release);
    }

    /// Sets `refresh`; returns what it was.
    pub(crate) fn swap(&self, refresh: Refresh) -> Refresh {
        Self::from(self.0.swap(refresh as u8, Ordering::AcqRel))
    }

    fn from(value: u8) -> Refresh {
        match value {
            v if v == Refresh::Running as u8 => Refresh::Running,
            v if v == Refresh::Failed as u8 => Refresh::Failed,
            _ => Refresh::Idle,
        }
    }
}

/// A table's live files as the log held lists them.
#[derive(Debug)]
pub(crate) struct Listed {
    /// Each file with the start of its hour, sorted by path.
    pub(crate) files: Arc<[(i64, object_store::ObjectMeta)]>,
    /// When the log they come from was last brought up to date (`None`: never, since it
    /// was opened, created or committed to).
    pub(crate) refreshed: Option<std::time::Instant>,
}

impl TableLog {
    /// The files last published, if any.
    pub(crate) fn listed(&self) -> Option<Arc<Listed>> {
        self.listed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes `listed` as the table's files.
    pub(crate) fn publish(&self, listed: Listed) {
        *self.listed.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(listed));
    }
}

/// A table's log as last read.
#[derive(Default)]
pub(crate) struct Held {
    /// `None` until the log exists.
    pub(crate) table: Option<DeltaTable>,
    /// When it was last brought up to date.
    pub(crate) refreshed: Option<std::time::Instant>,
    /// When it was last listed in full (opened, created or brought up to date from its
    /// listing), rather than found up to date by looking for its next commit.
    pub(crate) listed: Option<std::time::Instant>,
}

/// The logs of a store's tables, opened on first use.
#[derive(Default)]
pub(crate) struct Logs(pub(crate) Mutex<HashMap<&'static str, TableLog>>);
