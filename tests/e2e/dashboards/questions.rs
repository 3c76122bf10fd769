//! The panels of the question functions (What changed, Contract and versions, and the
//! question panels of Clients), the links between dashboards, the deploy annotations of
//! Endpoints, and that every question function has a panel: values computed from the fleet.

use std::collections::{BTreeMap, BTreeSet};

use chrono::DateTime;
use serde_json::Value;
use tokio_postgres::Row;

use super::{Range, assert_close, dashboards, number, text};
use crate::support::fleet::{Fleet, Request, percentile_tolerance, quantile};

/// The OpenAPI document the dashboards' daemon is given: three of the fleet's four
/// operations (not `GET /v2/search`), with some of the statuses they answer, and one
/// operation nobody calls.
pub(super) const OPENAPI: &str = r#"
openapi: 3.0.3
info: {title: fleet, version: "1"}
paths:
  /v1/carts/{cartId}:
    get:
      responses: {"200": {description: ok}, "5XX": {description: failed}}
  /v1/orders:
    post:
      responses: {"200": {description: ok}}
  /v2/items/{itemId}:
    get:
      responses: {"200": {description: ok}, "404": {description: no such item}}
  /v2/stock:
    get:
      responses: {"200": {description: ok}}
"#;

/// The statuses [`OPENAPI`] documents per operation (`5XX` as 500), by the fleet's routes.
fn documented() -> BTreeMap<(&'static str, &'static str), Vec<i64>> {
    BTreeMap::from([
        (("GET", "/v1/carts/{id}"), vec![200, 500]),
        (("POST", "/v1/orders"), vec![200]),
        (("GET", "/v2/items/{id}"), vec![200, 404]),
        (("GET", "/v2/stock"), vec![200]),
    ])
}

/// The API version the dashboards' daemon is told is deprecated.
pub(super) const DEPRECATED: &str = "v1";

/// The range the What changed dashboard is checked over: the second half of the fleet, so
/// that the window before it is the first half (checkout is deployed where they meet).
pub(super) fn changes_range(fleet: &Fleet) -> Range {
    Range {
        from: DateTime::from_timestamp(fleet.start_s + 600, 0).unwrap(),
        to: DateTime::from_timestamp(fleet.start_s + 1200, 0).unwrap(),
        interval: "1m",
    }
}

/// When checkout 1.1.0 first answered, and how the question functions name that deploy.
fn deploy(fleet: &Fleet) -> (i64, String) {
    let first = fleet
        .requests
        .iter()
        .find(|r| r.version == "1.1.0")
        .unwrap();
    let at = DateTime::from_timestamp(first.time_s, 0).unwrap();
    (
        first.time_s,
        format!("1.1.0 (staging) at {}", at.format("%Y-%m-%dT%H:%M:%SZ")),
    )
}

fn p95(requests: &[&Request], of: fn(&Request) -> i64) -> f64 {
    let values: Vec<f64> = requests.iter().map(|r| of(r) as f64).collect();
    quantile(&values, 0.95)
}

fn check_p95(what: &str, seen: f64, requests: &[&Request], of: fn(&Request) -> i64) {
    let expected = p95(requests, of);
    assert_close(what, seen, expected, percentile_tolerance(expected));
}

/// The fleet's requests in `from_s..to_s` with `keep`.
fn within(fleet: &Fleet, from_s: i64, to_s: i64, keep: impl Fn(&Request) -> bool) -> Vec<&Request> {
    fleet
        .requests
        .iter()
        .filter(|r| r.time_s >= from_s && r.time_s < to_s && keep(r))
        .collect()
}

fn api_version(request: &Request) -> &'static str {
    if request.route.starts_with("/v1/") {
        "v1"
    } else {
        "v2"
    }
}

