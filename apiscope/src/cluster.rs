//! The cluster roles: `apiscope scheduler` and `apiscope executor` start Apache DataFusion
//! Ballista's scheduler and executor, with apiscope's functions and plan codec registered
//! and the store's object store, so that the statements a front-end (`serve --cluster`,
//! `sql --cluster`) sends run there as they would on one node.

mod scheduler;
mod stop;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use clap::Args;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use query::QueryLimits;
use query::cluster::codec::{Codec, functions};

use crate::{Error, Result};

/// Arguments of `apiscope scheduler`.
#[derive(Debug, Args)]
pub(crate) struct SchedulerArgs {
    /// Where the scheduler listens for front-ends and executors (gRPC).
    #[arg(
        long,
        env = "APISCOPE_SCHEDULER_BIND",
        default_value = "127.0.0.1:50050"
    )]
    bind: SocketAddr,
    /// The store the cluster reads (a directory, or `s3://bucket/prefix`): the same as the
    /// collectors write.
    #[arg(long, env = "APISCOPE_STORE")]
    store: String,
    #[command(flatten)]
    exposure: Exposure,
}

/// Arguments of `apiscope executor`.
#[derive(Debug, Args)]
pub(crate) struct ExecutorArgs {
    /// The scheduler to take work from: `df://HOST:PORT`.
    #[arg(long, env = "APISCOPE_SCHEDULER")]
    scheduler: String,
    /// Where the executor serves its results (Arrow Flight) to front-ends and other
    /// executors; its gRPC service listens on the next port.
    #[arg(
        long,
        env = "APISCOPE_EXECUTOR_BIND",
        default_value = "127.0.0.1:50051"
    )]
    bind: SocketAddr,
    /// The name the scheduler, the front-ends and the other executors reach this one by,
    /// when it is not the bind address's host.
    #[arg(long, env = "APISCOPE_EXECUTOR_ADVERTISE")]
    advertise: Option<String>,
    /// The store the cluster reads (a directory, or `s3://bucket/prefix`).
    #[arg(long, env = "APISCOPE_STORE")]
    store: String,
    /// Where the executor serves `/metrics` (HTTP; default: the bind address's port + 2).
    #[arg(long, env = "APISCOPE_EXECUTOR_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,
    /// Connections `/metrics` holds at once; one more is refused (503).
    #[arg(
        long,
        env = "APISCOPE_EXECUTOR_METRICS_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    metrics_max_connections: usize,
    /// Tasks run at once (default: the machine's cores).
    #[arg(long, env = "APISCOPE_EXECUTOR_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Where shuffle files are written (default: a temporary directory).
    #[arg(long, env = "APISCOPE_EXECUTOR_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Memory the executor's tasks may use together, in bytes (default: 70% of the
    /// machine's or the container's memory); shared out evenly among concurrent tasks.
    #[arg(long, env = "APISCOPE_EXECUTOR_MEMORY")]
    memory: Option<u64>,
    #[command(flatten)]
    exposure: Exposure,
}

/// Whether a role may listen off loopback.
#[derive(Debug, Args)]
struct Exposure {
    /// Listen off loopback anyway. The cluster's ports have no authentication nor TLS: only
    /// for a network that nothing else reaches.
    #[arg(long, env = "APISCOPE_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
}

impl Exposure {
    /// Refuses `addr` off loopback without `--insecure-no-auth`.
    fn check(&self, what: &str, addr: &SocketAddr) -> Result<()> {
        if addr.ip().is_loopback() {
            return Ok(());
        }
        if !self.insecure_no_auth {
            return Err(Error::Config(format!(
                "the {what} would listen on {addr}, off loopback, where its port has no \
                 authentication or TLS: bind it to 127.0.0.1, or pass --insecure-no-auth on \
                 a network nothing else reaches"
            )));
        }
        tracing::warn!(
            %addr,
            "--insecure-no-auth: the {what} listens off loopback; anyone who reaches it can \
             run queries over the store"
        );
        Ok(())
    }
}

/// Opens `spec`, naming it in the error.
fn open_store(spec: &str) -> Result<schemas::Store> {
    schemas::Store::open(spec)
        .map_err(|error| Error::Config(format!("cannot open the store {spec}: {error}")))
}

