//! Hand-written OTLP/JSON per the specification: hex ids, lowerCamelCase keys, enums as
//! integers, 64-bit integers as strings or numbers, unknown fields present.

use std::io::Write;

use serde_json::{Value, json};

use crate::daemon::{Daemon, http};
use crate::now_ns;

/// A span in OTLP/JSON.
pub(crate) fn span(
    trace_id: &str,
    span_id: &str,
    name: &str,
    kind: i64,
    start_ns: i64,
    duration_ms: i64,
    attributes: Value,
) -> Value {
    json!({
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "kind": kind,
        // Both spellings of a 64-bit integer are allowed: string and number.
        "startTimeUnixNano": start_ns.to_string(),
        "endTimeUnixNano": start_ns + duration_ms * 1_000_000,
        "attributes": attributes,
        "droppedAttributesCount": 0,
        "someFutureField": {"ignored": true},
    })
}

/// A trace export of `spans` from `service`.
pub(crate) fn traces(service: &str, spans: Vec<Value>) -> Value {
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": service}},
                {"key": "deployment.environment.name", "value": {"stringValue": "staging"}},
            ]},
            "scopeSpans": [{"scope": {"name": "handmade", "version": "1"}, "spans": spans}],
            "schemaUrl": "https://opentelemetry.io/schemas/1.26.0",
        }]
    })
}

/// The ids of one load request: `count` span ids unique to `client` and request `n`, and the
/// OTLP/JSON body of one server span per id (1 ms long, starting now) from `service`.
pub(crate) fn load_request(
    service: &str,
    client: u64,
    n: u64,
    count: u64,
) -> (Vec<String>, Vec<u8>) {
    let ids: Vec<String> = (0..count)
        .map(|i| hex_id((client << 40) | (n << 8) | i, 8))
        .collect();
    let spans = ids
        .iter()
        .map(|id| {
            span(
                &hex_id(client + 1, 16),
                id,
                "GET /load",
                2,
                now_ns() - 1_000_000,
                1,
                json!([]),
            )
        })
        .collect();
    let body = serde_json::to_vec(&traces(service, spans)).unwrap();
    (ids, body)
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// POSTs `body` to an OTLP/HTTP path; returns the status and the body.
pub(crate) fn post(
    daemon: &Daemon,
    path: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut request = http()
        .post(format!("{}{path}", daemon.otlp_http_endpoint()))
        .header("content-type", content_type);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.body(body).send().unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().unwrap().to_vec())
}

pub(crate) fn hex_id(n: u64, bytes: usize) -> String {
    format!("{n:0width$x}", width = bytes * 2)
}

