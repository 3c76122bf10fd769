use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span::Event};

use super::*;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

fn i(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}

fn span(name: &str, kind: SpanKind, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![0xab; 16],
        span_id: vec![0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: 1_795_773_600_000_000_000,
        end_time_unix_nano: 1_795_773_600_250_000_000,
        attributes,
        ..Default::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", "checkout"), s("service.version", "1.4.2")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn text(batch: &RecordBatch, column: &str, row: usize) -> Option<String> {
    let array = batch.column_by_name(column).unwrap().as_string::<i32>();
    array.is_valid(row).then(|| array.value(row).to_owned())
}

#[test]
fn current_conventions() {
    let server = span(
        "GET /v2/orders/{id}",
        SpanKind::Server,
        vec![
            s("http.request.method", "GET"),
            s("http.route", "/v2/orders/{id}"),
            i("http.response.status_code", 503),
            s("url.path", "/v2/orders/17"),
            s("client.address", "10.0.0.9"),
            s("app.client_id", "mobile-ios"),
        ],
    );
    let decoded = SpanDecoder::default().decode(&request(vec![server]));
    let batch = decoded.batch.unwrap();
    assert_eq!(decoded.rejections.count, 0);
    assert_eq!(
        text(&batch, "endpoint", 0).as_deref(),
        Some("GET /v2/orders/{id}")
    );
    assert_eq!(text(&batch, "client_id", 0).as_deref(), Some("mobile-ios"));
    assert_eq!(text(&batch, "api_version", 0).as_deref(), Some("v2"));
    assert_eq!(text(&batch, "service_version", 0).as_deref(), Some("1.4.2"));
    assert_eq!(text(&batch, "trace_id", 0).unwrap(), "ab".repeat(16));
    assert_eq!(
        text(&batch, "span_id", 0).as_deref(),
        Some("0102030405060708")
    );
    assert_eq!(text(&batch, "parent_span_id", 0), None);
    assert_eq!(text(&batch, "dependency", 0), None);
    let status = batch
        .column_by_name("http_status_code")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert_eq!(status.value(0), 503);
    let duration = batch
        .column_by_name("duration_ns")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(duration.value(0), 250_000_000);
    assert!(
        batch
            .column_by_name("is_error")
            .unwrap()
            .as_boolean()
            .value(0)
    );
}

#[test]
fn older_conventions_and_client_spans() {
    let old_server = span(
        "HTTP GET",
        SpanKind::Server,
        vec![
            s("http.method", "POST"),
            s("http.target", "/users/42/cart?coupon=x"),
            s("http.status_code", "404"),
            s("http.client_ip", "192.0.2.1"),
            s("http.user_agent", "curl/8"),
        ],
    );
    let mut old_client = span(
        "GET",
        SpanKind::Client,
        vec![
            s("http.method", "GET"),
            s("http.url", "https://inventory.internal:8443/items/9?x=1"),
            i("http.status_code", 404),
        ],
    );
    old_client.parent_span_id = vec![9; 8];
    let db = span(
        "SELECT",
        SpanKind::Client,
        vec![
            s("db.system", "postgresql"),
            s("db.name", "shop"),
            s("net.peer.name", "db1"),
        ],
    );
    let decoded = SpanDecoder::default().decode(&request(vec![old_server, old_client, db]));
    let batch = decoded.batch.unwrap();
    assert_eq!(
        text(&batch, "endpoint", 0).as_deref(),
        Some("POST /users/{id}/cart")
    );
    assert_eq!(
        text(&batch, "url_path", 0).as_deref(),
        Some("/users/42/cart")
    );
    assert_eq!(text(&batch, "client_id", 0).as_deref(), Some("192.0.2.1"));
    assert_eq!(text(&batch, "user_agent", 0).as_deref(), Some("curl/8"));
    // A 404 on a server span is the client's problem, not an error of the endpoint.
    let is_error = batch.column_by_name("is_error").unwrap().as_boolean();
    assert!(!is_error.value(0));
    assert_eq!(
        text(&batch, "dependency", 1).as_deref(),
        Some("inventory.internal:8443")
    );
    assert_eq!(text(&batch, "parent_span_id", 1).unwrap(), "09".repeat(8));
    assert!(
        is_error.value(1),
        "a 404 answered to a client span is an error"
    );
    assert_eq!(
        text(&batch, "dependency", 2).as_deref(),
        Some("postgresql/shop")
    );
    assert_eq!(text(&batch, "endpoint", 2).as_deref(), Some("SELECT"));
    assert_eq!(text(&batch, "span_kind", 2).as_deref(), Some("client"));
}

#[test]
fn status_and_exception_events() {
    let mut failed = span("work", SpanKind::Internal, vec![]);
    failed.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "boom".into(),
    });
    failed.events = vec![Event {
        time_unix_nano: 1_795_773_600_100_000_000,
        name: "exception".into(),
        attributes: vec![s("exception.type", "TimeoutError")],
        ..Default::default()
    }];
    let batch = SpanDecoder::default()
        .decode(&request(vec![failed]))
        .batch
        .unwrap();
    assert_eq!(text(&batch, "status_code", 0).as_deref(), Some("error"));
    assert_eq!(text(&batch, "status_message", 0).as_deref(), Some("boom"));
    assert_eq!(
        text(&batch, "error_type", 0).as_deref(),
        Some("TimeoutError")
    );
    assert!(
        batch
            .column_by_name("is_error")
            .unwrap()
            .as_boolean()
            .value(0)
    );
    let events = batch.column_by_name("events").unwrap().as_list::<i32>();
    assert_eq!(events.value_length(0), 1);
}

#[test]
fn invalid_spans_are_rejected_and_counted() {
    let good = span("ok", SpanKind::Server, vec![]);
    let mut short_id = span("short", SpanKind::Server, vec![]);
    short_id.trace_id = vec![1; 8];
    let mut backwards = span("backwards", SpanKind::Server, vec![]);
    backwards.end_time_unix_nano = backwards.start_time_unix_nano - 1;
    let decoded = SpanDecoder::default().decode(&request(vec![good, short_id, backwards]));
    assert_eq!(decoded.batch.unwrap().num_rows(), 1);
    assert_eq!(decoded.rejections.count, 2);
    let message = decoded.rejections.message();
    assert!(message.contains("trace_id must be 16 bytes"), "{message}");
    assert!(message.contains("before start_time_unix_nano"), "{message}");
}

#[test]
fn configured_client_id_keys() {
    let decoder = SpanDecoder {
        client_id_keys: vec!["tenant".into()],
        ..SpanDecoder::default()
    };
    let attrs = vec![s("tenant", "acme"), s("client.id", "ignored")];
    let batch = decoder
        .decode(&request(vec![span("x", SpanKind::Server, attrs)]))
        .batch
        .unwrap();
    assert_eq!(text(&batch, "client_id", 0).as_deref(), Some("acme"));
}
