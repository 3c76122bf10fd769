//! `apiscope serve` settings: defaults, then the TOML file, then `APISCOPE_*` environment
//! variables, then flags.
//!
//! Each option is declared once, as a field of [`ServeArgs`]: its flag, its variable and its
//! key in the file (the flag's name with underscores) all come from that declaration, and
//! the same parser reads all three (so sizes take units everywhere). The file's values are
//! handed to clap as the flags' defaults ([`parse`]); its tables (`[[auth.tokens]]`) are
//! read apart.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use schemas::routes::OpenApi;
use serde::Deserialize;

use crate::access::{AuthConfig, RateLimits};
use crate::listen::{self, Port};
use crate::tls::TlsFiles;
use crate::{Error, Result};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `APISCOPE_LOG_FORMAT`, for the commands other than `serve`; pretty when unset or
    /// unknown.
    pub(crate) fn from_env() -> Self {
        match std::env::var("APISCOPE_LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            _ => LogFormat::Pretty,
        }
    }
}

/// Flags of `apiscope serve`; each is also an `APISCOPE_*` variable and a key of the
/// TOML file given by `--config`.
#[derive(Debug, Default, Args)]
pub(crate) struct ServeArgs {
    /// Check the configuration (file, environment, flags, OpenAPI documents), print what
    /// would be in force, and exit.
    #[arg(long)]
    pub(crate) check_config: bool,
    /// Log lines as `pretty` text or `json` objects [default: pretty].
    #[arg(long, env = "APISCOPE_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// TOML configuration file (see config.example.toml).
    #[arg(long, env = "APISCOPE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Where the write-ahead log is kept, and the tables too unless `--store` says otherwise
    /// [default: ./data].
    #[arg(long, env = "APISCOPE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the tables are kept: a directory or `s3://bucket/prefix` (`gs://`, `az://`)
    /// [default: the data directory].
    #[arg(long, env = "APISCOPE_STORE")]
    store: Option<String>,
    /// This daemon's id among the writers of the store (letters, digits, `.`, `_`, `-`)
    /// [default: made on first start and kept in `<data_dir>/node-id`].
    #[arg(long, env = "APISCOPE_NODE_ID")]
    node_id: Option<String>,
    /// OTLP/gRPC listen address [default: 127.0.0.1:4317].
    #[arg(long, env = "APISCOPE_OTLP_GRPC_ADDR")]
    otlp_grpc_addr: Option<SocketAddr>,
    /// OTLP/HTTP listen address [default: 127.0.0.1:4318].
    #[arg(long, env = "APISCOPE_OTLP_HTTP_ADDR")]
    otlp_http_addr: Option<SocketAddr>,
    /// Query API listen address (`POST /api/v1/query`) [default: 127.0.0.1:7171].
    #[arg(long, env = "APISCOPE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// PostgreSQL wire protocol listen address [default: 127.0.0.1:7432].
    #[arg(long, env = "APISCOPE_PG_ADDR")]
    pg_addr: Option<SocketAddr>,
    /// Password PostgreSQL clients must give (any user name; SCRAM-SHA-256, or in clear
    /// text beside tokens); without tokens, required when --pg-addr is not a loopback
    /// address [default: none].
    #[arg(long, env = "APISCOPE_PG_PASSWORD", hide_env_values = true)]
    pg_password: Option<String>,
    /// Allow listening off loopback with no token configured (`[[auth.tokens]]` in the
    /// config file): anyone who reaches the ports may send data and query it.
    #[arg(long, env = "APISCOPE_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// Ingest requests per second one caller (token, or client address without tokens) may
    /// send; over it, 429 / RESOURCE_EXHAUSTED with a retry delay [default: no limit].
    #[arg(long, env = "APISCOPE_INGEST_RATE_LIMIT")]
    ingest_rate_limit: Option<u32>,
    /// Queries per second one caller may run (HTTP and PostgreSQL) [default: no limit].
    #[arg(long, env = "APISCOPE_QUERY_RATE_LIMIT")]
    query_rate_limit: Option<u32>,
    /// PEM certificate chain: with --tls-key, every listener speaks TLS only [default: none].
    #[arg(long, env = "APISCOPE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [default: none].
    #[arg(long, env = "APISCOPE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates: gRPC clients must present a certificate signed by one
    /// [default: none, no client certificates].
    #[arg(long, env = "APISCOPE_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// An OpenAPI 3 document (YAML or JSON) whose path templates name raw paths, and which
    /// `contract_drift(...)` checks traffic against; repeat for several [default: none].
    #[arg(long = "openapi", env = "APISCOPE_OPENAPI", value_delimiter = ',')]
    openapi: Option<Vec<PathBuf>>,
    /// An API version (`v1`) that `version_usage(...)` marks deprecated; repeat or separate
    /// with commas [default: none].
    #[arg(
        long = "deprecated-version",
        env = "APISCOPE_DEPRECATED_VERSIONS",
        value_delimiter = ','
    )]
    deprecated_versions: Option<Vec<String>>,
    /// How long a query may run [default: 30s].
    #[arg(long, env = "APISCOPE_QUERY_TIMEOUT", value_parser = parse_duration)]
    query_timeout: Option<Duration>,
    /// Memory one query may reserve, in bytes or with a unit (`1GiB`) [default: 1073741824].
    #[arg(long, env = "APISCOPE_QUERY_MEMORY_LIMIT", value_parser = parse_bytes)]
    query_memory_limit: Option<usize>,
    /// Rows a query result may have over HTTP and the CLI; more is refused [default: 100000].
    #[arg(long, env = "APISCOPE_MAX_RESULT_ROWS")]
    max_result_rows: Option<usize>,
    /// Spans of one trace the Jaeger and Tempo APIs return; a longer trace is cut to its
    /// first spans, with a warning on its root span [default: 20000].
    #[arg(long, env = "APISCOPE_MAX_TRACE_SPANS")]
    max_trace_spans: Option<usize>,
    /// Queries running at once; one more gets 503 with Retry-After [default: 8].
    #[arg(long, env = "APISCOPE_MAX_CONCURRENT_QUERIES")]
    max_concurrent_queries: Option<usize>,
    /// Attribute keys naming the client, first present wins [default: client.id,app.client_id,http.request.header.x-client-id,enduser.id,user.id].
    #[arg(long, env = "APISCOPE_CLIENT_ID_KEYS", value_delimiter = ',')]
    client_id_keys: Option<Vec<String>>,
    /// How often buffered rows are written to Parquet [default: 10s].
    #[arg(long, env = "APISCOPE_FLUSH_INTERVAL", value_parser = parse_duration)]
    flush_interval: Option<Duration>,
    /// Buffered rows that start a flush early [default: 200000].
    #[arg(long, env = "APISCOPE_FLUSH_ROWS")]
    flush_rows: Option<usize>,
    /// Buffered rows past which ingest is refused (503 / UNAVAILABLE) until a flush [default: 500000].
    #[arg(long, env = "APISCOPE_MAX_BUFFER_ROWS")]
    max_buffer_rows: Option<usize>,
    /// Largest request body, counted after decompression [default: 20971520].
    #[arg(long, env = "APISCOPE_MAX_BODY_BYTES", value_parser = parse_bytes)]
    max_body_bytes: Option<usize>,
    /// When an acknowledgement means the data is on disk: fsync, batch or none [default: fsync].
    #[arg(long, env = "APISCOPE_DURABILITY")]
    durability: Option<String>,
    /// With `--durability batch`: how often the WAL is synced [default: 200ms].
    #[arg(long, env = "APISCOPE_WAL_SYNC_INTERVAL", value_parser = parse_duration)]
    wal_sync_interval: Option<Duration>,
    /// Arrow memory of buffered rows past which ingest is refused [default: 536870912].
    #[arg(long, env = "APISCOPE_MAX_BUFFER_BYTES", value_parser = parse_bytes)]
    max_buffer_bytes: Option<usize>,
    /// WAL bytes on disk past which ingest is refused until a flush [default: 4294967296].
    #[arg(long, env = "APISCOPE_MAX_WAL_BYTES", value_parser = parse_bytes)]
    max_wal_bytes: Option<usize>,
    /// Free bytes on the data directory's disk under which ingest is refused, so that flushes
    /// still have room; 0 turns the check off [default: 268435456].
    #[arg(long, env = "APISCOPE_MIN_FREE_BYTES", value_parser = parse_bytes)]
    min_free_bytes: Option<usize>,
    /// Hours older than this are dropped [default: 7d].
    #[arg(long, env = "APISCOPE_RETENTION", value_parser = parse_duration)]
    retention: Option<Duration>,
    /// How often hours are compacted (the open hour in tiers, closed hours to the end) and
    /// retention applied [default: 10s].
    #[arg(long, env = "APISCOPE_COMPACTION_INTERVAL", value_parser = parse_duration)]
    compaction_interval: Option<Duration>,
    /// How long files replaced by compaction stay for queries already reading them [default: 5m].
    #[arg(long, env = "APISCOPE_COMPACTION_GRACE", value_parser = parse_duration)]
    compaction_grace: Option<Duration>,
    /// How often new files get their per-minute rollups; 0s writes none [default: 5s].
    #[arg(long, env = "APISCOPE_ROLLUP_INTERVAL", value_parser = parse_duration)]
    rollup_interval: Option<Duration>,
    /// Connections the OTLP/gRPC listener holds at once; one more gets UNAVAILABLE [default: 1024].
    #[arg(long, env = "APISCOPE_OTLP_GRPC_MAX_CONNECTIONS")]
    otlp_grpc_max_connections: Option<usize>,
    /// Connections the OTLP/HTTP listener holds at once; one more gets 503 [default: 1024].
    #[arg(long, env = "APISCOPE_OTLP_HTTP_MAX_CONNECTIONS")]
    otlp_http_max_connections: Option<usize>,
    /// Connections the query API holds at once; one more gets 503 [default: 256].
    #[arg(long, env = "APISCOPE_HTTP_MAX_CONNECTIONS")]
    http_max_connections: Option<usize>,
    /// Connections the PostgreSQL listener holds at once; one more gets SQLSTATE 53300 [default: 100].
    #[arg(long, env = "APISCOPE_PG_MAX_CONNECTIONS")]
    pg_max_connections: Option<usize>,
    /// An HTTP or gRPC connection with no request in progress and no bytes moving for this
    /// long is closed [default: 60s].
    #[arg(long, env = "APISCOPE_IDLE_TIMEOUT", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// How long an HTTP client may take to send a request's headers, counted from the end of
    /// the previous request on a kept-alive connection [default: 10s].
    #[arg(long, env = "APISCOPE_HTTP_HEADER_TIMEOUT", value_parser = parse_duration)]
    http_header_timeout: Option<Duration>,
    /// How long a PostgreSQL client may take from connecting to logged in [default: 10s].
    #[arg(long, env = "APISCOPE_PG_STARTUP_TIMEOUT", value_parser = parse_duration)]
    pg_startup_timeout: Option<Duration>,
    /// A PostgreSQL session idle between statements for this long is closed; 0s never
    /// [default: 0s].
    #[arg(long, env = "APISCOPE_PG_IDLE_SESSION_TIMEOUT", value_parser = parse_duration)]
    pg_idle_session_timeout: Option<Duration>,
    /// Largest value one SQL function may build (`repeat`, `lpad`, `||`, `array_repeat`,
    /// ...), in bytes or with a unit (`64MiB`); larger is refused before it is built
    /// [default: 64MiB].
    #[arg(long, env = "APISCOPE_MAX_VALUE_BYTES", value_parser = parse_bytes)]
    max_value_bytes: Option<usize>,
    /// Resident memory of the whole daemon past which the query holding the most memory is
    /// cancelled (ingest never is); bytes or with a unit; 0 for three quarters of the
    /// machine's (or the control group's) memory [default: 0].
    #[arg(long, env = "APISCOPE_MEMORY_LIMIT", value_parser = parse_bytes)]
    memory_limit: Option<usize>,
    /// Send SQL (HTTP, PostgreSQL) to this cluster's scheduler, `df://HOST:PORT`, which
    /// reads the store's committed files; rows still in a collector's buffer are not seen
    /// there [default: none, queries run here].
    #[arg(long, env = "APISCOPE_CLUSTER")]
    cluster: Option<String>,
    /// Tasks a stage of a query is cut into on the cluster [default: 8].
    #[arg(long, env = "APISCOPE_CLUSTER_PARTITIONS")]
    cluster_partitions: Option<usize>,
}

