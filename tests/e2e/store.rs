//! The tables in a bucket (`--store s3://…`), on an S3-compatible server on loopback: the
//! same fleet sent to a daemon on a local directory and to one on the bucket gets the same
//! answers from every question; the bucket alone (read by the CLI, with no daemon) holds
//! every row once; a restart reads them back without loss or double.

use std::process::Command;

use serde_json::Value;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::daemon::{Daemon, binary, serve};
use crate::support::fleet::Fleet;
use crate::support::otlp::{hex_id, post, span, traces};
use crate::support::prometheus::Scrape;
use crate::support::rfc3339;
use crate::support::s3::S3;

/// A daemon over `data_dir` whose tables are in `store`, on `s3`, with `extra` flags.
fn on_bucket_with(s3: &S3, data_dir: &std::path::Path, store: &str, extra: &[&str]) -> Command {
    s3.serve(data_dir, store, extra)
}

/// A daemon over `data_dir` whose tables are in `store`, on `s3`.
fn on_bucket(s3: &S3, data_dir: &std::path::Path, store: &str) -> Daemon {
    Daemon::start_command(on_bucket_with(s3, data_dir, store, &[]))
}

/// An OTLP/JSON export from `service` of one `GET route` server span per id in `ids` (the
/// id its trace and span id), starting at `start_ns(id)`, `duration_ms` long.
fn export(
    service: &str,
    route: &str,
    ids: std::ops::Range<u64>,
    start_ns: impl Fn(u64) -> i64,
    duration_ms: i64,
) -> Vec<u8> {
    let spans: Vec<Value> = ids
        .map(|n| {
            let attrs = json!([
                {"key": "http.request.method", "value": {"stringValue": "GET"}},
                {"key": "http.route", "value": {"stringValue": route}},
            ]);
            let (trace, id) = (hex_id(n + 1, 16), hex_id(n + 1, 8));
            span(&trace, &id, "GET", 2, start_ns(n), duration_ms, attrs)
        })
        .collect();
    serde_json::to_vec(&traces(service, spans)).unwrap()
}

