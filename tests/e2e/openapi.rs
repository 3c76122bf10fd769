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

#[test]
fn openapi_templates_and_contract_drift() {
    let dir = tempfile::tempdir().unwrap();
    let document = dir.path().join("shop.yaml");
    std::fs::write(&document, DOCUMENT).unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start_with(&data, &["--openapi", document.to_str().unwrap()]);
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