/// Settings in force for `apiscope serve`.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) otlp_grpc_addr: SocketAddr,
    pub(crate) otlp_http_addr: SocketAddr,
    pub(crate) http_addr: SocketAddr,
    pub(crate) pg_addr: SocketAddr,
    /// The password PostgreSQL clients give without tokens (never printed).
    pub(crate) pg_password: Option<Secret>,
    /// `[[auth.tokens]]`, checked and made usable by `serve::Guards`.
    pub(crate) auth: Arc<AuthConfig>,
    pub(crate) rate_limits: RateLimits,
    pub(crate) tls: Option<TlsFiles>,
    /// Listeners off loopback that anyone may use (`--insecure-no-auth`), for the warning.
    pub(crate) exposed_without_auth: Vec<SocketAddr>,
    pub(crate) questions: query::QuestionSettings,
    pub(crate) log_format: LogFormat,
    pub(crate) query_limits: query::QueryLimits,
    pub(crate) collector: collector::Config,
    /// How often new files get their rollups; zero writes none.
    pub(crate) rollup_interval: Duration,
    pub(crate) listen: Listen,
    /// The daemon's memory ceiling in bytes; `None`: three quarters of the machine's memory.
    pub(crate) memory_limit: Option<u64>,
    /// The cluster SQL is sent to, if any.
    pub(crate) cluster: Option<query::Cluster>,
}

