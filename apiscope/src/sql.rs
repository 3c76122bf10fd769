//! `apiscope sql`: one query, printed as a table.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use clap::Args;

use crate::{Error, Result};

/// Arguments of `apiscope sql`.
#[derive(Debug, Args)]
pub(crate) struct SqlArgs {
    /// The query.
    sql: String,
    #[command(flatten)]
    from: ReadFrom,
}

/// Where a client command reads: a running daemon, or a store.
#[derive(Debug, Args)]
pub(crate) struct ReadFrom {
    /// Base URL of a running daemon's query API.
    #[arg(long, env = "APISCOPE_URL", default_value = "http://127.0.0.1:7171")]
    url: String,
    /// Read this data directory directly instead of a running daemon (sees flushed rows only).
    #[arg(long, conflicts_with = "store")]
    data_dir: Option<PathBuf>,
    /// Read this store (a directory, or `s3://bucket/prefix`) directly instead of a running
    /// daemon (sees flushed rows only).
    #[arg(long)]
    store: Option<String>,
    /// Run the query on this cluster's scheduler, `df://HOST:PORT`, over the store given
    /// with --store (committed files only).
    #[arg(long, env = "APISCOPE_CLUSTER", requires = "store")]
    cluster: Option<String>,
    /// Tasks a stage of a query is cut into on the cluster [default: 8].
    #[arg(long, env = "APISCOPE_CLUSTER_PARTITIONS", requires = "cluster")]
    cluster_partitions: Option<usize>,
    #[command(flatten)]
    client: crate::client::ClientArgs,
}

/// An open [`ReadFrom`].
pub(crate) enum Reader {
    /// A daemon's base URL, and the client that reaches it.
    Daemon(reqwest::Client, String),
    /// A query engine over a data directory's flushed files.
    Store(query::Engine),
}

impl ReadFrom {
    /// Opens the data directory, or sets up the client (requests time out after `timeout`).
    pub(crate) async fn open(&self, timeout: std::time::Duration) -> Result<Reader> {
        let store = match (&self.data_dir, &self.store) {
            (Some(dir), _) => Some(local_store(dir)?),
            (None, Some(spec)) => Some(
                schemas::Store::open(spec)
                    .map_err(|error| Error::Client(format!("cannot open the store: {error}")))?,
            ),
            (None, None) => None,
        };
        let cluster = crate::config::cluster(self.cluster.as_deref(), self.cluster_partitions)?;
        Ok(match store {
            Some(store) => Reader::Store(store_engine(store, cluster).await?),
            None => Reader::Daemon(
                self.client.http(timeout)?,
                self.url.trim_end_matches('/').to_owned(),
            ),
        })
    }
}

impl Reader {
    /// The rows of `sql`.
    pub(crate) async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        match self {
            Reader::Store(engine) => Ok(engine.query(sql).await?.batches),
            Reader::Daemon(client, url) => remote(client, url, sql).await,
        }
    }
}

pub(crate) async fn run(args: SqlArgs) -> Result<()> {
    let reader = args.from.open(std::time::Duration::from_secs(300)).await?;
    let batches = reader.query(&args.sql).await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let table = arrow::util::pretty::pretty_format_batches(&batches)
        .map_err(|error| Error::Client(format!("cannot print the result: {error}")))?;
    crate::print(&format!(
        "{table}\n({rows} row{})\n",
        if rows == 1 { "" } else { "s" }
    ))
}

/// The data directory `dir`, which must exist, as a store.
fn local_store(dir: &std::path::Path) -> Result<schemas::Store> {
    let dir = dir.canonicalize().map_err(|error| {
        Error::Client(format!(
            "cannot open data directory {}: {error}",
            dir.display()
        ))
    })?;
    Ok(schemas::Store::local(&dir))
}

/// A query engine over the flushed files of `store`, with default limits; its queries run
/// on `cluster` when there is one.
async fn store_engine(
    store: schemas::Store,
    cluster: Option<query::Cluster>,
) -> Result<query::Engine> {
    let settings = query::QuestionSettings::default();
    let limits = query::QueryLimits::default();
    Ok(match cluster {
        Some(cluster) => query::Engine::on_cluster(store, settings, limits, cluster).await?,
        None => query::Engine::new(Arc::new(query::Files(store)), settings, limits).await?,
    })
}

/// Runs `sql` on the daemon at `url`; its rows.
pub(crate) async fn remote(
    client: &reqwest::Client,
    url: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>> {
    let endpoint = format!("{}/api/v1/query", url.trim_end_matches('/'));
    let response = client
        .post(&endpoint)
        .header(reqwest::header::ACCEPT, query::http::ARROW_STREAM)
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await
        .map_err(crate::client::unreachable(url))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|error| Error::Client(format!("reading the answer from {url}: {error}")))?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(Error::Client(format!(
            "{detail} (HTTP {})",
            status.as_u16()
        )));
    }
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
        .map_err(|error| Error::Client(format!("unreadable answer: {error}")))?;
    let mut batches = Vec::new();
    for batch in reader {
        batches.push(batch.map_err(|error| Error::Client(format!("unreadable answer: {error}")))?);
    }
    Ok(batches)
}
