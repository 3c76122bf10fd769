//! Payload sizes and deploys per environment, from what real clients send: spans through the
//! Rust SDK under the current attribute names (`http.response.body.size`) and the older ones
//! (`http.response_content_length`), OTLP log records through the Rust SDK's logger, and
//! request logs. The expected answers are computed here from what was sent.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::fleet::{percentile_tolerance, quantile};
use crate::support::otlp::post_request_lines;
use crate::support::{rfc3339, seconds};

const MINUTE_S: i64 = 60;

/// How a call reached apiscope, and so under which names its sizes were sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Via {
    /// A server span with `http.request.body.size` and `http.response.body.size`.
    Span,
    /// A server span with the older `http.request_content_length` and
    /// `http.response_content_length`.
    OlderSpan,
    /// An OTLP log record with HTTP attributes.
    Log,
    /// A request log line with `request_bytes` and `response_bytes`.
    RequestLog,
}

/// One call sent.
#[derive(Debug, Clone)]
struct Call {
    time_s: i64,
    environment: &'static str,
    version: &'static str,
    route: &'static str,
    client: &'static str,
    status: i64,
    request_bytes: Option<i64>,
    response_bytes: i64,
    via: Via,
}

impl Call {
    fn endpoint(&self) -> String {
        format!("GET {}", self.route)
    }
}

/// Service `catalog`: version 2.0.0 in staging from `base`, 1.9.0 in production from 35
/// minutes on, and 2.0.0 in production from 60 minutes on (with two failures), called by
/// web, a crawler (older attribute names), an app (log records) and a batch export
/// (request logs).
fn story(base: i64) -> Vec<Call> {
    let call = |minute: i64, environment, version, route, client, via| Call {
        time_s: base + minute * MINUTE_S,
        environment,
        version,
        route,
        client,
        status: 200,
        request_bytes: None,
        response_bytes: 0,
        via,
    };
    let mut calls = Vec::new();
    for i in 0..5 {
        calls.push(Call {
            request_bytes: Some(100),
            response_bytes: 1000 * (i + 1),
            ..call(i, "staging", "2.0.0", "/v1/items", "web", Via::Span)
        });
        calls.push(Call {
            response_bytes: 2000,
            ..call(35 + i, "production", "1.9.0", "/v1/items", "web", Via::Span)
        });
        calls.push(Call {
            response_bytes: 3000 + i,
            status: if i % 2 == 0 { 500 } else { 200 },
            ..call(60 + i, "production", "2.0.0", "/v1/items", "web", Via::Span)
        });
    }
    for i in 0..4 {
        calls.push(Call {
            response_bytes: 50_000,
            ..call(
                62 + i,
                "production",
                "2.0.0",
                "/v1/items",
                "crawler",
                Via::OlderSpan,
            )
        });
    }
    for i in 0..3 {
        calls.push(Call {
            response_bytes: 700,
            ..call(65 + i, "production", "2.0.0", "/v1/items", "app", Via::Log)
        });
    }
    for i in 0..2 {
        calls.push(Call {
            request_bytes: Some(50),
            response_bytes: 10_000_000,
            ..call(
                70 + i,
                "production",
                "2.0.0",
                "/v1/export",
                "batch",
                Via::RequestLog,
            )
        });
    }
    calls
}