#[test]
fn handwritten_json_traces_and_logs_with_gzip_and_partial_success() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let start = now_ns() - 60_000_000_000;
    let attrs = json!([
        {"key": "http.request.method", "value": {"stringValue": "PUT"}},
        {"key": "url.path", "value": {"stringValue": "/v3/carts/123e4567-e89b-12d3-a456-426614174000"}},
        // intValue as a string (the canonical JSON form) ...
        {"key": "http.response.status_code", "value": {"intValue": "500"}},
        {"key": "client.address", "value": {"stringValue": "203.0.113.5"}},
        {"key": "retries", "value": {"intValue": 2}},
        {"key": "ratio", "value": {"doubleValue": 0.25}},
        {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "1"}]}}},
    ]);
    let good = span(
        &hex_id(0xabc, 16),
        &hex_id(1, 8),
        "PUT cart",
        2,
        start,
        40,
        attrs,
    );
    let mut bad = span(
        &hex_id(0xabc, 8),
        &hex_id(2, 8),
        "bad id",
        2,
        start,
        40,
        json!([]),
    );
    bad["traceId"] = json!(hex_id(0xabc, 8));
    let client = span(
        &hex_id(0xabc, 16),
        &hex_id(3, 8),
        "redis GET",
        3,
        start,
        2,
        json!([
            {"key": "db.system.name", "value": {"stringValue": "redis"}},
            // ... and as a number.
            {"key": "server.port", "value": {"intValue": 6379}},
        ]),
    );
    let body = serde_json::to_vec(&traces("cart", vec![good, bad, client])).unwrap();
    let (status, answer) = post(
        &daemon,
        "/v1/traces",
        "application/json",
        Some("gzip"),
        gzip(&body),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        answer["partialSuccess"]["rejectedSpans"],
        json!("1"),
        "{answer}"
    );
    let message = answer["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(message.contains("trace_id must be 16 bytes"), "{message}");

    let count = daemon.wait_for_count("SELECT count(*) FROM spans WHERE service_name = 'cart'", 2);
    assert_eq!(count, 2);
    let rows = daemon.rows(
        "SELECT endpoint, http_status_code, is_error, client_id, api_version, duration_ms, trace_id, \
         deployment_environment, scope_name, attributes['retries'], attributes['tags'] \
         FROM spans WHERE span_kind = 'server'",
    );
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row[0], json!("PUT /v3/carts/{id}"));
    assert_eq!(row[1], json!(500));
    assert_eq!(row[2], json!(true));
    assert_eq!(row[3], json!("203.0.113.5"));
    assert_eq!(row[4], json!("v3"));
    assert_eq!(row[5], json!(40.0));
    assert_eq!(row[6], json!(hex_id(0xabc, 16)));
    assert_eq!(row[7], json!("staging"));
    assert_eq!(row[8], json!("handmade"));
    assert_eq!(row[9], json!("2"));
    assert_eq!(row[10], json!("[\"a\",1]"));
    let dependency =
        daemon.rows("SELECT dependency, server_port FROM spans WHERE span_kind = 'client'");
    assert_eq!(dependency, vec![vec![json!("redis"), json!(6379)]]);

    // Logs: one with a time, one with only an observed time, one with a structured body.
    let t = now_ns() - 30_000_000_000;
    let logs = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "cart"}},
                                    {"key": "host.cores", "value": {"intValue": "8"}}]},
        "scopeLogs": [{"scope": {"name": "cart.log"}, "logRecords": [
            {"timeUnixNano": t.to_string(), "severityNumber": 17, "severityText": "ERROR",
             "body": {"stringValue": "payment declined"}, "traceId": hex_id(0xabc, 16), "spanId": hex_id(1, 8),
             "attributes": [{"key": "order.id", "value": {"intValue": "991"}}]},
            {"observedTimeUnixNano": t + 1, "severityNumber": 9, "body": {"stringValue": "retrying"}},
            {"timeUnixNano": (t + 2).to_string(), "severityNumber": 9,
             "body": {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": true}}]}}},
        ]}]
    }]});
    let (status, answer) = post(
        &daemon,
        "/v1/logs",
        "application/json",
        None,
        serde_json::to_vec(&logs).unwrap(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM logs", 3), 3);
    let rows = daemon.rows(
        "SELECT severity_text, body, trace_id, attributes['order.id'], scope_name, \
         CAST(time AS BIGINT) = CAST(observed_time AS BIGINT), to_json(resource_attributes) \
         FROM logs ORDER BY time",
    );
    for row in &rows {
        assert_eq!(row[6], json!(r#"{"host.cores":"8","service.name":"cart"}"#));
    }
    assert_eq!(rows[0][0], json!("ERROR"));
    assert_eq!(rows[0][1], json!("payment declined"));
    assert_eq!(rows[0][2], json!(hex_id(0xabc, 16)));
    assert_eq!(rows[0][3], json!("991"));
    assert_eq!(rows[0][4], json!("cart.log"));
    assert_eq!(rows[1][1], json!("retrying"));
    assert_eq!(
        rows[1][5],
        json!(true),
        "a record without a time takes its observed time"
    );
    assert_eq!(rows[1][2], json!(null));
    assert_eq!(rows[2][1], json!("{\"k\":true}"));
}
