//! The shipped Grafana dashboards and provisioning: every file is valid and points at the
//! provisioned data source, and every panel and variable query, with Grafana's macros
//! expanded the way its PostgreSQL data source expands them, runs over the PostgreSQL
//! protocol against the known fleet and answers in the shape and with the values the panel
//! needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, SimpleQueryMessage};

use crate::support::daemon::Daemon;
use crate::support::fleet::{Fleet, Request, percentile_tolerance, quantile};
use crate::support::pg::{connect, runtime};
use crate::support::python::python;

mod questions;

const DATASOURCE_UID: &str = "apiscope";
const DATASOURCE_TYPE: &str = "grafana-postgresql-datasource";
/// The provisioned trace data sources (Jaeger, Tempo) that trace ids link to.
const TRACE_UIDS: [&str; 2] = ["apiscope-jaeger", "apiscope-tempo"];

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A YAML file as JSON, read by PyYAML (from the test's virtual environment).
pub(crate) fn yaml(path: &Path) -> Value {
    let output = Command::new(python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn dashboards() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(repo().join("dashboards/json")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let dashboard: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            found.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                dashboard,
            ));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[test]
fn dashboards_and_provisioning_are_valid() {
    let datasources = yaml(&repo().join("dashboards/datasources/apiscope.yaml"));
    let datasource = &datasources["datasources"][0];
    assert_eq!(datasource["type"], DATASOURCE_TYPE);
    assert_eq!(datasource["uid"], DATASOURCE_UID);
    assert_eq!(datasource["jsonData"]["database"], query::CATALOG);
    assert!(
        datasource.get("database").is_none(),
        "database belongs in jsonData"
    );

    // The trace data sources point at the query port, where the Jaeger and Tempo APIs are.
    let compose = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let trace_sources: BTreeMap<String, String> = datasources["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["type"] == "jaeger" || d["type"] == "tempo")
        .map(|d| {
            assert_eq!(d["url"], "http://apiscope:7171", "{d}");
            assert!(compose.contains("7171:7171"), "the query port is published");
            (
                d["uid"].as_str().unwrap().to_owned(),
                d["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        trace_sources,
        BTreeMap::from([
            (TRACE_UIDS[0].to_owned(), "jaeger".to_owned()),
            (TRACE_UIDS[1].to_owned(), "tempo".to_owned())
        ])
    );

    let providers = yaml(&repo().join("dashboards/dashboards/provider.yaml"));
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    // docker-compose.yml mounts dashboards/ at /etc/grafana/provisioning.
    let local = path
        .strip_prefix("/etc/grafana/provisioning/")
        .expect("the provider reads from the mounted provisioning folder");
    assert!(repo().join("dashboards").join(local).is_dir(), "{path}");

    let all = dashboards();
    let wanted = [
        "overview",
        "endpoints",
        "clients",
        "dependencies",
        "errors",
        "daemon",
        "budgets",
        "changes",
        "contract",
    ];
    assert_eq!(all.len(), wanted.len());
    let mut uids = BTreeSet::new();
    for (file, dashboard) in &all {
        assert!(uids.insert(dashboard["uid"].as_str().unwrap().to_owned()));
        assert!(dashboard["schemaVersion"].as_i64().unwrap() >= 41, "{file}");
        assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            assert_eq!(variable["datasource"]["uid"], DATASOURCE_UID, "{file}");
        }
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap();
            assert_eq!(
                panel["datasource"]["uid"], DATASOURCE_UID,
                "{file}: {title}"
            );
            assert_eq!(
                panel["datasource"]["type"], DATASOURCE_TYPE,
                "{file}: {title}"
            );
            assert!(
                panel["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{file}: {title} has no description"
            );
            // A panel showing trace ids links each one to both trace views.
            let sql = panel["targets"][0]["rawSql"].as_str().unwrap_or("");
            if sql.contains("trace_id,") {
                let linked: BTreeSet<&str> = panel["fieldConfig"]["overrides"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|o| o["matcher"]["options"] == "trace_id")
                    .flat_map(|o| o["properties"].as_array().unwrap())
                    .filter(|p| p["id"] == "links")
                    .flat_map(|p| p["value"].as_array().unwrap())
                    .map(|link| {
                        assert_eq!(link["internal"]["query"]["query"], "${__value.raw}");
                        link["internal"]["datasourceUid"].as_str().unwrap()
                    })
                    .collect();
                assert_eq!(linked, BTreeSet::from(TRACE_UIDS), "{file}: {title}");
            }
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(
                    target["datasource"]["uid"], DATASOURCE_UID,
                    "{file}: {title}"
                );
                assert!(target["rawSql"].as_str().is_some_and(|s| !s.is_empty()));
            }
        }
    }
    for name in wanted {
        assert!(
            all.iter().any(|(file, _)| file == &format!("{name}.json")),
            "{name}.json is missing"
        );
    }
}

/// The time range and interval a Grafana panel would query with.
struct Range {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    interval: &'static str,
}

impl Range {
    fn interval_s(&self) -> i64 {
        parse_interval(self.interval)
    }
}

fn parse_interval(text: &str) -> i64 {
    let text = text.trim().trim_matches('\'');
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap());
    let number: i64 = number.parse().unwrap();
    number
        * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            other => panic!("interval unit {other}"),
        }
}

/// Expands `sql` as Grafana does: template variables (multi-value: quoted and joined),
/// then `$__interval_ms`, `$__interval`, `$__unixEpochFrom()`, `$__unixEpochTo()`, then the
/// PostgreSQL data source's macros.
fn expand(sql: &str, range: &Range, variables: &BTreeMap<String, Vec<String>>) -> String {
    let mut sql = sql.to_owned();
    // Longer names first, so that `$client_id` is not taken for `$client`.
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    for name in names {
        let quoted: Vec<String> = variables[name]
            .iter()
            .map(|v| format!("'{}'", v.replace('\'', "''")))
            .collect();
        let value = quoted.join(",");
        sql = sql.replace(&format!("${{{name}}}"), &value);
        sql = sql.replace(&format!("${name}"), &value);
    }
    sql = sql.replace("$__interval_ms", &(range.interval_s() * 1000).to_string());
    sql = sql.replace("$__interval", range.interval);
    sql = sql.replace("$__unixEpochFrom()", &range.from.timestamp().to_string());
    sql = sql.replace("$__unixEpochTo()", &range.to.timestamp().to_string());

    let mut out = String::new();
    let mut rest = sql.as_str();
    while let Some(at) = rest.find("$__") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        let Some(args_and_more) = after[name_len..].strip_prefix('(') else {
            panic!("unexpanded variable ${name} in {sql}");
        };
        let close = args_and_more.find(')').unwrap();
        let args: Vec<&str> = args_and_more[..close].split(',').map(str::trim).collect();
        rest = &args_and_more[close + 1..];
        // Grafana reads `$__timeGroup(...)` directly followed by a comma as the alias form.
        let name = if name == "__timeGroup" && rest.starts_with(',') {
            "__timeGroupAlias"
        } else {
            name
        };
        out.push_str(&macro_text(name, &args, range));
    }
    out.push_str(rest);
    out
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn macro_text(name: &str, args: &[&str], range: &Range) -> String {
    let group = |args: &[&str]| {
        let seconds = parse_interval(args[1]);
        format!("floor(extract(epoch from {})/{seconds})*{seconds}", args[0])
    };
    match name {
        "__time" => format!("{} AS \"time\"", args[0]),
        "__timeEpoch" => format!("extract(epoch from {}) as \"time\"", args[0]),
        "__timeFilter" => format!(
            "{} BETWEEN '{}' AND '{}'",
            args[0],
            rfc3339(range.from),
            rfc3339(range.to)
        ),
        "__timeFrom" => format!("'{}'", rfc3339(range.from)),
        "__timeTo" => format!("'{}'", rfc3339(range.to)),
        "__timeGroup" => group(args),
        "__timeGroupAlias" => format!("{} AS \"time\"", group(args)),
        "__unixEpochFilter" => format!(
            "{0} >= {1} AND {0} <= {2}",
            args[0],
            range.from.timestamp(),
            range.to.timestamp()
        ),
        other => panic!("macro ${other} is not one Grafana's PostgreSQL data source knows"),
    }
}

#[test]
fn macro_expansion_matches_grafana() {
    let range = Range {
        from: DateTime::from_timestamp(1_500_376_552, 0).unwrap(),
        to: DateTime::from_timestamp(1_500_376_852, 0).unwrap(),
        interval: "5m",
    };
    let variables =
        BTreeMap::from([("service".to_owned(), vec!["a".to_owned(), "b'c".to_owned()])]);
    let expanded = expand(
        "SELECT $__timeGroupAlias(time, $__interval), $__timeGroup(time,'5m') FROM t \
         WHERE $__timeFilter(time) AND s IN ($service) AND ms = $__interval_ms",
        &range,
        &variables,
    );
    assert_eq!(
        expanded,
        "SELECT floor(extract(epoch from time)/300)*300 AS \"time\", \
         floor(extract(epoch from time)/300)*300 FROM t \
         WHERE time BETWEEN '2017-07-18T11:15:52Z' AND '2017-07-18T11:20:52Z' \
         AND s IN ('a','b''c') AND ms = 300000"
    );
}

fn is_number(ty: &Type) -> bool {
    [
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::FLOAT4,
        Type::FLOAT8,
    ]
    .contains(ty)
}

/// A numeric cell as f64; NULL as NaN.
fn number(row: &Row, column: &str) -> f64 {
    let index = row
        .columns()
        .iter()
        .position(|c| c.name() == column)
        .unwrap_or_else(|| panic!("no column {column}"));
    let ty = row.columns()[index].type_().clone();
    let value = match ty {
        Type::INT2 => row.get::<_, Option<i16>>(index).map(f64::from),
        Type::INT4 => row.get::<_, Option<i32>>(index).map(f64::from),
        Type::INT8 => row.get::<_, Option<i64>>(index).map(|v| v as f64),
        Type::FLOAT4 => row.get::<_, Option<f32>>(index).map(f64::from),
        Type::FLOAT8 => row.get::<_, Option<f64>>(index),
        other => panic!("column {column} is {other}, not a number"),
    };
    value.unwrap_or(f64::NAN)
}

fn text(row: &Row, column: &str) -> String {
    row.get::<_, Option<String>>(column).unwrap_or_default()
}

/// Columns whose name says they hold a measure must arrive as numbers.
fn is_measure(column: &str) -> bool {
    [
        "calls",
        "errors",
        "requests",
        "spans",
        "records",
        "services",
        "endpoints",
        "rate",
        "error_rate",
        "p50",
        "p95",
        "p99",
    ]
    .contains(&column)
        || column.ends_with("_ms")
        || column.ends_with("_per_s")
}

/// The checks every panel's answer must pass, whatever the panel.
fn check_shape(what: &str, format: &str, rows: &[Row]) {
    assert!(!rows.is_empty(), "{what}: no rows over the fleet");
    let columns = rows[0].columns();
    if format == "time_series" {
        assert_eq!(
            columns[0].name(),
            "time",
            "{what}: the first column must be time"
        );
        assert!(
            is_number(columns[0].type_()) || *columns[0].type_() == Type::TIMESTAMPTZ,
            "{what}: time is {}",
            columns[0].type_()
        );
        for column in &columns[1..] {
            if column.name() == "metric" {
                assert_eq!(*column.type_(), Type::TEXT, "{what}");
            } else {
                assert!(
                    is_number(column.type_()),
                    "{what}: {} is {}",
                    column.name(),
                    column.type_()
                );
            }
        }
        let times: Vec<f64> = rows.iter().map(|r| number(r, "time")).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{what}: not sorted by time"
        );
    }
    for column in columns {
        if is_measure(column.name()) {
            assert!(
                is_number(column.type_()),
                "{what}: {} is {}",
                column.name(),
                column.type_()
            );
        }
    }
}

/// Per `metric`, the sum over the time buckets of `column` times `scale`.
fn series_totals(rows: &[Row], column: &str, scale: f64) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for row in rows {
        *totals.entry(text(row, "metric")).or_insert(0.0) += number(row, column) * scale;
    }
    totals
}

