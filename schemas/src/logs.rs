//! The tables' Delta logs as a store holds them in memory (read and written in `delta`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deltalake_core::DeltaTable;
use deltalake_core::logstore::LogStoreRef;

/// One table's log: where it is, and the state last read.
#[derive(Clone)]
pub(crate) struct TableLog {
    pub(crate) log: LogStoreRef,
    pub(crate) state: Arc<tokio::sync::Mutex<Held>>,
}

/// A table's log as last read.
#[derive(Default)]
pub(crate) struct Held {
    /// `None` until the log exists.
    pub(crate) table: Option<DeltaTable>,
    /// When it was last brought up to date.
    pub(crate) refreshed: Option<std::time::Instant>,
}

/// The logs of a store's tables, opened on first use.
#[derive(Default)]
pub(crate) struct Logs(pub(crate) Mutex<HashMap<&'static str, TableLog>>);