fn send(daemon: &Daemon, calls: &[Call]) {
    let lines: String = calls
        .iter()
        .filter(|c| c.via == Via::RequestLog)
        .map(|c| {
            let line = json!({
                "time": c.time_s, "method": "GET", "route": c.route, "status": c.status,
                "duration_ms": 10, "client_id": c.client, "service": "catalog",
                "service_version": c.version, "deployment_environment": c.environment,
                "request_bytes": c.request_bytes, "response_bytes": c.response_bytes,
            });
            format!("{line}\n")
        })
        .collect();
    post_request_lines(daemon, lines);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let mut resources: Vec<(&str, &str)> =
        calls.iter().map(|c| (c.environment, c.version)).collect();
    resources.sort();
    resources.dedup();
    for (environment, version) in resources {
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("catalog")
            .with_attribute(KeyValue::new("service.version", version))
            .with_attribute(KeyValue::new("deployment.environment.name", environment))
            .build();
        let mine: Vec<&Call> = calls
            .iter()
            .filter(|c| c.environment == environment && c.version == version)
            .collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(daemon.grpc_endpoint())
            .build()
            .unwrap();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.clone())
            .build();
        let tracer = provider.tracer("e2e.payloads");
        for call in mine
            .iter()
            .filter(|c| matches!(c.via, Via::Span | Via::OlderSpan))
        {
            let (request_key, response_key) = match call.via {
                Via::Span => ("http.request.body.size", "http.response.body.size"),
                _ => (
                    "http.request_content_length",
                    "http.response_content_length",
                ),
            };
            let mut attributes = vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.route", call.route),
                KeyValue::new("http.response.status_code", call.status),
                KeyValue::new("client.id", call.client),
                KeyValue::new(response_key, call.response_bytes),
            ];
            if let Some(bytes) = call.request_bytes {
                attributes.push(KeyValue::new(request_key, bytes));
            }
            let start = UNIX_EPOCH + Duration::from_secs(call.time_s as u64);
            let mut span = tracer
                .span_builder(call.endpoint())
                .with_kind(SpanKind::Server)
                .with_start_time(start)
                .with_attributes(attributes)
                .start(&tracer);
            span.end_with_timestamp(start + Duration::from_millis(10));
        }
        provider.shutdown().unwrap();

        let exporter = opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_endpoint(daemon.grpc_endpoint())
            .build()
            .unwrap();
        let provider = SdkLoggerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(resource)
            .build();
        let logger = provider.logger("e2e.payloads");
        for call in mine.iter().filter(|c| c.via == Via::Log) {
            let mut record = logger.create_log_record();
            record.set_timestamp(UNIX_EPOCH + Duration::from_secs(call.time_s as u64));
            record.set_body("request served".into());
            record.add_attribute("http.request.method", "GET");
            record.add_attribute("http.route", call.route);
            record.add_attribute("http.response.status_code", call.status);
            record.add_attribute("client.id", call.client);
            record.add_attribute("http.response.body.size", call.response_bytes);
            logger.emit(record);
        }
        provider.shutdown().unwrap();
    }
}

fn close(found: &Value, expected: f64, what: &str) {
    let found = found.as_f64().unwrap_or_else(|| panic!("{what}: {found}"));
    assert!(
        (found - expected).abs() <= percentile_tolerance(expected),
        "{what}: {found}, expected {expected}"
    );
}

