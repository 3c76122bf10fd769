//! The question functions over a generated fleet with a story across two windows of 30
//! minutes: one endpoint gets three times slower, traffic moves from one client to another,
//! a client retries after failures, calls time out, a legacy client keeps calling v1,
//! partners are refused. Expected answers are computed here from the generated calls.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::otlp::{hex_id, post, post_request_lines, span, traces};
use crate::support::prometheus::Scrape;
use crate::support::rfc3339;

/// One generated server call.
#[derive(Debug, Clone)]
struct Call {
    time_s: i64,
    service: &'static str,
    method: &'static str,
    route: &'static str,
    client: &'static str,
    status: i64,
    duration_ms: i64,
    resend_count: Option<i64>,
    /// Durations of the dependency calls it makes, to `postgresql/shop`.
    dependencies_ms: Vec<i64>,
}

impl Call {
    fn endpoint(&self) -> String {
        format!("{} {}", self.method, self.route)
    }

    fn is_error(&self) -> bool {
        self.status >= 500
    }

    fn version(&self) -> &str {
        &self.route[1..3]
    }
}

const WINDOW_S: i64 = 30 * 60;

/// The calls of both windows; the current window starts at `start_s`.
fn story(start_s: i64) -> Vec<Call> {
    let previous = start_s - WINDOW_S;
    let call = |time_s, service, method, route, client, status, duration_ms| Call {
        time_s,
        service,
        method,
        route,
        client,
        status,
        duration_ms,
        resend_count: None,
        dependencies_ms: Vec::new(),
    };
    let mut calls = Vec::new();
    for i in 0..40 {
        // Items: 10 ms before, 30 ms now; all web before, mostly ios now.
        calls.push(call(
            previous + 10 + i * 40,
            "catalog",
            "GET",
            "/v2/items/{id}",
            "web",
            200,
            10,
        ));
        let client = if i < 10 { "web" } else { "ios" };
        calls.push(call(
            start_s + 10 + i * 40,
            "catalog",
            "GET",
            "/v2/items/{id}",
            client,
            200,
            30,
        ));
    }
    for i in 0..30 {
        // Orders: as slow in both windows, each with two database calls.
        for base in [previous, start_s] {
            let mut order = call(
                base + 20 + i * 50,
                "checkout",
                "POST",
                "/v2/orders",
                "web",
                200,
                50,
            );
            order.dependencies_ms = vec![10, 10];
            calls.push(order);
        }
    }
    for i in 0..20 {
        calls.push(call(
            previous + 30 + i * 60,
            "accounts",
            "GET",
            "/v1/users/{id}",
            "legacy",
            200,
            8,
        ));
    }
    for i in 0..5 {
        calls.push(call(
            start_s + 30 + i * 300,
            "accounts",
            "GET",
            "/v1/users/{id}",
            "legacy",
            200,
            8,
        ));
        calls.push(call(
            start_s + 40 + i * 300,
            "accounts",
            "GET",
            "/v2/users/{id}",
            "web",
            200,
            8,
        ));
        // ios fails on payments and retries two seconds later, successfully.
        let t = start_s + 1500 + i * 40;
        calls.push(call(t, "checkout", "POST", "/v2/payments", "ios", 503, 5));
        calls.push(call(
            t + 2,
            "checkout",
            "POST",
            "/v2/payments",
            "ios",
            201,
            40,
        ));
    }
    for i in 0..3 {
        // Retries the client marks itself.
        let mut retry = call(
            start_s + 1600 + i * 30,
            "checkout",
            "POST",
            "/v2/payments",
            "batch",
            201,
            45,
        );
        retry.resend_count = Some(1);
        calls.push(retry);
    }
    for i in 0..2 {
        calls.push(call(
            start_s + 1700 + i * 60,
            "checkout",
            "POST",
            "/v2/payments",
            "batch",
            504,
            3000,
        ));
    }
    for i in 0..3 {
        calls.push(call(
            start_s + 1400 + i * 20,
            "checkout",
            "POST",
            "/v2/payments",
            "partner",
            401,
            2,
        ));
    }
    for i in 0..4 {
        calls.push(call(
            start_s + 1450 + i * 20,
            "catalog",
            "GET",
            "/v2/items/{id}",
            "partner",
            429,
            1,
        ));
    }
    calls
}