/// `apiscope scheduler`: runs until Ctrl-C or SIGTERM.
pub(crate) async fn scheduler(args: SchedulerArgs) -> Result<()> {
    args.exposure.check("scheduler", &args.bind)?;
    // The scheduler decodes plans, which name the store's files, and cuts them into stages.
    let store = open_store(&args.store)?;
    let limits = QueryLimits::default();
    let config = SchedulerConfig {
        bind_host: args.bind.ip().to_string(),
        bind_port: args.bind.port(),
        external_host: args.bind.ip().to_string(),
        override_session_builder: Some(Arc::new(move |config| {
            Ok(SessionStateBuilder::new_from_existing(functions(&limits))
                .with_config(config)
                .with_runtime_env(runtime(&store, None)?)
                .build())
        })),
        override_physical_codec: Some(Arc::new(Codec::default())),
        // Executors beat every 5 s: one silent for 15 s is dead, and its tasks go to the
        // others.
        executor_timeout_seconds: 15,
        expire_dead_executor_interval_seconds: 5,
        no_executors_grace_period_seconds: 30,
        ..SchedulerConfig::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|error| Error::Server(format!("cannot start the scheduler: {error}")))?;
    let metrics = crate::metrics::install()?;
    tracing::info!(bind = %args.bind, store = %args.store, "apiscope scheduler ready");
    tokio::select! {
        served = scheduler::serve(args.bind, config, cluster, metrics) => served,
        () = crate::shutdown::signal() => Ok(()),
    }
}

/// `apiscope executor`: runs until Ctrl-C or SIGTERM.
pub(crate) async fn executor(args: ExecutorArgs) -> Result<()> {
    args.exposure.check("executor", &args.bind)?;
    let (scheduler_host, scheduler_port) = query::cluster::scheduler_address(&args.scheduler)
        .map_err(|error| Error::Config(format!("--scheduler {error}")))?;
    let store = open_store(&args.store)?;
    let grpc_port = args.bind.port().checked_add(1).ok_or_else(|| {
        Error::Config(format!(
            "--bind {}: the gRPC service needs the next port",
            args.bind
        ))
    })?;
    let metrics_bind = match args.metrics_bind {
        Some(addr) => addr,
        None => {
            let port = grpc_port.checked_add(1).ok_or_else(|| {
                Error::Config(format!(
                    "--bind {}: /metrics needs the port after the gRPC service's; pass \
                     --metrics-bind",
                    args.bind
                ))
            })?;
            SocketAddr::new(args.bind.ip(), port)
        }
    };
    args.exposure.check("executor's /metrics", &metrics_bind)?;
    let metrics = crate::metrics::install()?;
    let tcp = tokio::net::TcpListener::bind(metrics_bind)
        .await
        .map_err(|error| Error::Server(format!("cannot listen on {metrics_bind}: {error}")))?;
    // Bounded as the daemon's listeners are: connections, idle time, slow headers.
    let listener = crate::listen::Listener::new(
        tcp,
        crate::listen::EXECUTOR_METRICS,
        args.metrics_max_connections,
        Some(std::time::Duration::from_secs(60)),
        false,
    );
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(crate::metrics::rendered(&metrics))),
    );
    tokio::spawn(crate::listen::serve_http(
        listener,
        None,
        app,
        std::time::Duration::from_secs(10),
        tokio_util::sync::CancellationToken::new(),
    ));
    let work_dir = args.work_dir.as_ref().map(|dir| dir.display().to_string());
    let spill_dir = work_dir.clone();
    let runtime_store = store.clone();
    let registry = BallistaFunctionRegistry::from(&functions(&QueryLimits::default()));
    let config = ExecutorProcessConfig {
        bind_host: args.bind.ip().to_string(),
        external_host: Some(
            args.advertise
                .clone()
                .unwrap_or_else(|| args.bind.ip().to_string()),
        ),
        port: args.bind.port(),
        grpc_port,
        scheduler_host: scheduler_host.clone(),
        scheduler_port,
        vcores: args.concurrency.unwrap_or(0),
        work_dir,
        memory_pool_size: args.memory,
        override_function_registry: Some(Arc::new(registry)),
        override_physical_codec: Some(Arc::new(Codec::default())),
        override_execution_engine: Some(Arc::new(stop::Stopping::new(format!(
            "http://{}:{}",
            scheduler_host, scheduler_port
        )))),
        override_runtime_producer: Some(Arc::new(move |_| {
            runtime(&runtime_store, spill_dir.as_deref())
        })),
        // A dead executor is noticed within a few heartbeats.
        executor_heartbeat_interval_seconds: 5,
        // Executors may start before the scheduler, as a supervisor starts them.
        scheduler_connect_timeout_seconds: 60,
        ..ExecutorProcessConfig::default()
    };
    tracing::info!(
        bind = %args.bind,
        grpc_port,
        metrics = %metrics_bind,
        scheduler = %args.scheduler,
        store = %args.store,
        "apiscope executor starting"
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|error| Error::Server(format!("the executor stopped: {error}")))
}

/// A runtime that reads `store`, and spills to `spill_dir` when given.
fn runtime(
    store: &schemas::Store,
    spill_dir: Option<&str>,
) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(dir) = spill_dir {
        runtime = runtime.with_temp_file_path(dir);
    }
    let runtime = runtime.build_arc()?;
    runtime.register_object_store(store.base_url(), store.objects());
    Ok(runtime)
}
