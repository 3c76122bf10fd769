//! `apiscope serve`: binds the listeners, runs until SIGTERM or Ctrl-C, then drains.
//!
//! Shutdown order: stop accepting and finish in-flight requests on every listener, then
//! flush the buffer to Parquet, then exit. What is flushed is what a restart serves.

use std::sync::Arc;

use arrow::array::RecordBatch;

use collector::{Buffer, Collector};
use query::{Engine, Snapshot, Source, TimeRange};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{self, Scope};
use crate::config::Settings;
use crate::listen::{self, Listener, Port};
use crate::{Error, Result};

/// The query side's view of the store: Parquet files plus the collector's buffer. The
/// buffered rows are taken with the flushed mark, and the files listed after: a file whose
/// sequence is past the mark holds rows taken from the buffer, and is left out, so that no
/// row is seen twice or missed.
#[derive(Debug)]
struct Live {
    store: schemas::Store,
    /// This daemon's node id: only its files hold rows that may still be buffered.
    node: String,
    buffer: Arc<Buffer>,
}

impl Source for Live {
    fn store(&self) -> &schemas::Store {
        &self.store
    }

    fn snapshot(
        &self,
        table: &'static schemas::Table,
        range: TimeRange,
    ) -> std::io::Result<Snapshot> {
        let (buffered, flushed) = self.buffer.snapshot(table.name);
        let (sequences, batches) = buffered.into_iter().unzip();
        let mut files = self.store.table_files(table.name, range.lo, range.hi)?;
        files.retain(|file| {
            let name = file.location.filename().unwrap_or_default();
            !schemas::written_by(name, &self.node)
                || schemas::covered_seq(name).is_none_or(|seq| seq <= flushed)
        });
        Ok(Snapshot {
            files,
            batches,
            sequences,
        })
    }

    fn buffered(&self, table: &'static schemas::Table) -> (Vec<RecordBatch>, Vec<u64>) {
        let (buffered, _) = self.buffer.snapshot(table.name);
        let (sequences, batches) = buffered.into_iter().unzip();
        (batches, sequences)
    }
}

/// What the settings' plain data makes at start: the tokens and rate limits checked and
/// indexed, the TLS identity read and checked, the PostgreSQL login. Also what
/// `--check-config` builds, to refuse what start would.
pub(crate) struct Guards {
    pub(crate) access: Arc<access::Access>,
    pub(crate) tls: Option<crate::tls::Tls>,
    pub(crate) pg_auth: query::pg::PgAuth,
}

impl Guards {
    pub(crate) fn new(settings: &Settings) -> Result<Guards> {
        let access = Arc::new(access::Access::new(&settings.auth, settings.rate_limits)?);
        let tls = settings
            .tls
            .as_ref()
            .map(crate::tls::Tls::load)
            .transpose()?;
        let gate = Arc::new(access::PgGate {
            access: access.clone(),
        });
        let pg_auth = match &settings.pg_password {
            Some(password) => query::pg::PgAuth::password(&password.0),
            None => query::pg::PgAuth::open(),
        }
        .with_gate(gate, access.enabled());
        Ok(Guards {
            access,
            tls,
            pg_auth,
        })
    }

    /// What `--check-config` shows of them: the PostgreSQL login, tokens and rate limits.
    pub(crate) fn summary(&self) -> Vec<String> {
        let mut lines = vec![format!("pg auth = {}", self.pg_auth.describe())];
        lines.extend(self.access.summary());
        lines
    }
}