fn as_f64(counts: BTreeMap<String, i64>) -> BTreeMap<String, f64> {
    counts.into_iter().map(|(k, v)| (k, v as f64)).collect()
}

fn assert_close(what: &str, seen: f64, expected: f64, tolerance: f64) {
    assert!(
        (seen - expected).abs() <= tolerance,
        "{what}: {seen} is not within {tolerance} of {expected}"
    );
}

/// An approximate percentile against the exact one over `values`, within the error the
/// README promises.
fn assert_percentile(what: &str, seen: f64, values: &[f64], q: f64) {
    let expected = quantile(values, q);
    assert_close(what, seen, expected, percentile_tolerance(expected));
}

/// Each row's `calls` and `errors` against the fleet's, per value of `column` (which
/// `key` computes from a request).
fn check_calls_and_errors(
    what: &str,
    rows: &[Row],
    column: &str,
    fleet: &Fleet,
    key: impl Fn(&crate::support::fleet::Request) -> String,
) {
    let calls = fleet.count_by(&key);
    let errors = fleet.errors_by(&key);
    assert_eq!(rows.len(), calls.len(), "{what}");
    for row in rows {
        let value = text(row, column);
        assert_eq!(
            number(row, "calls"),
            calls[&value] as f64,
            "{what}: {value}"
        );
        let expected_errors = errors.get(&value).copied().unwrap_or(0) as f64;
        assert_eq!(number(row, "errors"), expected_errors, "{what}: {value}");
    }
}

