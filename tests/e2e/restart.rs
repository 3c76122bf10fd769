//! A restart serves everything acknowledged before a clean shutdown; rows land in the
//! partition of their own time, however late or early they arrive.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::now_ns;
use crate::support::daemon::{Daemon, serve};
use crate::support::otlp::{hex_id, load_request, post, span, traces};

const HOUR_NS: i64 = 3_600_000_000_000;

#[test]
fn restart_serves_the_same_answers_and_late_rows_land_in_their_hour() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns();
    let three_days_ago = now - 72 * HOUR_NS;
    let two_hours_ahead = now + 2 * HOUR_NS;
    let mut spans = Vec::new();
    for (i, start) in [now - 1_000_000_000, three_days_ago, two_hours_ahead]
        .into_iter()
        .enumerate()
    {
        for j in 0..5u64 {
            let attrs = json!([
                {"key": "http.request.method", "value": {"stringValue": "GET"}},
                {"key": "http.route", "value": {"stringValue": format!("/r{i}")}},
                {"key": "http.response.status_code", "value": {"intValue": if j == 0 { 500 } else { 200 }}},
            ]);
            spans.push(span(
                &hex_id(i as u64 + 1, 16),
                &hex_id(10 * i as u64 + j + 1, 8),
                "GET",
                2,
                start,
                10 + j as i64,
                attrs,
            ));
        }
    }
    let body = serde_json::to_vec(&traces("restart", spans)).unwrap();
    // `duration_ms` and `end_time` are computed when read from Parquet, from `time` and
    // `duration_ns`; before the restart they come from the buffer, after it from files.
    let summary = "SELECT endpoint, count(*) AS calls, sum(CAST(is_error AS INT)) AS errors, \
                   sum(duration_ms) AS total_ms, \
                   sum(CAST(end_time AS BIGINT) - CAST(time AS BIGINT)) AS total_ns \
                   FROM spans GROUP BY endpoint ORDER BY endpoint";

    let daemon = Daemon::start(dir.path());
    let (status, _) = post(&daemon, "/v1/traces", "application/json", None, body);
    assert_eq!(status, 200);
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM spans", 15), 15);
    let before = daemon.rows(summary);
    let expected: Vec<_> = (0..3)
        .map(|i| {
            vec![
                json!(format!("GET /r{i}")),
                json!(5),
                json!(1),
                json!(60.0),
                json!(60_000_000),
            ]
        })
        .collect();
    assert_eq!(before, expected);
    let log = daemon.stop();
    assert!(
        log.iter().any(|l| l.contains("final flush done")),
        "{}",
        log.join("\n")
    );

    // Each row is in the folder of its own hour.
    for start in [now - 1_000_000_000, three_days_ago, two_hours_ahead] {
        let hour = chrono::DateTime::from_timestamp_nanos(start);
        let folder = dir
            .path()
            .join("spans")
            .join(format!("date={}", hour.format("%Y-%m-%d")))
            .join(format!("hour={}", hour.format("%H")));
        let files: Vec<_> = std::fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !files.is_empty() && files.iter().all(|f| f.ends_with(".parquet")),
            "{files:?}"
        );
    }

    let daemon = Daemon::start(dir.path());
    assert_eq!(daemon.rows(summary), before);
    // A time filter selects the old hour's rows only (and prunes the others' files).
    let old_hour = format!(
        "SELECT count(*) FROM spans WHERE time >= to_timestamp_nanos({}) AND time < to_timestamp_nanos({})",
        three_days_ago - HOUR_NS / 2,
        three_days_ago + HOUR_NS / 2
    );
    assert_eq!(daemon.count(&old_hour), 5);
    let future = "SELECT count(*) FROM spans WHERE time > now() + interval '1 hour'";
    assert_eq!(daemon.count(future), 5);
    daemon.stop();
}

/// A second daemon started over a directory another one still has (the first draining its
/// buffer after SIGTERM, say) would replay and store that one's rows a second time.
#[test]
fn a_second_daemon_over_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let batch = |n: u64| load_request("owner", 0, n, 5).1;
    let first = Daemon::start(dir.path());
    let (status, _) = post(&first, "/v1/traces", "application/json", None, batch(1));
    assert_eq!(status, 200);

    let mut second = serve(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = second.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            second.kill().unwrap();
            second.wait().unwrap();
            panic!("a second daemon is serving the same data directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!exit.success(), "{stderr}");
    let expected = format!("is in use by another apiscope (pid {})", first.pid());
    assert!(stderr.contains(&expected), "{stderr}");

    // The first goes on as if nothing happened, and once it has stopped the directory is
    // free again, with every row once.
    let (status, _) = post(&first, "/v1/traces", "application/json", None, batch(2));
    assert_eq!(status, 200);
    first.stop();
    let next = Daemon::start(dir.path());
    let once = "SELECT count(*) AS n FROM spans WHERE span_id IN \
                (SELECT span_id FROM spans GROUP BY span_id HAVING count(*) = 1)";
    assert_eq!(next.count("SELECT count(*) FROM spans"), 10);
    assert_eq!(next.count(once), 10);
    next.stop();
}

#[test]
fn a_daemon_whose_stderr_is_closed_still_keeps_and_flushes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns();
    let spans = (0..7u64)
        .map(|j| {
            let attrs = json!([
                {"key": "http.request.method", "value": {"stringValue": "GET"}},
                {"key": "http.route", "value": {"stringValue": "/quiet"}},
            ]);
            span(&hex_id(1, 16), &hex_id(j + 1, 8), "GET", 2, now, 5, attrs)
        })
        .collect();
    let body = serde_json::to_vec(&traces("unread", spans)).unwrap();
    // A flush interval longer than the test: the rows reach Parquet at shutdown, which logs
    // (the lines that, written to a closed pipe, used to panic the daemon with code 101).
    let mut command = serve(dir.path());
    command.args(["--flush-interval", "1h"]);
    let daemon = Daemon::start_unread(command);
    let (status, _) = post(
        &daemon,
        "/v1/traces",
        "application/json",
        None,
        body.clone(),
    );
    assert_eq!(status, 200);
    // Requests that log a warning each, with nobody reading.
    for _ in 0..3 {
        let (status, _) = post(
            &daemon,
            "/v1/traces",
            "application/json",
            None,
            b"{".to_vec(),
        );
        assert_eq!(status, 400);
    }
    assert_eq!(daemon.count("SELECT count(*) FROM spans"), 7);
    daemon.stop();

    let daemon = Daemon::start(dir.path());
    assert_eq!(daemon.count("SELECT count(*) FROM spans"), 7);
    let log = daemon.stop();
    assert!(
        log.iter().any(|line| line.contains(" rows_restored=0 ")),
        "the shutdown flush did not happen; the rows came back from the WAL:\n{}",
        log.join("\n")
    );
}
