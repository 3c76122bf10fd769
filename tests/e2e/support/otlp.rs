//! OTLP/JSON requests written by hand, and sending them over OTLP/HTTP.

use serde_json::{Value, json};
use std::io::Write;

use crate::now_ns;
use crate::support::daemon::{Daemon, http};

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

/// Posts request-log `lines` (NDJSON) to `/api/v1/requests`, which must accept them.
pub(crate) fn post_request_lines(daemon: &Daemon, lines: String) {
    let (status, answer) = post(
        daemon,
        "/api/v1/requests",
        "application/x-ndjson",
        None,
        lines.into_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
}
