//! Grafana's trace view against apiscope: the requests Grafana's Jaeger and Tempo data sources
//! send (paths, parameters, headers; time bounds in milliseconds and in microseconds),
//! answered over traces sent by the OpenTelemetry Rust and Python SDKs and by hand, and
//! decoded as strictly as Grafana decodes them. Expected traces are what the test sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prost::Message;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::daemon::{Daemon, http};
use crate::support::otlp::{hex_id, post, span, traces};
use crate::support::python::send_with_python_sdk;

/// One span as the test sent it.
#[derive(Debug, Clone)]
struct Sent {
    trace_id: String,
    span_id: String,
    parent: Option<String>,
    service: String,
    name: String,
    kind: &'static str,
    start_ns: i64,
    end_ns: i64,
    attributes: BTreeMap<String, String>,
    events: Vec<(String, i64, BTreeMap<String, String>)>,
    /// Links: trace id, span id, attributes.
    links: Vec<(String, String, BTreeMap<String, String>)>,
    error: bool,
}

fn ns(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// GETs `path` of the query port with `accept`; the status and the body.
fn get(daemon: &Daemon, path: &str, accept: Option<&str>) -> (u16, Vec<u8>) {
    let mut request = http().get(format!("{}{path}", daemon.query_url()));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().unwrap().to_vec())
}

fn get_json(daemon: &Daemon, path: &str) -> Value {
    let (status, body) = get(daemon, path, None);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// `text` percent-encoded for a query string, as a browser sends it.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A trace from the Rust SDK across two services: a server span calling a database and another
/// service, whose server span fails; explicit times so that every microsecond is known.
fn send_with_rust_sdk(daemon: &Daemon) -> Vec<Sent> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let provider = |service: &str| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(daemon.grpc_endpoint())
            .build()
            .unwrap();
        SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(service.to_owned())
                    .with_attribute(KeyValue::new("host.name", format!("{service}-1")))
                    .build(),
            )
            .build()
    };
    let storefront = provider("storefront");
    let orders = provider("orders");
    let base = SystemTime::now() - Duration::from_secs(60);
    let at = |us: u64| base + Duration::from_micros(us);
    let mut sent = Vec::new();
    let mut emit = |provider: &SdkTracerProvider,
                    service: &str,
                    parent: Option<&Sent>,
                    name: &str,
                    kind: SpanKind,
                    (start_us, end_us): (u64, u64),
                    attributes: Vec<(&str, &str)>,
                    event: Option<(&str, u64, (&str, &str))>,
                    link: Option<(&str, &str)>,
                    error: bool|
     -> Sent {
        let tracer = provider.tracer("e2e.traces");
        let cx = match parent {
            Some(parent) => {
                let context = opentelemetry::trace::SpanContext::new(
                    opentelemetry::trace::TraceId::from_hex(&parent.trace_id).unwrap(),
                    opentelemetry::trace::SpanId::from_hex(&parent.span_id).unwrap(),
                    opentelemetry::trace::TraceFlags::SAMPLED,
                    true,
                    Default::default(),
                );
                Context::new().with_remote_span_context(context)
            }
            None => Context::new(),
        };
        let kind_name = match kind {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            _ => "internal",
        };
        let links: Vec<(String, String, BTreeMap<String, String>)> = link
            .map(|(trace, span)| {
                let attributes = BTreeMap::from([("link.kind".to_owned(), "batch".to_owned())]);
                (trace.to_owned(), span.to_owned(), attributes)
            })
            .into_iter()
            .collect();
        let mut span = tracer
            .span_builder(name.to_owned())
            .with_links(
                links
                    .iter()
                    .map(|(trace, span, _)| {
                        let context = opentelemetry::trace::SpanContext::new(
                            opentelemetry::trace::TraceId::from_hex(trace).unwrap(),
                            opentelemetry::trace::SpanId::from_hex(span).unwrap(),
                            opentelemetry::trace::TraceFlags::SAMPLED,
                            true,
                            Default::default(),
                        );
                        opentelemetry::trace::Link::new(
                            context,
                            vec![KeyValue::new("link.kind", "batch")],
                            0,
                        )
                    })
                    .collect(),
            )
            .with_kind(kind)
            .with_start_time(at(start_us))
            .with_attributes(
                attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
            .start_with_context(&tracer, &cx);
        let mut events = Vec::new();
        if let Some((event, time_us, (key, value))) = event {
            span.add_event_with_timestamp(
                event.to_owned(),
                at(time_us),
                vec![KeyValue::new(key.to_owned(), value.to_owned())],
            );
            events.push((
                event.to_owned(),
                ns(at(time_us)),
                BTreeMap::from([(key.to_owned(), value.to_owned())]),
            ));
        }
        if error {
            span.set_status(Status::error("payment declined"));
        }
        let context = span.span_context().clone();
        span.end_with_timestamp(at(end_us));
        let one = Sent {
            trace_id: context.trace_id().to_string(),
            span_id: context.span_id().to_string(),
            parent: parent.map(|p| p.span_id.clone()),
            service: service.to_owned(),
            name: name.to_owned(),
            kind: kind_name,
            start_ns: ns(at(start_us)),
            end_ns: ns(at(end_us)),
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            events,
            links,
            error,
        };
        sent.push(one.clone());
        one
    };
    let root = emit(
        &storefront,
        "storefront",
        None,
        "POST /v2/orders",
        SpanKind::Server,
        (0, 48_250),
        vec![
            ("http.request.method", "POST"),
            ("http.route", "/v2/orders"),
            ("http.response.status_code", "502"),
        ],
        Some(("cart loaded", 1_500, ("cart.items", "3"))),
        None,
        false,
    );
    emit(
        &storefront,
        "storefront",
        Some(&root),
        "SELECT carts",
        SpanKind::Client,
        (1_000, 4_125),
        vec![("db.system.name", "postgresql"), ("db.namespace", "shop")],
        None,
        None,
        false,
    );
    let call = emit(
        &storefront,
        "storefront",
        Some(&root),
        "POST",
        SpanKind::Client,
        (5_000, 47_900),
        vec![
            ("http.request.method", "POST"),
            ("server.address", "orders"),
        ],
        None,
        None,
        false,
    );
    emit(
        &orders,
        "orders",
        Some(&call),
        "POST /orders",
        SpanKind::Server,
        (5_400, 47_100),
        vec![
            ("http.request.method", "POST"),
            ("http.route", "/orders"),
            ("http.response.status_code", "500"),
        ],
        Some(("exception", 46_000, ("exception.type", "CardDeclined"))),
        Some(("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")),
        true,
    );
    storefront.shutdown().unwrap();
    orders.shutdown().unwrap();
    sent
}