/// What one row of a time series must hold, from the fleet's requests in its bucket and
/// series: the value, and how far from it the panel may be.
type Expect<'a> = dyn Fn(&[&Request]) -> (f64, f64) + 'a;

/// A time-series panel against the fleet, bucket by bucket: the rows are exactly the
/// buckets and series that hold requests (`series` names a request's series, or leaves it
/// out), and each row's `column` is what `expect` makes of that bucket's requests.
fn check_buckets(
    what: &str,
    rows: &[Row],
    column: &str,
    range: &Range,
    fleet: &Fleet,
    series: impl Fn(&Request) -> Option<String>,
    expect: &Expect<'_>,
) {
    let interval = range.interval_s();
    let mut expected: BTreeMap<(i64, String), Vec<&Request>> = BTreeMap::new();
    for request in &fleet.requests {
        if let Some(name) = series(request) {
            let bucket = request.time_s - request.time_s.rem_euclid(interval);
            expected.entry((bucket, name)).or_default().push(request);
        }
    }
    let seen: BTreeSet<(i64, String)> = rows
        .iter()
        .map(|row| (number(row, "time") as i64, text(row, "metric")))
        .collect();
    let wanted: BTreeSet<(i64, String)> = expected.keys().cloned().collect();
    assert_eq!(seen, wanted, "{what}: buckets and series");
    for row in rows {
        let key = (number(row, "time") as i64, text(row, "metric"));
        let (value, tolerance) = expect(&expected[&key]);
        assert_close(
            &format!("{what} {column} at {key:?}"),
            number(row, column),
            value,
            tolerance,
        );
    }
}

/// The objectives the dashboards' daemon is started with: checkout fails 20% of its calls
/// (burning a 99% objective 20 times as fast as allowed); catalog's searches all answer
/// within 150 ms.
const OBJECTIVES: &str = r#"
[[objectives]]
name = "checkout-availability"
service = "checkout"
kind = "availability"
target = 99.0
window = "1d"

[[objectives]]
name = "search-fast"
service = "catalog"
endpoint = "GET /v2/search"
kind = "latency"
threshold_ms = 150
target = 99.0
window = "1d"
"#;