/// How many connections each listener holds, and how long a silent one may stay.
#[derive(Debug, Clone)]
pub(crate) struct Listen {
    pub(crate) otlp_grpc_max_connections: usize,
    pub(crate) otlp_http_max_connections: usize,
    pub(crate) http_max_connections: usize,
    pub(crate) pg_max_connections: usize,
    /// Zero: connections may stay idle.
    pub(crate) idle_timeout: Duration,
    pub(crate) http_header_timeout: Duration,
    pub(crate) pg: query::pg::PgTimeouts,
}

impl Listen {
    /// The connection limit of `port`'s listener.
    pub(crate) fn max_connections(&self, port: Port) -> usize {
        // The four ports are the four constants of `listen`, told apart by their key.
        match port.limit_key {
            "otlp_grpc_max_connections" => self.otlp_grpc_max_connections,
            "otlp_http_max_connections" => self.otlp_http_max_connections,
            "http_max_connections" => self.http_max_connections,
            _ => self.pg_max_connections,
        }
    }

    /// Every listener's limit, with the listener.
    fn limits_mut(&mut self) -> [(Port, &mut usize); 4] {
        [
            (listen::OTLP_GRPC, &mut self.otlp_grpc_max_connections),
            (listen::OTLP_HTTP, &mut self.otlp_http_max_connections),
            (listen::QUERY_HTTP, &mut self.http_max_connections),
            (listen::POSTGRES, &mut self.pg_max_connections),
        ]
    }

