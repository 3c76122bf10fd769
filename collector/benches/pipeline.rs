//! CPU per span of the two stages every span goes through, one thread, no daemon: decoding an
//! OTLP/protobuf export into Arrow columns, and staging a flush (sort, gather, Parquet with the
//! key index). Each against a baseline measured in the same run:
//!
//! - decoding, against prost decoding the same payloads into the generated messages (what a
//!   receiver pays before it has built a single column);
//! - staging, against arrow's Parquet writer writing the same rows unsorted with zstd and
//!   otherwise default settings (what pyarrow's default write does).
//!
//! ```sh
//! cargo bench -p collector --bench pipeline                  # release build, 200k spans
//! APISCOPE_BENCH_SPANS=1000000 cargo bench -p collector --bench pipeline
//! ```
//!
//! The spans are generated here (seeded, so every run sees the same bytes), shaped like the
//! load generator's: a resource of six attributes, server spans with HTTP attributes, client
//! spans to a database, random ids, exports of 1,000 spans. Figures are medians of five runs.

use std::time::Instant;

use arrow::compute::concat_batches;
use collector::{SpanDecoder, Writer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use prost::Message;

const SPANS_PER_EXPORT: usize = 1000;
const RUNS: usize = 5;
const SERVICES: [&str; 6] = [
    "accounts", "orders", "payments", "catalog", "search", "gateway",
];
const ROUTES: [&str; 4] = ["/v1/items/{id}", "/v1/items", "/v2/items/{id}", "/health"];

/// xorshift64*: the same spans on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    any(key, Value::StringValue(value.into()))
}

fn any(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// One export of `SPANS_PER_EXPORT` spans from `service`: traces of a server span and the
/// database call under it.
fn export(rng: &mut Rng, service: &str, start_ns: u64) -> Vec<u8> {
    let mut spans = Vec::with_capacity(SPANS_PER_EXPORT);
    while spans.len() < SPANS_PER_EXPORT {
        let trace_id = [rng.next().to_be_bytes(), rng.next().to_be_bytes()].concat();
        let server_id = rng.next().to_be_bytes().to_vec();
        let start = start_ns + spans.len() as u64 * 10_000 + rng.below(10_000);
        let duration = 1_000_000 + rng.below(50_000_000);
        let route = ROUTES[rng.below(ROUTES.len() as u64) as usize];
        let status = if rng.below(50) == 0 { 500 } else { 200 };
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: server_id.clone(),
            name: format!("GET {route}"),
            kind: 2,
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration,
            attributes: vec![
                text("http.request.method", "GET"),
                text("http.route", route),
                text(
                    "url.path",
                    &route.replace("{id}", &rng.below(100_000).to_string()),
                ),
                any("http.response.status_code", Value::IntValue(status)),
                text(
                    "client.address",
                    &format!("10.0.{}.{}", rng.below(4), rng.below(250)),
                ),
                text("user_agent.original", "okhttp/4.12.0"),
                text("server.address", &format!("{service}.internal")),
                any("server.port", Value::IntValue(8080)),
            ],
            ..Default::default()
        });
        let call = start + rng.below(duration / 2);
        spans.push(Span {
            trace_id,
            span_id: rng.next().to_be_bytes().to_vec(),
            parent_span_id: server_id,
            name: "SELECT".into(),
            kind: 3,
            start_time_unix_nano: call,
            end_time_unix_nano: call + rng.below(duration / 2) + 1,
            attributes: vec![
                text("db.system", "postgresql"),
                text("net.peer.name", "db.internal"),
                any("net.peer.port", Value::IntValue(5432)),
            ],
            ..Default::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", service),
                    text("service.version", "3.0.0"),
                    text("deployment.environment.name", "bench"),
                    text("host.name", &format!("{service}-7f9c")),
                    text("telemetry.sdk.name", "opentelemetry"),
                    text("telemetry.sdk.language", "rust"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "bench".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Median nanoseconds per item of `RUNS` runs of `run`, which handles `items` items.
fn median_ns(items: usize, mut run: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_nanos() as f64 / items as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

fn main() {
    let spans: usize = std::env::var("APISCOPE_BENCH_SPANS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let mut rng = Rng(0x5EED);
    // Spans of the last few minutes: one hour partition or two, as a flush sees them.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let payloads: Vec<Vec<u8>> = (0..spans.div_ceil(SPANS_PER_EXPORT))
        .map(|n| {
            let service = SERVICES[n % SERVICES.len()];
            export(
                &mut rng,
                service,
                now - 120_000_000_000 + n as u64 * 1_000_000,
            )
        })
        .collect();
    let spans = payloads.len() * SPANS_PER_EXPORT;
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    println!(
        "{spans} spans in {} exports, {:.0} bytes of OTLP a span",
        payloads.len(),
        bytes as f64 / spans as f64
    );

    let decoder = SpanDecoder::default();
    let decode = || -> Vec<_> {
        payloads
            .iter()
            .map(|p| decoder.decode(p).unwrap().batch.unwrap())
            .collect()
    };
    let prost_ns = median_ns(spans, || {
        for payload in &payloads {
            std::hint::black_box(ExportTraceServiceRequest::decode(payload.as_slice()).unwrap());
        }
    });
    let decode_ns = median_ns(spans, || {
        std::hint::black_box(decode());
    });
    println!(
        "decode: {decode_ns:.0} ns a span into Arrow columns; prost into messages {prost_ns:.0}; ratio {:.2}",
        decode_ns / prost_ns
    );

    let batches = decode();
    let dir = tempfile::tempdir().unwrap();
    let writer = Writer::new(schemas::Store::local(dir.path()), "bench");
    let mut stored = 0;
    let stage_ns = median_ns(spans, || {
        // Staged files are encoded in memory, measured, and never stored.
        let staged = writer.stage(&schemas::SPANS, &batches, 1).unwrap();
        stored = staged.iter().map(|file| file.size()).sum::<usize>() as u64;
    });
    let all = concat_batches(&batches[0].schema(), &batches).unwrap();
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut plain = 0;
    let plain_ns = median_ns(spans, || {
        let mut out =
            ArrowWriter::try_new(Vec::new(), all.schema(), Some(properties.clone())).unwrap();
        out.write(&all).unwrap();
        plain = out.into_inner().unwrap().len();
    });
    println!(
        "stage: {stage_ns:.0} ns and {:.1} bytes a span (sorted, key index, apiscope's encodings); \
         unsorted zstd Parquet {plain_ns:.0} ns and {:.1} bytes; ratio {:.2} in time, {:.2} in bytes",
        stored as f64 / spans as f64,
        plain as f64 / spans as f64,
        stage_ns / plain_ns,
        stored as f64 / plain as f64
    );
}