/// An objective of [`OBJECTIVES`] as the test judges the fleet's requests.
struct Objective {
    name: &'static str,
    covers: fn(&Request) -> bool,
    good: fn(&Request) -> bool,
}

const FLEET_OBJECTIVES: [Objective; 2] = [
    Objective {
        name: "checkout-availability",
        covers: |r| r.service == "checkout",
        good: |r| !r.is_error(),
    },
    Objective {
        name: "search-fast",
        covers: |r| r.service == "catalog" && r.route == "/v2/search",
        good: |r| r.duration_ms <= 150,
    },
];

impl Objective {
    fn named(name: &str) -> &'static Objective {
        FLEET_OBJECTIVES.iter().find(|o| o.name == name).unwrap()
    }

    /// Its (total, good) requests of the fleet in `from_s..to_s`.
    fn judged(&self, fleet: &Fleet, from_s: i64, to_s: i64) -> (i64, i64) {
        let mine = fleet
            .requests
            .iter()
            .filter(|r| (self.covers)(r) && r.time_s >= from_s && r.time_s < to_s);
        let (mut total, mut good) = (0, 0);
        for request in mine {
            total += 1;
            good += i64::from((self.good)(request));
        }
        (total, good)
    }

    /// Its burn rate over the `length_s` seconds before `to_s` (99% allowed good).
    fn burn(&self, fleet: &Fleet, to_s: i64, length_s: i64) -> f64 {
        let (total, good) = self.judged(fleet, to_s - length_s, to_s);
        if total == 0 {
            return f64::NAN;
        }
        (total - good) as f64 / total as f64 / 0.01
    }
}

/// The burn-rate windows of `objective_status`, in seconds, by column.
const BURN_WINDOWS: [(&str, i64); 5] = [
    ("burn_rate_5m", 300),
    ("burn_rate_30m", 1800),
    ("burn_rate_1h", 3600),
    ("burn_rate_6h", 6 * 3600),
    ("burn_rate_3d", 3 * 86_400),
];

fn same_or_both_nan(seen: f64, expected: f64) -> bool {
    (seen.is_nan() && expected.is_nan()) || (seen - expected).abs() <= 1e-9
}