    /// The limits in force when the process may have at most `available` connections open:
    /// each configured limit scaled down by the same factor when together they exceed it.
    pub(crate) fn fit(&mut self, available: usize) -> bool {
        let limits = self.limits_mut();
        let total: usize = limits.iter().map(|(_, limit)| **limit).sum();
        if total <= available {
            return false;
        }
        for (_, limit) in limits {
            *limit = (*limit * available / total).max(1);
        }
        true
    }
}

impl ServeArgs {
    /// The settings in force: flags over environment over the config file (all three merged
    /// by clap, the file's values as its defaults: see [`parse`]) over built-in defaults.
    pub(crate) fn resolve(self) -> Result<Settings> {
        let tables = match &self.config {
            Some(path) => FileTables::read(path)?,
            None => FileTables::default(),
        };
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
        let mut collector = collector::Config::new(data_dir);
        if let Some(spec) = &self.store {
            collector.store = schemas::Store::open(spec)
                .map_err(|error| Error::Config(format!("store: {error}")))?;
        }
        if let Some(node) = &self.node_id {
            collector::check_node_id(node).map_err(Error::Config)?;
            collector.node_id = Some(node.clone());
        }
        let openapi_files = self.openapi.unwrap_or_default();
        let routes = Arc::new(OpenApi::load(&openapi_files).map_err(Error::Config)?);
        collector.spans.routes = routes.clone();
        if let Some(keys) = self.client_id_keys {
            collector.spans.client_id_keys = keys;
        }
        if let Some(interval) = self.flush_interval {
            collector.flush_interval = interval;
        }
        if let Some(rows) = self.flush_rows {
            collector.flush_rows = rows;
        }
        if let Some(rows) = self.max_buffer_rows {
            collector.max_buffer_rows = rows;
        }
        if let Some(bytes) = self.max_body_bytes {
            collector.max_body_bytes = bytes;
        }
        if let Some(bytes) = self.max_buffer_bytes {
            collector.max_buffer_bytes = bytes;
        }
        if let Some(bytes) = self.max_wal_bytes {
            collector.max_wal_bytes = bytes as u64;
        }
        if let Some(bytes) = self.min_free_bytes {
            collector.min_free_bytes = bytes as u64;
        }
        if let Some(retention) = self.retention {
            collector.retention = retention;
        }
        if let Some(interval) = self.compaction_interval {
            collector.compaction_interval = interval;
        }
        if let Some(grace) = self.compaction_grace {
            collector.compaction_grace = grace;
        }
        if collector.compaction_interval.is_zero() {
            return Err(Error::Config(
                "compaction_interval must be longer than 0s".into(),
            ));
        }
        let sync_interval = self.wal_sync_interval.unwrap_or(Duration::from_millis(200));
        let mode = self.durability.unwrap_or_else(|| "fsync".into());
        collector.durability =
            collector::Durability::parse(&mode, sync_interval).map_err(Error::Config)?;
        if collector.flush_interval.is_zero() {
            return Err(Error::Config(
                "flush_interval must be longer than 0s".into(),
            ));
        }
        let defaults = query::QueryLimits::default();
        let query_limits = query::QueryLimits {
            memory_per_query: self.query_memory_limit.unwrap_or(defaults.memory_per_query),
            timeout: self.query_timeout.unwrap_or(defaults.timeout),
            max_rows: self.max_result_rows.unwrap_or(defaults.max_rows),
            max_concurrent: self
                .max_concurrent_queries
                .unwrap_or(defaults.max_concurrent),
            max_value_bytes: self.max_value_bytes.unwrap_or(defaults.max_value_bytes),
            max_trace_spans: self.max_trace_spans.unwrap_or(defaults.max_trace_spans),
        };
        if query_limits.timeout.is_zero()
            || query_limits.max_concurrent == 0
            || query_limits.max_trace_spans == 0
        {
            return Err(Error::Config(
                "query_timeout, max_concurrent_queries and max_trace_spans must be above 0".into(),
            ));
        }
        let pg_defaults = query::pg::PgTimeouts::default();
        let mut listen = Listen {
            otlp_grpc_max_connections: self.otlp_grpc_max_connections.unwrap_or(1024),
            otlp_http_max_connections: self.otlp_http_max_connections.unwrap_or(1024),
            http_max_connections: self.http_max_connections.unwrap_or(256),
            pg_max_connections: self.pg_max_connections.unwrap_or(100),
            idle_timeout: self.idle_timeout.unwrap_or(Duration::from_secs(60)),
            http_header_timeout: self.http_header_timeout.unwrap_or(Duration::from_secs(10)),
            pg: query::pg::PgTimeouts {
                startup: self.pg_startup_timeout.unwrap_or(pg_defaults.startup),
                idle_session: self
                    .pg_idle_session_timeout
                    .filter(|timeout| !timeout.is_zero()),
            },
        };
        if let Some((port, _)) = listen.limits_mut().iter().find(|(_, limit)| **limit == 0) {
            return Err(Error::Config(format!("{} must be above 0", port.limit_key)));
        }
        if listen.http_header_timeout.is_zero() || listen.pg.startup.is_zero() {
            return Err(Error::Config(
                "http_header_timeout and pg_startup_timeout must be longer than 0s".into(),
            ));
        }
        let rate = |limit: Option<u32>| limit.and_then(NonZeroU32::new);
        let limits = RateLimits {
            ingest: rate(self.ingest_rate_limit),
            query: rate(self.query_rate_limit),
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca,
            }),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "tls_cert and tls_key go together: give both or neither".into(),
                ));
            }
        };
        let otlp_grpc_addr = pick(self.otlp_grpc_addr, "127.0.0.1:4317");
        let otlp_http_addr = pick(self.otlp_http_addr, "127.0.0.1:4318");
        let http_addr = pick(self.http_addr, "127.0.0.1:7171");
        let pg_addr = pick(self.pg_addr, "127.0.0.1:7432");
        let pg_password = self.pg_password;
        if pg_password.as_deref() == Some("") {
            return Err(Error::Config("pg_password must not be empty".into()));
        }

        // Off loopback, every listener needs credentials: tokens, or for the PostgreSQL
        // listener its password.
        let mut exposed_without_auth = Vec::new();
        if tables.auth.tokens.is_empty() {
            let open_pg = pg_password.is_none().then_some(pg_addr);
            for addr in [
                Some(otlp_grpc_addr),
                Some(otlp_http_addr),
                Some(http_addr),
                open_pg,
            ]
            .into_iter()
            .flatten()
            {
                if !addr.ip().is_loopback() {
                    exposed_without_auth.push(addr);
                }
            }
        }
        let insecure_no_auth = self.insecure_no_auth;
        if let Some(addr) = exposed_without_auth.first().filter(|_| !insecure_no_auth) {
            return Err(Error::Config(format!(
                "{addr} is not a loopback address and no token is configured: add \
                 [[auth.tokens]] to the config file (see config.example.toml), or pass \
                 --insecure-no-auth to let anyone who reaches the port send and query data"
            )));
        }
        let mut declared = tables.objectives;
        for (source, keys) in routes.objectives() {
            let objective = serde_json::from_value(keys.clone()).map_err(|error| {
                Error::Config(format!("{source}: `x-apiscope-objectives`: {error}"))
            })?;
            declared.push(objective);
        }
        let objectives = objectives(declared, collector.retention)?;
        Ok(Settings {
            otlp_grpc_addr,
            otlp_http_addr,
            http_addr,
            pg_addr,
            pg_password: pg_password.map(Secret),
            auth: Arc::new(tables.auth),
            rate_limits: limits,
            tls,
            exposed_without_auth,
            questions: query::QuestionSettings {
                deprecated_versions: self.deprecated_versions.unwrap_or_default(),
                openapi: routes,
                objectives: Arc::new(objectives),
            },
            log_format: self.log_format.unwrap_or_default(),
            query_limits,
            collector,
            rollup_interval: self.rollup_interval.unwrap_or(Duration::from_secs(5)),
            listen,
            memory_limit: self
                .memory_limit
                .filter(|bytes| *bytes > 0)
                .map(|bytes| bytes as u64),
            cluster: cluster(self.cluster.as_deref(), self.cluster_partitions)?,
        })
    }
}

