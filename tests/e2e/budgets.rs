//! Objectives over 28 simulated days, sent with past timestamps through the Rust SDK and
//! as request logs: a quiet endpoint within budget, one that burns fast after a deploy
//! (1.4.0 to 1.5.0, one client failing), one that burns slowly from latency. The expected
//! counts, budgets and burn rates are computed here from what was sent.

use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Value, json};

use crate::support::daemon::{Daemon, serve};
use crate::support::otlp::post_request_lines;
use crate::support::prometheus::Scrape;
use crate::support::{rfc3339, seconds};

const DAY_S: i64 = 86_400;

/// One call sent.
#[derive(Debug, Clone)]
struct Call {
    time_s: i64,
    service: &'static str,
    version: &'static str,
    method: &'static str,
    route: &'static str,
    client: &'static str,
    status: i64,
    duration_ms: i64,
}

impl Call {
    fn endpoint(&self) -> String {
        format!("{} {}", self.method, self.route)
    }
}

/// An objective as the test declares it and judges it.
struct Objective {
    name: &'static str,
    service: &'static str,
    /// Endpoints it covers.
    endpoints: &'static [&'static str],
    /// `None`: availability.
    threshold_ms: Option<i64>,
    target: f64,
}

impl Objective {
    fn good(&self, call: &Call) -> bool {
        match self.threshold_ms {
            None => call.status < 500,
            Some(threshold) => call.duration_ms <= threshold,
        }
    }

    /// (total, good) of `calls` in `from_s..to_s` (seconds, may be fractional).
    fn judged(&self, calls: &[Call], from_s: f64, to_s: f64) -> (i64, i64) {
        let mine = calls.iter().filter(|c| {
            c.service == self.service
                && self.endpoints.contains(&c.endpoint().as_str())
                && (c.time_s as f64) >= from_s
                && (c.time_s as f64) < to_s
        });
        let (mut total, mut good) = (0, 0);
        for call in mine {
            total += 1;
            good += i64::from(self.good(call));
        }
        (total, good)
    }

    fn burn(&self, calls: &[Call], from_s: f64, to_s: f64) -> Option<f64> {
        let (total, good) = self.judged(calls, from_s, to_s);
        let allowed = (100.0 - self.target) / 100.0;
        (total > 0).then(|| (total - good) as f64 / total as f64 / allowed)
    }
}

const OBJECTIVES: [Objective; 4] = [
    Objective {
        name: "catalog-latency",
        service: "catalog",
        endpoints: &["GET /v2/items/{id}"],
        threshold_ms: Some(250),
        target: 99.9,
    },
    Objective {
        name: "orders-availability",
        service: "orders",
        endpoints: &["POST /v2/orders"],
        threshold_ms: None,
        target: 99.9,
    },
    Objective {
        name: "orders-any",
        service: "orders",
        endpoints: &["POST /v2/orders", "GET /v2/orders/{id}"],
        threshold_ms: None,
        target: 99.0,
    },
    Objective {
        name: "search-latency",
        service: "search",
        endpoints: &["GET /v2/search"],
        threshold_ms: Some(300),
        target: 99.0,
    },
];

const CONFIG: &str = r#"
[[objectives]]
name = "catalog-latency"
service = "catalog"
endpoint = "GET /v2/items/{id}"
kind = "latency"
threshold_ms = 250
target = 99.9

[[objectives]]
name = "orders-availability"
service = "orders"
endpoint = "POST /v2/orders"
kind = "availability"
target = 99.9
window = "28d"

[[objectives]]
name = "orders-any"
service = "orders"
endpoint = "* /v2/orders*"
kind = "availability"
target = 99.0

[[objectives]]
name = "search-latency"
service = "search"
endpoint = "GET /v2/search"
kind = "latency"
threshold_ms = 300
target = 99.0
"#;