/// The values a panel must show over the fleet; false for a panel that has no check here,
/// which the test refuses.
fn check_values(dashboard: &str, panel: &str, rows: &[Row], fleet: &Fleet, range: &Range) -> bool {
    let what = format!("{dashboard} / {panel}");
    let interval = range.interval_s() as f64;
    let range_s = (range.to - range.from).num_seconds() as f64;
    let durations = |keep: &dyn Fn(&crate::support::fleet::Request) -> bool| -> Vec<f64> {
        fleet
            .requests
            .iter()
            .filter(|r| keep(r))
            .map(|r| r.duration_ms as f64)
            .collect()
    };
    let per_second = |count: usize| count as f64 / interval;
    let rate = |requests: &[&Request]| (per_second(requests.len()), 1e-9);
    let errors = |requests: &[&Request]| requests.iter().filter(|r| r.is_error()).count();
    let error_rate =
        |requests: &[&Request]| (errors(requests) as f64 / requests.len() as f64, 1e-9);
    let percentile = |q: f64, of: fn(&Request) -> i64| {
        move |requests: &[&Request]| {
            let values: Vec<f64> = requests.iter().map(|r| of(r) as f64).collect();
            let exact = quantile(&values, q);
            (exact, percentile_tolerance(exact))
        }
    };
    let client = |r: &Request| Some(r.client.to_owned());
    let service = |r: &Request| Some(r.service.to_owned());
    let dependency = |r: &Request| Some(r.dependency.to_owned());
    let endpoint = |r: &Request| Some(r.endpoint());
    let duration = |r: &Request| r.duration_ms;
    let check = |column: &str, series: &dyn Fn(&Request) -> Option<String>, expect: &Expect<'_>| {
        check_buckets(&what, rows, column, range, fleet, series, expect)
    };
    match (dashboard, panel) {
        ("apiscope-overview", "Requests") => {
            assert_eq!(
                number(&rows[0], "requests"),
                fleet.requests.len() as f64,
                "{what}"
            );
        }
        ("apiscope-overview", "Request rate") => assert_close(
            &what,
            number(&rows[0], "rate_per_s"),
            fleet.requests.len() as f64 / range_s,
            1e-9,
        ),
        ("apiscope-overview", "Error rate") => assert_close(
            &what,
            number(&rows[0], "error_rate"),
            fleet.errors().len() as f64 / fleet.requests.len() as f64,
            1e-9,
        ),
        ("apiscope-overview", "p95 latency") => assert_percentile(
            &what,
            number(&rows[0], "p95_ms"),
            &durations(&|_| true),
            0.95,
        ),
        ("apiscope-overview", "Request rate by service") => assert_eq!(
            series_totals(rows, "rate", interval),
            as_f64(fleet.count_by(|r| r.service.to_owned())),
            "{what}"
        ),
        ("apiscope-endpoints", "Endpoints") => {
            check_calls_and_errors(&what, rows, "endpoint", fleet, |r| r.endpoint());
            let calls = fleet.count_by(|r| r.endpoint());
            for row in rows {
                let endpoint = text(row, "endpoint");
                assert_close(
                    &what,
                    number(row, "rate_per_s"),
                    calls[&endpoint] as f64 / range_s,
                    1e-9,
                );
                let own = durations(&|r| r.endpoint() == endpoint);
                assert_percentile(&what, number(row, "p95_ms"), &own, 0.95);
                let max = own.iter().cloned().fold(0.0, f64::max);
                assert_eq!(number(row, "max_ms"), max, "{what}: {endpoint}");
            }
        }
        ("apiscope-clients", "Clients") => {
            check_calls_and_errors(&what, rows, "client_id", fleet, |r| r.client.to_owned());
            for row in rows {
                let client = text(row, "client_id");
                let failures = fleet.errors_by(|r| {
                    if r.client == client {
                        r.endpoint()
                    } else {
                        String::new()
                    }
                });
                // Most failures first, then the first endpoint by name.
                let top = failures
                    .iter()
                    .filter(|(endpoint, _)| !endpoint.is_empty())
                    .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                    .map(|(endpoint, _)| endpoint.clone());
                assert_eq!(
                    row.get::<_, Option<String>>("top_failing_endpoint"),
                    top,
                    "{what}: {client}"
                );
            }
        }
        ("apiscope-clients", "Client and endpoint") => {
            let calls = fleet.count_by(|r| format!("{} {}", r.client, r.endpoint()));
            let seen: BTreeMap<String, i64> = rows
                .iter()
                .map(|row| {
                    let key = format!("{} {}", text(row, "client_id"), text(row, "endpoint"));
                    (key, number(row, "calls") as i64)
                })
                .collect();
            assert_eq!(seen, calls, "{what}");
        }
        ("apiscope-dependencies", "Dependencies") => {
            let calls = fleet.count_by(|r| format!("{} -> {}", r.service, r.dependency));
            let seen: BTreeMap<String, i64> = rows
                .iter()
                .map(|row| {
                    let key = format!(
                        "{} -> {}",
                        text(row, "service_name"),
                        text(row, "dependency")
                    );
                    (key, number(row, "calls") as i64)
                })
                .collect();
            assert_eq!(seen, calls, "{what}");
            for row in rows {
                let dependency = text(row, "dependency");
                let own: Vec<f64> = fleet
                    .requests
                    .iter()
                    .filter(|r| r.dependency == dependency)
                    .map(|r| r.dependency_ms as f64)
                    .collect();
                assert_percentile(&what, number(row, "p95_ms"), &own, 0.95);
                let callers: i64 = fleet
                    .requests
                    .iter()
                    .filter(|r| r.dependency == dependency)
                    .map(|r| r.duration_ms)
                    .sum();
                assert_close(
                    &what,
                    number(row, "share_of_caller_time"),
                    own.iter().sum::<f64>() / callers as f64,
                    1e-9,
                );
            }
        }
        ("apiscope-errors", "Failed requests by status code") => {
            let failed = fleet.requests.iter().filter(|r| r.status >= 400);
            let mut expected = BTreeMap::new();
            for request in failed {
                *expected.entry(request.status.to_string()).or_insert(0.0) += 1.0;
            }
            assert_eq!(series_totals(rows, "requests", 1.0), expected, "{what}");
        }
        ("apiscope-errors", "Error breakdown") => {
            let failed: Vec<_> = fleet.requests.iter().filter(|r| r.status >= 400).collect();
            let mut expected: BTreeMap<String, i64> = BTreeMap::new();
            for request in failed {
                let key = format!(
                    "{} {} {}",
                    request.service,
                    request.endpoint(),
                    request.status
                );
                *expected.entry(key).or_insert(0) += 1;
            }
            let seen: BTreeMap<String, i64> = rows
                .iter()
                .map(|row| {
                    let key = format!(
                        "{} {} {}",
                        text(row, "service_name"),
                        text(row, "endpoint"),
                        number(row, "http_status_code")
                    );
                    (key, number(row, "calls") as i64)
                })
                .collect();
            assert_eq!(seen, expected, "{what}");
        }
        ("apiscope-errors", "Error logs by service") => assert_eq!(
            series_totals(rows, "records", 1.0),
            BTreeMap::from([("checkout".to_owned(), fleet.errors().len() as f64)]),
            "{what}"
        ),
        ("apiscope-errors", "Recent error logs") => {
            assert_eq!(rows.len(), fleet.errors().len(), "{what}");
            assert_eq!(*rows[0].columns()[0].type_(), Type::TIMESTAMPTZ, "{what}");
            let newest: DateTime<Utc> = rows[0].get("time");
            let last_error = fleet.errors().last().unwrap().time_s;
            assert_eq!(newest.timestamp(), last_error, "{what}: newest first");
        }
        ("apiscope-daemon", "Spans") => {
            assert_eq!(
                number(&rows[0], "spans"),
                2.0 * fleet.requests.len() as f64,
                "{what}"
            );
        }
        ("apiscope-daemon", "Log records") => {
            assert_eq!(
                number(&rows[0], "records"),
                fleet.errors().len() as f64,
                "{what}"
            );
        }
        ("apiscope-daemon", "Services reporting") => {
            assert_eq!(number(&rows[0], "services"), 2.0, "{what}");
        }
        ("apiscope-daemon", "Freshness") => {
            for row in rows {
                let service = text(row, "service_name");
                let last: DateTime<Utc> = row.get("last_span");
                let expected = fleet
                    .requests
                    .iter()
                    .filter(|r| r.service == service)
                    .map(|r| r.time_s)
                    .max()
                    .unwrap();
                assert_eq!(last.timestamp(), expected, "{what}: {service}");
            }
        }
        ("apiscope-clients", "Calls by client") => check("rate", &client, &rate),
        ("apiscope-clients", "Error rate by client") => check("error_rate", &client, &error_rate),
        // A server span and a client span per request.
        ("apiscope-daemon", "Spans per second by service") => {
            check("spans", &service, &|requests: &[&Request]| {
                (per_second(2 * requests.len()), 1e-9)
            })
        }
        // One error log per failed request, all sent as checkout's.
        ("apiscope-daemon", "Log records per second by service") => check(
            "records",
            &|r: &Request| r.is_error().then(|| "checkout".to_owned()),
            &rate,
        ),
        ("apiscope-dependencies", "Calls by dependency") => check("rate", &dependency, &rate),
        ("apiscope-dependencies", "p95 latency by dependency") => {
            check("p95", &dependency, &percentile(0.95, |r| r.dependency_ms))
        }
        // Dependency calls never fail in the fleet.
        ("apiscope-dependencies", "Dependency error rate") => {
            check("error_rate", &dependency, &|_: &[&Request]| (0.0, 0.0))
        }
        ("apiscope-endpoints", "Calls by endpoint") => check("rate", &endpoint, &rate),
        ("apiscope-endpoints", "p95 latency by endpoint") => {
            check("p95", &endpoint, &percentile(0.95, duration))
        }
        ("apiscope-endpoints", "Errors by endpoint") => {
            check("errors", &endpoint, &|requests: &[&Request]| {
                (errors(requests) as f64, 0.0)
            })
        }
        ("apiscope-overview", "Error rate by service") => {
            check("error_rate", &service, &error_rate)
        }
        ("apiscope-overview", "Latency p50 / p95 / p99 by service") => {
            check("p50", &service, &percentile(0.5, duration));
            check("p95", &service, &percentile(0.95, duration));
            check("p99", &service, &percentile(0.99, duration));
        }
        ("apiscope-endpoints" | "apiscope-clients", "Slowest traces") => {
            check_traces(&what, rows, fleet, false, |r| (r.duration_ms, r.time_s));
        }
        ("apiscope-endpoints" | "apiscope-clients" | "apiscope-errors", "Failing traces") => {
            check_traces(&what, rows, fleet, true, |r| (r.time_s, 0));
        }
        ("apiscope-dependencies", "Slowest and failing dependency calls") => {
            // No dependency call fails in the fleet: the slowest calls, each in its trace.
            let expected = top_20(fleet.requests.iter().map(|r| (r.dependency_ms, r.time_s)));
            let seen: Vec<(i64, i64)> = rows
                .iter()
                .map(|row| {
                    let request = fleet_request(fleet, &text(row, "trace_id"));
                    assert_eq!(text(row, "dependency"), request.dependency, "{what}");
                    assert!(!row.get::<_, bool>("is_error"), "{what}");
                    (number(row, "duration_ms") as i64, request.time_s)
                })
                .collect();
            assert_eq!(seen, expected, "{what}");
        }
        ("apiscope-budgets", "Objectives") => {
            assert_eq!(rows.len(), FLEET_OBJECTIVES.len(), "{what}");
            for row in rows {
                let objective = Objective::named(&text(row, "name"));
                let (from_s, to_s) = (range.from.timestamp(), range.to.timestamp());
                let (total, good) = objective.judged(fleet, from_s, to_s);
                assert!(total > 0, "{what}");
                assert_eq!(number(row, "total"), total as f64, "{what}");
                assert_eq!(number(row, "good"), good as f64, "{what}");
                assert_eq!(number(row, "bad"), (total - good) as f64, "{what}");
                assert_close(
                    &what,
                    number(row, "sli"),
                    good as f64 * 100.0 / total as f64,
                    1e-9,
                );
                let budget = total as f64 * 0.01;
                assert_close(&what, number(row, "error_budget"), budget, 1e-9);
                let left = budget - (total - good) as f64;
                assert_close(&what, number(row, "budget_left_ratio"), left / budget, 1e-9);
            }
        }
        ("apiscope-budgets", "Burn rates") => {
            assert_eq!(rows.len(), FLEET_OBJECTIVES.len(), "{what}");
            for row in rows {
                let name = text(row, "name");
                let objective = Objective::named(&name);
                for (column, length_s) in BURN_WINDOWS {
                    let expected = objective.burn(fleet, range.to.timestamp(), length_s);
                    let seen = number(row, column);
                    assert!(
                        same_or_both_nan(seen, expected),
                        "{what}: {name} {column} is {seen}, not {expected}"
                    );
                }
            }
        }
        ("apiscope-budgets", "Top budget burners") => {
            // The variable's first objective: checkout's, whose failures are the fleet's 500s.
            let objective = Objective::named("checkout-availability");
            let mut expected: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
            for request in fleet.requests.iter().filter(|r| (objective.covers)(r)) {
                let key = (request.client.to_owned(), request.endpoint());
                let counts = expected.entry(key).or_default();
                counts.0 += 1;
                counts.1 += i64::from(!(objective.good)(request));
            }
            expected.retain(|_, (_, bad)| *bad > 0);
            let seen: BTreeMap<(String, String), (i64, i64)> = rows
                .iter()
                .map(|row| {
                    let key = (text(row, "client_id"), text(row, "endpoint"));
                    let counts = (number(row, "calls") as i64, number(row, "bad") as i64);
                    (key, counts)
                })
                .collect();
            assert_eq!(seen, expected, "{what}");
            let bad: Vec<f64> = rows.iter().map(|row| number(row, "bad")).collect();
            assert!(bad.windows(2).all(|w| w[0] >= w[1]), "{what}: most first");
        }
        _ => return questions::check(dashboard, panel, rows, fleet, range),
    }
    true
}

