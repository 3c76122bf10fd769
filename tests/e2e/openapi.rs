//! `--openapi`: the document's path templates name raw paths, and `contract_drift` lists
//! where traffic and the document disagree.

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::otlp::{hex_id, post, span, traces};

const DOCUMENT: &str = r#"
openapi: 3.0.3
info: {title: shop, version: "2"}
servers:
  - url: https://api.example.com/api
paths:
  /users/{userId}:
    get:
      responses:
        "200": {description: the user}
        "404": {description: no such user}
  /users/me:
    get:
      responses:
        "200": {description: the caller}
  /items/{itemId}:
    get:
      responses:
        "200": {description: an item}
        4XX: {description: client errors}
    delete:
      responses:
        "204": {description: deleted}
"#;

/// A daemon over `dir/data` given `text` as its OpenAPI document (`dir/shop.yaml`).
fn with_document(dir: &std::path::Path, text: &str) -> Daemon {
    let document = dir.join("shop.yaml");
    std::fs::write(&document, text).unwrap();
    Daemon::start_with(
        &dir.join("data"),
        &["--openapi", document.to_str().unwrap()],
    )
}

#[test]
fn openapi_templates_and_contract_drift() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = with_document(dir.path(), DOCUMENT);
    let now_s = crate::now_ns() / 1_000_000_000;

    // Request logs with raw paths: the document names them, where the usual templating
    // would not ("ab-cd" is no id to it) or would wrongly ("me" is a literal route).
    let lines: Vec<Value> = [
        ("/api/users/ab-cd", 200),
        ("/api/users/42", 404),
        ("/api/users/42", 500),
        ("/api/users/me", 200),
        ("/api/carts/7", 200),
    ]
    .iter()
    .enumerate()
    .map(|(i, (path, status))| {
        json!({"time": now_s - 60 + i as i64, "method": "GET", "path": path, "status": status,
               "duration_ms": 5, "service": "shop"})
    })
    .collect();
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (status, answer) = post(
        &daemon,
        "/api/v1/requests",
        "application/x-ndjson",
        None,
        body.into_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let endpoints = daemon.rows("SELECT endpoint FROM requests ORDER BY time");
    let endpoints: Vec<&str> = endpoints.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(
        endpoints,
        [
            "GET /api/users/{userId}",
            "GET /api/users/{userId}",
            "GET /api/users/{userId}",
            "GET /api/users/me",
            "GET /api/carts/{id}"
        ]
    );

    // A span whose instrumentation names the route its own way (`:id`), answering a
    // documented 4XX and an undocumented 500.
    let spans: Vec<Value> = [429, 500]
        .iter()
        .enumerate()
        .map(|(i, status)| {
            span(
                &hex_id(0xd00 + i as u64, 16),
                &hex_id(0xe00 + i as u64, 8),
                "GET /api/items/:id",
                2,
                (now_s - 30) * 1_000_000_000,
                3,
                json!([
                    {"key": "http.request.method", "value": {"stringValue": "GET"}},
                    {"key": "http.route", "value": {"stringValue": "/api/items/:id"}},
                    {"key": "http.response.status_code", "value": {"intValue": status}},
                ]),
            )
        })
        .collect();
    let body = serde_json::to_vec(&traces("shop", spans)).unwrap();
    let (status, _) = post(&daemon, "/v1/traces", "application/json", None, body);
    assert_eq!(status, 200);
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM spans", 2), 2);

    let rows = daemon.rows(
        "SELECT kind, http_method, http_route, http_status_code, calls FROM contract_drift() \
         ORDER BY kind, http_route, http_status_code",
    );
    assert_eq!(
        rows,
        vec![
            vec![
                json!("undocumented_route"),
                json!("GET"),
                json!("/api/carts/{id}"),
                json!(null),
                json!(1)
            ],
            vec![
                json!("undocumented_status"),
                json!("GET"),
                json!("/api/items/{itemId}"),
                json!(500),
                json!(1)
            ],
            vec![
                json!("undocumented_status"),
                json!("GET"),
                json!("/api/users/{userId}"),
                json!(500),
                json!(1)
            ],
            vec![
                json!("unused_operation"),
                json!("DELETE"),
                json!("/api/items/{itemId}"),
                json!(null),
                json!(0)
            ],
        ]
    );
    let operations = daemon.count("SELECT count(*) FROM openapi_operations");
    assert_eq!(operations, 6);

    // A document that does not parse stops the start with its name.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "openapi: [").unwrap();
    let output = std::process::Command::new(crate::support::daemon::binary())
        .args(["serve", "--openapi"])
        .arg(&broken)
        .args(["--data-dir"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("broken.yaml"));
}

/// A document declaring objectives on an operation, for service `shop` by default.
const WITH_OBJECTIVES: &str = r#"
openapi: 3.0.3
info: {title: shop, version: "2"}
x-apiscope-service: shop
servers:
  - url: https://api.example.com/api
paths:
  /items/{itemId}:
    get:
      responses:
        "200": {description: an item}
      x-apiscope-objectives:
        - {name: items-available, kind: availability, target: 90, window: 1d}
        - {name: items-fast, kind: latency, threshold_ms: 100, target: 80, window: 1d}
"#;

#[test]
fn objectives_declared_on_operations_are_judged_as_the_config_files_are() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = with_document(dir.path(), WITH_OBJECTIVES);
    let listed =
        daemon.rows("SELECT name, service_name, endpoint, kind FROM objectives ORDER BY name");
    assert_eq!(
        listed,
        [
            [
                json!("items-available"),
                json!("shop"),
                json!("GET /api/items/{itemId}"),
                json!("availability")
            ],
            [
                json!("items-fast"),
                json!("shop"),
                json!("GET /api/items/{itemId}"),
                json!("latency")
            ],
        ]
    );

    // Ten calls of the operation, its parameter named as the instrumentation names it: one
    // fails (client "bot"), three take 200 ms. Calls of other routes do not count.
    let start_s = crate::now_ns() / 1_000_000_000 - 600;
    let mut spans = Vec::new();
    let calls: Vec<(&str, &str, i64, i64)> = (0..10)
        .map(|i| {
            let status = if i == 4 { 500 } else { 200 };
            let client = if i == 4 { "bot" } else { "web" };
            (
                "/api/items/:id",
                client,
                status,
                if i % 3 == 0 { 200 } else { 50 },
            )
        })
        .chain([
            ("/api/items/:id/reviews", "web", 500, 500),
            ("/api/carts/:id", "web", 500, 500),
        ])
        .collect();
    for (i, (route, client, status, duration_ms)) in calls.iter().enumerate() {
        spans.push(span(
            &hex_id(0x900 + i as u64, 16),
            &hex_id(0x900 + i as u64, 8),
            "GET",
            2,
            (start_s + i as i64) * 1_000_000_000,
            *duration_ms,
            json!([
                {"key": "http.request.method", "value": {"stringValue": "GET"}},
                {"key": "http.route", "value": {"stringValue": route}},
                {"key": "http.response.status_code", "value": {"intValue": status}},
                {"key": "client.id", "value": {"stringValue": client}},
            ]),
        ));
    }
    let body = serde_json::to_vec(&traces("shop", spans)).unwrap();
    let (status, answer) = post(&daemon, "/v1/traces", "application/json", None, body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    daemon.wait_for_count("SELECT count(*) FROM api_calls", calls.len() as i64);

    let mine = &calls[..10];
    let total = mine.len() as i64;
    let failed = mine.iter().filter(|c| c.2 >= 500).count() as i64;
    let slow = mine.iter().filter(|c| c.3 > 100).count() as i64;
    let window = format!(
        "'{}', '{}'",
        crate::support::rfc3339(start_s - 60),
        crate::support::rfc3339(start_s + 600)
    );
    let status = daemon.rows(&format!(
        "SELECT name, total, good FROM objective_status({window}) ORDER BY name"
    ));
    assert_eq!(
        status,
        [
            [
                json!("items-available"),
                json!(total),
                json!(total - failed)
            ],
            [json!("items-fast"), json!(total), json!(total - slow)],
        ]
    );
    let burners = daemon.rows(&format!(
        "SELECT client_id, bad FROM budget_burners('items-available', {window})"
    ));
    assert_eq!(burners, [[json!("bot"), json!(1)]]);
}

#[test]
fn a_bad_objective_in_a_document_stops_the_start_naming_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    for (objective, why) in [
        (
            "{name: items-fast, kind: latency, threshold_ms: 333, target: 99, window: 1d}",
            "not one of",
        ),
        (
            "{name: items-fast, endpoint: GET /x, kind: availability, target: 99, window: 1d}",
            "names an `endpoint`",
        ),
        (
            "{name: items-fast, kind: availability, target: 99, windw: 1d}",
            "unknown field",
        ),
    ] {
        let document = dir.path().join("bad.yaml");
        let text = WITH_OBJECTIVES.replace(
            "- {name: items-fast, kind: latency, threshold_ms: 100, target: 80, window: 1d}",
            &format!("- {objective}"),
        );
        assert_ne!(text, WITH_OBJECTIVES);
        std::fs::write(&document, text).unwrap();
        let output = crate::support::daemon::serve(&dir.path().join("data"))
            .args(["--openapi", document.to_str().unwrap(), "--check-config"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{objective}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(
            stderr.contains("items-fast") || stderr.contains("GET /api/items/{itemId}"),
            "{stderr}"
        );
    }
}
