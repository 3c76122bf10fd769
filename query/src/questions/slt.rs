//! The question functions pinned by sqllogictest files, one per question
//! (`tests/slt/<question>.slt`), over a fixture data directory built from
//! `tests/fixtures/requests.ndjson` by the collector, as the daemon would store it, rollups
//! included. A change in a question's SQL shows up here, without a daemon.
//!
//! The fixture's calls are few and their numbers round, so that each expected answer in the
//! files can be worked out by hand from the fixture (the files say how).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

use crate::engine::Engine;
use crate::error::Error;
use crate::questions::QuestionSettings;
use crate::questions::objectives::Objective;
use crate::scan::Files;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The engine over the fixture, with `v1` deprecated and `tests/fixtures/openapi.yaml` as
/// the contract.
struct Fixture {
    engine: Engine,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let requests = std::fs::read(repository().join("tests/fixtures/requests.ndjson")).unwrap();
        let collector = collector::Collector::open(collector::Config::new(dir.path()))
            .unwrap()
            .0;
        let collector = Arc::new(collector);
        let ingesting = collector.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            ingesting.ingest_requests(bytes::Bytes::from(requests))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!((outcome.rejected, outcome.accepted), (0, 56), "{outcome:?}");
        let ingesting = collector.clone();
        let outcome = tokio::task::spawn_blocking(move || ingesting.ingest_traces(traces()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((outcome.rejected, outcome.accepted), (0, 4), "{outcome:?}");
        collector.flush().await.unwrap();
        drop(collector);

        let openapi =
            schemas::routes::OpenApi::load(&[repository().join("tests/fixtures/openapi.yaml")])
                .unwrap();
        let hour = std::time::Duration::from_secs(3600);
        let objectives = vec![
            Objective::new(
                "orders-writes",
                "shop",
                Some("POST /v2/orders"),
                "availability",
                None,
                90.0,
                hour,
            )
            .unwrap(),
            Objective::new(
                "orders-reads-fast",
                "shop",
                Some("GET /v1/orders/*"),
                "latency",
                Some(25.0),
                50.0,
                hour,
            )
            .unwrap(),
        ];
        let settings = QuestionSettings {
            deprecated_versions: vec!["v1".to_owned()],
            openapi: Arc::new(openapi),
            objectives: Arc::new(objectives),
        };
        let source = Arc::new(Files(schemas::Store::local(dir.path())));
        let engine = Engine::new(source, settings, Default::default())
            .await
            .unwrap();
        let report = engine
            .roll_up(Arc::new(collector::RollupFiles::default()))
            .await
            .unwrap();
        assert!(report.written > 0, "{report:?}");
        Fixture { engine, _dir: dir }
    }
}

/// An OTLP attribute `key` with a string value, as a client sends it.
pub(crate) fn text(key: &str, value: &str) -> KeyValue {
    attribute(key, Value::StringValue(value.to_owned()))
}

/// An OTLP attribute `key` with an int value.
pub(crate) fn number(key: &str, value: i64) -> KeyValue {
    attribute(key, Value::IntValue(value))
}

fn attribute(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// Two calls of `GET /v2/stock` at 15:00 and 15:01 (20 and 40 ms; request and response
/// bodies of 10 and 700 bytes, then a 300-byte response under the older attribute name), each
/// waiting on one query of PostgreSQL database `shop` (4 ms, and 10 ms that failed), as an
/// OTLP export.
pub(crate) fn traces() -> bytes::Bytes {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;

    const AT_15: u64 = 1_795_791_600_000_000_000; // 2026-11-27T15:00:00Z
    let mut spans = Vec::new();
    // Body sizes under the current names, then under the older ones.
    let sizes = [
        vec![
            number("http.request.body.size", 10),
            number("http.response.body.size", 700),
        ],
        vec![number("http.response_content_length", 300)],
    ];
    for (n, ((server_ms, db_ms, db_failed), sizes)) in [(20, 4, false), (40, 10, true)]
        .into_iter()
        .zip(sizes)
        .enumerate()
    {
        let start = AT_15 + n as u64 * 60_000_000_000;
        let trace_id = vec![n as u8 + 1; 16];
        let server_id = vec![0x10 + n as u8; 8];
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: server_id.clone(),
            name: "GET /v2/stock".to_owned(),
            kind: 2,
            start_time_unix_nano: start,
            end_time_unix_nano: start + server_ms * 1_000_000,
            attributes: [
                text("http.request.method", "GET"),
                text("http.route", "/v2/stock"),
                number("http.response.status_code", 200),
                text("client.id", "web"),
            ]
            .into_iter()
            .chain(sizes)
            .collect(),
            ..Span::default()
        });
        spans.push(Span {
            trace_id,
            span_id: vec![0x20 + n as u8; 8],
            parent_span_id: server_id,
            name: "SELECT stock".to_owned(),
            kind: 3,
            start_time_unix_nano: start + 1_000_000,
            end_time_unix_nano: start + (1 + db_ms) * 1_000_000,
            attributes: vec![
                text("db.system.name", "postgresql"),
                text("db.namespace", "shop"),
            ],
            status: db_failed.then(|| Status {
                code: 2,
                ..Status::default()
            }),
            ..Span::default()
        });
    }
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", "shop")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    request.encode_to_vec().into()
}