/// What `apiscope sql --store` prints for `sql` over the bucket, with no daemon between.
fn sql_on_bucket(s3: &S3, store: &str, sql: &str) -> String {
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
        "payload_stats",
        "deploys",
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
    let count = |sql: &str| sql_on_bucket(&s3, store, sql);
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
    // The logs' own requests are counted with apiscope's (their commits are conditional
    // PUTs, their refreshes LISTs of `_delta_log` and GETs of new commits).
    let commits = scrape.get(
        "apiscope_table_log_calls_total",
        "operation=delta_commit,outcome=ok",
    );
    assert!(commits >= 1.0, "{commits}");
    assert!(scrape.get("apiscope_store_requests_total", "operation=list,outcome=ok") >= 1.0);
    assert!(scrape.get("apiscope_store_requests_total", "operation=put,outcome=ok") >= commits);

    // Other engines read the same rows: the `deltalake` package through the table's log,
    // and pyarrow from exactly the files the log lists.
    let mut per_endpoint = serde_json::Map::new();
    for row in bucket.rows("SELECT endpoint, count(*) FROM spans GROUP BY 1") {
        per_endpoint.insert(row[0].as_str().unwrap_or("null").to_owned(), row[1].clone());
    }
    let read_delta = |table: &str, weight: &[&str]| -> Value {
        let read = Command::new(crate::support::python::python())
            .arg(crate::support::python::here().join("read_delta.py"))
            .arg(format!("{store}/{table}"))
            .args(weight)
            .envs(s3.env())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&read.stderr);
        assert!(read.status.success(), "{stderr}");
        serde_json::from_slice(&read.stdout).unwrap()
    };
    let read = read_delta("spans", &[]);
    assert_eq!(read["partition_columns"], json!(["date", "hour"]));
    assert_eq!(read["delta"], Value::Object(per_endpoint.clone()), "{read}");
    assert_eq!(read["parquet"], Value::Object(per_endpoint), "{read}");

    // The rollups are a Delta table too: once every file has its rollup, their calls add up
    // to the calls, endpoint by endpoint.
    let mut calls = serde_json::Map::new();
    for row in bucket.rows("SELECT endpoint, count(*) FROM api_calls GROUP BY 1") {
        calls.insert(row[0].as_str().unwrap_or("null").to_owned(), row[1].clone());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let read = read_delta("api_call_minutes", &["calls"]);
        if read["delta"] == Value::Object(calls.clone()) {
            assert_eq!(read["parquet"], read["delta"], "{read}");
            assert_eq!(read["partition_columns"], json!(["date", "hour"]));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rollups never covered every call: {read} against {calls:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

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

#[test]
fn several_collectors_write_one_bucket_and_every_span_is_stored_once() {
    let s3 = S3::start();
    s3.create_bucket("shared");
    let store = "s3://shared/apiscope";
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = ["collector-a", "collector-b", "collector-c"];
    let start = |k: usize| {
        let flags = ["--node-id", nodes[k]];
        Daemon::start_command(on_bucket_with(&s3, dirs[k].path(), store, &flags))
    };
    let mut writers: Vec<Daemon> = (0..3).map(start).collect();

    // Each collector gets its own spans: collector k serves `GET /n{k}`, in rounds.
    let now = crate::now_ns();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for round in 0..4u64 {
        for (k, writer) in writers.iter().enumerate() {
            let first = 100_000 * k as u64 + 100 * round;
            let route = format!("/n{k}");
            let body = export(
                "shared",
                &route,
                first..first + 25,
                |_| now - 1_000_000_000,
                5,
            );
            let (status, answer) = post(writer, "/v1/traces", "application/json", None, body);
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
            *expected.entry(format!("GET /n{k}")).or_default() += 25;
        }
    }
    let total: i64 = expected.values().sum();

    // A second daemon with a taken id refuses to start, and names the holder.
    let mut refused = on_bucket_with(&s3, dirs[3].path(), store, &["--node-id", nodes[1]])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while refused.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "a second collector-b started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = refused.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("node id collector-b is held"), "{stderr}");
    assert!(
        stderr.contains(&dirs[1].path().display().to_string()),
        "{stderr}"
    );

    // A fourth daemon, a reader that was sent nothing, and the bucket read directly, see
    // every span once, whichever collector took it.
    let per_endpoint = "SELECT endpoint, count(*) AS n, count(DISTINCT span_id) AS ids \
                        FROM spans GROUP BY endpoint ORDER BY endpoint";
    let rows_of = |expected: &BTreeMap<String, i64>| -> Vec<Vec<Value>> {
        expected
            .iter()
            .map(|(endpoint, n)| vec![json!(endpoint), json!(n), json!(n)])
            .collect()
    };
    let reader = Daemon::start_command(on_bucket_with(
        &s3,
        dirs[3].path(),
        store,
        &["--node-id", "reader"],
    ));
    assert_eq!(
        reader.wait_for_count("SELECT count(*) FROM spans", total),
        total
    );
    assert_eq!(reader.rows(per_endpoint), rows_of(&expected));
    let direct = sql_on_bucket(&s3, store, "SELECT count(*) AS n FROM spans");
    assert!(direct.contains(&format!("| {total} ")), "{direct}");
    for writer in &writers {
        assert_eq!(writer.rows(per_endpoint), rows_of(&expected));
    }

    // A collector restarted on its data directory takes its id back and stores nothing twice.
    let b = writers.remove(1);
    b.stop();
    let b = start(1);
    assert_eq!(b.rows(per_endpoint), rows_of(&expected));
    assert_eq!(reader.rows(per_endpoint), rows_of(&expected));
    b.stop();
    for writer in writers {
        writer.stop();
    }
    reader.stop();
}

#[test]
fn a_store_down_for_a_while_loses_nothing_acknowledged() {
    let s3 = S3::start();
    s3.create_bucket("flaky");
    let store = "s3://flaky/apiscope";
    let proxy = crate::support::proxy::Proxy::start(s3.addr());
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.args(["--store", store]);
    for (name, value) in s3.env_via(&format!("http://{}", proxy.addr)) {
        command.env(name, value);
    }
    let daemon = Daemon::start_command(command);
    let now = crate::now_ns();
    let send = |first: u64| {
        let body = export(
            "flaky",
            "/flaky",
            first..first + 50,
            |_| now - 1_000_000_000,
            5,
        );
        post(&daemon, "/v1/traces", "application/json", None, body)
    };
    let stored = |expected: i64| {
        let sql = "SELECT count(*) AS n, count(DISTINCT span_id) AS ids FROM spans";
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let direct = sql_on_bucket(&s3, store, sql);
            // The table's one row: `| n | ids |`.
            let cells: Vec<String> = direct
                .lines()
                .nth(3)
                .unwrap_or_default()
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .filter(|cell| !cell.is_empty())
                .collect();
            if cells == [expected.to_string(), expected.to_string()] {
                return;
            }
            assert!(Instant::now() < deadline, "{direct}");
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    assert_eq!(send(0).0, 200);
    stored(50);

    // The store goes away: ingest is still acknowledged (the log and the buffer hold it),
    // the unflushed rows still answer, and a query that needs the store names it.
    proxy.down();
    for round in 1..4 {
        let (status, answer) = send(50 * round);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    }
    let (status, problem) = daemon.try_query("SELECT count(*) FROM spans");
    assert_ne!(status, 200, "{problem}");
    assert!(problem.to_string().contains(store), "{problem}");
    let waiting = Scrape::of(&daemon).get("apiscope_oldest_unflushed_seconds", "");
    assert!(waiting > 0.0, "{waiting}");

    // Back after 20 s: everything acknowledged reaches the store, once.
    std::thread::sleep(Duration::from_secs(20));
    proxy.up();
    stored(200);
    assert_eq!(daemon.count("SELECT count(*) FROM spans"), 200);
    daemon.stop();
}

/// Copies the folder `from` into `to`, sub-folders included.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_data_directory_of_the_release_before_the_store_is_converted_at_start() {
    // Written by apiscope at 0d094ac: files named without a node id, rows in the log only,
    // no table log.
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/data-dir-0d094ac");
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture, dir.path());
    // What its README says was sent: (endpoint, first i, count).
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (endpoint, first, count) in [
        ("/a", 0, 30),
        ("/b", 30, 20),
        ("/a", 50, 10),
        ("/c", 60, 15),
    ] {
        let entry = expected.entry(format!("GET {endpoint}")).or_default();
        entry.0 += count;
        entry.1 += (first..first + count).filter(|i| i % 10 == 0).count() as i64;
    }
    let summary = "SELECT endpoint, count(*), sum(CAST(is_error AS INT)), count(DISTINCT span_id) \
                   FROM spans GROUP BY endpoint ORDER BY endpoint";
    let rows: Vec<Vec<Value>> = expected
        .iter()
        .map(|(endpoint, (calls, errors))| {
            vec![json!(endpoint), json!(calls), json!(errors), json!(calls)]
        })
        .collect();
    // Its hour is long past the default retention.
    let flags = ["--retention", "36500d"];
    let daemon = Daemon::start_with(dir.path(), &flags);
    assert_eq!(daemon.rows(summary), rows);
    // Converted: the first commit of the spans table lists the old files.
    let first = dir
        .path()
        .join("spans/_delta_log/00000000000000000000.json");
    let first = std::fs::read_to_string(first).unwrap();
    assert!(first.contains("\"add\""), "{first}");
    daemon.stop();
    // Flushed in the new naming beside the old files, restarted: every row once.
    let daemon = Daemon::start_with(dir.path(), &flags);
    assert_eq!(daemon.rows(summary), rows);
    daemon.stop();
}

#[test]
fn two_collectors_compacting_one_hour_of_one_bucket_keep_every_row_once() {
    let s3 = S3::start();
    s3.create_bucket("compact");
    let store = "s3://compact/apiscope";
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // A grace longer than a query: a file is deleted only after the queries reading it end.
    let flags = ["--compaction-interval", "1s", "--compaction-grace", "3s"];
    let nodes: Vec<Daemon> = ["left", "right"]
        .iter()
        .zip(&dirs)
        .map(|(node, dir)| {
            let mut extra = vec!["--node-id", node];
            extra.extend(flags);
            Daemon::start_command(on_bucket_with(&s3, dir.path(), store, &extra))
        })
        .collect();
    // Both write, in several flushes, into one hour closed long enough to be compacted.
    let hour = (crate::now_ns() / 3_600_000_000_000 - 3) * 3_600_000_000_000;
    for round in 0..4u64 {
        for (k, node) in nodes.iter().enumerate() {
            let first = 10_000 * k as u64 + 100 * round;
            let start = |n: u64| hour + n as i64 * 1_000_000;
            let body = export("compact", "/c", first..first + 20, start, 3);
            assert_eq!(
                post(node, "/v1/traces", "application/json", None, body).0,
                200
            );
        }
        // A flush (every second) between rounds: one file per node and round.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let summary = "SELECT count(*), count(DISTINCT span_id), sum(duration_ns) FROM spans";
    let expected = vec![vec![json!(160), json!(160), json!(160 * 3_000_000)]];
    // One of them maintains the hour and merges both nodes' files; whatever the moment, a
    // query sees every row once, and in the end the hour is one file.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for node in &nodes {
            assert_eq!(node.rows(summary), expected);
        }
        let files: Vec<String> = s3
            .keys("compact", "apiscope/spans/date=")
            .into_iter()
            .filter(|key| key.ends_with(".parquet"))
            .collect();
        if files.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not compacted: {files:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    for node in nodes {
        node.stop();
    }
}

/// Files of `spans` its log lists, as `/metrics` gives them.
fn span_files(daemon: &Daemon) -> f64 {
    Scrape::of(daemon).get("apiscope_parquet_files", "table=spans")
}

#[test]
fn an_open_hour_holds_a_bounded_number_of_files_while_flushes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // A flush every 100 ms: 15 s of steady ingest makes some 150 flushes of the open hour.
    let daemon = Daemon::start_with(
        dir.path(),
        &["--flush-interval", "100ms", "--compaction-interval", "1s"],
    );
    let started = Instant::now();
    let mut request = 0;
    let mut most: f64 = 0.0;
    let mut sampled = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        request += 1;
        let (_, body) = crate::support::otlp::load_request("steady", 0, request, 20);
        let (status, _) = post(&daemon, "/v1/traces", "application/json", None, body);
        assert_eq!(status, 200);
        std::thread::sleep(Duration::from_millis(20));
        if sampled.elapsed() >= Duration::from_millis(500) {
            most = most.max(span_files(&daemon));
            // Whatever merge is under way, each row is read once.
            let counted = daemon.rows("SELECT count(*) = count(DISTINCT span_id) FROM spans");
            assert_eq!(counted, [vec![json!(true)]], "a row read twice mid-merge");
            sampled = Instant::now();
        }
    }
    // docs/storage.md: at most 3 files of each tier up to 4 MiB once a pass is done (these
    // files are far smaller), plus the flushes since the last pass (ten a second here).
    // Passes come late on a busy machine: twice the flushes of a pass are allowed.
    // The bounds are per hour: the run may straddle two.
    let hours = daemon.rows("SELECT count(DISTINCT date_trunc('hour', time)) FROM spans");
    let hours = hours[0][0].as_f64().unwrap();
    assert!(
        most <= hours * (9.0 + 2.0 * 10.0),
        "{most} files in {hours} open hour(s)"
    );
    println!("open hour: at most {most} files over {request} requests");
    let spans = 20 * request;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files = span_files(&daemon);
        let stored = daemon.rows("SELECT count(*), count(DISTINCT span_id) FROM spans");
        if files <= hours * 9.0 && stored == [vec![json!(spans), json!(spans)]] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{files} files at rest, {stored:?} of {spans} spans"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    daemon.stop();
}
