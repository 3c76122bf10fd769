//! `/metrics`: the daemon's own metrics in Prometheus text format, on the query API's port
//! (admin scope once tokens exist).
//!
//! The collector and the query engine count through the `metrics` facade; this module
//! installs the Prometheus recorder, and at each scrape sets the gauges that are cheaper to
//! read than to track: buffered rows, Parquet files and bytes per table (listed again only
//! once a flush or compaction has changed them), and the free bytes of the data directory's disk.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use collector::Collector;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{Error, Result};

/// Histogram buckets for every `*_seconds` metric: half a millisecond to half a minute.
const SECONDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process-wide recorder; call once, before anything is counted.
pub(crate) fn install() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&SECONDS)
        .map_err(|error| Error::Server(format!("metrics: {error}")))?
        .install_recorder()
        .map_err(|error| Error::Server(format!("metrics: {error}")))?;
    metrics::gauge!(
        "apiscope_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
    )
    .set(1.0);
    // Set by the query engine when a file does not read; there from the start, for alerts.
    metrics::gauge!("apiscope_unreadable_files").set(0.0);
    Ok(handle)
}

#[derive(Clone)]
struct Scrape {
    handle: PrometheusHandle,
    collector: Arc<Collector>,
    /// The collector's count of store changes when the store's gauges were last listed: on
    /// a bucket a listing is some requests per hour of data, and scrapers come every few
    /// seconds, so the files are listed again only once they have changed.
    listed: Arc<Mutex<Option<u64>>>,
}

/// `GET /metrics`.
pub(crate) fn router(handle: PrometheusHandle, collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape {
            handle,
            collector,
            listed: Arc::default(),
        })
}

async fn scrape(State(scrape): State<Scrape>) -> impl IntoResponse {
    let buffer = scrape.collector.buffer();
    metrics::gauge!("apiscope_buffer_rows").set(buffer.rows() as f64);
    let waiting = buffer.oldest_unflushed().unwrap_or_default();
    metrics::gauge!("apiscope_oldest_unflushed_seconds").set(waiting.as_secs_f64());
    if let Some(free) = collector::free_bytes(&scrape.collector.config().data_dir) {
        metrics::gauge!("apiscope_data_dir_free_bytes").set(free as f64);
    }
    let changes = scrape.collector.store_changes();
    let due = {
        let mut listed = scrape.listed.lock().unwrap_or_else(|e| e.into_inner());
        let due = *listed != Some(changes);
        *listed = Some(changes);
        due
    };
    if due {
        let store = scrape.collector.config().store.clone();
        let _ = tokio::task::spawn_blocking(move || store_gauges(&store)).await;
    }
    rendered(&scrape.handle)
}

/// The metrics in Prometheus text format, as a response.
pub(crate) fn rendered(handle: &PrometheusHandle) -> impl IntoResponse + use<> {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

/// Parquet files holding live rows, and their bytes, per table.
fn store_gauges(store: &schemas::Store) {
    for table in schemas::TABLES {
        let Ok(files) = store.table_files(table.name, None, None) else {
            continue;
        };
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        metrics::gauge!("apiscope_parquet_files", "table" => table.name).set(files.len() as f64);
        metrics::gauge!("apiscope_parquet_bytes", "table" => table.name).set(bytes as f64);
    }
}
