//! `apiscope import` on access logs in real formats (nginx combined and JSON, Envoy JSON),
//! with malformed lines, a re-import, an appended file and a gzip-rotated one.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::support::daemon::{Daemon, binary};

fn import(daemon: &Daemon, format: &str, files: &[&Path], extra: &[&str]) -> Output {
    Command::new(binary())
        .arg("import")
        .args(files)
        .args(["--format", format])
        .args(["--otlp-http-url", &daemon.otlp_http_endpoint()])
        .args(["--url", &daemon.query_url()])
        .args(["--batch", "7"])
        .args(extra)
        .output()
        .unwrap()
}

fn summary(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The numbers of `file: N lines, N imported, N already imported, N bad`.
fn counts(summary: &str) -> [u64; 4] {
    let line = summary.lines().next().unwrap();
    let numbers: Vec<u64> = line
        .split([',', ':'])
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    numbers
        .try_into()
        .unwrap_or_else(|n| panic!("{line}: {n:?}"))
}

fn minutes_ago(minutes: i64) -> DateTime<Utc> {
    let now = crate::now_ns() / 1_000_000_000;
    DateTime::from_timestamp((now / 60 - minutes) * 60, 0).unwrap()
}

fn nginx_combined_line(i: i64) -> String {
    let time = minutes_ago(30 - i % 20).format("%d/%b/%Y:%H:%M:%S +0000");
    let status = if i % 10 == 0 { 502 } else { 200 };
    format!(
        r#"198.51.100.{} - - [{time}] "GET /v1/products/{}?ref=home HTTP/1.1" {status} {} "https://shop.example/" "Mozilla/5.0 (X11; Linux x86_64)" {:.3}"#,
        i % 7,
        1000 + i,
        500 + i,
        0.010 + i as f64 / 1000.0
    )
}

#[test]
fn importing_access_logs_keeps_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let logs = tempfile::tempdir().unwrap();

    // nginx combined: 20 good lines and 3 malformed ones.
    let combined = logs.path().join("access.log");
    let mut lines: Vec<String> = (1..=20).map(nginx_combined_line).collect();
    lines.insert(5, "this is not an access log line".into());
    lines.insert(
        9,
        r#"10.0.0.1 - - [27/Nov/2026:10:00:00 +0000] "-" 400 0 "-" "-""#.into(),
    );
    lines.insert(
        14,
        r#"10.0.0.1 - - [27/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "cut"#.into(),
    );
    std::fs::write(&combined, lines.join("\n") + "\n").unwrap();
    let output = summary(&import(
        &daemon,
        "nginx-combined",
        &[&combined],
        &["--service", "shop"],
    ));
    assert_eq!(counts(&output), [23, 20, 0, 3], "{output}");
    for bad_line in [6, 10, 15] {
        assert!(output.contains(&format!("line {bad_line}: ")), "{output}");
    }
    assert!(output.contains("total: 20 rows imported"), "{output}");
    let rows = daemon.rows(
        "SELECT service_name, endpoint, url_path, http_status_code, duration_ms, client_address, response_bytes \
         FROM requests ORDER BY import_line LIMIT 1",
    );
    assert_eq!(
        rows[0],
        vec![
            json!("shop"),
            json!("GET /v1/products/{id}"),
            json!("/v1/products/1001"),
            json!(200),
            json!(11.0),
            json!("198.51.100.1"),
            json!(501)
        ]
    );
    let errors = daemon.count("SELECT count(*) FROM requests WHERE is_error");
    assert_eq!(errors, (1..=20).filter(|i| i % 10 == 0).count() as i64);

    // Again: nothing new. Then the log grows: only the new lines go in.
    let output = summary(&import(&daemon, "nginx-combined", &[&combined], &[]));
    assert_eq!(counts(&output), [23, 0, 23, 0], "{output}");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&combined)
        .unwrap();
    for i in 21..=25 {
        writeln!(file, "{}", nginx_combined_line(i)).unwrap();
    }
    drop(file);
    let output = summary(&import(&daemon, "nginx-combined", &[&combined], &[]));
    assert_eq!(counts(&output), [28, 5, 23, 0], "{output}");
    assert_eq!(daemon.count("SELECT count(*) FROM requests"), 25);

    // The same log rotated and compressed is the same file: nothing new.
    let rotated = logs.path().join("access.log.1.gz");
    let text = std::fs::read(&combined).unwrap();
    std::fs::write(&rotated, crate::support::otlp::gzip(&text)).unwrap();
    let output = summary(&import(&daemon, "nginx-combined", &[&rotated], &[]));
    assert_eq!(counts(&output), [28, 0, 28, 0], "{output}");

    // nginx JSON (escape=json) and Envoy JSON, with a bad line each.
    let nginx_json = logs.path().join("access.json");
    let mut text = String::new();
    for i in 0..6 {
        let line = json!({
            "time_iso8601": minutes_ago(10 + i).to_rfc3339(),
            "remote_addr": "10.0.0.9",
            "http_x_forwarded_for": format!("203.0.113.{i}, 10.0.0.9"),
            "request": format!("POST /v2/orders/{} HTTP/2.0", 500 + i),
            "status": if i == 3 { "503" } else { "201" },
            "body_bytes_sent": "120",
            "request_time": "0.250",
            "http_user_agent": "okhttp/4.12.0",
            "upstream_addr": "10.1.0.5:8080",
        });
        text.push_str(&format!("{line}\n"));
    }
    text.push_str("{\"status\": \"200\"}\n");
    std::fs::write(&nginx_json, text).unwrap();
    let output = summary(&import(
        &daemon,
        "nginx-json",
        &[&nginx_json],
        &["--service", "orders"],
    ));
    assert_eq!(counts(&output), [7, 6, 0, 1], "{output}");
    let rows = daemon.rows(
        "SELECT endpoint, duration_ms, client_address, attributes['upstream_addr'] FROM requests \
         WHERE service_name = 'orders' ORDER BY import_line LIMIT 1",
    );
    // The first line's client is the first address of its X-Forwarded-For.
    assert_eq!(
        rows[0],
        vec![
            json!("POST /v2/orders/{id}"),
            json!(250.0),
            json!("203.0.113.0"),
            json!("10.1.0.5:8080")
        ]
    );

    let envoy = logs.path().join("envoy.log");
    let mut text = String::new();
    for i in 0..4 {
        let line = json!({
            "start_time": minutes_ago(5 + i).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "method": "GET",
            "path": format!("/v2/users/{}", 70 + i),
            "protocol": "HTTP/1.1",
            "response_code": if i == 0 { 429 } else { 200 },
            "response_flags": "-",
            "bytes_received": 0,
            "bytes_sent": 321,
            "duration": 12 + i,
            "upstream_service_time": "10",
            "x_forwarded_for": "192.0.2.44",
            "user_agent": "curl/8.11.0",
            "request_id": format!("req-{i}"),
            "authority": "api.example.com",
            "upstream_host": "10.2.0.3:9000",
        });
        text.push_str(&format!("{line}\n"));
    }
    text.push_str(&format!("{}\n", json!({"start_time": minutes_ago(1).to_rfc3339(), "method": "GET", "path": "/", "response_code": 0})));
    std::fs::write(&envoy, text).unwrap();
    let output = summary(&import(
        &daemon,
        "envoy-json",
        &[&envoy],
        &["--service", "edge"],
    ));
    assert_eq!(counts(&output), [5, 4, 0, 1], "{output}");
    assert!(output.contains("line 5: response_code 0"), "{output}");
    let refusals = daemon.rows(
        "SELECT client_id, http_status_code, calls FROM refusals(now() - interval '2 hours')",
    );
    assert_eq!(
        refusals,
        vec![vec![json!("192.0.2.44"), json!(429), json!(1)]]
    );

    // Everything imported is in api_calls, once.
    assert_eq!(
        daemon.count("SELECT count(*) FROM api_calls WHERE source = 'request_log'"),
        25 + 6 + 4
    );

    // A daemon that is not there is an error, not a silent skip.
    let output = Command::new(binary())
        .args([
            "import",
            "--format",
            "ndjson",
            "--url",
            "http://127.0.0.1:9",
            "--otlp-http-url",
            "http://127.0.0.1:9",
        ])
        .arg(&combined)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach apiscope"));
}