pub(crate) async fn run(mut settings: Settings) -> Result<()> {
    let guards = Guards::new(&settings)?;
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
        store: settings.collector.store.clone(),
        node: collector.node_id().to_owned(),
        buffer: collector.buffer(),
    });
    let engine = Engine::new(
        source,
        settings.questions.clone(),
        settings.query_limits.clone(),
    )
    .await?;
    // What answers SQL over HTTP and PostgreSQL: the cluster when there is one. Rollups, the
    // trace lookups and the memory ceiling stay with the engine over this node's buffer.
    let answering = match settings.cluster.clone() {
        Some(cluster) => {
            tracing::info!(%cluster, "SQL runs on the cluster, over committed files");
            Engine::on_cluster(
                settings.collector.store.clone(),
                settings.questions.clone(),
                settings.query_limits.clone(),
                cluster,
            )
            .await?
        }
        None => engine.clone(),
    };

    // Started before the listeners, so that the ready line is the last line of start-up.
    let stop_ceiling = CancellationToken::new();
    match settings.memory_limit.or_else(crate::ceiling::default_limit) {
        Some(limit) => {
            tracing::info!(memory_limit = limit, "memory ceiling in force");
            tokio::spawn(crate::ceiling::watch(
                engine.clone(),
                limit,
                stop_ceiling.clone(),
            ));
        }
        None => tracing::warn!("cannot read the machine's memory: no memory ceiling"),
    }
    let mut listen = settings.listen.clone();
    if let Some(open_files) = crate::fds::raise_open_files_limit() {
        let available = open_files.saturating_sub(crate::fds::RESERVED) as usize;
        if listen.fit(available) {
            tracing::warn!(
                open_files,
                reserved = crate::fds::RESERVED,
                otlp_grpc_max_connections = listen.otlp_grpc_max_connections,
                otlp_http_max_connections = listen.otlp_http_max_connections,
                http_max_connections = listen.http_max_connections,
                pg_max_connections = listen.pg_max_connections,
                "the open-files limit is low: connection limits lowered to fit under it; raise \
                 it (ulimit -n, or LimitNOFILE= in a systemd unit) to allow more connections"
            );
        }
    }
    let idle = Some(listen.idle_timeout).filter(|timeout| !timeout.is_zero());
    let tls = guards.tls.is_some();
    let open = |port: Port, addr, idle| {
        let max_connections = listen.max_connections(port);
        async move {
            let tcp = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    what: port.name,
                    addr,
                    source,
                })?;
            Ok::<_, Error>(Listener::new(tcp, port, max_connections, idle, tls))
        }
    };
    let grpc = open(listen::OTLP_GRPC, settings.otlp_grpc_addr, idle).await?;
    let otlp_http = open(listen::OTLP_HTTP, settings.otlp_http_addr, idle).await?;
    let query_http = open(listen::QUERY_HTTP, settings.http_addr, idle).await?;
    // The PostgreSQL connection is handed to pgwire as a socket: its own timeouts apply.
    let pg = open(listen::POSTGRES, settings.pg_addr, None).await?;
    let addr = |listener: &Listener| {
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

    let access = guards.access.clone();
    if settings.collector.compaction_grace < settings.query_limits.timeout {
        tracing::warn!(
            compaction_grace = ?settings.collector.compaction_grace,
            query_timeout = ?settings.query_limits.timeout,
            "compaction_grace is shorter than query_timeout: a query still reading files a \
             compaction or retention removed may find them deleted and leave their rows out"
        );
    }
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
    if let Some(tls) = &guards.tls {
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
            .serve_with_incoming_shutdown(listen::incoming(grpc), stop.cancelled_owned())
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
    .merge(crate::health::router(
        collector.clone(),
        stop_accepting.clone(),
    ));
    let query_routes = guarded(
        query::http::router(answering.clone()).merge(query::traces::router(engine.clone())),
        Scope::Query,
        "query API",
    )
    .merge(guarded(
        crate::metrics::router(metrics.clone(), collector.clone()),
        Scope::Admin,
        "query API",
    ))
    .merge(crate::health::router(
        collector.clone(),
        stop_accepting.clone(),
    ));
    for (listener, routes) in [(otlp_http, otlp_routes), (query_http, query_routes)] {
        front_ends.spawn(listen::serve_http(
            listener,
            guards.tls.as_ref().map(|tls| tls.http()),
            routes,
            listen.http_header_timeout,
            stop_accepting.clone(),
        ));
    }
    let pg_connections = futures::stream::unfold(pg, |mut pg| async move {
        let connection = pg.accept().await;
        let (socket, held) = connection.stream.into_parts();
        Some(((socket, connection.peer, held), pg))
    });
    front_ends.spawn(query::pg::run(
        pg_connections,
        answering,
        guards.pg_auth.clone(),
        guards.tls.as_ref().map(|tls| tls.postgres()),
        listen.pg,
        stop_accepting.clone().cancelled_owned(),
    ));
    front_ends.close();

    let stop_flushing = CancellationToken::new();
    let flusher = tokio::spawn(collector.clone().run_flusher(stop_flushing.clone()));
    let maintenance = tokio::spawn(collector.clone().run_maintenance(stop_flushing.clone()));
    let claiming = tokio::spawn(collector.clone().run_claim(stop_flushing.clone()));
    let rolling = tokio::spawn(roll_up(
        engine.clone(),
        collector.clone(),
        settings.rollup_interval,
        stop_flushing.clone(),
    ));
    let buffer_rolling = tokio::spawn(roll_up_buffer(engine.clone(), stop_flushing.clone()));
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

    crate::shutdown::signal().await;
    tracing::info!(
        buffered_rows = collector.buffer().rows(),
        "shutting down: draining requests"
    );
    stop_accepting.cancel();
    front_ends.wait().await;
    stop_flushing.cancel();
    stop_ceiling.cancel();
    flusher
        .await
        .map_err(|error| Error::Server(format!("flush task failed: {error}")))?;
    let _ = maintenance.await;
    let _ = claiming.await;
    let _ = rolling.await;
    let _ = buffer_rolling.await;
    tracing::info!("apiscope stopped");
    Ok(())
}

/// How often the rows that arrived since the last time are rolled up in memory: what a
/// question rolls up itself is at most this much of ingest (a quarter of a second is 7,500
/// spans at 30,000 spans/s, about a millisecond), and a flush's worth of rows is at most
/// some tens of runs, whose rollups merge like the files'.
const BUFFER_ROLLUP_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Rolls up the rows not yet flushed every [`BUFFER_ROLLUP_EVERY`], so that a question over
/// the current minutes aggregates at most that much of them itself.
async fn roll_up_buffer(engine: Engine, stop: CancellationToken) {
    let mut interval = tokio::time::interval(BUFFER_ROLLUP_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.run_until_cancelled(interval.tick()).await.is_some() {
        match stop.run_until_cancelled(engine.roll_up_buffer()).await {
            None => return,
            Some(Ok(rows)) => {
                metrics::counter!("apiscope_buffer_rolled_up_rows_total").increment(rows as u64)
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "rolling up the buffered rows failed; questions aggregate them instead");
            }
        }
    }
}

/// Keeps the per-minute rollups up to date with the files, every `every` and after each
/// flush, so that questions read a flush's files from their rollups within moments (never
/// when `every` is zero).
async fn roll_up(
    engine: Engine,
    collector: Arc<Collector>,
    every: std::time::Duration,
    stop: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    let writer = collector.rollup_files();
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
            _ = collector.flushed() => interval.reset(),
        }
        let writing = engine.roll_up(Arc::new(writer.clone()));
        let outcome = match stop.run_until_cancelled(writing).await {
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