/// Checks a Jaeger trace for what Grafana's trace view relies on, and returns its spans by id.
fn check_jaeger_trace(trace: &Value) -> HashMap<String, Value> {
    let processes = trace["processes"].as_object().expect("processes");
    let spans = trace["spans"].as_array().expect("spans");
    assert!(!spans.is_empty(), "a trace without spans: {trace}");
    let mut by_id = HashMap::new();
    for span in spans {
        let id = span["spanID"].as_str().unwrap().to_owned();
        let process = span["processID"].as_str().unwrap();
        assert!(
            processes.contains_key(process),
            "{process} does not resolve"
        );
        assert!(span["startTime"].as_i64().unwrap() > 0, "{span}");
        assert!(span["duration"].as_i64().unwrap() >= 0, "{span}");
        assert_eq!(span["traceID"], trace["traceID"]);
        if let Some(first) = span["references"].as_array().unwrap().first() {
            let kind = first["refType"].as_str().unwrap();
            assert!(kind == "CHILD_OF" || kind == "FOLLOWS_FROM", "{first}");
        }
        assert!(
            by_id.insert(id, span.clone()).is_none(),
            "duplicate span id in {trace}"
        );
    }
    // Every reference resolves, and no chain of parents loops.
    for span in spans {
        let mut seen = BTreeSet::new();
        let mut current = span.clone();
        while let Some(parent) = current["references"]
            .as_array()
            .unwrap()
            .first()
            .filter(|r| r["traceID"] == trace["traceID"])
        {
            let parent_id = parent["spanID"].as_str().unwrap();
            assert!(
                seen.insert(parent_id.to_owned()),
                "a loop through {parent_id}"
            );
            current = by_id
                .get(parent_id)
                .expect("a reference to a missing span")
                .clone();
        }
    }
    by_id
}

fn tags(tags: &Value) -> BTreeMap<String, Value> {
    tags.as_array()
        .unwrap()
        .iter()
        .map(|t| (t["key"].as_str().unwrap().to_owned(), t["value"].clone()))
        .collect()
}