/// The 20 highest ranks, highest first: what a table of traces `ORDER BY ... DESC LIMIT 20` shows.
fn top_20(ranks: impl Iterator<Item = (i64, i64)>) -> Vec<(i64, i64)> {
    let mut ranks: Vec<(i64, i64)> = ranks.collect();
    ranks.sort_by(|a, b| b.cmp(a));
    ranks.truncate(20);
    ranks
}

/// The fleet request whose trace is `trace_id`.
fn fleet_request<'a>(fleet: &'a Fleet, trace_id: &str) -> &'a Request {
    let k = u64::from_str_radix(trace_id, 16).unwrap() - 0x7000;
    &fleet.requests[k as usize]
}

/// A table of traces: its rows are the fleet's requests (the failed ones when `failed`),
/// ranked by `rank` from the top, at most 20, each row holding its request's values.
fn check_traces(
    what: &str,
    rows: &[Row],
    fleet: &Fleet,
    failed: bool,
    rank: fn(&Request) -> (i64, i64),
) {
    let expected = top_20(
        fleet
            .requests
            .iter()
            .filter(|r| !failed || r.is_error())
            .map(rank),
    );
    let seen: Vec<(i64, i64)> = rows
        .iter()
        .map(|row| {
            let request = fleet_request(fleet, &text(row, "trace_id"));
            assert_eq!(text(row, "endpoint"), request.endpoint(), "{what}");
            assert_eq!(text(row, "client_id"), request.client, "{what}");
            assert_eq!(
                number(row, "duration_ms") as i64,
                request.duration_ms,
                "{what}"
            );
            assert_eq!(
                number(row, "http_status_code") as i64,
                request.status,
                "{what}"
            );
            rank(request)
        })
        .collect();
    assert_eq!(seen, expected, "{what}");
}