/// The cluster `url` names, with stages cut into `partitions` tasks.
pub(crate) fn cluster(
    url: Option<&str>,
    partitions: Option<usize>,
) -> Result<Option<query::Cluster>> {
    let partitions = partitions.unwrap_or(8);
    if partitions == 0 {
        return Err(Error::Config("cluster_partitions must be above 0".into()));
    }
    url.map(|url| {
        query::Cluster::new(url, partitions)
            .map_err(|error| Error::Config(format!("--cluster {error}")))
    })
    .transpose()
}

/// A secret setting: its `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl Settings {
    /// What `--check-config` prints: the settings in force, secrets left out, with what
    /// the guards they make say of themselves (`serve::Guards::summary`).
    pub(crate) fn summary(&self, guards: Vec<String>) -> String {
        let c = &self.collector;
        let mut lines = vec![
            "configuration OK".to_owned(),
            format!("data_dir = {}", c.data_dir.display()),
            format!("store = {}", c.store.name()),
            format!(
                "node_id = {}",
                c.node_id
                    .as_deref()
                    .unwrap_or("(kept in the data directory)")
            ),
            format!("otlp_grpc_addr = {}", self.otlp_grpc_addr),
            format!("otlp_http_addr = {}", self.otlp_http_addr),
            format!("http_addr = {}", self.http_addr),
            format!("pg_addr = {}", self.pg_addr),
            format!(
                "tls = {}",
                match &self.tls {
                    Some(tls) => format!("on ({tls:?})"),
                    None => "off".to_owned(),
                }
            ),
            format!(
                "insecure_no_auth = {}",
                if self.exposed_without_auth.is_empty() {
                    "no listener is open off loopback".to_owned()
                } else {
                    format!("open to anyone: {:?}", self.exposed_without_auth)
                }
            ),
            format!("durability = {:?}", c.durability),
            format!("flush_interval = {:?}", c.flush_interval),
            format!("retention = {:?}", c.retention),
            format!("rollup_interval = {:?}", self.rollup_interval),
            format!(
                "cluster = {}",
                match &self.cluster {
                    Some(cluster) => cluster.to_string(),
                    None => "none: queries run here".to_owned(),
                }
            ),
            format!(
                "openapi operations = {}",
                self.questions.openapi.operations().len()
            ),
            format!(
                "deprecated_versions = {:?}",
                self.questions.deprecated_versions
            ),
            format!(
                "objectives = {:?}",
                self.questions
                    .objectives
                    .iter()
                    .map(query::Objective::name)
                    .collect::<Vec<_>>()
            ),
            format!("log_format = {:?}", self.log_format),
            format!("query limits = {:?}", self.query_limits),
            format!("listeners = {:?}", self.listen),
            format!(
                "memory_limit = {}",
                match self.memory_limit {
                    Some(bytes) => format!("{bytes} bytes"),
                    None => "three quarters of the machine's memory".to_owned(),
                }
            ),
        ];
        lines.splice(6..6, guards);
        lines.push(String::new());
        lines.join("\n")
    }
}

