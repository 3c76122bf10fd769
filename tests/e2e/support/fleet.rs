//! A small, fully known fleet sent as OTLP/JSON: two services, four endpoints, three
//! clients, two dependencies, failures, refusals and error logs, response sizes, and a deploy
//! of checkout halfway (1.0.0 to 1.1.0), over twenty minutes of the recent past. The
//! expected answers of the SQL front-ends are computed here from what was sent.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::otlp::{hex_id, post, span, traces};

/// Seconds between two requests of the fleet.
pub(crate) const STEP_S: i64 = 6;
/// Requests sent.
pub(crate) const REQUESTS: i64 = 200;

/// One server request of the fleet and what it called.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) time_s: i64,
    pub(crate) service: &'static str,
    pub(crate) method: &'static str,
    pub(crate) route: &'static str,
    pub(crate) client: &'static str,
    pub(crate) status: i64,
    pub(crate) duration_ms: i64,
    pub(crate) dependency: &'static str,
    pub(crate) dependency_ms: i64,
    /// `service.version` of the service that served it.
    pub(crate) version: &'static str,
    /// `http.response.body.size`.
    pub(crate) response_bytes: i64,
}

impl Request {
    pub(crate) fn endpoint(&self) -> String {
        format!("{} {}", self.method, self.route)
    }

    pub(crate) fn is_error(&self) -> bool {
        self.status >= 500
    }
}

/// The fleet: its requests, and the whole minute its first request starts.
pub(crate) struct Fleet {
    pub(crate) start_s: i64,
    pub(crate) requests: Vec<Request>,
}

impl Fleet {
    /// The fleet's requests, the first one 40 minutes ago (on a whole minute).
    pub(crate) fn new() -> Fleet {
        let now_s = crate::now_ns() / 1_000_000_000;
        let start_s = (now_s - 40 * 60) / 60 * 60;
        let requests = (0..REQUESTS)
            .map(|k| {
                let (service, method, route, dependency) = match k % 4 {
                    0 => ("checkout", "GET", "/v1/carts/{id}", "postgresql/shop"),
                    1 => ("catalog", "GET", "/v2/items/{id}", "redis"),
                    2 => ("checkout", "POST", "/v1/orders", "postgresql/shop"),
                    _ => ("catalog", "GET", "/v2/search", "redis"),
                };
                let status = match k % 20 {
                    0 | 10 => 500,
                    5 => 404,
                    15 => 429,
                    _ => 200,
                };
                let client = ["web", "ios", "partner-a"][(k % 3) as usize];
                let version = match (service, k < REQUESTS / 2) {
                    ("checkout", true) => "1.0.0",
                    ("checkout", false) => "1.1.0",
                    _ => "3.2.0",
                };
                // partner-a pulls far more than the others.
                let response_bytes = match client {
                    "partner-a" => 20_000 + (k % 7) * 1000,
                    _ => 500 + (k % 7) * 100,
                };
                Request {
                    time_s: start_s + k * STEP_S,
                    service,
                    method,
                    route,
                    client,
                    status,
                    duration_ms: 5 + (k % 50) * 2,
                    dependency,
                    dependency_ms: 1 + k % 4,
                    version,
                    response_bytes,
                }
            })
            .collect();
        Fleet { start_s, requests }
    }

    /// The end of the last request's minute.
    pub(crate) fn end_s(&self) -> i64 {
        let last = self.requests.last().map_or(self.start_s, |r| r.time_s);
        (last / 60 + 1) * 60
    }

