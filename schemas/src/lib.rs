//! The tables apiscope stores and how they lie on disk.
//!
//! Every table is described once, as a list of [`Column`]s with a doc line each; the Arrow
//! schema, the column tables of docs/tables.md and the Parquet metadata are all derived from that list.
//!
//! ```text
//! <store>/<table>/date=YYYY-MM-DD/hour=HH/<through>-<writer>-<n>.parquet
//! ```
//!
//! The store is a local directory or a bucket ([`Store`]). A file is visible only once
//! complete (on a local disk it is written as `.<name>.tmp`, synced, then renamed); readers
//! list `*.parquet` only.

mod counted;
mod delta;
mod gather;
mod key_index;
mod layout;
mod logs;
pub mod priority;
pub mod routes;
mod store;
mod tables;

pub use delta::{Committed, NewFile};
pub use gather::{gather, gather_column};
pub use key_index::{GRANULE_ROWS, KEY_INDEX_KEY, KeyIndex};
pub use layout::{
    REPLACED_BY, ROLLUP_DIR, covered_seq, file_node, hour_start, is_data_file, parent,
    partition_of, written_by,
};
pub use store::{ObjectMeta, ObjectPath, RollupWriter, Store, StoreFile};
pub use tables::{
    Column, ColumnType, LATENCY_BOUNDS_MS, LOGS, MINUTES, REQUESTS, SPANS, Table, conformed,
    events_field, links_field, rollup_complete, string_map_field,
};

/// Version of the on-disk schema; stored in every Parquet file's key-value metadata under
/// [`SCHEMA_VERSION_KEY`]. Within a version, changes are additive only. Version 2 stopped
/// storing computed columns ([`Column::computed`]); version 1 files still hold them, and
/// readers ignore them there. Version 3 stores a span's resource attributes once per
/// resource, as the text `resource` ([`Table::stored_only`]), and leaves the map
/// `resource_attributes` of earlier versions null; readers take whichever a row has.
pub const SCHEMA_VERSION: &str = "3";

/// Parquet key-value metadata key holding [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "apiscope.schema_version";

/// The column whose chunks carry bloom filters in every file (where a table has it): the
/// writer gives them, and trace lookups skip files and row groups with them.
pub const BLOOM_COLUMN: &str = "trace_id";

/// All stored tables, in the order docs/tables.md documents them.
pub const TABLES: &[&Table] = &[&SPANS, &LOGS, &REQUESTS];