fn pick(given: Option<SocketAddr>, default: &str) -> SocketAddr {
    given.unwrap_or_else(|| {
        default
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
    })
}

/// The config file's tables, which are no flags: `[[auth.tokens]]`, `[[objectives]]`.
#[derive(Debug, Default, Deserialize)]
struct FileTables {
    #[serde(default)]
    auth: AuthConfig,
    #[serde(default)]
    objectives: Vec<ObjectiveConfig>,
}

/// One `[[objectives]]` entry (or one of an OpenAPI operation's `x-apiscope-objectives`),
/// checked by [`query::Objective::new`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectiveConfig {
    name: String,
    service: String,
    endpoint: Option<String>,
    kind: String,
    threshold_ms: Option<f64>,
    target: f64,
    window: Option<String>,
}

/// An objective's window when it gives none.
const OBJECTIVE_WINDOW: &str = "28d";

/// The objectives of the config file, each checked; one that cannot be answered (or whose
/// window retention does not keep) stops the start by name.
fn objectives(
    declared: Vec<ObjectiveConfig>,
    retention: Duration,
) -> Result<Vec<query::Objective>> {
    let mut checked = Vec::with_capacity(declared.len());
    for objective in declared {
        let name = objective.name.clone();
        let text = objective.window.as_deref().unwrap_or(OBJECTIVE_WINDOW);
        let window = parse_duration(text)
            .map_err(|error| Error::Config(format!("objective {name:?}: `window`: {error}")))?;
        if window > retention {
            return Err(Error::Config(format!(
                "objective {name:?}: its window ({text}) is longer than the data is kept \
                 (retention {}): raise --retention or shorten the window",
                humantime::format_duration(retention)
            )));
        }
        let made = query::Objective::new(
            &objective.name,
            &objective.service,
            objective.endpoint.as_deref(),
            &objective.kind,
            objective.threshold_ms,
            objective.target,
            window,
        )
        .map_err(Error::Config)?;
        checked.push(made);
    }
    query::check_objectives(&checked).map_err(Error::Config)?;
    Ok(checked)
}

impl FileTables {
    fn read(path: &Path) -> Result<FileTables> {
        let mut table = read_table(path)?;
        table.retain(|key, _| TABLES.contains(&key));
        table
            .try_into()
            .map_err(|error| Error::Config(format!("config file {}: {error}", path.display())))
    }
}

/// The keys of the config file that are tables rather than flags.
const TABLES: &[&str] = &["auth", "objectives"];

fn read_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        Error::Config(format!(
            "cannot read config file {}: {error}",
            path.display()
        ))
    })?;
    toml::from_str(&text)
        .map_err(|error| Error::Config(format!("config file {}: {error}", path.display())))
}

