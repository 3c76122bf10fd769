//! Overload and bombs: refusals are retryable (or final for oversized bodies), memory stays
//! bounded, and every acknowledged span is kept.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use crate::now_ns;
use crate::support::daemon::{Daemon, http};
use crate::support::otlp::{gzip, hex_id, load_request, span, traces};

#[test]
fn overload_gets_only_retryable_refusals_and_keeps_every_acknowledged_span() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(
        dir.path(),
        &[
            "--max-buffer-rows",
            "2000",
            "--flush-rows",
            "1500",
            "--flush-interval",
            "1h",
        ],
    );
    let url = format!("{}/v1/traces", daemon.otlp_http_endpoint());
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let statuses = Arc::new(Mutex::new(BTreeMap::<u16, usize>::new()));
    let deadline = Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..6u64)
        .map(|client| {
            let (url, acknowledged, statuses) =
                (url.clone(), acknowledged.clone(), statuses.clone());
            std::thread::spawn(move || {
                let http = http();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let (ids, body) = load_request("busy", client, n, 50);
                    let response = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .unwrap();
                    let status = response.status().as_u16();
                    if status == 503 {
                        assert!(
                            response.headers().contains_key("retry-after"),
                            "503 without Retry-After"
                        );
                    }
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                    if status == 200 {
                        acknowledged.lock().unwrap().extend(ids);
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let codes: Vec<u16> = statuses.keys().copied().collect();
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{statuses:?}");
    assert!(
        statuses.contains_key(&503),
        "the load never reached the limit: {statuses:?}"
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    let stored = daemon.rows("SELECT span_id FROM spans");
    let stored: Vec<String> = stored
        .iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "no span twice");
    assert_eq!(
        unique, acknowledged,
        "exactly the acknowledged spans are stored"
    );
    let peak = daemon.peak_rss();
    println!(
        "overload: {statuses:?}, peak memory {} MiB",
        peak / (1024 * 1024)
    );
    // 2000 buffered rows and a few requests in flight: far below this.
    assert!(
        peak < 512 * 1024 * 1024,
        "peak memory {} MiB",
        peak / (1024 * 1024)
    );
    // Every sender retrying makes a flood of refusals: a few lines that count them.
    let refusals: Vec<String> = daemon
        .stop()
        .into_iter()
        .filter(|line| line.contains("request refused") && line.contains("retryable=true"))
        .collect();
    let logged = refusals.len();
    let counted: usize = refusals
        .iter()
        .map(|line| {
            let at = line.find("retryable_refusals_not_logged=").unwrap();
            let rest = &line[at + "retryable_refusals_not_logged=".len()..];
            rest.split_whitespace()
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert!((1..=2).contains(&logged), "{refusals:#?}");
    assert!(logged + counted <= statuses[&503], "{refusals:#?}");
}

#[test]
fn gzip_bombs_are_refused_on_both_transports_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let before = daemon.peak_rss();
    // 1 GiB of zeros inflates from about 1 MiB of gzip.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 16 * 1024 * 1024];
    for _ in 0..64 {
        std::io::Write::write_all(&mut encoder, &zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 4 * 1024 * 1024, "{}", bomb.len());
    let (status, _) = crate::support::otlp::post(
        &daemon,
        "/v1/traces",
        "application/x-protobuf",
        Some("gzip"),
        bomb,
    );
    assert_eq!(status, 413);

    // Over gRPC: a message that gzip-compresses to a few KiB but inflates past the limit.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let big = Bytes::from(vec![0u8; 64 * 1024 * 1024]);
    let refused = runtime
        .block_on(crate::bad_input::raw_grpc_export_compressed(
            &daemon.grpc_endpoint(),
            big,
        ))
        .expect_err("a bomb must be refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");

    let growth = daemon.peak_rss().saturating_sub(before);
    assert!(
        growth < 200 * 1024 * 1024,
        "memory grew by {} MiB",
        growth / (1024 * 1024)
    );
    // Small gzip bodies still work.
    let body = serde_json::to_vec(&traces(
        "after-bomb",
        vec![span(
            &hex_id(1, 16),
            &hex_id(1, 8),
            "GET /",
            2,
            now_ns(),
            1,
            json!([]),
        )],
    ))
    .unwrap();
    let (status, _) = crate::support::otlp::post(
        &daemon,
        "/v1/traces",
        "application/json",
        Some("gzip"),
        gzip(&body),
    );
    assert_eq!(status, 200);
    daemon.stop();
}

#[test]
fn a_disk_under_the_free_space_floor_pauses_ingest_and_not_queries() {
    let dir = tempfile::tempdir().unwrap();
    let floor = u64::MAX.to_string();
    let daemon = Daemon::start_with(dir.path(), &["--min-free-bytes", &floor]);
    let (_, body) = load_request("floor", 0, 1, 5);
    let response = http()
        .post(format!("{}/v1/traces", daemon.otlp_http_endpoint()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let text = response.text().unwrap();
    assert!(text.contains("under min_free_bytes"), "{text}");
    assert_eq!(daemon.count("SELECT count(*) FROM spans"), 0);
    // Not ready, on both HTTP listeners, for the same reason; still alive.
    for base in [daemon.otlp_http_endpoint(), daemon.query_url()] {
        let answer = http().get(format!("{base}/readyz")).send().unwrap();
        assert_eq!(answer.status().as_u16(), 503, "{base}");
        let text = answer.text().unwrap();
        assert!(
            text.contains("not ready") && text.contains("min_free_bytes"),
            "{text}"
        );
        let answer = http().get(format!("{base}/healthz")).send().unwrap();
        assert_eq!(answer.status().as_u16(), 200, "{base}");
    }
    daemon.stop();
}
