//! The OpenTelemetry Python SDK's OTLP exporters (gRPC and HTTP protobuf, both gzip), with
//! the older HTTP semantic conventions many instrumentations still send.
//!
//! The test installs the SDK into a virtual environment under Cargo's target folder the
//! first time it runs (pinned in requirements.txt), so `cargo test` needs nothing else.

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::python::send_with_python_sdk;

#[test]
fn python_sdk_exporters_with_older_conventions() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let sent = send_with_python_sdk(&daemon);
    assert_eq!(sent.len(), 12);

    let count = daemon.wait_for_count("SELECT count(*) FROM spans", sent.len() as i64);
    assert_eq!(count, sent.len() as i64);
    // Every span is found by its ids, and its derived columns follow the older names.
    for span in &sent {
        let attrs = &span["attributes"];
        let rows = daemon.rows(&format!(
            "SELECT endpoint, client_id, dependency, api_version, is_error, http_status_code, url_path, \
             user_agent, server_address, service_version FROM spans WHERE trace_id = '{}' AND span_id = '{}'",
            span["trace_id"].as_str().unwrap(),
            span["span_id"].as_str().unwrap()
        ));
        assert_eq!(rows.len(), 1, "{span}");
        let row = &rows[0];
        let status = attrs["http.status_code"].as_i64();
        if attrs.get("http.target").is_some() {
            let target = attrs["http.target"].as_str().unwrap();
            let path = target.split('?').next().unwrap();
            // The test's own templating: numeric and long hex segments are ids.
            let templated: Vec<String> = path
                .split('/')
                .map(|s| {
                    let is_id = !s.is_empty()
                        && (s.chars().all(|c| c.is_ascii_digit())
                            || (s.len() >= 16 && s.chars().all(|c| c.is_ascii_hexdigit())));
                    if is_id {
                        "{id}".to_owned()
                    } else {
                        s.to_owned()
                    }
                })
                .collect();
            let endpoint = format!(
                "{} {}",
                attrs["http.method"].as_str().unwrap(),
                templated.join("/")
            );
            assert_eq!(row[0], json!(endpoint), "{span}");
            let client = attrs
                .get("app.client_id")
                .or(attrs.get("http.client_ip"))
                .cloned()
                .unwrap_or(Value::Null);
            assert_eq!(row[1], client, "{span}");
            assert_eq!(row[2], Value::Null);
            assert_eq!(row[3], json!("v1"));
            assert_eq!(row[4], json!(status.unwrap() >= 500), "{span}");
            assert_eq!(row[6], json!(path));
            assert_eq!(
                row[7],
                attrs.get("http.user_agent").cloned().unwrap_or(Value::Null)
            );
            assert_eq!(
                row[8],
                attrs.get("net.host.name").cloned().unwrap_or(Value::Null)
            );
        } else if let Some(db) = attrs.get("db.system") {
            assert_eq!(
                row[2],
                json!(format!(
                    "{}/{}",
                    db.as_str().unwrap(),
                    attrs["db.name"].as_str().unwrap()
                ))
            );
            assert_eq!(row[8], attrs["net.peer.name"]);
            assert_eq!(row[4], json!(false));
        } else {
            // The HTTP client call to inventory, answered 503 and marked as an error.
            let url = attrs["http.url"].as_str().unwrap();
            let authority = url.trim_start_matches("http://").split('/').next().unwrap();
            assert_eq!(row[2], json!(authority));
            assert_eq!(row[4], json!(true));
            assert_eq!(row[5], json!(status.unwrap()));
        }
        assert_eq!(row[9], json!("0.9.1"));
    }

    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM logs", 1), 1);
    let rows = daemon.rows("SELECT service_name, severity_number, body FROM logs");
    assert_eq!(
        rows,
        vec![vec![
            json!("legacy-shop"),
            json!(13),
            json!("cart service slow: 812 ms")
        ]]
    );
}