/// Flags of `serve` that are not settings, and so no keys of the file.
const NOT_KEYS: &[&str] = &["config", "check_config", "help"];

/// The config file's values as the defaults of `serve`'s flags, so that each option is
/// declared once, in [`ServeArgs`], and its key is the flag's name with underscores
/// (`--flush-interval`, `flush_interval`); environment variables and flags still win. Each
/// value is checked by the flag's own parser, and named by its key when it is refused.
fn file_defaults(path: &Path, serve: &clap::Command) -> Result<Vec<(String, Vec<String>)>> {
    let refuse = |what: String| Error::Config(format!("config file {}: {what}", path.display()));
    let mut defaults = Vec::new();
    for (key, value) in read_table(path)? {
        if TABLES.contains(&key.as_str()) {
            continue;
        }
        let arg = serve
            .get_arguments()
            .find(|arg| arg.get_id() == key.as_str() && !NOT_KEYS.contains(&key.as_str()))
            .ok_or_else(|| refuse(format!("unknown key `{key}`")))?;
        let scalar = |value: &toml::Value| match value {
            toml::Value::String(text) => Ok(text.clone()),
            toml::Value::Integer(number) => Ok(number.to_string()),
            toml::Value::Float(number) => Ok(number.to_string()),
            toml::Value::Boolean(flag) => Ok(flag.to_string()),
            other => Err(refuse(format!("`{key}` cannot be {}", other.type_str()))),
        };
        let values = match &value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<Vec<_>>>()?,
            one => vec![scalar(one)?],
        };
        if !matches!(value, toml::Value::Boolean(_)) {
            let long = arg.get_long().unwrap_or(key.as_str());
            let mut argv = vec![serve.get_name().to_owned()];
            argv.extend(values.iter().map(|value| format!("--{long}={value}")));
            if let Err(error) = serve.clone().try_get_matches_from(argv) {
                use clap::error::ErrorKind;
                if matches!(
                    error.kind(),
                    ErrorKind::InvalidValue | ErrorKind::ValueValidation
                ) {
                    let detail = error.to_string();
                    let detail = detail.lines().next().unwrap_or_default();
                    let detail = detail.trim_start_matches("error: ");
                    return Err(refuse(format!("`{key}`: {detail}")));
                }
            }
        }
        defaults.push((key, values));
    }
    Ok(defaults)
}

/// Parses `argv` as `P`. When the `serve` arguments (of the subcommand `serve`, or of `P`
/// itself when `serve` is `None`) name a config file, they are parsed again with the file's
/// values as their defaults.
pub(crate) fn parse<P: clap::Parser>(
    argv: Vec<std::ffi::OsString>,
    serve: Option<&str>,
    config_of: impl Fn(&P) -> Option<PathBuf>,
) -> Result<P, ParseError> {
    let first = P::try_parse_from(&argv)?;
    let Some(path) = config_of(&first) else {
        return Ok(first);
    };
    let path = path.as_path();
    let command = P::command();
    let serve_command = match serve {
        Some(name) => command.find_subcommand(name).cloned().unwrap_or_default(),
        None => command.clone(),
    };
    let defaults = file_defaults(path, &serve_command)?;
    let with_defaults = move |mut command: clap::Command| {
        for (key, values) in defaults {
            command = command.mut_arg(key, |arg| arg.default_values(values));
        }
        command
    };
    let command = match serve {
        Some(name) => command.mut_subcommand(name, with_defaults),
        None => with_defaults(command),
    };
    let matches = command.try_get_matches_from(&argv)?;
    Ok(<P as clap::FromArgMatches>::from_arg_matches(&matches)?)
}

/// Why the command line (with the config file) could not be parsed.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// Clap's own error, printed and exited with as clap does.
    Clap(clap::Error),
    /// A config file that cannot be read or has a bad key or value.
    File(Error),
}

impl From<clap::Error> for ParseError {
    fn from(error: clap::Error) -> Self {
        ParseError::Clap(error)
    }
}

impl From<Error> for ParseError {
    fn from(error: Error) -> Self {
        ParseError::File(error)
    }
}

/// Durations in human form: `500ms`, `10s`, `5m`, `7d`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("{error} (write durations like 10s, 5m, 7d)"))
}