/// The Jaeger answer for one trace equals what was sent, span for span.
fn check_against_sent(trace: &Value, sent: &[Sent]) {
    let by_id = check_jaeger_trace(trace);
    assert_eq!(by_id.len(), sent.len(), "{trace}");
    let processes = &trace["processes"];
    for one in sent {
        let span = by_id
            .get(&one.span_id)
            .unwrap_or_else(|| panic!("{one:?} missing"));
        assert_eq!(span["operationName"], json!(one.name));
        assert_eq!(
            span["startTime"],
            json!(one.start_ns / 1_000),
            "{}",
            one.name
        );
        assert_eq!(
            span["duration"],
            json!((one.end_ns - one.start_ns) / 1_000),
            "{}",
            one.name
        );
        let references = span["references"].as_array().unwrap();
        let mut expected = Vec::new();
        if let Some(parent) = &one.parent {
            expected
                .push(json!({"refType": "CHILD_OF", "traceID": one.trace_id, "spanID": parent}));
        }
        for (trace, span, _) in &one.links {
            expected.push(json!({"refType": "FOLLOWS_FROM", "traceID": trace, "spanID": span}));
        }
        assert_eq!(references, &expected, "{}", one.name);
        let got = tags(&span["tags"]);
        for (key, value) in &one.attributes {
            assert_eq!(got.get(key), Some(&json!(value)), "{key} of {}", one.name);
        }
        assert_eq!(got.get("span.kind"), Some(&json!(one.kind)));
        if one.error {
            assert_eq!(got.get("error"), Some(&json!(true)));
            assert_eq!(got.get("otel.status_code"), Some(&json!("ERROR")));
        }
        let logs = span["logs"].as_array().unwrap();
        assert_eq!(logs.len(), one.events.len(), "{}", one.name);
        for (log, (name, time_ns, attributes)) in logs.iter().zip(&one.events) {
            assert_eq!(log["timestamp"], json!(time_ns / 1_000));
            let fields = tags(&log["fields"]);
            assert_eq!(fields.get("event"), Some(&json!(name)));
            for (key, value) in attributes {
                assert_eq!(fields.get(key), Some(&json!(value)));
            }
        }
        let process = &processes[span["processID"].as_str().unwrap()];
        assert_eq!(process["serviceName"], json!(one.service));
        assert_eq!(
            tags(&process["tags"]).get("service.name"),
            Some(&json!(one.service))
        );
    }
}