/// Checks the values of a question panel; false for a panel that is none of these.
pub(super) fn check(
    dashboard: &str,
    panel: &str,
    rows: &[Row],
    fleet: &Fleet,
    range: &Range,
) -> bool {
    let what = format!("{dashboard} / {panel}");
    let (from_s, to_s) = (range.from.timestamp(), range.to.timestamp());
    let length_s = to_s - from_s;
    let duration = |r: &Request| r.duration_ms;
    let (deployed_s, deploy_text) = deploy(fleet);
    match (dashboard, panel) {
        ("apiscope-changes", "Deploys") => {
            let endpoints: BTreeSet<String> = fleet
                .requests
                .iter()
                .filter(|r| r.service == "checkout")
                .map(Request::endpoint)
                .collect();
            assert_eq!(rows.len(), endpoints.len(), "{what}");
            for (row, endpoint) in rows.iter().zip(&endpoints) {
                assert_eq!(text(row, "endpoint"), *endpoint, "{what}");
                assert_eq!(text(row, "service_name"), "checkout", "{what}");
                assert_eq!(text(row, "service_version"), "1.1.0", "{what}");
                assert_eq!(text(row, "previous_version"), "1.0.0", "{what}");
                assert_eq!(text(row, "deployment_environment"), "staging", "{what}");
                let at: DateTime<chrono::Utc> = row.get("deployed_at");
                assert_eq!(at.timestamp(), deployed_s, "{what}");
                let minute = deployed_s / 60 * 60;
                let mine = |r: &Request| r.endpoint() == *endpoint;
                let before = within(fleet, minute - 1800, minute, mine);
                let after = within(fleet, minute, minute + 1800, mine);
                for (side, requests) in [("before", before), ("after", after)] {
                    let calls = number(row, &format!("calls_{side}"));
                    assert_eq!(calls, requests.len() as f64, "{what} {endpoint} {side}");
                    let errors = requests.iter().filter(|r| r.is_error()).count();
                    assert_close(
                        &format!("{what} {endpoint} error rate {side}"),
                        number(row, &format!("error_rate_{side}")),
                        errors as f64 / requests.len() as f64,
                        1e-9,
                    );
                    check_p95(
                        &format!("{what} {endpoint} p95 {side}"),
                        number(row, &format!("p95_ms_{side}")),
                        &requests,
                        duration,
                    );
                }
            }
        }
        ("apiscope-changes", "Latency regressions") => {
            let endpoints: BTreeSet<String> =
                fleet.requests.iter().map(Request::endpoint).collect();
            assert_eq!(rows.len(), endpoints.len(), "{what}");
            for row in rows {
                let endpoint = text(row, "endpoint");
                let mine = |r: &Request| r.endpoint() == endpoint;
                let now = within(fleet, from_s, to_s, mine);
                let before = within(fleet, from_s - length_s, from_s, mine);
                assert_eq!(number(row, "calls"), now.len() as f64, "{what} {endpoint}");
                assert_eq!(
                    number(row, "previous_calls"),
                    before.len() as f64,
                    "{what} {endpoint}"
                );
                check_p95(
                    &format!("{what} {endpoint} p95"),
                    number(row, "p95_ms"),
                    &now,
                    duration,
                );
                check_p95(
                    &format!("{what} {endpoint} previous p95"),
                    number(row, "previous_p95_ms"),
                    &before,
                    duration,
                );
                let deploys = row.get::<_, Option<String>>("deploys");
                let checkout = now[0].service == "checkout";
                assert_eq!(
                    deploys,
                    checkout.then(|| deploy_text.clone()),
                    "{what} {endpoint}"
                );
            }
        }
        ("apiscope-changes", "Traffic shift") => {
            let now = within(fleet, from_s, to_s, |_| true);
            let before = within(fleet, from_s - length_s, from_s, |_| true);
            let shares = |requests: &[&Request], key: &dyn Fn(&Request) -> String| {
                let mut counts: BTreeMap<String, f64> = BTreeMap::new();
                for request in requests {
                    *counts.entry(key(request)).or_default() += 1.0;
                }
                counts
            };
            let client = |r: &Request| r.client.to_owned();
            let endpoint = |r: &Request| r.endpoint();
            let mut expected = 0;
            for (dimension, key) in [
                ("client", &client as &dyn Fn(&Request) -> String),
                ("endpoint", &endpoint),
            ] {
                let (now_counts, before_counts) = (shares(&now, key), shares(&before, key));
                for (value, calls) in &now_counts {
                    let row = rows
                        .iter()
                        .find(|row| {
                            text(row, "dimension") == dimension && text(row, "value") == *value
                        })
                        .unwrap_or_else(|| panic!("{what}: no row for {dimension} {value}"));
                    let previous = before_counts.get(value).copied().unwrap_or(0.0);
                    assert_eq!(number(row, "calls"), *calls, "{what} {value}");
                    assert_eq!(number(row, "previous_calls"), previous, "{what} {value}");
                    assert_close(
                        &format!("{what} {value} share change"),
                        number(row, "share_change"),
                        calls / now.len() as f64 - previous / before.len() as f64,
                        1e-9,
                    );
                    // Every client called checkout; an endpoint names checkout's deploy when
                    // checkout serves it.
                    let served_by_checkout = fleet
                        .requests
                        .iter()
                        .any(|r| key(r) == *value && r.service == "checkout");
                    let deploys = row.get::<_, Option<String>>("deploys");
                    let expected_deploys =
                        served_by_checkout.then(|| format!("checkout {deploy_text}"));
                    assert_eq!(deploys, expected_deploys, "{what} {value}");
                    expected += 1;
                }
            }
            assert_eq!(rows.len(), expected, "{what}");
        }
        ("apiscope-clients", "Retries and timeouts") => {
            let mut expected: BTreeMap<(String, String), f64> = BTreeMap::new();
            for request in within(fleet, from_s, to_s, |_| true) {
                *expected
                    .entry((request.client.to_owned(), request.endpoint()))
                    .or_default() += 1.0;
            }
            assert_eq!(rows.len(), expected.len(), "{what}");
            for row in rows {
                let key = (text(row, "client_id"), text(row, "endpoint"));
                assert_eq!(number(row, "calls"), expected[&key], "{what} {key:?}");
                // A client calls an endpoint again only 72 s later, and nothing times out.
                assert_eq!(number(row, "retries"), 0.0, "{what} {key:?}");
                assert_eq!(number(row, "timeouts"), 0.0, "{what} {key:?}");
                assert_eq!(
                    number(row, "dependency_calls_per_request"),
                    1.0,
                    "{what} {key:?}"
                );
            }
        }
        ("apiscope-clients", "Refusals") => {
            let mut expected: BTreeMap<String, (f64, i64)> = BTreeMap::new();
            for request in within(fleet, from_s, to_s, |r| [401, 403, 429].contains(&r.status)) {
                let key = format!(
                    "{} {} {} {}",
                    request.client,
                    request.service,
                    request.endpoint(),
                    request.status
                );
                let entry = expected.entry(key).or_default();
                entry.0 += 1.0;
                entry.1 = entry.1.max(request.time_s);
            }
            let seen: BTreeMap<String, (f64, i64)> = rows
                .iter()
                .map(|row| {
                    let key = format!(
                        "{} {} {} {}",
                        text(row, "client_id"),
                        text(row, "service_name"),
                        text(row, "endpoint"),
                        number(row, "http_status_code")
                    );
                    let last: DateTime<chrono::Utc> = row.get("last_seen");
                    (key, (number(row, "calls"), last.timestamp()))
                })
                .collect();
            assert_eq!(seen, expected, "{what}");
        }
        ("apiscope-clients", "Payload sizes") => {
            let mut groups: BTreeMap<(String, String), Vec<&Request>> = BTreeMap::new();
            for request in within(fleet, from_s, to_s, |_| true) {
                groups
                    .entry((request.client.to_owned(), request.endpoint()))
                    .or_default()
                    .push(request);
            }
            assert_eq!(rows.len(), groups.len(), "{what}");
            let bytes = |r: &Request| r.response_bytes;
            for row in rows {
                let key = (text(row, "client_id"), text(row, "endpoint"));
                let mine = &groups[&key];
                let everyone = within(fleet, from_s, to_s, |r| r.endpoint() == key.1);
                let total: i64 = mine.iter().map(|r| r.response_bytes).sum();
                let all: i64 = everyone.iter().map(|r| r.response_bytes).sum();
                let what = format!("{what} {key:?}");
                assert_eq!(number(row, "calls"), mine.len() as f64, "{what}");
                check_p95(&what, number(row, "response_bytes_p95"), mine, bytes);
                check_p95(
                    &what,
                    number(row, "endpoint_response_bytes_p95"),
                    &everyone,
                    bytes,
                );
                assert_eq!(number(row, "response_bytes_total"), total as f64, "{what}");
                assert_close(
                    &what,
                    number(row, "share_of_endpoint_bytes"),
                    total as f64 / all as f64,
                    1e-9,
                );
            }
            assert_eq!(
                text(&rows[0], "client_id"),
                "partner-a",
                "{what}: largest first"
            );
        }
        ("apiscope-contract", "Version usage") => {
            let mut expected: BTreeMap<(String, String), (f64, i64)> = BTreeMap::new();
            for request in within(fleet, from_s, to_s, |_| true) {
                let entry = expected
                    .entry((api_version(request).to_owned(), request.client.to_owned()))
                    .or_default();
                entry.0 += 1.0;
                entry.1 = entry.1.max(request.time_s);
            }
            assert_eq!(rows.len(), expected.len(), "{what}");
            for row in rows {
                let key = (text(row, "api_version"), text(row, "client_id"));
                let last: DateTime<chrono::Utc> = row.get("last_seen");
                assert_eq!(
                    (number(row, "calls"), last.timestamp()),
                    expected[&key],
                    "{what} {key:?}"
                );
                let deprecated: bool = row.get("deprecated");
                assert_eq!(deprecated, key.0 == DEPRECATED, "{what} {key:?}");
            }
            let first: bool = rows[0].get("deprecated");
            assert!(first, "{what}: deprecated versions first");
        }
        ("apiscope-contract", "Contract drift") => {
            let documented = documented();
            let mut expected: BTreeSet<(String, String, String, i64)> = BTreeSet::new();
            let mut routes: BTreeMap<(&str, &str), i64> = BTreeMap::new();
            let mut statuses: BTreeMap<(&str, &str, i64), i64> = BTreeMap::new();
            for request in within(fleet, from_s, to_s, |_| true) {
                let operation = (request.method, request.route);
                match documented.get(&operation) {
                    None => *routes.entry(operation).or_default() += 1,
                    Some(known) if !known.contains(&request.status) => {
                        *statuses
                            .entry((request.method, request.route, request.status))
                            .or_default() += 1
                    }
                    Some(_) => {}
                }
            }
            for ((method, route), calls) in routes {
                expected.insert((
                    "undocumented_route".into(),
                    format!("{method} {route}"),
                    String::new(),
                    calls,
                ));
            }
            for ((method, route, status), calls) in statuses {
                // Reported under the documented route.
                let route = route.replace(
                    "{id}",
                    if route.starts_with("/v1") {
                        "{cartId}"
                    } else {
                        "{itemId}"
                    },
                );
                expected.insert((
                    "undocumented_status".into(),
                    format!("{method} {route}"),
                    status.to_string(),
                    calls,
                ));
            }
            for (method, route) in documented.keys() {
                if !fleet
                    .requests
                    .iter()
                    .any(|r| r.method == *method && r.route == *route)
                {
                    expected.insert((
                        "unused_operation".into(),
                        format!("{method} {route}"),
                        String::new(),
                        0,
                    ));
                }
            }
            let seen: BTreeSet<(String, String, String, i64)> = rows
                .iter()
                .map(|row| {
                    let status = row.get::<_, Option<i32>>("http_status_code");
                    (
                        text(row, "kind"),
                        format!("{} {}", text(row, "http_method"), text(row, "http_route")),
                        status.map(|s| s.to_string()).unwrap_or_default(),
                        number(row, "calls") as i64,
                    )
                })
                .collect();
            assert_eq!(seen, expected, "{what}");
        }
        _ => return false,
    }
    true
}