/// When the story's calls come, `end_s` being the end of the judged window: a burst of six
/// calls a minute apart each day for 27 days, every 6 hours over the last 3 days, and one
/// every 30 s over the last hour. Each is the call's (time, index in its burst or hour).
fn schedule(end_s: i64) -> Vec<(i64, i64, &'static str)> {
    let mut times = Vec::new();
    for day in 1..=27 {
        for i in 0..6 {
            times.push((end_s - day * DAY_S - 600 + i * 60, i, "day"));
        }
    }
    for k in 1..=11 {
        for i in 0..6 {
            times.push((end_s - k * 6 * 3600 + 300 + i * 60, i, "burst"));
        }
    }
    for i in 0..120 {
        times.push((end_s - 3600 + 17 + i * 30, i, "hour"));
    }
    times
}

/// The story: see the module documentation.
fn story(end_s: i64) -> Vec<Call> {
    let deploy_s = end_s - 50 * 60;
    let mut calls = Vec::new();
    let call = |time_s, service, version, method, route, client, status, duration_ms| Call {
        time_s,
        service,
        version,
        method,
        route,
        client,
        status,
        duration_ms,
    };
    // Quiet: always fast.
    let quiet = |time_s| {
        call(
            time_s,
            "catalog",
            "3.2.0",
            "GET",
            "/v2/items/{id}",
            "web",
            200,
            40,
        )
    };
    for (time_s, i, part) in schedule(end_s) {
        calls.push(quiet(time_s));
        // Orders: all good until the deploy; after it, acme's calls fail.
        let after = time_s >= deploy_s;
        let version = if after { "1.5.0" } else { "1.4.0" };
        let client = if after && i % 2 == 1 { "acme" } else { "web" };
        let status = if client == "acme" { 500 } else { 201 };
        calls.push(call(
            time_s,
            "orders",
            version,
            "POST",
            "/v2/orders",
            client,
            status,
            80,
        ));
        // Reads of orders, failing now and then long ago (for the 99% objective).
        if part == "day" && i == 0 {
            let status = if time_s < end_s - 20 * DAY_S {
                503
            } else {
                200
            };
            calls.push(call(
                time_s + 7,
                "orders",
                "1.4.0",
                "GET",
                "/v2/orders/{id}",
                "mobile",
                status,
                30,
            ));
        }
        // Search: slow now and then over the last 3 days; exactly 300 ms is good.
        let duration_ms = match part {
            "burst" if i == 2 => 301,
            "hour" if i % 20 == 5 => 900,
            _ if i == 3 => 300,
            _ => 120,
        };
        calls.push(call(
            time_s + 3,
            "search",
            "7.0.0",
            "GET",
            "/v2/search",
            if i % 3 == 0 { "ios" } else { "web" },
            200,
            duration_ms,
        ));
    }
    // Right around the window's start.
    for offset in [-5, 5] {
        calls.push(quiet(end_s - 28 * DAY_S + offset));
    }
    calls
}

/// Sends search calls as request-log lines, the rest through the Rust SDK over gRPC, one
/// provider per service version (the `service.version` resource attribute).
fn send(daemon: &Daemon, calls: &[Call]) {
    let mut lines = String::new();
    for call in calls.iter().filter(|c| c.service == "search") {
        let line = json!({
            "time": call.time_s, "method": call.method, "path": "/v2/search?q=boots",
            "status": call.status, "duration_ms": call.duration_ms, "client_id": call.client,
            "service": call.service, "service_version": call.version,
        });
        lines.push_str(&format!("{line}\n"));
    }
    post_request_lines(daemon, lines);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let mut versions: Vec<(&str, &str)> = calls
        .iter()
        .filter(|c| c.service != "search")
        .map(|c| (c.service, c.version))
        .collect();
    versions.sort();
    versions.dedup();
    for (service, version) in versions {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(daemon.grpc_endpoint())
            .build()
            .unwrap();
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(service)
            .with_attribute(KeyValue::new("service.version", version))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("e2e.budgets");
        let mine = calls
            .iter()
            .filter(|c| c.service == service && c.version == version);
        for call in mine {
            let start = UNIX_EPOCH + Duration::from_secs(call.time_s as u64);
            let mut span = tracer
                .span_builder(call.endpoint())
                .with_kind(SpanKind::Server)
                .with_start_time(start)
                .with_attributes(vec![
                    KeyValue::new("http.request.method", call.method),
                    KeyValue::new("http.route", call.route),
                    KeyValue::new("http.response.status_code", call.status),
                    KeyValue::new("client.id", call.client),
                ])
                .start(&tracer);
            span.end_with_timestamp(start + Duration::from_millis(call.duration_ms as u64));
        }
        provider.shutdown().unwrap();
    }
}

