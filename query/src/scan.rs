//! The bottom of the read path: where a table's rows come from and how they are read.
//!
//! A table is the Parquet files of the hours a query keeps ([`source`], listed through the
//! layout `schemas` defines) united with the rows not yet flushed ([`Source`]). Reading
//! prunes files by hour, by the `trace_id` bloom filters ([`blooms`]) and by each file's
//! attribute key index ([`key_index`]); map columns are read in the cheaper types of
//! [`read_as`] and [`pairs_map`]; footers and filters read once are kept ([`file_cache`]);
//! a file that cannot be read is left out and reported ([`unreadable`]).

pub(crate) mod blooms;
pub(crate) mod file_cache;
pub(crate) mod key_index;
pub(crate) mod pairs_map;
pub(crate) mod read_as;
pub(crate) mod source;
pub(crate) mod table;
pub(crate) mod unreadable;

pub use source::{Files, Snapshot, Source, TimeRange};
pub(crate) use table::StoreTable;

/// The catalog holding apiscope's tables; also the database name PostgreSQL clients see.
pub const CATALOG: &str = "apiscope";

/// Marks the session options of a front-end whose statements run on a cluster: its scans
/// plan only what crosses the wire to the executors (whole files, read as they are).
#[derive(Debug)]
pub(crate) struct ForCluster;

/// Whether `session` plans for a cluster.
pub(crate) fn plans_for_cluster(session: &dyn datafusion::catalog::Session) -> bool {
    session.config().get_extension::<ForCluster>().is_some()
}
