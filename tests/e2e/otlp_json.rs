//! Hand-written OTLP/JSON per the specification: hex ids, lowerCamelCase keys, enums as
//! integers, 64-bit integers as strings or numbers, unknown fields present.

use serde_json::{Value, json};

use crate::now_ns;
use crate::support::daemon::Daemon;
use crate::support::otlp::{gzip, hex_id, post, span, traces};

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
