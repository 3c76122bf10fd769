//! apiscope's query side: a DataFusion session over the store, and SQL over HTTP and the
//! PostgreSQL wire protocol.
//!
//! ```text
//! HTTP ───────┐
//!             ├─ SQL ─ read-only check ─ DataFusion plan ─┬─ Parquet files of the hours kept
//! PostgreSQL ─┘   (one session)                          └─ rows not yet flushed (a Source)
//! ```
//!
//! This crate does not depend on the collector: it reads Parquet through the layout that
//! `schemas` defines, and unflushed rows through the [`Source`] trait, which the binary wires
//! to the collector's buffer.

mod blooms;
mod bounds;
mod engine;
mod error;
mod file_cache;
mod functions;
pub mod http;
mod json;
mod key_index;
mod pairs_map;
mod percentile;
pub mod pg;
mod questions;
mod read_types;
mod rollups;
mod running;
mod source;
mod table;
mod unreadable;

pub use engine::{CATALOG, Engine, QueryLimits, QueryOutput};
pub use error::{Error, Result};
pub use json::to_json;
pub use questions::{
    API_CALLS, QUESTIONS, Question, QuestionSettings, REGRESSION_MIN_CALLS, RETRY_GAP_S,
};
pub use rollups::{COLUMNS as API_CALL_MINUTES_COLUMNS, RollupReport};
pub use source::{DataDir, Snapshot, Source, TimeRange, list_files};