/// The first column of `sql`'s rows, as text.
async fn values(client: &Client, sql: &str) -> Vec<String> {
    let rows = client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

/// Rows of a simple-protocol query (what Grafana's driver sends for panels).
async fn simple_rows(client: &Client, sql: &str) -> usize {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count()
}

#[test]
fn every_panel_query_answers_over_the_postgres_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = with_objectives(dir.path());
    let fleet = Fleet::new();
    fleet.send(&daemon);
    let whole = Range {
        from: DateTime::from_timestamp(fleet.start_s - 300, 0).unwrap(),
        to: DateTime::from_timestamp(fleet.end_s() + 300, 0).unwrap(),
        interval: "1m",
    };
    let changes = questions::changes_range(&fleet);
    let expected_variables: BTreeMap<&str, Vec<String>> = BTreeMap::from([
        (
            "service",
            fleet
                .count_by(|r| r.service.to_owned())
                .into_keys()
                .collect(),
        ),
        (
            "endpoint",
            fleet.count_by(|r| r.endpoint()).into_keys().collect(),
        ),
        (
            "client",
            fleet
                .count_by(|r| r.client.to_owned())
                .into_keys()
                .collect(),
        ),
        (
            "objective",
            FLEET_OBJECTIVES.iter().map(|o| o.name.to_owned()).collect(),
        ),
    ]);

    runtime().block_on(async {
        let client = connect(&daemon, None).await.unwrap();
        let mut panels_checked = 0;
        let all = dashboards();
        for (file, dashboard) in &all {
            let uid = dashboard["uid"].as_str().unwrap();
            let range = if uid == "apiscope-changes" {
                &changes
            } else {
                &whole
            };
            // Variables resolve in order, each seeing the ones before it ("All" selected).
            let mut variables = BTreeMap::new();
            for variable in dashboard["templating"]["list"].as_array().unwrap() {
                let name = variable["name"].as_str().unwrap().to_owned();
                let sql = expand(variable["query"].as_str().unwrap(), range, &variables);
                let mut answer = values(&client, &sql).await;
                answer.sort();
                assert_eq!(
                    Some(&answer),
                    expected_variables.get(name.as_str()),
                    "{file}: variable {name}"
                );
                // A single-value variable holds its first value, as Grafana picks it.
                if variable["multi"] == false {
                    answer.truncate(1);
                }
                variables.insert(name, answer);
            }
            for panel in dashboard["panels"].as_array().unwrap() {
                let title = panel["title"].as_str().unwrap();
                for target in panel["targets"].as_array().unwrap() {
                    let sql = expand(target["rawSql"].as_str().unwrap(), range, &variables);
                    let what = format!("{file} / {title}");
                    let rows = client
                        .query(&sql, &[])
                        .await
                        .unwrap_or_else(|e| panic!("{what}: {e:?}\n{sql}"));
                    let format = target["format"].as_str().unwrap_or("time_series");
                    check_shape(&what, format, &rows);
                    questions::check_links(&what, panel, &rows, &all);
                    assert!(
                        check_values(uid, title, &rows, &fleet, range),
                        "{what}: no check of this panel's values; add one to check_values"
                    );
                    assert_eq!(simple_rows(&client, &sql).await, rows.len(), "{what}");
                    panels_checked += 1;
                }
            }
            for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
                let name = annotation["name"].as_str().unwrap();
                let what = format!("{file} / annotation {name}");
                assert_eq!(annotation["datasource"]["uid"], DATASOURCE_UID, "{what}");
                let sql = expand(
                    annotation["target"]["rawSql"].as_str().unwrap(),
                    range,
                    &variables,
                );
                let rows = client
                    .query(&sql, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e:?}\n{sql}"));
                assert_eq!(
                    (uid, name),
                    ("apiscope-endpoints", "Deploys"),
                    "{what}: no check"
                );
                questions::check_annotation(&what, &rows, &fleet);
            }
        }
        assert!(panels_checked >= 20, "{panels_checked} panels");
    });
}

