//! `apiscope serve`: binds the listeners, runs until SIGTERM or Ctrl-C, then drains.
//!
//! Shutdown order: stop accepting and finish in-flight requests on every listener, then
//! flush the buffer to Parquet, then exit. What is flushed is what a restart serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use collector::{Buffer, Collector};
use query::{Engine, Snapshot, Source, TimeRange};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{self, Scope};
use crate::config::Settings;
use crate::{Error, Result};

/// The query side's view of the store: Parquet files plus the collector's buffer, taken
/// under the buffer's lock so that no row is seen twice or missed.
#[derive(Debug)]
struct Live {
    data_dir: PathBuf,
    buffer: Arc<Buffer>,
}

impl Source for Live {
    fn snapshot(
        &self,
        table: &'static schemas::Table,
        range: TimeRange,
    ) -> std::io::Result<Snapshot> {
        let (batches, files) = self.buffer.snapshot_with(table.name, || {
            query::list_files(&self.data_dir, table, range)
        });
        Ok(Snapshot {
            files: files?,
            batches,
        })
    }

    fn files(
        &self,
        table: &'static schemas::Table,
        range: TimeRange,
    ) -> std::io::Result<Vec<std::path::PathBuf>> {
        query::list_files(&self.data_dir, table, range)
    }
}

pub(crate) async fn run(mut settings: Settings) -> Result<()> {
    let metrics = crate::metrics::install()?;
    let data_dir = &settings.collector.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|error| {
        Error::Config(format!(
            "cannot create data directory {}: {error}",
            data_dir.display()
        ))
    })?;
    settings.collector.data_dir = data_dir.canonicalize()?;

    let config = settings.collector.clone();
    let (collector, replayed) = tokio::task::spawn_blocking(move || Collector::open(config))
        .await
        .map_err(|error| Error::Server(format!("start-up failed: {error}")))??;
    let collector = Arc::new(collector);
    tracing::info!(
        records = replayed.records,
        rows_restored = replayed.rows_restored,
        rows_already_flushed = replayed.rows_already_flushed,
        damaged_bytes = replayed.damaged_bytes,
        "write-ahead log replayed"
    );
    let source = Arc::new(Live {
        data_dir: settings.collector.data_dir.clone(),
        buffer: collector.buffer(),
    });
    let engine = Engine::new(
        source,
        settings.questions.clone(),
        settings.query_limits.clone(),
    )
    .await?;

    let grpc = bind("OTLP/gRPC", settings.otlp_grpc_addr).await?;
    let otlp_http = bind("OTLP/HTTP", settings.otlp_http_addr).await?;
    let query_http = bind("the query API", settings.http_addr).await?;
    let pg = bind("the PostgreSQL listener", settings.pg_addr).await?;
    let addr = |listener: &TcpListener| {
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    };
    tracing::info!(
        otlp_grpc_addr = %addr(&grpc),
        otlp_http_addr = %addr(&otlp_http),
        http_addr = %addr(&query_http),
        pg_addr = %addr(&pg),
        data_dir = %settings.collector.data_dir.display(),
        "apiscope ready"
    );

    let stop_accepting = CancellationToken::new();
    let front_ends = TaskTracker::new();

    let access = settings.access.clone();
    if !settings.exposed_without_auth.is_empty() {
        tracing::warn!(
            addresses = ?settings.exposed_without_auth,
            "--insecure-no-auth: listening off loopback with no token; anyone who reaches \
             these ports can send data and query it"
        );
    }

    let (traces, logs) = collector::otlp_grpc::services(collector.clone());
    let stop = stop_accepting.clone();
    let mut grpc_server = tonic::transport::Server::builder();
    if let Some(tls) = &settings.tls {
        grpc_server = grpc_server
            .tls_config(tls.grpc())
            .map_err(|error| Error::Config(format!("TLS for OTLP/gRPC: {error}")))?;
    }
    let mut grpc_server = grpc_server.layer(tonic::service::InterceptorLayer::new(
        access::GrpcGuard(access.clone()),
    ));
    front_ends.spawn(async move {
        let served = grpc_server
            .add_service(traces)
            .add_service(logs)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                stop.cancelled_owned(),
            )
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "OTLP/gRPC server failed");
        }
    });

    let guarded = |router: axum::Router, scope, listener| {
        router.layer(axum::middleware::from_fn_with_state(
            (access.clone(), scope, listener),
            access::http_guard,
        ))
    };
    let otlp_routes = guarded(
        collector::otlp_http::router(collector.clone()),
        Scope::Ingest,
        "OTLP/HTTP",
    )
    .merge(query::http::health());
    let query_routes = guarded(
        query::http::router(engine.clone()),
        Scope::Query,
        "query API",
    )
    .merge(guarded(
        crate::metrics::router(metrics.clone(), collector.clone()),
        Scope::Admin,
        "query API",
    ))
    .merge(query::http::health());
    for (what, listener, routes) in [
        ("OTLP/HTTP", otlp_http, otlp_routes),
        ("query API", query_http, query_routes),
    ] {
        let stop = stop_accepting.clone();
        match &settings.tls {
            Some(tls) => front_ends.spawn(serve_http(what, tls.listener(listener), routes, stop)),
            None => front_ends.spawn(serve_http(what, PlainListener(listener), routes, stop)),
        };
    }
    front_ends.spawn(query::pg::run(
        pg,
        engine.clone(),
        settings.pg_auth.clone(),
        settings.tls.as_ref().map(|tls| tls.postgres()),
        stop_accepting.clone().cancelled_owned(),
    ));
    front_ends.close();

    let stop_flushing = CancellationToken::new();
    let flusher = tokio::spawn(collector.clone().run_flusher(stop_flushing.clone()));
    let maintenance = tokio::spawn(collector.clone().run_maintenance(stop_flushing.clone()));
    let rolling = tokio::spawn(roll_up(
        engine.clone(),
        settings.rollup_interval,
        stop_flushing.clone(),
    ));
    let forgetting = stop_flushing.clone();
    tokio::spawn(async move {
        let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
        while forgetting
            .run_until_cancelled(every_minute.tick())
            .await
            .is_some()
        {
            access.forget_idle();
            // Histograms are kept in buckets that the exporter folds in on upkeep.
            metrics.run_upkeep();
        }
    });

    shutdown_signal().await;
    tracing::info!(
        buffered_rows = collector.buffer().rows(),
        "shutting down: draining requests"
    );
    stop_accepting.cancel();
    front_ends.wait().await;
    stop_flushing.cancel();
    flusher
        .await
        .map_err(|error| Error::Server(format!("flush task failed: {error}")))?;
    let _ = maintenance.await;
    let _ = rolling.await;
    tracing::info!("apiscope stopped");
    Ok(())
}

