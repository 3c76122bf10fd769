//! `POST /api/v1/requests`: good lines kept, bad lines refused by line number, limits,
//! and acknowledged lines surviving a crash.

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::otlp::{gzip, post};

fn answer(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

fn line(minute: i64, path: &str, status: i64) -> String {
    let now_s = crate::now_ns() / 1_000_000_000;
    json!({
        "time": now_s - 600 + minute * 60,
        "method": "GET",
        "path": path,
        "status": status,
        "duration_ms": 12.5,
        "client_id": "web",
        "service": "accounts",
    })
    .to_string()
}

#[test]
fn request_log_lines_are_kept_or_refused_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(dir.path(), &["--max-body-bytes", "65536"]);
    let count = "SELECT count(*) FROM requests";

    // Good lines around bad ones: malformed, missing fields, wrong types, out of range, and
    // a last line cut short.
    let body = [
        line(0, "/v1/users/1", 200),
        "{not json".to_owned(),
        line(1, "/v1/users/2", 503),
        r#"{"time": 1764237600, "method": "GET", "path": "/a"}"#.to_owned(),
        r#"{"time": 1764237600, "method": "GET", "path": "/a", "status": true}"#.to_owned(),
        String::new(),
        line(2, "/v1/users/3?verbose=1", 200),
        r#"{"time": 1764237600, "method": "GET", "path": "/a", "status": 700}"#.to_owned(),
        r#"{"time": 1764237600, "method": "GET", "pa"#.to_owned(),
    ]
    .join("\n");
    let (status, bytes) = post(
        &daemon,
        "/api/v1/requests",
        "application/x-ndjson",
        None,
        body.into_bytes(),
    );
    let reply = answer(&bytes);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["accepted"], 3, "{reply}");
    assert_eq!(reply["rejected"], 5, "{reply}");
    let errors: Vec<&str> = reply["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for (line, problem) in [
        (2, "not JSON"),
        (4, "missing `status`"),
        (5, "`status` must be a number"),
        (8, "from 100 to 599"),
        (9, "not JSON"),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("line {line}: ")) && e.contains(problem)),
            "line {line} ({problem}) in {errors:?}"
        );
    }
    assert_eq!(daemon.count(count), 3);
    let rows = daemon.rows(
        "SELECT endpoint, url_path, is_error, api_version, service_name, client_id \
         FROM requests ORDER BY time",
    );
    assert_eq!(
        rows[0],
        vec![
            json!("GET /v1/users/{id}"),
            json!("/v1/users/1"),
            json!(false),
            json!("v1"),
            json!("accounts"),
            json!("web")
        ]
    );
    assert_eq!(rows[1][2], json!(true));
    assert_eq!(rows[2][1], json!("/v1/users/3"));
    assert_eq!(
        daemon.count("SELECT count(*) FROM api_calls WHERE source = 'request_log'"),
        3
    );

    // Every line bad: 400, nothing stored.
    let (status, bytes) = post(
        &daemon,
        "/api/v1/requests",
        "application/x-ndjson",
        None,
        b"[]\n{}\n".to_vec(),
    );
    let reply = answer(&bytes);
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["accepted"], 0);
    assert_eq!(reply["rejected"], 2);

    // gzip works; a wrong media type, an oversized body and a gzip bomb are refused whole.
    let two = format!(
        "{}\n{}\n",
        line(3, "/v2/orders", 201),
        line(4, "/v2/orders", 201)
    );
    let (status, bytes) = post(
        &daemon,
        "/api/v1/requests",
        "application/x-ndjson",
        Some("gzip"),
        gzip(two.as_bytes()),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(answer(&bytes)["accepted"], 2);
    let (status, bytes) = post(
        &daemon,
        "/api/v1/requests",
        "application/x-protobuf",
        None,
        two.clone().into_bytes(),
    );
    assert_eq!(status, 415, "{}", String::from_utf8_lossy(&bytes));
    assert!(answer(&bytes)["error"].as_str().is_some());
    let big = line(5, "/v2/orders", 200).repeat(2000).into_bytes();
    let (status, _) = post(
        &daemon,
        "/api/v1/requests",
        "application/x-ndjson",
        None,
        big,
    );
    assert_eq!(status, 413);
    let bomb = gzip(&vec![b'\n'; 50 * 1024 * 1024]);
    let (status, _) = post(
        &daemon,
        "/api/v1/requests",
        "application/x-ndjson",
        Some("gzip"),
        bomb,
    );
    assert_eq!(status, 413);
    let (status, _) = post(
        &daemon,
        "/api/v1/requests",
        "application/x-ndjson",
        Some("gzip"),
        b"not gzip".to_vec(),
    );
    assert_eq!(status, 400);
    assert_eq!(daemon.count(count), 5);

    // Acknowledged means durable: a SIGKILL right after loses nothing.
    daemon.kill();
    let daemon = Daemon::start(dir.path());
    assert_eq!(daemon.count(count), 5);
    assert_eq!(
        daemon.count("SELECT count(*) FROM requests WHERE endpoint = 'GET /v2/orders'"),
        2
    );
}