/// The engine as sqllogictest sees a database: every value as text, NULL as `NULL`.
struct Db(Engine);

#[async_trait]
impl AsyncDB for Db {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let output = self.0.query(sql).await?;
        let types = output
            .schema
            .fields()
            .iter()
            .map(|field| match field.data_type() {
                data_type if data_type.is_integer() => DefaultColumnType::Integer,
                data_type if data_type.is_floating() => DefaultColumnType::FloatingPoint,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    DefaultColumnType::Text
                }
                _ => DefaultColumnType::Any,
            })
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &output.batches {
            let columns: Vec<ArrayFormatter> = batch
                .columns()
                .iter()
                .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
                .collect::<Result<_, _>>()
                .map_err(|error| Error::Internal(error.to_string()))?;
            for row in 0..batch.num_rows() {
                let cells = columns.iter().zip(batch.columns()).map(|(text, column)| {
                    match column.as_primitive_opt::<Float64Type>() {
                        Some(floats) if floats.is_valid(row) => decimal(floats.value(row)),
                        _ => text.value(row).to_string(),
                    }
                });
                rows.push(cells.collect());
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A float as the files write it: at most ten decimals, without trailing zeros (`39.7` for
/// 39.699999999999996, `4` for 4.0), so that an expected value reads as worked out by hand.
fn decimal(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let text = format!("{value:.10}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// Runs `tests/slt/<name>.slt` over a fresh fixture.
async fn run(name: &str) {
    let fixture = Fixture::new().await;
    let engine = fixture.engine.clone();
    let mut runner = sqllogictest::Runner::new(move || {
        let engine = engine.clone();
        async move { Ok(Db(engine)) }
    });
    let file = repository().join(format!("tests/slt/{name}.slt"));
    if let Err(error) = runner.run_file_async(&file).await {
        panic!("{}:\n{error}", file.display());
    }
}

/// Every question, and the files: one per question, each run by a test below.
const FILES: &[&str] = &[
    "api_call_minutes",
    "api_calls",
    "client_stats",
    "contract_drift",
    "dependency_stats",
    "deploys",
    "endpoint_stats",
    "error_breakdown",
    "latency_regressions",
    "objectives",
    "payload_stats",
    "refusals",
    "retry_amplification",
    "traffic_shift",
    "version_usage",
];

#[test]
fn every_slt_file_is_run() {
    let mut found: Vec<String> = std::fs::read_dir(repository().join("tests/slt"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "slt"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, FILES);
}

macro_rules! slt {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run(stringify!($name)).await;
            }
        )*
    };
}

slt!(
    api_call_minutes,
    api_calls,
    client_stats,
    contract_drift,
    dependency_stats,
    deploys,
    endpoint_stats,
    error_breakdown,
    latency_regressions,
    objectives,
    payload_stats,
    refusals,
    retry_amplification,
    traffic_shift,
    version_usage,
);