/// Every question function (and `api_call_minutes` and the objectives' functions) is asked
/// by at least one panel of the shipped dashboards.
#[test]
fn every_question_function_has_a_panel() {
    let mut asked = String::new();
    for (_, dashboard) in dashboards() {
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                asked.push_str(target["rawSql"].as_str().unwrap());
                asked.push('\n');
            }
        }
    }
    let functions = query::QUESTIONS.iter().map(|q| q.name).chain([
        "api_call_minutes",
        "objective_status",
        "budget_burners",
    ]);
    let missing: Vec<&str> = functions
        .filter(|name| !asked.contains(&format!("{name}(")))
        .collect();
    assert!(missing.is_empty(), "no panel asks {missing:?}");
}

/// The dashboard an `endpoint` or `client_id` cell links to, and the variable it sets.
const LINKED: [(&str, &str, &str); 2] = [
    ("endpoint", "apiscope-endpoints", "endpoint"),
    ("client_id", "apiscope-clients", "client"),
];

/// A table panel showing endpoints or clients links each cell to the dashboard of that
/// endpoint or client, setting a variable that dashboard has, over the same time range.
pub(super) fn check_links(what: &str, panel: &Value, rows: &[Row], all: &[(String, Value)]) {
    if panel["type"] != "table" {
        return;
    }
    for (column, uid, variable) in LINKED {
        if !rows[0].columns().iter().any(|c| c.name() == column) {
            continue;
        }
        // An objective's endpoint may be a pattern: no link there.
        if panel["title"] == "Objectives" {
            continue;
        }
        let links: Vec<&str> = panel["fieldConfig"]["overrides"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["matcher"]["id"] == "byName" && o["matcher"]["options"] == column)
            .flat_map(|o| o["properties"].as_array().unwrap())
            .filter(|p| p["id"] == "links")
            .flat_map(|p| p["value"].as_array().unwrap())
            .map(|link| link["url"].as_str().unwrap())
            .collect();
        assert_eq!(links.len(), 1, "{what}: {column} links to {links:?}");
        let url = links[0];
        assert!(url.starts_with(&format!("/d/{uid}/")), "{what}: {url}");
        assert!(url.contains("${__url_time_range}"), "{what}: {url}");
        assert!(
            url.contains(&format!("var-{variable}=${{__value.raw}}")),
            "{what}: {url}"
        );
        let target = all
            .iter()
            .find(|(_, d)| d["uid"] == uid)
            .map(|(_, d)| d)
            .unwrap();
        assert!(
            target["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == variable),
            "{what}: {uid} has no variable {variable}"
        );
    }
}

/// The Endpoints dashboard's annotations mark each deploy once: every version first seen
/// in the range (all of them, since nothing came before the fleet), checkout's 1.1.0 after
/// its 1.0.0.
pub(super) fn check_annotation(what: &str, rows: &[Row], fleet: &Fleet) {
    let mut expected: Vec<(i64, String)> = Vec::new();
    let mut seen_versions: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
    for request in &fleet.requests {
        if !seen_versions.insert((request.service, request.version)) {
            continue;
        }
        let before = previous
            .insert(request.service, request.version)
            .map(|v| format!("{v} -> "))
            .unwrap_or_default();
        let text = format!("{} {before}{} (staging)", request.service, request.version);
        expected.push((request.time_s, text));
    }
    expected.sort();
    let seen: Vec<(i64, String)> = rows
        .iter()
        .map(|row| {
            let at: DateTime<chrono::Utc> = row.get("time");
            let text = text(row, "text");
            let service = text.split(' ').next().unwrap().to_owned();
            assert_eq!(super::text(row, "tags"), service, "{what}");
            (at.timestamp(), text)
        })
        .collect();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "{what}: in time order");
    assert_eq!(seen, expected, "{what}");
}