/// A daemon over `data_dir` with [`OBJECTIVES`], the fleet's OpenAPI document and `v1`
/// deprecated.
fn with_objectives(data_dir: &Path) -> Daemon {
    let config = data_dir.join("objectives.toml");
    let openapi = data_dir.join("openapi.yaml");
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(&config, OBJECTIVES).unwrap();
    std::fs::write(&openapi, questions::OPENAPI).unwrap();
    Daemon::start_with(
        data_dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--openapi",
            openapi.to_str().unwrap(),
            "--deprecated-version",
            questions::DEPRECATED,
        ],
    )
}

/// The provisioned alert rules: each asks the provisioned data source, its query expanded
/// as Grafana expands it for an evaluation at the end of the fleet's traffic, and a
/// threshold on it decides; over the fleet, the fast and slow burn rules fire for
/// checkout's objective, whose calls fail 20% of the time, and stay silent for the quiet
/// one. Before the traffic, nothing fires.
#[test]
fn alert_rules_fire_for_the_burning_objective_only() {
    let rules = yaml(&repo().join("dashboards/alerting/objectives.yaml"));
    assert_eq!(rules["apiVersion"], 1);
    let group = &rules["groups"][0];
    assert!(group["interval"].as_str().is_some(), "{group}");
    let rules: Vec<&Value> = group["rules"].as_array().unwrap().iter().collect();
    let titles: Vec<&str> = rules.iter().map(|r| r["uid"].as_str().unwrap()).collect();
    assert_eq!(titles, ["apiscope-fast-burn", "apiscope-slow-burn"]);

    let dir = tempfile::tempdir().unwrap();
    let daemon = with_objectives(dir.path());
    let fleet = Fleet::new();
    fleet.send(&daemon);
    runtime().block_on(async {
        let client = connect(&daemon, None).await.unwrap();
        for rule in rules {
            let uid = rule["uid"].as_str().unwrap();
            let data = rule["data"].as_array().unwrap();
            let query = &data[0];
            assert_eq!(query["datasourceUid"], DATASOURCE_UID, "{uid}");
            assert_eq!(query["model"]["format"], "table", "{uid}");
            // The condition: a threshold above 0 on the query's value.
            let condition = data
                .iter()
                .find(|d| d["refId"] == rule["condition"])
                .unwrap();
            assert_eq!(condition["datasourceUid"], "__expr__", "{uid}");
            assert_eq!(condition["model"]["type"], "threshold", "{uid}");
            assert_eq!(condition["model"]["expression"], query["refId"], "{uid}");
            let evaluator = &condition["model"]["conditions"][0]["evaluator"];
            assert_eq!(evaluator["type"], "gt", "{uid}");
            assert_eq!(evaluator["params"][0], 0, "{uid}");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{uid}");

            let lookback = query["relativeTimeRange"]["from"].as_i64().unwrap();
            for (at_s, firing) in [
                (fleet.end_s(), vec!["checkout-availability"]),
                (fleet.start_s, vec![]),
            ] {
                let to = DateTime::from_timestamp(at_s, 0).unwrap();
                let range = Range {
                    from: to - chrono::Duration::seconds(lookback),
                    to,
                    interval: "1m",
                };
                let sql = expand(
                    query["model"]["rawSql"].as_str().unwrap(),
                    &range,
                    &BTreeMap::new(),
                );
                let rows = client
                    .query(&sql, &[])
                    .await
                    .unwrap_or_else(|e| panic!("{uid}: {e:?}\n{sql}"));
                // One row per objective: its name as the label, one number as the value.
                assert_eq!(rows.len(), FLEET_OBJECTIVES.len(), "{uid}");
                let mut fired = Vec::new();
                for row in &rows {
                    assert_eq!(row.columns().len(), 2, "{uid}");
                    assert!(is_number(row.columns()[1].type_()), "{uid}");
                    let value = number(row, row.columns()[1].name());
                    if value > 0.0 {
                        fired.push(text(row, "name"));
                    }
                }
                assert_eq!(fired, firing, "{uid} at {range_to}", range_to = rfc3339(to));
            }
        }
    });
    daemon.stop();
}