fn close(found: &Value, expected: Option<f64>, what: &str) {
    match expected {
        None => assert!(found.is_null(), "{what}: {found} where none was expected"),
        Some(expected) => {
            let found = found.as_f64().unwrap_or_else(|| panic!("{what}: {found}"));
            assert!(
                (found - expected).abs() <= 1e-9 * expected.abs().max(1.0),
                "{what}: {found}, expected {expected}"
            );
        }
    }
}

/// Checks each row of `objective_status` against the calls, over the window it names.
fn check_status(rows: &[std::collections::BTreeMap<String, Value>], calls: &[Call]) {
    assert_eq!(rows.len(), OBJECTIVES.len(), "{rows:?}");
    for objective in &OBJECTIVES {
        let row = rows
            .iter()
            .find(|r| r["name"] == objective.name)
            .unwrap_or_else(|| panic!("no row for {}", objective.name));
        let what = |column: &str| format!("{} {column}", objective.name);
        let (from_s, to_s) = (seconds(&row["window_start"]), seconds(&row["window_end"]));
        let (total, good) = objective.judged(calls, from_s, to_s);
        assert!(total > 300, "{}: {total} calls", objective.name);
        assert_eq!(row["total"], total, "{}", what("total"));
        assert_eq!(row["good"], good, "{}", what("good"));
        assert_eq!(row["bad"], total - good, "{}", what("bad"));
        let allowed = (100.0 - objective.target) / 100.0;
        let budget = total as f64 * allowed;
        close(&row["target"], Some(objective.target), &what("target"));
        close(
            &row["sli"],
            Some(good as f64 * 100.0 / total as f64),
            &what("sli"),
        );
        close(&row["error_budget"], Some(budget), &what("error_budget"));
        let left = budget - (total - good) as f64;
        close(&row["budget_left"], Some(left), &what("budget_left"));
        close(
            &row["budget_left_ratio"],
            Some(left / budget),
            &what("budget_left_ratio"),
        );
        let mut burns = std::collections::BTreeMap::new();
        for (column, length_s) in [
            ("burn_rate_5m", 300),
            ("burn_rate_30m", 1800),
            ("burn_rate_1h", 3600),
            ("burn_rate_6h", 6 * 3600),
            ("burn_rate_3d", 3 * DAY_S),
        ] {
            let burn = objective.burn(calls, to_s - length_s as f64, to_s);
            close(&row[column], burn, &what(column));
            burns.insert(column, burn.unwrap_or(0.0));
        }
        let fast = burns["burn_rate_1h"] > 14.4 && burns["burn_rate_5m"] > 14.4;
        let slow = (burns["burn_rate_6h"] > 6.0 && burns["burn_rate_30m"] > 6.0)
            || (burns["burn_rate_3d"] > 1.0 && burns["burn_rate_6h"] > 1.0);
        assert_eq!(row["fast_burn"], fast, "{}", what("fast_burn"));
        assert_eq!(row["slow_burn"], slow, "{}", what("slow_burn"));
    }
}

