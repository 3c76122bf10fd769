//! The OpenTelemetry Rust SDK's OTLP exporters (gRPC, HTTP protobuf, HTTP JSON) against the
//! real daemon, with current semantic conventions.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{
    Compression, Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::json;

use crate::support::daemon::{Daemon, pairs};

/// One kind of call the test makes, and how many times.
struct Call {
    kind: SpanKind,
    name: &'static str,
    attributes: Vec<KeyValue>,
    times: usize,
    duration_ms: u64,
    failed: bool,
}

fn server(
    method: &'static str,
    route: &'static str,
    status: i64,
    client: &'static str,
    times: usize,
) -> Call {
    Call {
        kind: SpanKind::Server,
        name: "server",
        attributes: vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("http.route", route),
            KeyValue::new("url.path", route.replace("{id}", "981")),
            KeyValue::new("http.response.status_code", status),
            KeyValue::new("app.client_id", client),
            KeyValue::new("client.address", "10.1.2.3"),
            KeyValue::new("user_agent.original", "okhttp/4.12"),
        ],
        times,
        duration_ms: 20,
        failed: false,
    }
}

fn client(
    name: &'static str,
    attributes: Vec<KeyValue>,
    times: usize,
    duration_ms: u64,
    failed: bool,
) -> Call {
    Call {
        kind: SpanKind::Client,
        name,
        attributes,
        times,
        duration_ms,
        failed,
    }
}

fn plan() -> Vec<Call> {
    vec![
        server("GET", "/v2/orders/{id}", 200, "web", 5),
        server("GET", "/v2/orders/{id}", 503, "ios", 2),
        server("POST", "/v2/orders", 201, "ios", 3),
        server("GET", "/health", 200, "probe", 1),
        client(
            "SELECT orders",
            vec![
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.namespace", "shop"),
            ],
            4,
            3,
            false,
        ),
        client(
            "GET",
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("server.address", "inventory.internal"),
                KeyValue::new("server.port", 8443),
                KeyValue::new("http.response.status_code", 404),
            ],
            1,
            7,
            false,
        ),
        client(
            "charge",
            vec![KeyValue::new("peer.service", "billing")],
            2,
            30,
            true,
        ),
    ]
}

/// Emits the plan with `provider`; returns the span ids sent (hex).
fn emit(provider: &SdkTracerProvider) -> Vec<String> {
    let tracer = provider.tracer("e2e.rust");
    let mut ids = Vec::new();
    let start = SystemTime::now() - Duration::from_secs(30);
    for call in plan() {
        for _ in 0..call.times {
            let mut span = tracer
                .span_builder(call.name)
                .with_kind(call.kind.clone())
                .with_start_time(start)
                .with_attributes(call.attributes.clone())
                .start(&tracer);
            if call.failed {
                span.set_status(Status::error("declined"));
            }
            ids.push(span.span_context().span_id().to_string());
            span.end_with_timestamp(start + Duration::from_millis(call.duration_ms));
        }
    }
    ids
}

fn resource(service: &str) -> Resource {
    Resource::builder_empty()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("service.version", "2.1.0"))
        .with_attribute(KeyValue::new("deployment.environment.name", "prod"))
        .build()
}