#[test]
fn payload_sizes_and_deploys_per_environment_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let now_s = crate::now_ns() / 1_000_000_000;
    let base = (now_s - 3 * 3600).div_euclid(MINUTE_S) * MINUTE_S;
    let calls = story(base);
    send(&daemon, &calls);
    let total = calls.len() as i64;
    daemon.wait_for_count("SELECT count(*) FROM api_calls", total);

    // The columns, per source: the sizes as sent, under either name.
    let sources = daemon.rows(
        "SELECT source, count(*), count(response_bytes), sum(response_bytes), \
         sum(request_bytes) FROM api_calls GROUP BY source ORDER BY source",
    );
    let mut expected: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for call in &calls {
        let source = match call.via {
            Via::Span | Via::OlderSpan => "span",
            Via::Log => "log",
            Via::RequestLog => "request_log",
        };
        let entry = expected.entry(source).or_default();
        entry.0 += 1;
        entry.1 += call.response_bytes;
        entry.2 += call.request_bytes.unwrap_or(0);
    }
    let expected: Vec<Vec<Value>> = expected
        .into_iter()
        .map(|(source, (n, response, request))| {
            let request = if request == 0 {
                Value::Null
            } else {
                json!(request)
            };
            vec![json!(source), json!(n), json!(n), json!(response), request]
        })
        .collect();
    assert_eq!(sources, expected);
    let older = daemon.rows(
        "SELECT count(*), min(http_response_body_size) FROM spans \
         WHERE attributes['http.response_content_length'] IS NOT NULL",
    );
    assert_eq!(older, [[json!(4), json!(50_000)]]);

    // payload_stats over the whole story.
    let window = format!("'{}', '{}'", rfc3339(base), rfc3339(base + 2 * 3600));
    let rows = daemon.records(&format!("SELECT * FROM payload_stats({window})"));
    let mut groups: BTreeMap<(String, &str), Vec<&Call>> = BTreeMap::new();
    for call in &calls {
        groups
            .entry((call.endpoint(), call.client))
            .or_default()
            .push(call);
    }
    let endpoint_sizes = |endpoint: &str| -> Vec<f64> {
        calls
            .iter()
            .filter(|c| c.endpoint() == endpoint)
            .map(|c| c.response_bytes as f64)
            .collect()
    };
    assert_eq!(rows.len(), groups.len(), "{rows:?}");
    let mut totals: Vec<i64> = Vec::new();
    for row in &rows {
        let key = (
            row["endpoint"].as_str().unwrap().to_owned(),
            row["client_id"].as_str().unwrap(),
        );
        let mine = &groups[&(key.0.clone(), key.1)];
        let what = format!("{key:?}");
        let sizes: Vec<f64> = mine.iter().map(|c| c.response_bytes as f64).collect();
        let total: i64 = mine.iter().map(|c| c.response_bytes).sum();
        let requests: Option<i64> = mine
            .iter()
            .filter_map(|c| c.request_bytes)
            .reduce(|a, b| a + b);
        let everyone = endpoint_sizes(&key.0);
        assert_eq!(row["service_name"], "catalog");
        assert_eq!(row["calls"], json!(mine.len()), "{what}");
        close(&row["response_bytes_p50"], quantile(&sizes, 0.5), &what);
        close(&row["response_bytes_p95"], quantile(&sizes, 0.95), &what);
        assert_eq!(
            row["response_bytes_max"],
            json!(mine.iter().map(|c| c.response_bytes).max().unwrap()),
            "{what}"
        );
        assert_eq!(row["response_bytes_total"], json!(total), "{what}");
        assert_eq!(row["request_bytes_total"], json!(requests), "{what}");
        close(
            &row["share_of_endpoint_bytes"],
            total as f64 / everyone.iter().sum::<f64>(),
            &what,
        );
        close(
            &row["endpoint_response_bytes_p95"],
            quantile(&everyone, 0.95),
            &what,
        );
        totals.push(total);
    }
    assert!(
        totals.windows(2).all(|pair| pair[0] >= pair[1]),
        "largest first: {totals:?}"
    );
    assert_eq!(rows[0]["client_id"], "batch");

    // Deploys: 2.0.0 reaching production after 1.9.0 there, though staging had it from the
    // start; and 2.0.0 in staging on its own, with nothing before it.
    let deployed = |from_s: i64, to_s: i64| {
        daemon.records(&format!(
            "SELECT * FROM deploys('{}', '{}') ORDER BY endpoint",
            rfc3339(from_s),
            rfc3339(to_s)
        ))
    };
    let production = deployed(base + 50 * MINUTE_S, base + 2 * 3600);
    let at = base + 60 * MINUTE_S;
    let compared = |endpoint: &str, before: bool| -> Vec<&Call> {
        calls
            .iter()
            .filter(|c| c.environment == "production" && c.endpoint() == endpoint)
            .filter(|c| {
                if before {
                    c.time_s >= at - 30 * MINUTE_S && c.time_s < at
                } else {
                    c.time_s >= at && c.time_s < at + 30 * MINUTE_S
                }
            })
            .collect()
    };
    assert_eq!(production.len(), 2, "{production:?}");
    for (row, endpoint) in production.iter().zip(["GET /v1/export", "GET /v1/items"]) {
        assert_eq!(row["endpoint"], endpoint);
        assert_eq!(row["service_version"], "2.0.0");
        assert_eq!(row["previous_version"], "1.9.0");
        assert_eq!(row["deployment_environment"], "production");
        assert_eq!(seconds(&row["deployed_at"]), at as f64);
        let (before, after) = (compared(endpoint, true), compared(endpoint, false));
        assert_eq!(row["calls_before"], json!(before.len()), "{endpoint}");
        assert_eq!(row["calls_after"], json!(after.len()), "{endpoint}");
        let failed = after.iter().filter(|c| c.status >= 500).count();
        close(
            &row["error_rate_after"],
            failed as f64 / after.len() as f64,
            endpoint,
        );
    }
    let staging = deployed(base - MINUTE_S, base + 10 * MINUTE_S);
    assert_eq!(staging.len(), 1, "{staging:?}");
    assert_eq!(staging[0]["deployment_environment"], "staging");
    assert_eq!(staging[0]["previous_version"], Value::Null);
    assert_eq!(staging[0]["calls_after"], json!(5));

    // traffic_shift names the production deploy on the rows of what it served.
    let shift = daemon.rows(&format!(
        "SELECT DISTINCT deploys FROM traffic_shift('{}', '{}')",
        rfc3339(at),
        rfc3339(at + 3600)
    ));
    assert_eq!(
        shift,
        [[json!(format!(
            "catalog 2.0.0 (production) at {}",
            rfc3339(at)
        ))]]
    );
}
