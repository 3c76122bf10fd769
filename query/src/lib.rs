//! apiscope's query side: a DataFusion session over the store, and SQL over HTTP and the
//! PostgreSQL wire protocol.
//!
//! The modules follow the read path, and each depends only on those below it:
//!
//! ```text
//! http, pg, traces        front-ends: requests and the wire, errors as each one answers them
//!                         (traces: the Jaeger and Tempo APIs for Grafana's trace view)
//!   └─ engine             the session, its limits (bounds, running) and the query runtime
//!        ├─ questions     the api_calls view and the question functions (SQL in questions/sql),
//!        │                api_call_minutes over the per-minute rollups
//!        ├─ functions     SQL functions: percentile sketches, to_json, route helpers
//!        └─ scan          table providers over Parquet files plus unflushed rows: sources,
//!                         pruning (blooms, key index), read types, caches, unreadable files
//! error, output           leaves: the one error type and a finished query's rows
//! ```
//!
//! This crate does not depend on the collector, and never writes to the store: it reads
//! Parquet through the layout that `schemas` defines, and unflushed rows through the
//! [`Source`] trait, which the binary wires to the collector's buffer. Rollups are computed
//! here and written by a [`schemas::RollupWriter`] the binary passes in.

mod engine;
mod error;
mod functions;
pub mod http;
mod output;
pub mod pg;
mod questions;
mod scan;
pub mod traces;

pub use engine::cluster::{self, Cluster};
pub use engine::{Engine, QueryLimits};
pub use error::{Error, Result};
pub use output::{QueryOutput, to_json};
pub use questions::objectives::{
    BURNERS_COLUMNS, OBJECTIVES_COLUMNS, Objective, STATUS_COLUMNS,
    check_unique as check_objectives,
};
pub use questions::rollups::{COLUMNS as API_CALL_MINUTES_COLUMNS, RollupReport};
pub use questions::{
    API_CALLS, QUESTIONS, Question, QuestionSettings, REGRESSION_MIN_CALLS, RETRY_GAP_S,
};
pub use scan::{CATALOG, Files, Snapshot, Source, TimeRange};