/// How many rows each way in carried.
#[derive(Debug, Default)]
struct Sent {
    spans: i64,
    request_lines: i64,
    log_records: i64,
}

/// Sends the calls four ways: the checkout service's through the OpenTelemetry Rust SDK's
/// gRPC exporter (current conventions, with its database calls as child spans), the
/// accounts service's as request-log lines, the partner's refusals as OTLP log records with
/// (older) HTTP attributes, the rest as hand-written OTLP/JSON spans (older conventions).
fn send(daemon: &Daemon, calls: &[Call]) -> Sent {
    let mut by_service: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut sent = Sent::default();
    let mut lines = String::new();
    let mut sdk_calls = Vec::new();
    let mut records: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (k, call) in calls.iter().enumerate() {
        let k = k as u64;
        let trace_id = hex_id(0x5_0000 + k, 16);
        let server_id = hex_id(0x6_0000 + k, 8);
        let start_ns = call.time_s * 1_000_000_000;
        let path = call.route.replace("{id}", &(1000 + k).to_string());
        if call.service == "accounts" {
            let line = json!({
                "time": call.time_s, "method": call.method.to_lowercase(), "path": path,
                "status": call.status, "duration_ms": call.duration_ms, "client_id": call.client,
                "service": call.service, "region": "eu",
            });
            lines.push_str(&format!("{line}\n"));
            sent.request_lines += 1;
            continue;
        }
        if call.client == "partner" {
            records.entry(call.service).or_default().push(json!({
                "timeUnixNano": start_ns.to_string(),
                "severityNumber": 13,
                "body": {"stringValue": "request refused"},
                "attributes": [
                    {"key": "http.method", "value": {"stringValue": call.method}},
                    {"key": "http.target", "value": {"stringValue": format!("{path}?page=2")}},
                    {"key": "http.status_code", "value": {"intValue": call.status}},
                    {"key": "duration_ms", "value": {"doubleValue": call.duration_ms as f64}},
                    {"key": "client.id", "value": {"stringValue": call.client}},
                ],
            }));
            sent.log_records += 1;
            continue;
        }
        if call.service == "checkout" {
            sdk_calls.push(call);
            sent.spans += 1 + call.dependencies_ms.len() as i64;
            continue;
        }
        // The rest as hand-written OTLP/JSON, with the older HTTP conventions: a raw
        // target instead of a route, and the client in `app.client_id`.
        let mut attributes = vec![
            json!({"key": "http.method", "value": {"stringValue": call.method}}),
            json!({"key": "http.target", "value": {"stringValue": format!("{path}?from=home")}}),
            json!({"key": "http.status_code", "value": {"intValue": call.status}}),
            json!({"key": "app.client_id", "value": {"stringValue": call.client}}),
        ];
        if let Some(resend) = call.resend_count {
            attributes
                .push(json!({"key": "http.request.resend_count", "value": {"intValue": resend}}));
        }
        assert!(
            call.dependencies_ms.is_empty() && call.status != 504,
            "{call:?}"
        );
        let entry = by_service.entry(call.service).or_default();
        entry.push(span(
            &trace_id,
            &server_id,
            &call.endpoint(),
            2,
            start_ns,
            call.duration_ms,
            Value::Array(attributes),
        ));
        sent.spans += 1;
    }
    send_with_sdk(daemon, &sdk_calls);
    for (service, spans) in by_service {
        let body = serde_json::to_vec(&traces(service, spans)).unwrap();
        let (status, answer) = post(daemon, "/v1/traces", "application/json", None, body);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    }
    post_request_lines(daemon, lines);
    let resource_logs: Vec<Value> = records
        .into_iter()
        .map(|(service, records)| {
            json!({
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeLogs": [{"logRecords": records}],
            })
        })
        .collect();
    let logs = json!({ "resourceLogs": resource_logs });
    let (status, answer) = post(
        daemon,
        "/v1/logs",
        "application/json",
        None,
        serde_json::to_vec(&logs).unwrap(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    sent
}

/// Server spans and their database calls through the Rust SDK, over gRPC.
fn send_with_sdk(daemon: &Daemon, calls: &[&Call]) {
    // The exporter needs a Tokio runtime for its I/O; the simple processor blocks on each
    // export from this thread.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(daemon.grpc_endpoint())
        .build()
        .unwrap();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name("checkout")
        .build();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("e2e.questions");
    for call in calls {
        let start = UNIX_EPOCH + Duration::from_secs(call.time_s as u64);
        let mut attributes = vec![
            KeyValue::new("http.request.method", call.method),
            KeyValue::new("http.route", call.route),
            KeyValue::new("http.response.status_code", call.status),
            KeyValue::new("client.id", call.client),
        ];
        if let Some(resend) = call.resend_count {
            attributes.push(KeyValue::new("http.request.resend_count", resend));
        }
        if call.status == 504 {
            attributes.push(KeyValue::new("error.type", "timeout"));
        }
        let mut server = tracer
            .span_builder(call.endpoint())
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(attributes)
            .start(&tracer);
        let parent = Context::new().with_remote_span_context(server.span_context().clone());
        let mut offset = Duration::from_millis(1);
        for duration in &call.dependencies_ms {
            let duration = Duration::from_millis(*duration as u64);
            let mut child = tracer
                .span_builder("SELECT shop")
                .with_kind(SpanKind::Client)
                .with_start_time(start + offset)
                .with_attributes(vec![
                    KeyValue::new("db.system.name", "postgresql"),
                    KeyValue::new("db.namespace", "shop"),
                ])
                .start_with_context(&tracer, &parent);
            child.end_with_timestamp(start + offset + duration);
            offset += duration;
        }
        server.end_with_timestamp(start + Duration::from_millis(call.duration_ms as u64));
    }
    provider.shutdown().unwrap();
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn count<K: Ord>(calls: &[&Call], key: impl Fn(&Call) -> K) -> BTreeMap<K, i64> {
    let mut counts = BTreeMap::new();
    for call in calls {
        *counts.entry(key(call)).or_insert(0) += 1;
    }
    counts
}

fn f(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{value} is not a number"))
}

fn s(value: &Value) -> String {
    value.as_str().unwrap_or("<null>").to_owned()
}

/// The story told to a fresh daemon (without rollups, so that every answer comes from the
/// calls themselves), and the window it falls in. Each test below tells it again, so that one
/// question's failure does not hide another's.
struct Told {
    dir: tempfile::TempDir,
    daemon: Daemon,
    calls: Vec<Call>,
    sent: Sent,
    now_s: i64,
    start_s: i64,
    end_s: i64,
    /// The window's two bounds, as the question functions take them.
    window: String,
}

impl Told {
    fn new() -> Told {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::start_with(
            dir.path(),
            &["--deprecated-version", "v1", "--rollup-interval", "0s"],
        );
        let now_s = crate::now_ns() / 1_000_000_000;
        let start_s = (now_s - 40 * 60) / 60 * 60;
        let end_s = start_s + WINDOW_S;
        let calls = story(start_s);
        let sent = send(&daemon, &calls);
        for (table, rows) in [
            ("spans", sent.spans),
            ("requests", sent.request_lines),
            ("logs", sent.log_records),
        ] {
            let sql = format!("SELECT count(*) FROM {table}");
            assert_eq!(daemon.wait_for_count(&sql, rows), rows, "{table}");
        }
        let window = format!("'{}', '{}'", rfc3339(start_s), rfc3339(end_s));
        Told {
            dir,
            daemon,
            calls,
            sent,
            now_s,
            start_s,
            end_s,
            window,
        }
    }

    /// The calls inside the window.
    fn now(&self) -> Vec<&Call> {
        let start_s = self.start_s;
        self.calls.iter().filter(|c| c.time_s >= start_s).collect()
    }

    /// The calls of the window of equal length before it.
    fn before(&self) -> Vec<&Call> {
        let start_s = self.start_s;
        self.calls.iter().filter(|c| c.time_s < start_s).collect()
    }
}

#[test]
fn api_calls_hold_each_call_once() {
    let told = Told::new();
    let daemon = &told.daemon;
    let calls = &told.calls;
    let sent = &told.sent;

    // api_calls: one row per call, whichever way it came.
    let rows = daemon
        .records("SELECT source, count(*) AS n FROM api_calls GROUP BY source ORDER BY source");
    let by_source: Vec<(String, i64)> = rows
        .iter()
        .map(|r| (s(&r["source"]), r["n"].as_i64().unwrap()))
        .collect();
    let server_spans = calls.len() as i64 - sent.request_lines - sent.log_records;
    assert_eq!(
        by_source,
        vec![
            ("log".to_owned(), sent.log_records),
            ("request_log".to_owned(), sent.request_lines),
            ("span".to_owned(), server_spans),
        ]
    );
}

#[test]
fn endpoint_and_client_stats_count_and_rank_the_story() {
    let told = Told::new();
    let daemon = &told.daemon;
    let window = &told.window;
    let now = told.now();

    // endpoint_stats: exact counts; constant durations make the percentiles exact too.
    let rows = daemon.records(&format!("SELECT * FROM endpoint_stats({window})"));
    let calls_by = count(&now, |c| c.endpoint());
    let errors_by = count(
        &now.iter()
            .copied()
            .filter(|c| c.is_error())
            .collect::<Vec<_>>(),
        |c| c.endpoint(),
    );
    assert_eq!(rows.len(), calls_by.len());
    for row in &rows {
        let endpoint = s(&row["endpoint"]);
        let calls = calls_by[&endpoint];
        assert_eq!(row["calls"], calls, "{endpoint}");
        assert_eq!(
            row["errors"],
            errors_by.get(&endpoint).copied().unwrap_or(0),
            "{endpoint}"
        );
        let rate = calls as f64 / WINDOW_S as f64;
        assert!((f(&row["rate_per_s"]) - rate).abs() < 1e-9, "{endpoint}");
        let max = now
            .iter()
            .filter(|c| c.endpoint() == endpoint)
            .map(|c| c.duration_ms)
            .max()
            .unwrap();
        assert_eq!(f(&row["max_ms"]), max as f64, "{endpoint}");
    }
    let items = rows
        .iter()
        .find(|r| r["endpoint"] == "GET /v2/items/{id}")
        .unwrap();
    // 40 calls of 30 ms and 4 refusals of 1 ms.
    assert!((f(&items["p50_ms"]) - 30.0).abs() < 0.5, "{items:?}");
    // Busiest first.
    let busiest = calls_by.iter().max_by_key(|(_, n)| **n).unwrap().0;
    assert_eq!(&s(&rows[0]["endpoint"]), busiest);

    // client_stats: per client calls, errors and the endpoint failing most.
    let rows = daemon.records(&format!("SELECT * FROM client_stats({window})"));
    let calls_by = count(&now, |c| c.client.to_owned());
    assert_eq!(rows.len(), calls_by.len());
    for row in &rows {
        let client = s(&row["client_id"]);
        assert_eq!(row["calls"], calls_by[&client], "{client}");
        let failed: Vec<&Call> = now
            .iter()
            .copied()
            .filter(|c| c.client == client && c.is_error())
            .collect();
        assert_eq!(row["errors"], failed.len(), "{client}");
        let top = failed.first().map(|c| c.endpoint());
        assert_eq!(row["top_failing_endpoint"], json!(top), "{client}");
    }
}

#[test]
fn dependency_stats_and_error_breakdown_answer_the_story() {
    let told = Told::new();
    let daemon = &told.daemon;
    let window = &told.window;
    let now = told.now();

    // dependency_stats: orders call the database twice, 10 ms each, per 50 ms request.
    let rows = daemon.records(&format!("SELECT * FROM dependency_stats({window})"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let orders_with_deps: Vec<&&Call> = now
        .iter()
        .filter(|c| !c.dependencies_ms.is_empty())
        .collect();
    assert_eq!(rows[0]["dependency"], "postgresql/shop");
    assert_eq!(rows[0]["service_name"], "checkout");
    assert_eq!(rows[0]["calls"], 2 * orders_with_deps.len());
    assert!(
        (f(&rows[0]["share_of_caller_time"]) - 20.0 / 50.0).abs() < 1e-9,
        "{rows:?}"
    );

    // error_breakdown: 5xx and 4xx by endpoint and status.
    let rows = daemon.records(&format!("SELECT * FROM error_breakdown({window})"));
    let failed: Vec<&Call> = now.iter().copied().filter(|c| c.status >= 400).collect();
    let expected = count(&failed, |c| (c.endpoint(), c.status));
    let seen: BTreeMap<(String, i64), i64> = rows
        .iter()
        .map(|r| {
            (
                (s(&r["endpoint"]), r["http_status_code"].as_i64().unwrap()),
                r["calls"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, expected);
    let timeout = rows.iter().find(|r| r["http_status_code"] == 504).unwrap();
    assert_eq!(timeout["error_type"], "timeout");
}

#[test]
fn latency_regressions_and_traffic_shift_compare_with_the_hour_before() {
    let told = Told::new();
    let daemon = &told.daemon;
    let window = &told.window;
    let now = told.now();
    let before = told.before();

    // latency_regressions: items went from 10 to 30 ms; orders did not change.
    let rows = daemon.records(&format!("SELECT * FROM latency_regressions({window})"));
    assert_eq!(rows[0]["endpoint"], "GET /v2/items/{id}", "{rows:?}");
    assert!(
        (f(&rows[0]["previous_p95_ms"]) - 10.0).abs() < 0.5,
        "{rows:?}"
    );
    assert!((f(&rows[0]["p95_ms"]) - 30.0).abs() < 0.5, "{rows:?}");
    assert!((f(&rows[0]["change_ratio"]) - 3.0).abs() < 0.1, "{rows:?}");
    // The legacy endpoint has too few calls now to rank.
    assert!(rows.iter().all(|r| r["endpoint"] != "GET /v1/users/{id}"));

    // traffic_shift: shares per client and endpoint in both windows.
    let rows = daemon.records(&format!("SELECT * FROM traffic_shift({window})"));
    for (dimension, key) in [("client", 0), ("endpoint", 1)] {
        let key_of = |c: &Call| {
            if key == 0 {
                c.client.to_owned()
            } else {
                c.endpoint()
            }
        };
        let now_counts = count(&now, key_of);
        let before_counts = count(&before, key_of);
        for row in rows.iter().filter(|r| r["dimension"] == dimension) {
            let value = s(&row["value"]);
            let n = now_counts.get(&value).copied().unwrap_or(0);
            let b = before_counts.get(&value).copied().unwrap_or(0);
            assert_eq!(row["calls"], n, "{value}");
            assert_eq!(row["previous_calls"], b, "{value}");
            let change = n as f64 / now.len() as f64 - b as f64 / before.len() as f64;
            assert!((f(&row["share_change"]) - change).abs() < 1e-9, "{value}");
        }
        let values = rows.iter().filter(|r| r["dimension"] == dimension).count();
        let mut all: Vec<String> = now_counts
            .keys()
            .chain(before_counts.keys())
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(values, all.len(), "{dimension}");
    }
    let biggest = rows
        .iter()
        .max_by(|a, b| {
            f(&a["share_change"])
                .abs()
                .total_cmp(&f(&b["share_change"]).abs())
        })
        .unwrap();
    assert_eq!(biggest, &rows[0], "ranked by the size of the change");
}

#[test]
fn retry_amplification_counts_retries_timeouts_and_fan_out() {
    let told = Told::new();
    let daemon = &told.daemon;
    let window = &told.window;
    let now = told.now();

    // retry_amplification: retries after failures within 10 s, or marked; timeouts; fan-out.
    let rows = daemon.records(&format!("SELECT * FROM retry_amplification({window})"));
    let mut expected: BTreeMap<(String, String), (i64, i64, i64, i64)> = BTreeMap::new();
    let mut ordered = now.clone();
    ordered.sort_by_key(|c| c.time_s);
    let mut last: BTreeMap<(String, String), &Call> = BTreeMap::new();
    for call in ordered {
        let key = (call.client.to_owned(), call.endpoint());
        let retried = call.resend_count.unwrap_or(0) > 0
            || last
                .get(&key)
                .is_some_and(|p| p.is_error() && call.time_s - p.time_s <= 10);
        let entry = expected.entry(key.clone()).or_default();
        entry.0 += 1;
        entry.1 += i64::from(retried);
        entry.2 += i64::from(call.status == 504 || call.status == 408);
        entry.3 += call.dependencies_ms.len() as i64;
        last.insert(key, call);
    }
    assert_eq!(rows.len(), expected.len());
    for row in &rows {
        let key = (s(&row["client_id"]), s(&row["endpoint"]));
        let (calls, retries, timeouts, dependencies) = expected[&key];
        assert_eq!(row["calls"], calls, "{key:?}");
        assert_eq!(row["retries"], retries, "{key:?}");
        assert_eq!(row["timeouts"], timeouts, "{key:?}");
        let fanout = dependencies as f64 / calls as f64;
        assert!(
            (f(&row["dependency_calls_per_request"]) - fanout).abs() < 1e-9,
            "{key:?}"
        );
    }
    let ios = &expected[&("ios".to_owned(), "POST /v2/payments".to_owned())];
    assert_eq!(ios.1, 5, "the story has five retries after failures");
}

#[test]
fn version_usage_and_refusals_name_the_clients() {
    let told = Told::new();
    let daemon = &told.daemon;
    let window = &told.window;
    let now = told.now();

    // version_usage: who still calls v1 is one query.
    let rows = daemon.records(&format!(
        "SELECT * FROM version_usage({window}) WHERE deprecated"
    ));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["client_id"], "legacy");
    let legacy: Vec<&Call> = now
        .iter()
        .copied()
        .filter(|c| c.version() == "v1")
        .collect();
    assert_eq!(rows[0]["calls"], legacy.len());
    let last_seen = legacy.iter().map(|c| c.time_s).max().unwrap();
    let seen =
        chrono::DateTime::parse_from_rfc3339(rows[0]["last_seen"].as_str().unwrap()).unwrap();
    assert_eq!(seen.timestamp(), last_seen);
    let all = daemon.records(&format!("SELECT * FROM version_usage({window})"));
    assert_eq!(
        all.len(),
        count(&now, |c| (c.version().to_owned(), c.client.to_owned())).len()
    );

    // refusals: 401s and 429s of the partner.
    let rows = daemon.records(&format!("SELECT * FROM refusals({window})"));
    let refused: Vec<&Call> = now
        .iter()
        .copied()
        .filter(|c| [401, 403, 429].contains(&c.status))
        .collect();
    let expected = count(&refused, |c| (c.endpoint(), c.status));
    let seen: BTreeMap<(String, i64), i64> = rows
        .iter()
        .map(|r| {
            (
                (s(&r["endpoint"]), r["http_status_code"].as_i64().unwrap()),
                r["calls"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, expected);
    assert!(rows.iter().all(|r| r["client_id"] == "partner"));
}

#[test]
fn windows_default_to_the_last_hour_and_bad_ones_are_refused() {
    let told = Told::new();
    let daemon = &told.daemon;
    let calls = &told.calls;
    let start_s = told.start_s;
    let now_s = told.now_s;
    let now = told.now();

    // Windows: the default is the last hour; one argument runs to now; bad ones are refused.
    // (One statement, so that both sides see the same now().)
    let last_hour = daemon.records(
        "SELECT (SELECT sum(calls) FROM endpoint_stats()) AS a, \
         (SELECT count(*) FROM api_calls \
          WHERE time >= now() - interval '1 hour' AND time < now()) AS b",
    );
    let recent = calls.iter().filter(|c| c.time_s >= now_s - 3600).count() as i64;
    assert_eq!(last_hour[0]["a"], last_hour[0]["b"]);
    let a = last_hour[0]["a"].as_i64().unwrap();
    assert!(
        (a - recent).abs() <= 2,
        "{a} calls in the last hour, about {recent} expected"
    );
    let from_start = daemon.records(&format!(
        "SELECT sum(calls) AS n FROM endpoint_stats('{}')",
        rfc3339(start_s)
    ));
    assert_eq!(from_start[0]["n"], now.len());
    let relative = daemon
        .records("SELECT sum(calls) AS n FROM endpoint_stats(now() - interval '2 hours', now())");
    assert_eq!(relative[0]["n"], calls.len());
    for bad in [
        "endpoint_stats('yesterday')",
        "endpoint_stats(now(), now() - interval '1 hour')",
    ] {
        let (status, body) = daemon.try_query(&format!("SELECT * FROM {bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("endpoint_stats"),
            "{body}"
        );
    }
}

#[test]
fn questions_count_each_call_once_while_calls_arrive_and_flush() {
    // Rows wait in the buffer up to 3 s: some questions read them there (from the rollups
    // of the buffered rows, kept from one question to the next), some from files, some both.
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(
        dir.path(),
        &["--flush-interval", "3s", "--rollup-interval", "1s"],
    );
    let now_s = crate::now_ns() / 1_000_000_000;
    let start_s = (now_s - 40 * 60) / 60 * 60;
    let calls = story(start_s);
    let window = format!("'{}', '{}'", rfc3339(start_s), rfc3339(start_s + WINDOW_S));
    let cut = format!(
        "'{}', '{}'",
        rfc3339(start_s + 17),
        rfc3339(start_s + WINDOW_S - 23)
    );
    let mut sent: Vec<&Call> = Vec::new();
    let mut buffered_at_questions = 0;
    for chunk in calls.chunks(calls.len() / 8 + 1) {
        send(&daemon, chunk);
        sent.extend(chunk);
        let sql = "SELECT count(*) FROM api_calls";
        daemon.wait_for_count(sql, sent.len() as i64);
        if Scrape::of(&daemon).get("apiscope_buffer_rows", "") > 0.0 {
            buffered_at_questions += 1;
        }
        for (window, from, to) in [
            (&window, start_s, start_s + WINDOW_S),
            (&cut, start_s + 17, start_s + WINDOW_S - 23),
        ] {
            let inside: Vec<&Call> = sent
                .iter()
                .copied()
                .filter(|c| c.time_s >= from && c.time_s < to)
                .collect();
            let expected = count(&inside, |c| c.endpoint());
            // Twice: the buffered rows' rollups may be made between the two.
            for _ in 0..2 {
                let rows = daemon.records(&format!("SELECT * FROM endpoint_stats({window})"));
                let answered: BTreeMap<String, i64> = rows
                    .iter()
                    .map(|row| (s(&row["endpoint"]), row["calls"].as_i64().unwrap()))
                    .collect();
                assert_eq!(answered, expected, "{window} after {} calls", sent.len());
            }
        }
    }
    assert!(
        buffered_at_questions >= 2,
        "only {buffered_at_questions} rounds had rows in the buffer"
    );
    // Some of the buffered rows were rolled up in the background, between questions.
    let rolled = Scrape::of(&daemon).get_or_zero("apiscope_buffer_rolled_up_rows_total", "");
    assert!(
        rolled > 0.0,
        "no buffered row was rolled up in the background"
    );
    daemon.stop();
}

#[test]
fn a_flush_s_files_get_their_rollups_right_after_it() {
    // Rollup passes an hour apart: only the flushes' can make the rollups in time.
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(dir.path(), &["--rollup-interval", "1h"]);
    let now_s = crate::now_ns() / 1_000_000_000;
    let start_s = (now_s - 40 * 60) / 60 * 60;
    let calls = story(start_s);
    send(&daemon, &calls);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = Scrape::of(&daemon);
        let flushed = scrape.get("apiscope_buffer_rows", "") == 0.0;
        if flushed && scrape.get_or_zero("apiscope_rollups_written_total", "") >= 3.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rollups 30 s after the flush"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.stop();
}

#[test]
fn rollups_give_the_same_answers_and_spare_the_data_files() {
    let Told {
        dir,
        daemon,
        calls,
        start_s,
        end_s,
        window,
        ..
    } = Told::new();
    let now: Vec<&Call> = calls.iter().filter(|c| c.time_s >= start_s).collect();

    // With per-minute rollups: the same answers, over whole minutes and over windows that
    // cut minutes, once every file has its rollup. A window that ends a second after the last
    // call (as one that ends now does) cuts a minute whose calls all started inside it.
    let cut = format!("'{}', '{}'", rfc3339(start_s + 17), rfc3339(end_s - 23));
    let last_s = now.iter().map(|c| c.time_s).max().unwrap();
    assert_ne!((last_s + 1) % 60, 0, "the last call's minute is cut");
    let to_now = format!("'{}', '{}'", rfc3339(start_s), rfc3339(last_s + 1));
    let asked: Vec<String> = [&window, &cut, &to_now]
        .iter()
        .flat_map(|window| {
            [
                format!("SELECT * FROM endpoint_stats({window})"),
                format!("SELECT * FROM latency_regressions({window})"),
                format!(
                    "SELECT minute, service_name, endpoint, sum(calls), sum(errors), max(max_ms), \
                     sketch_percentile(latency, 0.9) FROM api_call_minutes({window}) \
                     GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
                ),
            ]
        })
        .collect();
    let mut asked = asked;
    // Nothing but a count: no column is read, from either part.
    asked.push(format!(
        "SELECT count(*) > 0, count(*) <= {} FROM api_call_minutes({window})",
        now.len()
    ));
    let answered: Vec<_> = asked.iter().map(|sql| daemon.rows(sql)).collect();
    // api_call_minutes agrees with api_calls, minute by minute.
    let per_minute = |from: &str| {
        format!("SELECT minute, sum(calls) FROM {from} GROUP BY minute ORDER BY minute")
    };
    let by_minute = daemon.rows(&per_minute(&format!(
        "(SELECT date_trunc('minute', time) AS minute, 1 AS calls FROM api_calls \
         WHERE time >= '{}' AND time < '{}')",
        rfc3339(start_s + 17),
        rfc3339(end_s - 23)
    )));
    assert_eq!(
        daemon.rows(&per_minute(&format!("api_call_minutes({cut})"))),
        by_minute
    );
    assert!(by_minute.len() >= 29, "{by_minute:?}");
    daemon.stop();

    let daemon = Daemon::start_with(
        dir.path(),
        &["--deprecated-version", "v1", "--rollup-interval", "1s"],
    );
    let read_files = |window: &str| -> Vec<String> {
        let plan = format!("EXPLAIN SELECT * FROM endpoint_stats({window})");
        let text = serde_json::to_string(&daemon.rows(&plan)).unwrap();
        text.split(|c: char| c == '[' || c == ']' || c == ',' || c.is_whitespace())
            .filter(|word| word.ends_with(".parquet"))
            .map(str::to_owned)
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // Once every file has its rollup, the question reads no data file at all.
        let files = read_files(&window);
        let rollups = walk(&dir.path().join("api_call_minutes"))
            .into_iter()
            .filter(|path| path.extension().is_some_and(|e| e == "parquet"))
            .filter(|path| !path.to_string_lossy().contains("_delta_log"))
            .count();
        if files.is_empty() && rollups > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollups were not all written in 30 s: {rollups} rollups, plan reads {files:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for (sql, expected) in asked.iter().zip(&answered) {
        assert_eq!(&daemon.rows(sql), expected, "{sql}");
    }
    // Nor over the window that ends after the last call: its last minute comes whole from
    // the rollups, as every call in it started inside the window.
    assert_eq!(read_files(&to_now), Vec::<String>::new(), "{to_now}");
    daemon.stop();
}
