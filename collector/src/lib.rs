//! apiscope's ingest path: receivers, decoding to Arrow rows, the buffer and the Parquet writer.
//!
//! ```text
//! OTLP gRPC ─┐
//!            ├─ decode + validate ─ Buffer (queryable) ─ flush ─ Parquet (write, fsync, rename)
//! OTLP HTTP ─┘   (spans, logs)
//! ```
//!
//! A request is answered once its rows are in the buffer, where queries already see them. A
//! flush runs on an interval, when the buffer passes a row count, and at shutdown.

mod buffer;
pub mod convention;
mod error;
mod logs;
pub mod otlp_grpc;
pub mod otlp_http;
mod rows;
pub mod signal;
mod spans;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

pub use buffer::Buffer;
pub use error::{Error, RETRY_AFTER, Result};
pub use logs::decode_logs;
pub use spans::SpanDecoder;
pub use writer::Writer;

/// The rows decoded from one request, and what was refused.
#[derive(Debug)]
pub struct Decoded {
    /// The accepted rows; `None` when nothing was accepted.
    pub batch: Option<RecordBatch>,
    /// The items refused, with why.
    pub rejections: Rejections,
}

/// Items of a request that could not be stored (OTLP partial success).
#[derive(Debug, Default)]
pub struct Rejections {
    /// How many items were refused.
    pub count: i64,
    problems: Vec<String>,
}

impl Rejections {
    const KEPT_PROBLEMS: usize = 3;

    fn reject(&mut self, problem: String) {
        self.count += 1;
        if self.problems.len() < Self::KEPT_PROBLEMS {
            self.problems.push(problem);
        }
    }

    /// A message naming the first problems, for the partial-success response.
    pub fn message(&self) -> String {
        if self.count == 0 {
            return String::new();
        }
        let mut message = format!(
            "{} item(s) rejected: {}",
            self.count,
            self.problems.join("; ")
        );
        if self.count as usize > self.problems.len() {
            message.push_str("; ...");
        }
        message
    }
}

/// Settings of the ingest path.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where Parquet files go.
    pub data_dir: std::path::PathBuf,
    /// How spans become rows.
    pub spans: SpanDecoder,
    /// Largest request body accepted, counted after decompression.
    pub max_body_bytes: usize,
    /// Rows the buffer holds before it refuses new requests.
    pub max_buffer_rows: usize,
    /// A flush starts early once this many rows wait.
    pub flush_rows: usize,
    /// A flush runs at least this often while rows wait.
    pub flush_interval: Duration,
}

impl Config {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: impl Into<std::path::PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            spans: SpanDecoder::default(),
            max_body_bytes: 20 * 1024 * 1024,
            max_buffer_rows: 2_000_000,
            flush_rows: 200_000,
            flush_interval: Duration::from_secs(10),
        }
    }
}

/// What an accepted request produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Rows stored.
    pub accepted: usize,
    /// Items refused (partial success).
    pub rejected: i64,
    /// Why items were refused; empty when none were.
    pub message: String,
}

/// The ingest path shared by every receiver.
#[derive(Debug)]
pub struct Collector {
    config: Config,
    buffer: Arc<Buffer>,
    writer: Writer,
    flush_lock: Mutex<()>,
    flush_wanted: Notify,
    closed: CancellationToken,
}

impl Collector {
    /// A collector writing under `config.data_dir`.
    pub fn new(config: Config) -> Self {
        Self {
            buffer: Arc::new(Buffer::new(config.max_buffer_rows)),
            writer: Writer::new(config.data_dir.clone()),
            config,
            flush_lock: Mutex::new(()),
            flush_wanted: Notify::new(),
            closed: CancellationToken::new(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The buffer of unflushed rows, for the query side.
    pub fn buffer(&self) -> Arc<Buffer> {
        self.buffer.clone()
    }

    /// Stores the valid spans of `request`.
    pub fn ingest_traces(&self, request: &ExportTraceServiceRequest) -> Result<Outcome> {
        self.accept(schemas::SPANS.name, self.config.spans.decode(request))
    }

    /// Stores the valid log records of `request`.
    pub fn ingest_logs(&self, request: &ExportLogsServiceRequest) -> Result<Outcome> {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        self.accept(schemas::LOGS.name, decode_logs(request, now))
    }

    fn accept(&self, table: &'static str, decoded: Decoded) -> Result<Outcome> {
        if self.closed.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let mut outcome = Outcome {
            rejected: decoded.rejections.count,
            message: decoded.rejections.message(),
            ..Outcome::default()
        };
        if let Some(batch) = decoded.batch {
            outcome.accepted = batch.num_rows();
            let waiting = self.buffer.push(table, batch)?;
            if waiting >= self.config.flush_rows {
                self.flush_wanted.notify_one();
            }
        }
        Ok(outcome)
    }

    /// Writes every buffered row to Parquet and makes the files visible. One flush runs
    /// at a time; returns the rows written.
    pub async fn flush(self: &Arc<Self>) -> Result<usize> {
        let _one_at_a_time = self.flush_lock.lock().await;
        let mut written = 0;
        for table in schemas::TABLES {
            let pending = self.buffer.pending(table.name);
            if pending.is_empty() {
                continue;
            }
            let this = self.clone();
            let flushed = pending.len();
            let rows =
                tokio::task::spawn_blocking(move || this.write_table(table, &pending, flushed))
                    .await
                    .map_err(|error| Error::Storage(format!("flush task failed: {error}")))??;
            written += rows;
        }
        Ok(written)
    }

    fn write_table(
        &self,
        table: &'static schemas::Table,
        pending: &[RecordBatch],
        flushed: usize,
    ) -> Result<usize> {
        let staged = self.writer.stage(table, pending)?;
        let published = self
            .buffer
            .publish(table.name, flushed, || writer::publish(&staged));
        if let Err(error) = published {
            writer::discard(&staged);
            return Err(error);
        }
        let rows = staged.iter().map(|s| s.rows).sum();
        tracing::debug!(table = table.name, rows, files = staged.len(), "flushed");
        Ok(rows)
    }

    /// Flushes on the configured interval and when enough rows wait, until `shutdown`;
    /// then refuses new data and flushes what remains.
    pub async fn run_flusher(self: Arc<Self>, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.flush_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => {}
                _ = self.flush_wanted.notified() => {}
            }
            if let Err(error) = self.flush().await {
                tracing::warn!(%error, rows = self.buffer.rows(), "flush failed; rows stay buffered and the flush is retried");
            }
        }
        self.closed.cancel();
        match self.flush().await {
            Ok(rows) => tracing::info!(rows, "final flush done"),
            Err(error) => {
                tracing::error!(%error, rows = self.buffer.rows(), "final flush failed; buffered rows are lost")
            }
        }
    }
}