#[test]
fn objectives_count_exactly_burn_and_alert_over_28_days() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("apiscope.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start_with(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--retention",
            "35d",
            "--rollup-interval",
            "1s",
        ],
    );
    // The window ends 17 s into a minute, some minutes ago: every burn window cuts minutes.
    let now_s = crate::now_ns() / 1_000_000_000;
    let end_s = now_s / 60 * 60 - 180 + 17;
    let calls = story(end_s);
    send(&daemon, &calls);
    let sent = calls.len() as i64;
    assert_eq!(
        daemon.wait_for_count("SELECT count(*) FROM api_calls", sent),
        sent
    );
    // Flushed and rolled up, so that the rollups answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while Scrape::of(&daemon).get("apiscope_buffer_rows", "") > 0.0 {
        assert!(std::time::Instant::now() < deadline, "never flushed");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every file rolled up: over whole minutes, api_call_minutes reads no data file.
    let whole = format!(
        "'{}', '{}'",
        rfc3339((end_s - 29 * DAY_S) / 60 * 60),
        rfc3339(end_s / 60 * 60 + 60)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let plan = format!("EXPLAIN SELECT sum(calls) FROM api_call_minutes({whole})");
        let plan = serde_json::to_string(&daemon.rows(&plan)).unwrap();
        if !plan.contains(".parquet") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every file has its rollup: {plan}\n{:?}",
            {
                let scrape = Scrape::of(&daemon);
                [
                    scrape.get_or_zero("apiscope_rollups_written_total", ""),
                    scrape.get_or_zero("apiscope_rollup_failures_total", ""),
                    scrape.get_or_zero("apiscope_rollup_passes_total", "outcome=ok"),
                    scrape.get_or_zero("apiscope_rollup_passes_total", "outcome=error"),
                ]
            }
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let listed = daemon.rows(
        "SELECT name, service_name, endpoint, kind, threshold_ms, target, window, window_seconds \
         FROM objectives ORDER BY name",
    );
    assert_eq!(
        listed[1],
        [
            json!("orders-any"),
            json!("orders"),
            json!("* /v2/orders*"),
            json!("availability"),
            Value::Null,
            json!(99.0),
            json!("28d"),
            json!(28 * DAY_S)
        ]
    );
    assert_eq!(listed[0][4], json!(250.0));

    // The window given, and each objective's own up to now.
    let window = format!("'{}', '{}'", rfc3339(end_s - 28 * DAY_S), rfc3339(end_s));
    let given = daemon.records(&format!(
        "SELECT * FROM objective_status({window}) ORDER BY name"
    ));
    check_status(&given, &calls);
    let by_name = |name: &str| given.iter().find(|r| r["name"] == name).unwrap().clone();
    // The story, as an on-call engineer reads it.
    let quiet = by_name("catalog-latency");
    assert_eq!(
        (&quiet["fast_burn"], &quiet["slow_burn"]),
        (&json!(false), &json!(false))
    );
    close(&quiet["budget_left_ratio"], Some(1.0), "catalog untouched");
    let orders = by_name("orders-availability");
    assert_eq!(orders["fast_burn"], json!(true), "{orders:?}");
    assert!(orders["budget_left"].as_f64().unwrap() < 0.0, "{orders:?}");
    let search = by_name("search-latency");
    assert_eq!(
        (&search["fast_burn"], &search["slow_burn"]),
        (&json!(false), &json!(true))
    );
    // Exactly 300 ms is good, 301 is not: one in six of the last 3 days' bursts.
    assert!(search["bad"].as_i64().unwrap() >= 16, "{search:?}");

    let own = daemon.records("SELECT * FROM objective_status() ORDER BY name");
    check_status(&own, &calls);
    for row in &own {
        let length = seconds(&row["window_end"]) - seconds(&row["window_start"]);
        assert_eq!(length, (28 * DAY_S) as f64, "{row:?}");
        assert!(seconds(&row["window_end"]) >= now_s as f64, "{row:?}");
    }
    let fast: Vec<Vec<Value>> = daemon.rows(&format!(
        "SELECT name FROM objective_status({window}) WHERE fast_burn ORDER BY name"
    ));
    assert_eq!(
        fast,
        [[json!("orders-any")], [json!("orders-availability")]]
    );

    // Who burned it: acme, alone, on the endpoint that fails.
    let burners = daemon.records(&format!(
        "SELECT * FROM budget_burners('orders-availability', {window})"
    ));
    let objective = &OBJECTIVES[1];
    let (total, good) = objective.judged(&calls, (end_s - 28 * DAY_S) as f64, end_s as f64);
    let acme: Vec<&Call> = calls
        .iter()
        .filter(|c| c.client == "acme" && c.route == "/v2/orders")
        .collect();
    assert_eq!(burners.len(), 1, "{burners:?}");
    assert_eq!(burners[0]["client_id"], "acme");
    assert_eq!(burners[0]["endpoint"], "POST /v2/orders");
    assert_eq!(burners[0]["calls"], acme.len() as i64);
    assert_eq!(burners[0]["bad"], total - good);
    close(&burners[0]["share_of_bad"], Some(1.0), "acme's share");
    close(
        &burners[0]["share_of_budget"],
        Some((total - good) as f64 / (total as f64 * 0.001)),
        "acme's share of the budget",
    );
    // Under a pattern, each endpoint that burned: acme's writes, then mobile's old reads.
    let burners = daemon.rows(&format!(
        "SELECT client_id, endpoint, bad FROM budget_burners('orders-any', {window})"
    ));
    let mobile_bad = calls
        .iter()
        .filter(|c| c.client == "mobile" && c.status >= 500 && c.time_s >= end_s - 28 * DAY_S)
        .count() as i64;
    assert_eq!(
        burners,
        [
            [json!("acme"), json!("POST /v2/orders"), json!(total - good)],
            [
                json!("mobile"),
                json!("GET /v2/orders/{id}"),
                json!(mobile_bad)
            ],
        ]
    );
    // Without a window: the objective's own.
    let own = daemon.rows("SELECT client_id, bad FROM budget_burners('search-latency')");
    assert_eq!(own, [[json!("web"), json!(15)], [json!("ios"), json!(2)]]);

    // What was deployed: each version first seen in the window (after 7 days without it),
    // and each endpoint of its service over the 30 whole minutes either side of its minute.
    let from_s = end_s - 28 * DAY_S;
    let mut first_seen: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
    for call in calls
        .iter()
        .filter(|c| c.time_s >= from_s - 7 * DAY_S && c.time_s < end_s)
    {
        let seen = first_seen
            .entry((call.service, call.version))
            .or_insert(call.time_s);
        *seen = (*seen).min(call.time_s);
    }
    let mut expected = Vec::new();
    for (&(service, version), &at_s) in &first_seen {
        if at_s < from_s {
            continue;
        }
        let previous = first_seen
            .iter()
            .filter(|((s, _), t)| *s == service && **t < at_s)
            .max_by_key(|(_, t)| **t)
            .map(|((_, v), _)| json!(v))
            .unwrap_or(Value::Null);
        let minute_s = at_s / 60 * 60;
        let mut endpoints: std::collections::BTreeMap<String, (Vec<&Call>, Vec<&Call>)> =
            Default::default();
        for call in calls.iter().filter(|c| c.service == service) {
            let call_minute = call.time_s / 60 * 60;
            if call_minute >= minute_s - 1800 && call_minute < minute_s {
                endpoints.entry(call.endpoint()).or_default().0.push(call);
            } else if call_minute >= minute_s && call_minute < minute_s + 1800 {
                endpoints.entry(call.endpoint()).or_default().1.push(call);
            }
        }
        for (endpoint, (before, after)) in endpoints {
            let rate = |calls: &[&Call]| {
                let failed = calls.iter().filter(|c| c.status >= 500).count();
                (!calls.is_empty()).then(|| failed as f64 / calls.len() as f64)
            };
            let p95 = |calls: &[&Call]| {
                let durations: Vec<f64> = calls.iter().map(|c| c.duration_ms as f64).collect();
                (!calls.is_empty()).then(|| crate::support::fleet::quantile(&durations, 0.95))
            };
            expected.push((
                at_s,
                service,
                version,
                previous.clone(),
                endpoint,
                (before.len() as i64, after.len() as i64),
                (rate(&before), rate(&after)),
                (p95(&before), p95(&after)),
            ));
        }
    }
    // Latest first, then by service and endpoint.
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.4.cmp(&b.4)));
    let deploys = daemon.records(&format!("SELECT * FROM deploys({window})"));
    let versions: Vec<(&str, &str)> = expected.iter().map(|e| (e.1, e.2)).collect();
    assert!(versions.contains(&("orders", "1.5.0")), "{versions:?}");
    assert!(versions.contains(&("search", "7.0.0")), "{versions:?}");
    assert!(
        !versions.iter().any(|(s, _)| *s == "catalog"),
        "{versions:?}"
    );
    assert_eq!(deploys.len(), expected.len(), "{deploys:?}");
    for (row, wanted) in deploys.iter().zip(&expected) {
        let (at_s, service, version, previous, endpoint, calls, rates, p95s) = wanted;
        let what = format!("{service} {version} {endpoint}");
        assert_eq!(row["service_name"], *service, "{what}");
        assert_eq!(row["service_version"], *version, "{what}");
        assert_eq!(row["previous_version"], *previous, "{what}");
        assert_eq!(seconds(&row["deployed_at"]), *at_s as f64, "{what}");
        assert_eq!(row["endpoint"], *endpoint, "{what}");
        assert_eq!(
            (&row["calls_before"], &row["calls_after"]),
            (&json!(calls.0), &json!(calls.1)),
            "{what}"
        );
        close(
            &row["error_rate_before"],
            rates.0,
            &format!("{what} error rate before"),
        );
        close(
            &row["error_rate_after"],
            rates.1,
            &format!("{what} error rate after"),
        );
        close(&row["p95_ms_before"], p95s.0, &format!("{what} p95 before"));
        close(&row["p95_ms_after"], p95s.1, &format!("{what} p95 after"));
    }
    // The deploy that broke acme: half the calls after it fail, none before.
    let broke = deploys
        .iter()
        .find(|r| r["service_version"] == "1.5.0" && r["endpoint"] == "POST /v2/orders")
        .unwrap();
    assert_eq!(broke["previous_version"], "1.4.0");
    assert_eq!(broke["error_rate_before"], json!(0.0));
    assert!(
        broke["error_rate_after"].as_f64().unwrap() > 0.4,
        "{broke:?}"
    );

    // Mistakes are named.
    let (status, body) = daemon.try_query("SELECT * FROM budget_burners('nope')");
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("no objective is named"), "{body}");
    daemon.stop();
}

#[test]
fn a_bad_objective_stops_the_start_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (config, why) in [
        (
            "[[objectives]]\nname = \"checkout\"\nservice = \"orders\"\nkind = \"latency\"\nthreshold_ms = 333\ntarget = 99.0\nwindow = \"1d\"\n",
            "not one of",
        ),
        (
            "[[objectives]]\nname = \"checkout\"\nservice = \"orders\"\nkind = \"availability\"\ntarget = 99.9\nwindow = \"30d\"\n",
            "retention",
        ),
        (
            "[[objectives]]\nname = \"checkout\"\nservice = \"orders\"\nkind = \"availability\"\ntarget = 99.9\nwindo = \"3d\"\n",
            "unknown field",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let output = serve(&dir.path().join("data"))
            .args(["--config", path.to_str().unwrap(), "--check-config"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{config}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(
            stderr.contains("checkout") || why == "unknown field",
            "{stderr}"
        );
    }
}