/// Tempo's search answer, with unknown fields refused as Grafana's decoder refuses them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SearchResponse {
    traces: Vec<TraceSearchMetadata>,
    #[allow(dead_code)]
    metrics: Option<SearchMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SearchMetrics {
    #[allow(dead_code)]
    inspected_traces: Option<u32>,
    #[allow(dead_code)]
    inspected_bytes: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
struct TraceSearchMetadata {
    traceID: String,
    rootServiceName: Option<String>,
    rootTraceName: Option<String>,
    startTimeUnixNano: Option<String>,
    durationMs: Option<u32>,
    #[allow(dead_code)]
    spanSet: Option<SpanSet>,
    spanSets: Option<Vec<SpanSet>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
struct SpanSet {
    spans: Vec<SearchSpan>,
    matched: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
struct SearchSpan {
    spanID: String,
    #[allow(dead_code)]
    name: Option<String>,
    startTimeUnixNano: Option<String>,
    durationNanos: Option<String>,
}

fn tempo_search(daemon: &Daemon, query: &str, range: (i64, i64)) -> SearchResponse {
    let path = format!(
        "/api/search?q={}&limit=20&spss=3&start={}&end={}",
        encode(query),
        range.0,
        range.1
    );
    let (status, body) = get(daemon, &path, None);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{query}: {text}");
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{query}: {e}: {text}"))
}

/// Decodes Tempo's protobuf trace (a `TracesData` in field 1 of `TraceByIDResponse` for v2).
fn decode_tempo(body: &[u8], v2: bool) -> TracesData {
    if !v2 {
        return TracesData::decode(body).unwrap();
    }
    let mut buf = body;
    let mut found = None;
    while !buf.is_empty() {
        let (tag, wire) = prost::encoding::decode_key(&mut buf).unwrap();
        if tag == 1 {
            let len = prost::encoding::decode_varint(&mut buf).unwrap() as usize;
            found = Some(TracesData::decode(&buf[..len]).unwrap());
            buf = &buf[len..];
        } else {
            prost::encoding::skip_field(wire, tag, &mut buf, Default::default()).unwrap();
        }
    }
    found.expect("TraceByIDResponse without a trace")
}

#[test]
fn grafana_jaeger_and_tempo_data_sources_see_sdk_traces_span_for_span() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let sent = send_with_rust_sdk(&daemon);
    let trace_id = sent[0].trace_id.clone();
    daemon.wait_for_count(
        &format!("SELECT count(*) FROM spans WHERE trace_id = '{trace_id}'"),
        sent.len() as i64,
    );
    let start_us = sent[0].start_ns / 1_000 - 60_000_000;
    let end_us = sent[0].start_ns / 1_000 + 60_000_000;

    // Jaeger: the health check and the search form's lists.
    let services = get_json(&daemon, "/api/services");
    assert_eq!(services["data"], json!(["orders", "storefront"]));
    let operations = get_json(&daemon, "/api/services/storefront/operations");
    assert_eq!(
        operations["data"],
        json!(["POST", "POST /v2/orders", "SELECT carts"])
    );

    // Trace by id, without bounds and with both units Grafana has sent.
    for query in [
        String::new(),
        format!("?start={}&end={}", start_us / 1_000, end_us / 1_000),
        format!("?start={start_us}&end={end_us}"),
    ] {
        let answer = get_json(&daemon, &format!("/api/traces/{trace_id}{query}"));
        assert_eq!(answer["data"].as_array().unwrap().len(), 1);
        check_against_sent(&answer["data"][0], &sent);
    }
    // Bounds that miss the trace find nothing.
    let (status, _) = get(
        &daemon,
        &format!("/api/traces/{trace_id}?start=1000000&end=2000000"),
        None,
    );
    assert_eq!(status, 404);
    let (status, body) = get(&daemon, &format!("/api/traces/{}", hex_id(7, 16)), None);
    assert_eq!(status, 404);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["errors"][0]["code"], 404);

    // Search as Grafana sends it: tags as JSON, Go durations, microseconds, lookback=custom.
    let search = |params: &str| -> BTreeSet<String> {
        let answer = get_json(
            &daemon,
            &format!("/api/traces?{params}&limit=20&start={start_us}&end={end_us}&lookback=custom"),
        );
        answer["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|trace| {
                check_jaeger_trace(trace);
                trace["traceID"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let found = BTreeSet::from([trace_id.clone()]);
    let none = BTreeSet::new();
    assert_eq!(search("service=storefront"), found);
    assert_eq!(search("service=storefront&operation=SELECT%20carts"), found);
    assert_eq!(
        search("service=storefront&operation=GET%20%2Fnothing"),
        none
    );
    let tags = encode(r#"{"http.route":"/orders","error":"true"}"#);
    assert_eq!(search(&format!("service=orders&tags={tags}")), found);
    // The root answered 502: an error span by apiscope's rule, though its status is unset.
    let tags = encode(r#"{"http.route":"/v2/orders","error":"false"}"#);
    assert_eq!(search(&format!("service=storefront&tags={tags}")), none);
    let tags = encode(r#"{"http.route":"/v2/orders","error":"true"}"#);
    assert_eq!(search(&format!("service=storefront&tags={tags}")), found);
    assert_eq!(search("service=storefront&minDuration=48ms"), found);
    assert_eq!(search("service=storefront&minDuration=48.3ms"), none);
    assert_eq!(
        search("service=storefront&operation=SELECT%20carts&maxDuration=3ms"),
        none
    );
    assert_eq!(
        search("service=storefront&operation=SELECT%20carts&maxDuration=3.2ms"),
        found
    );
    let (status, body) = get(&daemon, "/api/traces?service=x&minDuration=soon", None);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    // Dependencies: storefront calls orders once.
    let dependencies = get_json(
        &daemon,
        &format!(
            "/api/dependencies?endTs={}&lookback=3600000",
            sent[0].start_ns / 1_000_000 + 600_000
        ),
    );
    assert_eq!(
        dependencies["data"],
        json!([{"parent": "storefront", "child": "orders", "callCount": 1}])
    );

    // Tempo: health check, trace by id as protobuf on both paths, 404 for v2 so that
    // Grafana falls back.
    let (status, body) = get(&daemon, "/api/echo", None);
    assert_eq!((status, body.as_slice()), (200, &b"echo"[..]));
    let info = get_json(&daemon, "/api/status/buildinfo");
    assert!(
        info["version"].as_str().unwrap().starts_with("2."),
        "{info}"
    );
    assert!(
        info["revision"].as_str().unwrap().starts_with("apiscope-"),
        "{info}"
    );
    for (path, v2) in [("/api/v2/traces", true), ("/api/traces", false)] {
        let (status, body) = get(
            &daemon,
            &format!(
                "{path}/{trace_id}?start={}&end={}",
                start_us / 1_000_000,
                end_us / 1_000_000
            ),
            Some("application/protobuf"),
        );
        assert_eq!(status, 200, "{path}");
        let data = decode_tempo(&body, v2);
        let mut spans = HashMap::new();
        for resource in &data.resource_spans {
            let attributes = &resource.resource.as_ref().unwrap().attributes;
            let service = attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone());
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    spans.insert(hex::encode(&span.span_id), (service.clone(), span.clone()));
                }
            }
        }
        assert_eq!(spans.len(), sent.len());
        for one in &sent {
            let (service, span) = &spans[&one.span_id];
            assert_eq!(
                *service,
                Some(any_value::Value::StringValue(one.service.clone()))
            );
            assert_eq!(hex::encode(&span.trace_id), one.trace_id);
            assert_eq!(span.name, one.name);
            assert_eq!(span.start_time_unix_nano as i64, one.start_ns);
            assert_eq!(span.end_time_unix_nano as i64, one.end_ns);
            assert_eq!(
                span.parent_span_id
                    .is_empty()
                    .then_some(())
                    .map_or_else(|| Some(hex::encode(&span.parent_span_id)), |_| None),
                one.parent
            );
            assert_eq!(
                span.status.as_ref().unwrap().code,
                if one.error { 2 } else { 0 }
            );
            let attributes: BTreeMap<String, String> = span
                .attributes
                .iter()
                .map(|kv| match kv.value.as_ref().and_then(|v| v.value.clone()) {
                    Some(any_value::Value::StringValue(text)) => (kv.key.clone(), text),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(attributes, one.attributes);
            assert_eq!(span.events.len(), one.events.len());
            let links: Vec<(String, String, BTreeMap<String, String>)> = span
                .links
                .iter()
                .map(|link| {
                    let attributes = link
                        .attributes
                        .iter()
                        .map(|kv| match kv.value.as_ref().and_then(|v| v.value.clone()) {
                            Some(any_value::Value::StringValue(text)) => (kv.key.clone(), text),
                            other => panic!("{other:?}"),
                        })
                        .collect();
                    (
                        hex::encode(&link.trace_id),
                        hex::encode(&link.span_id),
                        attributes,
                    )
                })
                .collect();
            assert_eq!(links, one.links, "{}", one.name);
        }
    }
    let (status, _) = get(
        &daemon,
        &format!("/api/v2/traces/{}", hex_id(7, 16)),
        Some("application/protobuf"),
    );
    assert_eq!(status, 404);

    // TraceQL search, each form the search builder writes.
    let range = (
        sent[0].start_ns / 1_000_000_000 - 60,
        sent[0].start_ns / 1_000_000_000 + 60,
    );
    let hits = |query: &str| -> Vec<String> {
        let answer = tempo_search(&daemon, query, range);
        for trace in &answer.traces {
            assert_eq!(trace.rootServiceName.as_deref(), Some("storefront"));
            assert_eq!(trace.rootTraceName.as_deref(), Some("POST /v2/orders"));
            assert_eq!(trace.durationMs, Some(48));
            assert_eq!(
                trace.startTimeUnixNano.as_deref(),
                Some(sent[0].start_ns.to_string().as_str())
            );
            for set in trace.spanSets.as_ref().unwrap() {
                assert!(!set.spans.is_empty() && set.spans.len() <= 3);
                assert!(set.matched.unwrap() as usize >= set.spans.len());
                for span in &set.spans {
                    let one = sent.iter().find(|s| s.span_id == span.spanID).unwrap();
                    assert_eq!(span.startTimeUnixNano, Some(one.start_ns.to_string()));
                    assert_eq!(
                        span.durationNanos,
                        Some((one.end_ns - one.start_ns).to_string())
                    );
                }
            }
        }
        answer.traces.into_iter().map(|t| t.traceID).collect()
    };
    let found = vec![trace_id.clone()];
    let matched = |query: &str| -> u32 {
        tempo_search(&daemon, query, range).traces[0]
            .spanSets
            .as_ref()
            .unwrap()[0]
            .matched
            .unwrap()
    };
    for (query, expected) in [
        ("{}", &found),
        (r#"{resource.service.name = "orders"}"#, &found),
        (r#"{resource.service.name = "nobody"}"#, &vec![]),
        (
            r#"{resource.host.name = "orders-1" && status = error}"#,
            &found,
        ),
        (r#"{span.http.route = "/orders" && kind = server}"#, &found),
        (r#"{.http.route =~ "/v2/.*"}"#, &found),
        (r#"{.http.route !~ "/.*"}"#, &vec![]),
        (
            r#"{name = "SELECT carts" && duration > 3ms && duration < 3200us}"#,
            &found,
        ),
        (r#"{name = "SELECT carts" && duration > 4ms}"#, &vec![]),
        (r#"{span.http.response.status_code >= 500}"#, &found),
        (r#"{span.http.response.status_code > 502}"#, &vec![]),
        (
            r#"{(name = "nothing" || name = "POST") && kind = client}"#,
            &found,
        ),
        (
            r#"{traceDuration > 48ms && rootServiceName = "storefront"}"#,
            &found,
        ),
        (r#"{traceDuration > 49ms}"#, &vec![]),
        (
            r#"{rootName = "POST /v2/orders" && span.db.system.name != nil}"#,
            &found,
        ),
        (r#"{status = ok}"#, &vec![]),
    ] {
        assert_eq!(&hits(query), expected, "{query}");
    }
    assert_eq!(matched("{}"), 4);
    assert_eq!(matched("{kind = client}"), 2);

    // Anything outside the subset: a 400 that names the part.
    for (query, part) in [
        ("{} | count() > 1", "| count() > 1"),
        (r#"{name = "a"} >> {name = "b"}"#, ">> {name"),
        ("{kind = sideways}", "sideways"),
    ] {
        let (status, body) = get(&daemon, &format!("/api/search?q={}", encode(query)), None);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{query}: {text}");
        assert!(text.contains(part), "{query}: {text}");
    }

    // Tag discovery.
    let window = format!("start={}&end={}", range.0, range.1);
    let tags = get_json(&daemon, &format!("/api/v2/search/tags?{window}"));
    let scope = |name: &str| -> Vec<String> {
        tags["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(scope("span").contains(&"http.route".to_owned()));
    assert!(scope("span").contains(&"db.namespace".to_owned()));
    assert!(scope("resource").contains(&"host.name".to_owned()));
    assert!(scope("intrinsic").contains(&"traceDuration".to_owned()));
    let values = get_json(
        &daemon,
        &format!("/api/v2/search/tag/resource.service.name/values?{window}"),
    );
    assert_eq!(
        values["tagValues"],
        json!([{"type": "string", "value": "orders"}, {"type": "string", "value": "storefront"}])
    );
    let values = get_json(
        &daemon,
        &format!(
            "/api/v2/search/tag/name/values?{window}&q={}",
            encode(r#"{resource.service.name="orders"}"#)
        ),
    );
    assert_eq!(
        values["tagValues"],
        json!([{"type": "string", "value": "POST /orders"}])
    );
    let values = get_json(
        &daemon,
        &format!("/api/search/tag/http.route/values?{window}"),
    );
    assert_eq!(values["tagValues"], json!(["/orders", "/v2/orders"]));

    // The terminal's waterfall, from the daemon by id and by endpoint, then from the store.
    let waterfall = |args: &[&str]| -> Vec<String> {
        let output = Command::new(crate::support::daemon::binary())
            .arg("trace")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {stderr}");
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let url = daemon.query_url();
    let by_id = waterfall(&[&trace_id, "--url", &url, "--width", "20"]);
    check_waterfall(&by_id, &trace_id);
    let by_endpoint = waterfall(&[
        "--endpoint",
        "POST /v2/orders",
        "--slowest",
        "--since",
        "1h",
        "--url",
        &url,
        "--width",
        "20",
    ]);
    assert_eq!(by_endpoint, by_id);
    let output = Command::new(crate::support::daemon::binary())
        .args(["trace", &hex_id(7, 16), "--url", &url])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no trace"));
    daemon.stop();
    let store = dir.path().to_str().unwrap();
    assert_eq!(
        waterfall(&[&trace_id, "--data-dir", store, "--width", "20"]),
        by_id
    );
}

/// The waterfall of the SDK trace: each span under its parent, in start order, the failing
/// one marked, bars placed in the trace's 48.25 ms.
fn check_waterfall(lines: &[String], trace_id: &str) {
    assert_eq!(
        lines[0],
        format!("trace {trace_id}  4 spans, 2 services, 48.25 ms")
    );
    let expected = [
        ("storefront  POST /v2/orders", 0, 20, "48.25 ms", true),
        ("  storefront  SELECT carts", 0, 1, "3.12 ms", false),
        ("  storefront  POST", 2, 18, "42.90 ms", false),
        ("    orders  POST /orders", 2, 17, "41.70 ms", true),
    ];
    assert_eq!(lines.len(), 1 + expected.len(), "{lines:#?}");
    for (line, (label, offset, length, duration, failed)) in lines[1..].iter().zip(expected) {
        assert!(line.starts_with(label), "{line}");
        let bar: Vec<char> = line.split('|').nth(1).unwrap().chars().collect();
        assert_eq!(bar.len(), 20, "{line}");
        let first = bar.iter().position(|c| *c == '█').unwrap();
        let count = bar.iter().filter(|c| **c == '█').count();
        assert_eq!((first, count), (offset, length), "{line}");
        assert!(line.contains(duration), "{line}");
        assert_eq!(line.ends_with("✗ error"), failed, "{line}");
    }
}

#[test]
fn python_sdk_traces_come_back_through_the_jaeger_api() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let sent = send_with_python_sdk(&daemon);
    daemon.wait_for_count("SELECT count(*) FROM spans", sent.len() as i64);
    let mut by_trace: BTreeMap<String, Vec<Sent>> = BTreeMap::new();
    for span in &sent {
        let attributes = span["attributes"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                (k.clone(), text)
            })
            .collect();
        let events = span["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let attributes = e["attributes"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                (
                    e["name"].as_str().unwrap().to_owned(),
                    e["time_ns"].as_i64().unwrap(),
                    attributes,
                )
            })
            .collect();
        let one = Sent {
            trace_id: span["trace_id"].as_str().unwrap().to_owned(),
            span_id: span["span_id"].as_str().unwrap().to_owned(),
            parent: span["parent_span_id"].as_str().map(str::to_owned),
            service: "legacy-shop".into(),
            name: span["name"].as_str().unwrap().to_owned(),
            kind: if span["kind"] == "server" {
                "server"
            } else {
                "client"
            },
            start_ns: span["start_ns"].as_i64().unwrap(),
            end_ns: span["end_ns"].as_i64().unwrap(),
            attributes,
            events,
            links: Vec::new(),
            error: span["error"].as_bool().unwrap(),
        };
        by_trace.entry(one.trace_id.clone()).or_default().push(one);
    }
    assert!(
        by_trace.values().any(|spans| spans.len() == 2),
        "{by_trace:?}"
    );
    for (trace_id, spans) in &by_trace {
        let answer = get_json(&daemon, &format!("/api/traces/{trace_id}"));
        check_against_sent(&answer["data"][0], spans);
    }
}

/// A span in OTLP/JSON with a parent, for the odd traces.
fn child(trace: &str, id: &str, parent: &str, name: &str, start_ns: i64, ms: i64) -> Value {
    let mut one = span(trace, id, name, 1, start_ns, ms, json!([]));
    one["parentSpanId"] = json!(parent);
    one
}

#[test]
fn odd_and_long_traces_stay_drawable_and_say_what_is_odd() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(dir.path(), &["--max-trace-spans", "10000"]);
    let t0 = crate::now_ns() - 120_000_000_000;
    let send = |spans: Vec<Value>| {
        let body = serde_json::to_vec(&traces("odd", spans)).unwrap();
        let (status, body) = post(&daemon, "/v1/traces", "application/json", None, body);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    };
    // Orphan, clock skew, a duplicate id (an identical copy and a different span), a loop, and
    // a 64-bit trace id.
    let odd = hex_id(0xadd, 16);
    let root = span(&odd, &hex_id(1, 8), "root", 2, t0, 50, json!([]));
    send(vec![
        root.clone(),
        root.clone(),
        child(
            &odd,
            &hex_id(2, 8),
            &hex_id(99, 8),
            "orphan",
            t0 + 1_000_000,
            5,
        ),
        child(
            &odd,
            &hex_id(3, 8),
            &hex_id(1, 8),
            "early",
            t0 - 2_000_000,
            5,
        ),
        child(
            &odd,
            &hex_id(1, 8),
            &hex_id(1, 8),
            "same id, other span",
            t0 + 3_000_000,
            5,
        ),
        child(
            &odd,
            &hex_id(4, 8),
            &hex_id(5, 8),
            "loop a",
            t0 + 4_000_000,
            5,
        ),
        child(
            &odd,
            &hex_id(5, 8),
            &hex_id(4, 8),
            "loop b",
            t0 + 5_000_000,
            5,
        ),
    ]);
    let short = format!("{:016x}", 0x5eed_u64);
    send(vec![span(
        &format!("{short:0>32}"),
        &hex_id(6, 8),
        "64-bit",
        2,
        t0,
        1,
        json!([]),
    )]);
    // A trace of 10,500 spans, over the limit of 10,000.
    let long = hex_id(0x1096, 16);
    let mut spans = vec![span(
        &long,
        &hex_id(1, 8),
        "long root",
        2,
        t0,
        900,
        json!([]),
    )];
    for i in 2..=10_500u64 {
        spans.push(child(
            &long,
            &hex_id(i, 8),
            &hex_id(1, 8),
            "step",
            t0 + i as i64 * 1_000,
            1,
        ));
        if spans.len() == 2_000 {
            send(std::mem::take(&mut spans));
        }
    }
    send(spans);
    // Traces looked up without bounds, newest hours first: one across the first window's
    // edge (2 hours back), one from yesterday.
    let hour = 3_600_000_000_000_i64;
    let now = crate::now_ns();
    let edge = hex_id(0xed9e, 16);
    send(vec![
        span(
            &edge,
            &hex_id(1, 8),
            "edge root",
            2,
            now - 2 * hour - 600_000_000_000,
            5,
            json!([]),
        ),
        child(
            &edge,
            &hex_id(2, 8),
            &hex_id(1, 8),
            "edge child",
            now - 2 * hour + 600_000_000_000,
            5,
        ),
    ]);
    let old = hex_id(0x01d, 16);
    send(vec![span(
        &old,
        &hex_id(1, 8),
        "yesterday",
        2,
        now - 30 * hour,
        5,
        json!([]),
    )]);
    daemon.wait_for_count("SELECT count(*) FROM spans", 7 + 1 + 10_500 + 3);
    for (id, names) in [
        (&edge, vec!["edge child", "edge root"]),
        (&old, vec!["yesterday"]),
    ] {
        let answer = get_json(&daemon, &format!("/api/traces/{id}"));
        let mut found: Vec<String> = check_jaeger_trace(&answer["data"][0])
            .values()
            .map(|s| s["operationName"].as_str().unwrap().to_owned())
            .collect();
        found.sort();
        assert_eq!(found, names, "{id}");
    }

    let answer = get_json(&daemon, &format!("/api/traces/{odd}"));
    let trace = &answer["data"][0];
    let spans = check_jaeger_trace(trace);
    assert_eq!(spans.len(), 6, "the identical copy is dropped: {trace}");
    let by_name = |name: &str| -> Value {
        spans
            .values()
            .find(|s| s["operationName"] == name)
            .unwrap()
            .clone()
    };
    let warnings = |span: &Value| -> String { span["warnings"].to_string() };
    assert!(warnings(&by_name("root")).contains("received 2 times"));
    assert!(warnings(&by_name("orphan")).contains("was not received"));
    assert!(
        by_name("orphan")["references"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(warnings(&by_name("early")).contains("before its parent"));
    let other = by_name("same id, other span");
    assert_ne!(other["spanID"], json!(hex_id(1, 8)));
    assert!(warnings(&other).contains("also used by another span"));
    let looped = warnings(&by_name("loop a")) + &warnings(&by_name("loop b"));
    assert!(looped.contains("loops back"), "{looped}");
    // The same trace over Tempo's protobuf: decodable, the warnings as attributes.
    let (status, body) = get(
        &daemon,
        &format!("/api/v2/traces/{odd}"),
        Some("application/protobuf"),
    );
    assert_eq!(status, 200);
    let data = decode_tempo(&body, true);
    let count: usize = data
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    assert_eq!(count, 6);

    // A 64-bit id is found by its 16 digits and by its 32.
    for id in [short.clone(), format!("{short:0>32}")] {
        let answer = get_json(&daemon, &format!("/api/traces/{id}"));
        assert_eq!(answer["data"][0]["spans"][0]["operationName"], "64-bit");
    }
    let (status, _) = get(&daemon, "/api/traces/not-hex", None);
    assert_eq!(status, 400);

    // The long trace: cut at the limit, the root says so.
    let answer = get_json(&daemon, &format!("/api/traces/{long}"));
    let spans = check_jaeger_trace(&answer["data"][0]);
    assert_eq!(spans.len(), 10_000);
    let root = &spans[&hex_id(1, 8)];
    assert!(
        root["warnings"]
            .to_string()
            .contains("more than 10000 spans"),
        "{root}"
    );
}