/// Sizes in bytes, or with a unit: `67108864`, `64MiB`, `1GiB`, `500MB`.
pub(crate) fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (write sizes like 67108864, 64MiB, 1GiB)"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1 << 10,
        "mb" => 1000 * 1000,
        "mib" | "m" => 1 << 20,
        "gb" => 1000 * 1000 * 1000,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (write sizes like 67108864, 64MiB, 1GiB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A size in the file: a number of bytes, or text with a unit.
#[cfg(test)]
mod tests {
    use super::*;

    /// `serve`'s arguments alone, as a command line.
    #[derive(Debug, clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    /// `argv` parsed as `serve`'s flags would be, config file included.
    fn parsed(argv: &[&str]) -> Result<ServeArgs, ParseError> {
        let argv = std::iter::once("serve").chain(argv.iter().copied());
        let parsed = parse::<Serve>(argv.map(Into::into).collect(), None, |serve| {
            serve.args.config.clone()
        })?;
        Ok(parsed.args)
    }

    fn text(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apiscope.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/apiscope\"\nhttp_addr = \"127.0.0.1:9000\"\nflush_interval = \"2s\"\n\
             max_buffer_bytes = \"256MiB\"\nquery_memory_limit = 1073741824\n\
             deprecated_versions = [\"v1\", \"v2\"]\n",
        )
        .unwrap();
        let args = parsed(&["--config", text(&path), "--http-addr", "127.0.0.1:9100"]);
        let settings = args.unwrap().resolve().unwrap();
        assert_eq!(settings.http_addr.port(), 9100);
        assert_eq!(settings.collector.data_dir, PathBuf::from("/srv/apiscope"));
        assert_eq!(settings.collector.flush_interval, Duration::from_secs(2));
        assert_eq!(settings.collector.max_buffer_bytes, 256 << 20);
        assert_eq!(settings.query_limits.memory_per_query, 1 << 30);
        assert_eq!(settings.questions.deprecated_versions, ["v1", "v2"]);
        assert_eq!(settings.otlp_grpc_addr.port(), 4317);
        assert_eq!(settings.pg_addr.port(), 7432);
    }

    #[test]
    fn a_listener_off_loopback_needs_credentials_or_insecure_no_auth() {
        let off_loopback = || ServeArgs {
            http_addr: Some("0.0.0.0:7171".parse().unwrap()),
            ..ServeArgs::default()
        };
        let error = off_loopback().resolve().unwrap_err().to_string();
        assert!(error.contains("0.0.0.0:7171"), "{error}");
        assert!(error.contains("[[auth.tokens]]") && error.contains("--insecure-no-auth"));

        let settings = ServeArgs {
            insecure_no_auth: true,
            ..off_loopback()
        }
        .resolve()
        .unwrap();
        assert_eq!(settings.exposed_without_auth.len(), 1);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apiscope.toml");
        std::fs::write(
            &path,
            "[[auth.tokens]]\nname = \"ops\"\ntoken = \"0123456789abcdef-secret\"\nscopes = [\"admin\"]\n",
        )
        .unwrap();
        let settings = parsed(&["--config", text(&path), "--http-addr", "0.0.0.0:7171"])
            .unwrap()
            .resolve()
            .unwrap();
        assert!(settings.exposed_without_auth.is_empty());
        let guards = crate::serve::Guards::new(&settings).unwrap();
        let summary = settings.summary(guards.summary());
        assert!(!summary.contains("0123456789abcdef-secret"), "{summary}");
        assert!(summary.contains("ops (admin)"), "{summary}");

        // The PostgreSQL listener alone may rely on its password.
        let settings = ServeArgs {
            pg_addr: Some("0.0.0.0:7432".parse().unwrap()),
            pg_password: Some("s3cret".into()),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap();
        assert!(settings.exposed_without_auth.is_empty());
        assert!(!format!("{settings:?}").contains("s3cret"), "{settings:?}");
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_bytes("67108864"), Ok(67_108_864));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert!(
            parse_bytes("64 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn connection_limits_fit_under_the_descriptors_left() {
        let mut listen = ServeArgs::default().resolve().unwrap().listen;
        assert!(!listen.fit(10_000), "the defaults fit under 10000");
        assert_eq!(listen.pg_max_connections, 100);
        assert!(listen.fit(704));
        let total = listen.otlp_grpc_max_connections
            + listen.otlp_http_max_connections
            + listen.http_max_connections
            + listen.pg_max_connections;
        assert!(total <= 704, "{listen:?}");
        assert_eq!(listen.pg_max_connections, 29);
        assert_eq!(listen.otlp_grpc_max_connections, 299);
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apiscope.toml");
        std::fs::write(&path, "data_dri = \"x\"\n").unwrap();
        let Err(ParseError::File(error)) = parsed(&["--config", text(&path)]) else {
            panic!("an unknown key was taken");
        };
        assert!(error.to_string().contains("data_dri"), "{error}");
        // A bad value is refused by the flag's own parser, named by its key.
        std::fs::write(&path, "flush_interval = \"soon\"\n").unwrap();
        let Err(ParseError::File(error)) = parsed(&["--config", text(&path)]) else {
            panic!("a bad duration was taken");
        };
        let error = error.to_string();
        assert!(
            error.contains("flush_interval") && error.contains("soon"),
            "{error}"
        );
    }

    #[test]
    fn the_example_file_parses_and_states_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apiscope.toml");
        std::fs::write(&path, include_str!("../../config.example.toml")).unwrap();
        let from_file = parsed(&["--config", text(&path)])
            .unwrap()
            .resolve()
            .unwrap();
        let defaults = ServeArgs::default().resolve().unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    }
}
