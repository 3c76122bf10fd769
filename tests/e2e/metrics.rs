//! `/metrics` read by the Prometheus Python client's text parser, against what the test
//! sent and what is on disk.

use std::process::Command;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde_json::{Value, json};

use crate::now_ns;
use crate::support::daemon::Daemon;
use crate::support::otlp::{hex_id, load_request, post, span, traces};
use crate::support::pg::runtime;
use crate::support::prometheus::Scrape;
use crate::support::python::python;

#[test]
fn metrics_count_what_was_sent() {
    python(); // the parser's environment, installed before anything is timed
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(&data);

    // gRPC: three exports of 7 spans.
    runtime().block_on(async {
        let mut client = TraceServiceClient::connect(daemon.grpc_endpoint())
            .await
            .unwrap();
        for n in 0..3 {
            client
                .export(crate::security::spans_request("grpc", n * 100, 7))
                .await
                .unwrap();
        }
    });
    // OTLP/HTTP JSON: two exports of 5 spans; one of 3 with one invalid span (a trace id
    // of the wrong length); one that is not protobuf at all.
    let spans = |first: u64, count: u64| -> Vec<Value> {
        (0..count)
            .map(|i| {
                let id = 10_000 + first + i;
                span(
                    &hex_id(id, 16),
                    &hex_id(id, 8),
                    "GET /m",
                    2,
                    now_ns() - 2_000_000,
                    1,
                    json!([]),
                )
            })
            .collect()
    };
    for n in 0..2 {
        let body = serde_json::to_vec(&traces("http", spans(n * 10, 5))).unwrap();
        assert_eq!(
            post(&daemon, "/v1/traces", "application/json", None, body).0,
            200
        );
    }
    let mut partial = spans(100, 3);
    partial[1]["traceId"] = json!("abcd");
    let body = serde_json::to_vec(&traces("http", partial)).unwrap();
    assert_eq!(
        post(&daemon, "/v1/traces", "application/json", None, body).0,
        200
    );
    let garbage = b"\xff\xff not protobuf".to_vec();
    assert_eq!(
        post(
            &daemon,
            "/v1/traces",
            "application/x-protobuf",
            None,
            garbage
        )
        .0,
        400
    );
    // OTLP/HTTP logs: one export of 4 records.
    let logs = prost::Message::encode_to_vec(&crate::security::logs_request("http", 4));
    assert_eq!(
        post(&daemon, "/v1/logs", "application/x-protobuf", None, logs).0,
        200
    );
    // Request log: two good lines and a bad one.
    let ms = now_ns() / 1_000_000;
    let lines = format!(
        "{{\"time\":{ms},\"method\":\"GET\",\"path\":\"/a\",\"status\":200,\"duration_ms\":1}}\n\
         {{\"time\":{ms},\"method\":\"GET\",\"path\":\"/b\",\"status\":500,\"duration_ms\":2}}\n\
         not json\n"
    );
    assert_eq!(
        post(
            &daemon,
            "/api/v1/requests",
            "application/x-ndjson",
            None,
            lines.into_bytes()
        )
        .0,
        200
    );

    // Everything flushed: then the gauges can be compared with the disk.
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let scrape = Scrape::of(&daemon);
        if scrape.get("apiscope_buffer_rows", "") == 0.0 || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        scrape.get("apiscope_buffer_rows", ""),
        0.0,
        "{}",
        daemon.log().join("\n")
    );
    let grpc = "receiver=otlp,transport=grpc";
    let http_otlp = "receiver=otlp,transport=http";
    let requests = "receiver=requests,transport=http";
    assert_eq!(
        scrape.get("apiscope_receiver_accepted_spans_total", grpc),
        21.0
    );
    assert_eq!(
        scrape.get("apiscope_receiver_accepted_spans_total", http_otlp),
        12.0
    );
    assert_eq!(
        scrape.get("apiscope_receiver_failed_spans_total", http_otlp),
        1.0
    );
    assert_eq!(
        scrape.get("apiscope_receiver_refused_spans_total", http_otlp),
        0.0
    );
    assert_eq!(
        scrape.get("apiscope_receiver_accepted_log_records_total", http_otlp),
        4.0
    );
    assert_eq!(
        scrape.get("apiscope_receiver_accepted_requests_total", requests),
        2.0
    );
    assert_eq!(
        scrape.get("apiscope_receiver_failed_requests_total", requests),
        1.0
    );
    let exports = |labels: &str| scrape.get("apiscope_receiver_exports_total", labels);
    assert_eq!(
        exports("outcome=accepted,receiver=otlp,signal=spans,transport=http"),
        3.0
    );
    assert_eq!(
        exports("outcome=failed,receiver=otlp,signal=spans,transport=http"),
        1.0
    );
    assert_eq!(
        exports("outcome=accepted,receiver=otlp,signal=spans,transport=grpc"),
        3.0
    );
    assert_eq!(
        scrape.get(
            "apiscope_receiver_request_duration_seconds_count",
            "receiver=otlp,signal=spans,transport=grpc"
        ),
        3.0
    );
    assert_eq!(
        scrape.get(
            "apiscope_receiver_request_duration_seconds_bucket",
            "le=+Inf,receiver=otlp,signal=spans,transport=grpc"
        ),
        3.0
    );
    // One WAL append per stored export: 3 gRPC, 3 HTTP span exports, 1 logs, 1 request log.
    assert_eq!(scrape.get("apiscope_wal_appends_total", ""), 8.0);
    assert!(scrape.get("apiscope_wal_written_bytes_total", "") > 0.0);
    assert_eq!(
        scrape.get("apiscope_wal_sync_duration_seconds_count", ""),
        scrape.get("apiscope_wal_groups_total", "")
    );
    assert!(scrape.get("apiscope_flushes_total", "outcome=ok") >= 1.0);
    assert_eq!(
        scrape.get("apiscope_flushed_rows_total", ""),
        21.0 + 12.0 + 4.0 + 2.0
    );
    for table in ["spans", "logs", "requests"] {
        let (files, bytes) = parquet_on_disk(&data.join(table));
        assert_eq!(
            scrape.get("apiscope_parquet_files", &format!("table={table}")),
            files as f64,
            "{table}"
        );
        assert_eq!(
            scrape.get("apiscope_parquet_bytes", &format!("table={table}")),
            bytes as f64,
            "{table}"
        );
    }
    assert_eq!(
        scrape.get(
            "apiscope_build_info",
            &format!("version={}", env!("CARGO_PKG_VERSION"))
        ),
        1.0
    );
    // Free bytes, as Python's os.statvfs sees them; other tests write meanwhile.
    let statvfs = Command::new(python())
        .arg("-c")
        .arg("import os, sys; s = os.statvfs(sys.argv[1]); print(s.f_bavail * s.f_frsize)")
        .arg(&data)
        .output()
        .unwrap();
    let free: f64 = String::from_utf8(statvfs.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let reported = scrape.get("apiscope_data_dir_free_bytes", "");
    assert!(
        (reported - free).abs() < 256.0 * 1024.0 * 1024.0,
        "{reported} against {free}"
    );

    // Queries by outcome, counted between two scrapes; before the first query the series
    // do not exist yet, after it they must.
    let before = Scrape::of(&daemon);
    daemon.rows("SELECT count(*) FROM spans");
    daemon.rows("SELECT 1");
    assert_eq!(daemon.try_query("DROP TABLE spans").0, 403);
    assert_eq!(daemon.try_query("SELEC nonsense").0, 400);
    runtime().block_on(async {
        let client = crate::support::pg::connect(&daemon, None).await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
    });
    let after = Scrape::of(&daemon);
    let delta = |labels: &str| {
        after.get("apiscope_queries_total", labels)
            - before.get_or_zero("apiscope_queries_total", labels)
    };
    assert_eq!(delta("outcome=ok,protocol=http"), 2.0);
    assert_eq!(delta("outcome=refused,protocol=http"), 1.0);
    assert_eq!(delta("outcome=invalid,protocol=http"), 1.0);
    assert_eq!(delta("outcome=ok,protocol=postgres"), 1.0);
    let latency = "apiscope_query_duration_seconds_count";
    assert_eq!(
        after.get(latency, "protocol=http") - before.get_or_zero(latency, "protocol=http"),
        4.0
    );

    // The refused export is one log line with its reason.
    let refused: Vec<String> = daemon
        .log()
        .into_iter()
        .filter(|line| line.contains("request refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("protobuf"), "{refused:?}");
}

/// Parquet files and their bytes under a table's folder.
fn parquet_on_disk(dir: &std::path::Path) -> (u64, u64) {
    let mut found = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let hidden = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if hidden {
            // Temporary files are not the table's files.
            continue;
        }
        if path.is_dir() {
            let (files, bytes) = parquet_on_disk(&path);
            found = (found.0 + files, found.1 + bytes);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            found = (found.0 + 1, found.1 + path.metadata().unwrap().len());
        }
    }
    found
}

/// The data files of a table's folder, sorted by name within their hour.
fn data_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            files.extend(data_files(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn a_file_that_cannot_be_read_is_left_out_logged_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spans_dir = dir.path().join("spans");
    let batch = |n: u64, service: &str| load_request(service, 0, n, 5).1;
    let daemon = Daemon::start(dir.path());
    let (status, _) = post(
        &daemon,
        "/v1/traces",
        "application/json",
        None,
        batch(1, "truncated"),
    );
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while parquet_on_disk(&spans_dir).0 == 0 {
        assert!(Instant::now() < deadline, "no flush within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _) = post(
        &daemon,
        "/v1/traces",
        "application/json",
        None,
        batch(2, "intact"),
    );
    assert_eq!(status, 200);
    let key = ("apiscope_unreadable_files".to_owned(), String::new());
    assert_eq!(
        Scrape::of(&daemon).0.get(&key),
        Some(&0.0),
        "there from the start"
    );
    daemon.stop();
    let files = data_files(&spans_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    // Named by log sequence: the first file holds the first request. Cut off as by a copy
    // that did not finish.
    let truncated = &files[0];
    let length = truncated.metadata().unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(truncated)
        .unwrap()
        .set_len(length / 2)
        .unwrap();

    let daemon = Daemon::start(dir.path());
    for _ in 0..3 {
        assert_eq!(daemon.count("SELECT count(*) FROM spans"), 5);
    }
    assert_eq!(
        daemon.rows("SELECT DISTINCT service_name FROM spans"),
        vec![vec![json!("intact")]]
    );
    let (status, answer) = daemon.try_query("SELECT endpoint, calls FROM endpoint_stats()");
    assert_eq!(status, 200, "{answer}");
    let name = truncated
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let reported: Vec<_> = daemon
        .log()
        .into_iter()
        .filter(|line| line.contains(&name))
        .collect();
    assert_eq!(reported.len(), 1, "logged once: {reported:?}");
    assert!(reported[0].contains("left out of queries"), "{reported:?}");
    assert_eq!(
        Scrape::of(&daemon).get("apiscope_unreadable_files", ""),
        1.0
    );

    // Moved out of the data directory, it is no longer counted.
    std::fs::rename(truncated, dir.path().join(&name)).unwrap();
    assert_eq!(daemon.count("SELECT count(*) FROM spans"), 5);
    assert_eq!(
        Scrape::of(&daemon).get("apiscope_unreadable_files", ""),
        0.0
    );
    daemon.stop();
}
