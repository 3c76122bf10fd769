//! `apiscope sql` against a running daemon and a data directory; read-only SQL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::json;

use crate::now_ns;
use crate::support::daemon::{Daemon, binary, http, serve};
use crate::support::otlp::{hex_id, post, span, traces};

#[test]
fn sql_cli_prints_tables_and_sql_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let attrs = json!([
        {"key": "http.request.method", "value": {"stringValue": "DELETE"}},
        {"key": "http.route", "value": {"stringValue": "/v1/sessions/{id}"}},
    ]);
    let spans = (0..3)
        .map(|i| {
            span(
                &hex_id(7, 16),
                &hex_id(i + 1, 8),
                "DELETE",
                2,
                now_ns() - 5_000_000_000,
                12,
                attrs.clone(),
            )
        })
        .collect();
    let (status, _) = post(
        &daemon,
        "/v1/traces",
        "application/json",
        None,
        serde_json::to_vec(&traces("auth", spans)).unwrap(),
    );
    assert_eq!(status, 200);
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM spans", 3), 3);

    let sql = "SELECT service_name, endpoint, count(*) AS calls FROM spans GROUP BY 1, 2";
    let output = Command::new(binary())
        .args(["sql", "--url", &daemon.query_url(), sql])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("DELETE /v1/sessions/{id}"))
        .expect(&stdout);
    let cells: Vec<&str> = line
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(cells, ["auth", "DELETE /v1/sessions/{id}", "3"], "{stdout}");
    assert!(stdout.contains("(1 row)"), "{stdout}");

    // A bad query: non-zero exit and the reason on stderr.
    let output = Command::new(binary())
        .args([
            "sql",
            "--url",
            &daemon.query_url(),
            "SELECT nope FROM spans",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nope"), "{stderr}");

    // Anything but a query is refused, saying why, as application/problem+json.
    for statement in [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO spans SELECT * FROM spans",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/apiscope-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
        "DROP TABLE spans",
    ] {
        let response = http()
            .post(format!("{}/api/v1/query", daemon.query_url()))
            .json(&json!({ "sql": statement }))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let problem: serde_json::Value = response.json().unwrap();
        assert!(
            (400..500).contains(&status),
            "{statement}: {status} {problem}"
        );
        assert_eq!(content_type, "application/problem+json");
        assert!(
            problem["detail"].as_str().unwrap().contains("read-only"),
            "{statement}: {problem}"
        );
    }
    assert!(!std::path::Path::new("/tmp/apiscope-copy.csv").exists());
    // Queries still work, and the tables are untouched.
    assert_eq!(daemon.count("SELECT count(*) FROM spans"), 3);
    // SHOW and EXPLAIN are allowed.
    assert!(!daemon.rows("SHOW TABLES").is_empty());
    assert!(!daemon.rows("EXPLAIN SELECT count(*) FROM spans").is_empty());
    daemon.stop();

    // After a clean stop, the CLI reads the data directory directly.
    let output = Command::new(binary())
        .args([
            "sql",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "SELECT count(*) AS n FROM spans",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.split('|').map(str::trim).any(|c| c == "3")),
        "{stdout}"
    );

    // A reader that stops early (`| head -1`) ends the command quietly, without a panic
    // (exit code 101). The answer is far larger than a pipe's buffer, so it is still being
    // written when the reader goes.
    let mut child = Command::new(binary())
        .args([
            "sql",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "SELECT value FROM generate_series(1, 50000)",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with('+'), "{first}");
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn check_config_reports_and_exits_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apiscope.toml");
    let data = dir.path().join("never-created");
    std::fs::write(
        &file,
        format!(
            "data_dir = {:?}\npg_password = \"s3cret\"\nlog_format = \"json\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["serve", "--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.starts_with("configuration OK"), "{stdout}");
    assert!(
        stdout.contains("pg auth = pg_password (SCRAM-SHA-256)"),
        "{stdout}"
    );
    assert!(stdout.contains("log_format = Json"), "{stdout}");
    assert!(!stdout.contains("s3cret"), "the password was printed");
    assert!(!data.exists(), "checking created the data directory");

    std::fs::write(&file, "flush_intervall = \"1s\"\n").unwrap();
    let output = Command::new(binary())
        .args(["serve", "--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("flush_intervall"));
}

#[test]
fn json_logs_and_readiness() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let mut child = serve(dir.path())
        .args(["--log-format", "json"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut ready = None;
    for line in BufReader::new(stderr).lines().take(50) {
        let line = line.unwrap();
        let record: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(record["level"].is_string(), "{record}");
        if record["fields"]["message"] == "apiscope ready" {
            ready = Some(record);
            break;
        }
    }
    let ready = ready.expect("a ready line");
    for listener in ["http_addr", "otlp_http_addr"] {
        let addr = ready["fields"][listener].as_str().unwrap();
        let answer = http().get(format!("http://{addr}/readyz")).send().unwrap();
        assert_eq!(answer.status().as_u16(), 200, "{listener}");
        assert_eq!(answer.text().unwrap(), "ready\n");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