/// Keeps the per-minute rollups up to date with the files, every `every` (never when zero).
async fn roll_up(engine: Engine, every: std::time::Duration, stop: CancellationToken) {
    if every.is_zero() {
        return;
    }
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.run_until_cancelled(interval.tick()).await.is_some() {
        let outcome = match stop.run_until_cancelled(engine.roll_up()).await {
            None => return,
            Some(Ok(report)) => {
                metrics::counter!("apiscope_rollups_written_total")
                    .increment(report.written as u64);
                metrics::counter!("apiscope_rollups_removed_total")
                    .increment(report.removed as u64);
                metrics::counter!("apiscope_rollup_failures_total").increment(report.failed as u64);
                "ok"
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "writing rollups failed; retried next pass");
                "error"
            }
        };
        metrics::counter!("apiscope_rollup_passes_total", "outcome" => outcome).increment(1);
    }
}

/// An HTTP listener without TLS whose connections send without delay (see [`no_delay`]).
pub(crate) struct PlainListener(TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        let (mut socket, peer) = axum::serve::Listener::accept(&mut self.0).await;
        no_delay(&mut socket);
        (socket, peer)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Turns Nagle's algorithm off for an accepted connection. With it on, a reply written in
/// two pieces (gRPC's data, then its trailers) holds the second until the client acknowledges
/// the first, which Linux delays by 40 ms: a tenth of OTLP/gRPC exports at 100k spans/s were
/// acknowledged 40 ms late.
pub(crate) fn no_delay(socket: &mut TcpStream) {
    if let Err(error) = socket.set_nodelay(true) {
        tracing::debug!(%error, "cannot turn off Nagle's algorithm on a connection");
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

async fn serve_http<L>(what: &'static str, listener: L, app: axum::Router, stop: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    access::Peer:
        for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let app = app.into_make_service_with_connect_info::<access::Peer>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::error!(%error, server = what, "server failed");
    }
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener;

    use super::*;

    #[tokio::test]
    async fn http_connections_are_accepted_without_nagle() {
        let mut listener = PlainListener(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, peer) = listener.accept().await;
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(accepted.nodelay().unwrap());
    }
}