    /// Sends every span (server and client) and one error log per failed request over
    /// OTLP/HTTP JSON, then waits until all are queryable.
    pub(crate) fn send(&self, daemon: &Daemon) {
        let mut by_service: BTreeMap<(&str, &str), Vec<Value>> = BTreeMap::new();
        let mut logs = Vec::new();
        for (k, request) in self.requests.iter().enumerate() {
            let k = k as u64;
            let trace_id = hex_id(0x7000 + k, 16);
            let server_id = hex_id(0x1_0000 + k, 8);
            let start_ns = request.time_s * 1_000_000_000;
            let server = span(
                &trace_id,
                &server_id,
                &request.endpoint(),
                2,
                start_ns,
                request.duration_ms,
                json!([
                    {"key": "http.request.method", "value": {"stringValue": request.method}},
                    {"key": "http.route", "value": {"stringValue": request.route}},
                    {"key": "url.path", "value": {"stringValue": request.route.replace("{id}", &k.to_string())}},
                    {"key": "http.response.status_code", "value": {"intValue": request.status}},
                    {"key": "client.id", "value": {"stringValue": request.client}},
                    {"key": "http.response.body.size", "value": {"intValue": request.response_bytes}},
                ]),
            );
            let (system, namespace) = match request.dependency.split_once('/') {
                Some((system, namespace)) => (system, Some(namespace)),
                None => (request.dependency, None),
            };
            let mut db = vec![json!({"key": "db.system.name", "value": {"stringValue": system}})];
            if let Some(namespace) = namespace {
                db.push(json!({"key": "db.namespace", "value": {"stringValue": namespace}}));
            }
            let mut client = span(
                &trace_id,
                &hex_id(0x2_0000 + k, 8),
                "query",
                3,
                start_ns + 1_000_000,
                request.dependency_ms,
                Value::Array(db),
            );
            client["parentSpanId"] = json!(server_id);
            let spans = by_service
                .entry((request.service, request.version))
                .or_default();
            spans.push(server);
            spans.push(client);
            if request.is_error() {
                logs.push(json!({
                    "timeUnixNano": (start_ns + 2_000_000).to_string(),
                    "severityNumber": 17,
                    "severityText": "ERROR",
                    "body": {"stringValue": format!("{} failed", request.endpoint())},
                    "traceId": trace_id,
                    "spanId": server_id,
                }));
            }
        }
        for ((service, version), spans) in by_service {
            let mut body = traces(service, spans);
            body["resourceSpans"][0]["resource"]["attributes"]
                .as_array_mut()
                .unwrap()
                .push(json!({"key": "service.version", "value": {"stringValue": version}}));
            let body = serde_json::to_vec(&body).unwrap();
            let (status, answer) = post(daemon, "/v1/traces", "application/json", None, body);
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        }
        let logs = json!({"resourceLogs": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
            "scopeLogs": [{"scope": {"name": "fleet"}, "logRecords": logs}],
        }]});
        let body = serde_json::to_vec(&logs).unwrap();
        let (status, answer) = post(daemon, "/v1/logs", "application/json", None, body);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));

        let spans = 2 * self.requests.len() as i64;
        assert_eq!(
            daemon.wait_for_count("SELECT count(*) FROM spans", spans),
            spans
        );
        let errors = self.errors().len() as i64;
        assert_eq!(
            daemon.wait_for_count("SELECT count(*) FROM logs", errors),
            errors
        );
    }

    pub(crate) fn errors(&self) -> Vec<&Request> {
        self.requests.iter().filter(|r| r.is_error()).collect()
    }

    /// Requests per value of `key`.
    pub(crate) fn count_by(&self, key: impl Fn(&Request) -> String) -> BTreeMap<String, i64> {
        let mut counts = BTreeMap::new();
        for request in &self.requests {
            *counts.entry(key(request)).or_insert(0) += 1;
        }
        counts
    }

    /// Failed requests per value of `key`.
    pub(crate) fn errors_by(&self, key: impl Fn(&Request) -> String) -> BTreeMap<String, i64> {
        let mut counts = BTreeMap::new();
        for request in self.errors() {
            *counts.entry(key(request)).or_insert(0) += 1;
        }
        counts
    }
}

/// The `q` quantile of `values` as PostgreSQL's `percentile_cont` defines it (at rank
/// `q * (n - 1)`, interpolated), which is what apiscope's approximate percentiles estimate.
pub(crate) fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = q * (sorted.len() - 1) as f64;
    let (below, above) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[below] + (sorted[above] - sorted[below]) * (rank - below as f64)
}

/// How far an approximate percentile may be from [`quantile`]: 0.4% of the value, as the
/// README promises, and a little for rounding.
pub(crate) fn percentile_tolerance(expected: f64) -> f64 {
    0.004 * expected.abs() + 1e-9
}
