use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::Event};
use prost::Message;

use super::*;
use crate::testing::{i, kv, s};

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

/// An export of `spans` from one service, in protobuf.
fn request(spans: Vec<Span>) -> Vec<u8> {
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
    .encode_to_vec()
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
    let decoded = SpanDecoder::default()
        .decode(&request(vec![server]))
        .unwrap();
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
    let decoded = SpanDecoder::default()
        .decode(&request(vec![old_server, old_client, db]))
        .unwrap();
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
        .unwrap()
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
    let decoded = SpanDecoder::default()
        .decode(&request(vec![good, short_id, backwards]))
        .unwrap();
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
        .unwrap()
        .batch
        .unwrap();
    assert_eq!(text(&batch, "client_id", 0).as_deref(), Some("acme"));
}

/// A length-delimited field `number` holding `bytes`, as protobuf writes it.
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// Spans with every kind of value, events, links and fields the decoder does not read.
fn rich_spans() -> Vec<Span> {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::span::Link;
    let mut server = span(
        "GET /v1/items/{id}",
        SpanKind::Server,
        vec![
            s("http.request.method", "GET"),
            s("http.route", "/v1/items/{id}"),
            i("http.response.status_code", 500),
            kv("retry", Value::BoolValue(true)),
            kv("ratio", Value::DoubleValue(0.125)),
            kv("blob", Value::BytesValue(vec![0, 0xff, 7])),
            kv(
                "tags",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::StringValue("a".into())),
                    }],
                }),
            ),
            kv(
                "nested",
                Value::KvlistValue(KeyValueList {
                    values: vec![i("depth", 2)],
                }),
            ),
            KeyValue {
                key: "no.value".into(),
                value: None,
                ..Default::default()
            },
            s("ünïcode", "→ ok"),
        ],
    );
    server.trace_state = "vendor=1".into();
    server.links = vec![Link {
        trace_id: vec![7; 16],
        span_id: vec![7; 8],
        ..Default::default()
    }];
    server.dropped_attributes_count = 3;
    server.flags = 0x101;
    server.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "failed".into(),
    });
    server.events = vec![
        Event {
            time_unix_nano: 1_795_773_600_100_000_000,
            name: "exception".into(),
            attributes: vec![s("exception.type", "IOError"), i("attempt", 2)],
            ..Default::default()
        },
        Event {
            time_unix_nano: u64::MAX,
            name: "late".into(),
            ..Default::default()
        },
    ];
    let mut client = span("SELECT", SpanKind::Client, vec![s("db.system", "mysql")]);
    client.parent_span_id = vec![9; 8];
    let mut invalid = span("bad", SpanKind::Server, vec![]);
    invalid.span_id = vec![0; 8];
    vec![server, client, invalid]
}

/// What the decoder makes of `payload`, against what it makes of the same request decoded
/// by the generated (prost) decoder and encoded again: equal when both read it, and both
/// refuse the same payloads.
fn decoded_as_prost_reads_it(payload: &[u8]) -> Option<(RecordBatch, i64)> {
    let ours = SpanDecoder::default().decode(payload);
    let Ok(theirs) = ExportTraceServiceRequest::decode(payload) else {
        assert!(
            ours.is_err(),
            "prost refuses {payload:?}, the decoder does not"
        );
        return None;
    };
    let ours =
        ours.unwrap_or_else(|error| panic!("prost reads a payload the decoder refuses: {error}"));
    let canonical = SpanDecoder::default()
        .decode(&theirs.encode_to_vec())
        .unwrap();
    assert_eq!(ours.batch, canonical.batch);
    assert_eq!(ours.rejections.message(), canonical.rejections.message());
    ours.batch.map(|batch| (batch, ours.rejections.count))
}

#[test]
fn reads_protobuf_as_the_generated_decoder_does() {
    let payload = request(rich_spans());
    let (batch, rejected) = decoded_as_prost_reads_it(&payload).unwrap();
    assert_eq!((batch.num_rows(), rejected), (2, 1));
    let attributes = batch.column_by_name("attributes").unwrap().as_map();
    let entries = attributes.value(0);
    let keys = entries.column(0).as_string::<i32>();
    let values = entries.column(1).as_string::<i32>();
    let read: Vec<(&str, Option<&str>)> = keys
        .iter()
        .zip(values.iter())
        .map(|(k, v)| (k.unwrap(), v))
        .collect();
    assert_eq!(
        read[3..],
        [
            ("retry", Some("true")),
            ("ratio", Some("0.125")),
            ("blob", Some("00ff07")),
            ("tags", Some("[\"a\"]")),
            ("nested", Some("{\"depth\":2}")),
            ("no.value", None),
            ("ünïcode", Some("→ ok")),
        ]
    );
    assert_eq!(text(&batch, "error_type", 0).as_deref(), Some("IOError"));
    assert_eq!(text(&batch, "status_message", 0).as_deref(), Some("failed"));
    assert_eq!(text(&batch, "dependency", 1).as_deref(), Some("mysql"));
    let events = batch.column_by_name("events").unwrap().as_list::<i32>();
    assert_eq!(events.value_length(0), 2);

    // Every prefix of the payload: refused by both, or read alike.
    for end in 0..payload.len() {
        decoded_as_prost_reads_it(&payload[..end]);
    }

    // Messages sent in pieces are merged: the later name wins, lists grow, and a resource
    // sent twice keeps the attributes of both.
    let first = span("first", SpanKind::Server, vec![s("a", "1")]).encode_to_vec();
    let more = Span {
        name: "second".into(),
        attributes: vec![s("b", "2")],
        ..Default::default()
    }
    .encode_to_vec();
    let scope = field(2, &[first, more].concat());
    let resource = |key, value| {
        let attributes = vec![s(key, value)];
        Resource {
            attributes,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let resource_spans = [
        field(2, &scope),
        field(1, &resource("service.name", "pieces")),
        field(1, &resource("service.version", "9")),
    ]
    .concat();
    let payload = field(1, &resource_spans);
    let (batch, _) = decoded_as_prost_reads_it(&payload).unwrap();
    assert_eq!(text(&batch, "span_name", 0).as_deref(), Some("second"));
    assert_eq!(text(&batch, "service_name", 0).as_deref(), Some("pieces"));
    assert_eq!(text(&batch, "service_version", 0).as_deref(), Some("9"));
    let attributes = batch.column_by_name("attributes").unwrap().as_map();
    assert_eq!(attributes.value(0).len(), 2);

    // A field the decoder reads, sent with the wrong wire type, refuses the whole payload.
    let mut wrong = field(5, b"x");
    wrong.extend([0x38, 0x01]); // start_time_unix_nano (7) as a varint
    let payload = field(1, &field(2, &field(2, &wrong)));
    let error = SpanDecoder::default().decode(&payload).unwrap_err();
    assert!(
        error.to_string().contains("Span.start_time_unix_nano"),
        "{error}"
    );
    assert!(ExportTraceServiceRequest::decode(payload.as_slice()).is_err());
}
