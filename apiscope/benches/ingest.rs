//! Acknowledged spans per second by durability, from one run: `fsync` (the default) against
//! `batch` and `none` under the same load; then `fsync` again while a storm of heavy queries
//! runs, to show that queries do not starve ingest.
//!
//! ```sh
//! cargo bench -p apiscope --bench ingest                 # release build
//! APISCOPE_BENCH_SECONDS=10 cargo bench -p apiscope --bench ingest
//! ```
//!
//! Each mode gets a fresh daemon and data directory; 8 concurrent clients send OTLP/HTTP
//! protobuf requests of 100 spans each for the same duration and count the spans that were
//! acknowledged (HTTP 200). Figures are reported as spans/s and as ratios to `none`. In the
//! storm, 4 more clients run heavy queries over HTTP back to back (a distinct count and a
//! regular-expression scan over every span, a self-join that the memory guard stops), and
//! the ingest rate is reported as a ratio to `fsync` without them.

#[allow(dead_code)]
#[path = "../../tests/e2e/support/daemon.rs"]
mod daemon;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

const CLIENTS: u64 = 8;
const SPANS_PER_REQUEST: u64 = 100;

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn request(client: u64, n: u64) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let spans = (0..SPANS_PER_REQUEST)
        .map(|i| Span {
            trace_id: [client.to_be_bytes(), n.to_be_bytes()].concat(),
            span_id: ((n << 8) | i).to_be_bytes().to_vec(),
            name: "GET /v1/orders/{id}".into(),
            kind: 2,
            start_time_unix_nano: now - 5_000_000,
            end_time_unix_nano: now,
            attributes: vec![
                text("http.request.method", "GET"),
                text("http.route", "/v1/orders/{id}"),
                text("url.path", &format!("/v1/orders/{i}")),
                text("client.address", "10.0.0.1"),
                text("app.client_id", &format!("client-{client}")),
                text("user_agent.original", "bench/1.0"),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", "bench")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Heavy queries: whole-table scans, hashing every id, and a join the memory limit refuses.
const STORM: [&str; 3] = [
    "SELECT count(DISTINCT span_id), count(DISTINCT trace_id) FROM spans",
    "SELECT url_path, count(*) FROM spans WHERE regexp_like(url_path, '^/v1/orders/[0-9]*7$') GROUP BY url_path",
    "SELECT a.url_path, count(*) FROM spans a JOIN spans b ON a.service_name = b.service_name GROUP BY a.url_path",
];
const QUERY_CLIENTS: usize = 4;

/// Acknowledged spans per second, and queries answered (or refused by a guard).
fn run(mode: &str, seconds: u64, storm: bool) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = daemon::Daemon::start_with(dir.path(), &["--durability", mode]);
    let url = format!("{}/v1/traces", daemon.otlp_http_endpoint());
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let queries = Arc::new(AtomicU64::new(0));
    let query_url = format!("{}/api/v1/query", daemon.query_url());
    let storm: Vec<_> = (0..if storm { QUERY_CLIENTS } else { 0 })
        .map(|client| {
            let (url, stop, queries) = (query_url.clone(), stop.clone(), queries.clone());
            std::thread::spawn(move || {
                let http = daemon::http();
                let mut n = client;
                while !stop.load(Ordering::Relaxed) {
                    let sql = STORM[n % STORM.len()];
                    n += 1;
                    let answered = http
                        .post(&url)
                        .header("content-type", "application/sql")
                        .body(sql)
                        .send();
                    if answered.is_ok() {
                        queries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (url, stop, acknowledged) = (url.clone(), stop.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                let http = daemon::http();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let response = http
                        .post(&url)
                        .header("content-type", "application/x-protobuf")
                        .body(request(client, n))
                        .send();
                    if response.is_ok_and(|r| r.status().as_u16() == 200) {
                        acknowledged.fetch_add(SPANS_PER_REQUEST, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for client in clients.into_iter().chain(storm) {
        client.join().unwrap();
    }
    let rate = acknowledged.load(Ordering::Relaxed) as f64 / elapsed;
    daemon.stop();
    (rate, queries.load(Ordering::Relaxed))
}

fn main() {
    let seconds = std::env::var("APISCOPE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut rates = Vec::new();
    for mode in ["none", "batch", "fsync"] {
        let (rate, _) = run(mode, seconds, false);
        println!("{mode:>6}: {rate:>10.0} acknowledged spans/s");
        rates.push((mode, rate));
    }
    let none = rates[0].1;
    for (mode, rate) in &rates {
        println!("{mode:>6} / none = {:.2}", rate / none);
    }
    let fsync = rates[2].1;
    let (stormy, queries) = run("fsync", seconds, true);
    println!(
        " storm: {stormy:>10.0} acknowledged spans/s in fsync mode with {QUERY_CLIENTS} clients \
         running heavy queries ({queries} answered)"
    );
    println!(" storm / fsync = {:.2}", stormy / fsync);
}