#[test]
fn rust_sdk_exporters_over_grpc_http_protobuf_and_http_json() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    // The exporters need a Tokio runtime for their I/O; the SDK's simple processor blocks
    // on each export from this thread.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();

    let mut sent = BTreeMap::new();
    let grpc = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(daemon.grpc_endpoint())
        .with_compression(Compression::Gzip)
        .build()
        .unwrap();
    let http_proto = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", daemon.otlp_http_endpoint()))
        .with_compression(Compression::Gzip)
        .build()
        .unwrap();
    let http_json = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(format!("{}/v1/traces", daemon.otlp_http_endpoint()))
        .build()
        .unwrap();
    for (service, exporter) in [
        ("checkout-grpc", grpc),
        ("checkout-http-proto", http_proto),
        ("checkout-http-json", http_json),
    ] {
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(resource(service))
            .build();
        sent.insert(service, emit(&provider));
        provider.shutdown().unwrap();
    }

    // Logs over gRPC.
    let log_exporter = opentelemetry_otlp::LogExporter::builder()
        .with_tonic()
        .with_endpoint(daemon.grpc_endpoint())
        .build()
        .unwrap();
    let logger_provider = SdkLoggerProvider::builder()
        .with_simple_exporter(log_exporter)
        .with_resource(resource("checkout-grpc"))
        .build();
    let logger = logger_provider.logger("e2e.rust");
    for (severity, text) in [
        (Severity::Info, "order placed"),
        (Severity::Error, "payment timed out"),
        (Severity::Error, "payment timed out"),
    ] {
        let mut record = logger.create_log_record();
        record.set_severity_number(severity);
        record.set_severity_text(severity.name());
        record.set_body(text.into());
        record.add_attribute("order.id", 77);
        logger.emit(record);
    }
    logger_provider.shutdown().unwrap();

    // Expectations, computed from the plan.
    let spans_per_service: usize = plan().iter().map(|c| c.times).sum();
    let total = daemon.wait_for_count("SELECT count(*) FROM spans", 3 * spans_per_service as i64);
    assert_eq!(total, 3 * spans_per_service as i64);
    let mut endpoints: BTreeMap<String, i64> = BTreeMap::new();
    let mut errors: BTreeMap<String, i64> = BTreeMap::new();
    let mut clients: BTreeMap<String, i64> = BTreeMap::new();
    let mut dependencies: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for call in plan() {
        let attr = |key: &str| {
            call.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        let n = call.times as i64;
        if call.kind == SpanKind::Server {
            let endpoint = format!(
                "{} {}",
                attr("http.request.method").unwrap(),
                attr("http.route").unwrap()
            );
            *endpoints.entry(endpoint.clone()).or_default() += n;
            let status: i64 = attr("http.response.status_code").unwrap().parse().unwrap();
            if status >= 500 {
                *errors.entry(endpoint).or_default() += n;
            }
            *clients.entry(attr("app.client_id").unwrap()).or_default() += n;
        } else {
            let dependency = if let Some(peer) = attr("peer.service") {
                peer
            } else if let Some(db) = attr("db.system.name") {
                format!("{db}/{}", attr("db.namespace").unwrap())
            } else {
                format!(
                    "{}:{}",
                    attr("server.address").unwrap(),
                    attr("server.port").unwrap()
                )
            };
            let status: i64 = attr("http.response.status_code").map_or(0, |s| s.parse().unwrap());
            let failed = call.failed || status >= 400;
            let entry = dependencies.entry(dependency).or_default();
            entry.0 += n;
            entry.1 += if failed { n } else { 0 };
        }
    }

    for (service, ids) in &sent {
        let rows = daemon.rows(&format!(
            "SELECT endpoint, count(*) FROM spans WHERE service_name = '{service}' AND span_kind = 'server' \
             GROUP BY endpoint ORDER BY endpoint"
        ));
        let expected: Vec<(String, i64)> = endpoints.clone().into_iter().collect();
        assert_eq!(pairs(&rows), expected, "{service}");
        let rows = daemon.rows(&format!(
            "SELECT endpoint, count(*) FROM spans WHERE service_name = '{service}' AND span_kind = 'server' \
             AND is_error GROUP BY endpoint ORDER BY endpoint"
        ));
        assert_eq!(
            pairs(&rows),
            errors.clone().into_iter().collect::<Vec<_>>(),
            "{service}"
        );
        let rows = daemon.rows(&format!(
            "SELECT client_id, count(*) FROM spans WHERE service_name = '{service}' AND span_kind = 'server' \
             GROUP BY client_id ORDER BY client_id"
        ));
        assert_eq!(
            pairs(&rows),
            clients.clone().into_iter().collect::<Vec<_>>(),
            "{service}"
        );
        let rows = daemon.rows(&format!(
            "SELECT dependency, count(*), sum(CAST(is_error AS BIGINT)) FROM spans \
             WHERE service_name = '{service}' AND span_kind = 'client' GROUP BY dependency ORDER BY dependency"
        ));
        let got: Vec<(String, i64, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().to_owned(),
                    r[1].as_i64().unwrap(),
                    r[2].as_i64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, i64, i64)> = dependencies
            .iter()
            .map(|(d, (n, e))| (d.clone(), *n, *e))
            .collect();
        assert_eq!(got, want, "{service}");

        // Every span id sent is there exactly once, with its duration.
        let rows = daemon.rows(&format!(
            "SELECT span_id, duration_ms, service_version, deployment_environment, api_version, user_agent \
             FROM spans WHERE service_name = '{service}' ORDER BY span_id"
        ));
        let mut expected_ids = ids.clone();
        expected_ids.sort();
        let got_ids: Vec<String> = rows
            .iter()
            .map(|r| r[0].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got_ids, expected_ids, "{service}");
        assert!(
            rows.iter()
                .all(|r| r[2] == json!("2.1.0") && r[3] == json!("prod"))
        );
        let total_ms: f64 = rows.iter().map(|r| r[1].as_f64().unwrap()).sum();
        let expected_ms: u64 = plan().iter().map(|c| c.duration_ms * c.times as u64).sum();
        assert!(
            (total_ms - expected_ms as f64).abs() < 1e-6,
            "{service}: {total_ms} vs {expected_ms}"
        );
        let v2 = rows.iter().filter(|r| r[4] == json!("v2")).count();
        assert_eq!(v2, 10, "{service}: calls to /v2 routes");

        // The resource's attributes, as the SDK set them, on every span of the service.
        let resources = daemon.rows(&format!(
            "SELECT to_json(resource_attributes), count(*) FROM spans \
             WHERE service_name = '{service}' AND resource_attributes['service.version'] = '2.1.0' \
             GROUP BY 1"
        ));
        let attributes = json!({
            "deployment.environment.name": "prod",
            "service.name": service,
            "service.version": "2.1.0",
        });
        assert_eq!(
            resources,
            [vec![json!(attributes.to_string()), json!(ids.len())]],
            "{service}"
        );
        // Grouped by one of them (looked up once per resource, not per span).
        let environments = daemon.rows(&format!(
            "SELECT resource_attributes['deployment.environment.name'], count(*) FROM spans \
             WHERE service_name = '{service}' GROUP BY 1"
        ));
        assert_eq!(environments, [vec![json!("prod"), json!(ids.len())]]);
        assert!(rows.iter().filter(|r| r[5] == json!("okhttp/4.12")).count() == 11);
    }

    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM logs", 3), 3);
    let rows = daemon.rows(
        "SELECT severity_text, severity_number, body, count(*), max(attributes['order.id']) FROM logs \
         WHERE service_name = 'checkout-grpc' GROUP BY 1, 2, 3 ORDER BY 2",
    );
    assert_eq!(
        rows,
        vec![
            vec![
                json!("INFO"),
                json!(9),
                json!("order placed"),
                json!(1),
                json!("77")
            ],
            vec![
                json!("ERROR"),
                json!(17),
                json!("payment timed out"),
                json!(2),
                json!("77")
            ],
        ]
    );
}
