//! The tables in a bucket (`--store s3://…`), on an S3-compatible server on loopback: the
//! same fleet sent to a daemon on a local directory and to one on the bucket gets the same
//! answers from every question; the bucket alone (read by the CLI, with no daemon) holds
//! every row once; a restart reads them back without loss or double.

use std::process::Command;

use serde_json::Value;

use crate::support::daemon::{Daemon, binary, serve};
use crate::support::fleet::Fleet;
use crate::support::prometheus::Scrape;
use crate::support::s3::S3;

fn rfc3339(s: i64) -> String {
    chrono::DateTime::from_timestamp(s, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A daemon over `data_dir` whose tables are in `store`, on `s3`.
fn on_bucket(s3: &S3, data_dir: &std::path::Path, store: &str) -> Daemon {
    let mut command = serve(data_dir);
    command.args(["--store", store]);
    for (name, value) in s3.env() {
        command.env(name, value);
    }
    Daemon::start_command(command)
}

#[test]
fn a_bucket_store_answers_as_a_local_directory_does() {
    let s3 = S3::start();
    s3.create_bucket("telemetry");
    let store = "s3://telemetry/apiscope";
    let local_dir = tempfile::tempdir().unwrap();
    let bucket_dir = tempfile::tempdir().unwrap();
    let local = Daemon::start(local_dir.path());
    let bucket = on_bucket(&s3, bucket_dir.path(), store);

    let fleet = Fleet::new();
    fleet.send(&local);
    fleet.send(&bucket);

    let window = format!(
        "'{}', '{}'",
        rfc3339(fleet.start_s - 3600),
        rfc3339(fleet.end_s())
    );
    let questions: Vec<String> = [
        "endpoint_stats",
        "client_stats",
        "dependency_stats",
        "error_breakdown",
        "latency_regressions",
        "traffic_shift",
        "retry_amplification",
        "version_usage",
        "refusals",
        "api_call_minutes",
    ]
    .iter()
    .map(|function| format!("SELECT * FROM {function}({window}) ORDER BY 1, 2, 3"))
    .chain([
        "SELECT endpoint, client_id, count(*), sum(CAST(is_error AS INT)), sum(duration_ms) \
         FROM spans GROUP BY 1, 2 ORDER BY 1, 2"
            .to_owned(),
        "SELECT service_name, count(*) FROM logs GROUP BY 1 ORDER BY 1".to_owned(),
        "SELECT count(*) FROM spans WHERE trace_id = (SELECT min(trace_id) FROM spans)".to_owned(),
    ])
    .collect();
    let answers = |daemon: &Daemon| -> Vec<Vec<Vec<Value>>> {
        questions.iter().map(|sql| daemon.rows(sql)).collect()
    };
    let expected = answers(&local);
    // The fleet's endpoints, counted from what was sent.
    let by_endpoint = fleet.count_by(|r| r.endpoint());
    let stats = &expected[0];
    assert_eq!(stats.len(), by_endpoint.len(), "{stats:?}");
    assert_eq!(answers(&bucket), expected, "buffered and flushed rows");

    // Every row is in the bucket: the CLI reads it with no daemon between.
    let spans = 2 * fleet.requests.len() as i64;
    let count = |sql: &str| -> String {
        let mut command = Command::new(binary());
        command.args(["sql", "--store", store, sql]);
        for (name, value) in s3.env() {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !count("SELECT count(*) AS n FROM spans").contains(&format!("| {spans} ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the spans never reached the bucket"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let keys = s3.keys("telemetry", "apiscope/spans/date=");
    assert!(keys.iter().any(|key| key.ends_with(".parquet")), "{keys:?}");
    assert!(
        !bucket_dir.path().join("spans").exists(),
        "no table folder in the data directory"
    );
    let scrape = Scrape::of(&bucket);
    assert!(scrape.get("apiscope_store_requests_total", "operation=put,outcome=ok") >= 1.0);

    // A restart reads the bucket back: every row once.
    bucket.stop();
    let bucket = on_bucket(&s3, bucket_dir.path(), store);
    assert_eq!(answers(&bucket), expected, "after a restart");
    local.stop();
    bucket.stop();
}

#[test]
fn a_store_that_is_not_one_stops_the_start_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let output = serve(dir.path())
        .args(["--store", "ftp://example/x", "--check-config"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("ftp://example/x"), "{stderr}");
}
