//! Acknowledged means durable: kill -9 under steady ingest (with the open hour's files being
//! merged), restart, repeat; at the end every acknowledged span is queryable exactly once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::now_ns;
use crate::support::daemon::{Daemon, http};
use crate::support::otlp::{hex_id, load_request, span, traces};

const CLIENTS: u64 = 3;
const CYCLES: usize = 10;
const SPANS_PER_REQUEST: u64 = 5;

/// A small pseudo-random number from the clock: kill moments need not be reproducible,
/// only spread out.
fn jitter(max_ms: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    nanos
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        % max_ms
}

/// Compaction passes this often, so that the open hour's files are merged while kills land.
const MERGING: [&str; 2] = ["--compaction-interval", "200ms"];

#[test]
fn kill_9_under_load_loses_no_acknowledged_span_and_doubles_none() {
    let dir = tempfile::tempdir().unwrap();
    kill_9_cycles(&|| Daemon::start_with(dir.path(), &MERGING));
    // The open hour's files were merged meanwhile: merges were among what the kills cut.
    let merges = std::fs::read_dir(dir.path().join("spans/_delta_log"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .filter(|path| {
            std::fs::read_to_string(path).is_ok_and(|commit| commit.contains("\"OPTIMIZE\""))
        })
        .count();
    assert!(merges > 0, "no merge of the open hour during the kills");
}

#[test]
fn kill_9_of_a_collector_on_a_bucket_loses_nothing_and_doubles_nothing() {
    let s3 = crate::support::s3::S3::start();
    s3.create_bucket("crash");
    let dir = tempfile::tempdir().unwrap();
    let store = "s3://crash/apiscope";
    kill_9_cycles(&|| Daemon::start_command(s3.serve(dir.path(), store, &MERGING)));
}

/// Clients send while the daemon `start` makes is killed with SIGKILL and started again,
/// [`CYCLES`] times; then every acknowledged span is stored once.
fn kill_9_cycles(start: &dyn Fn() -> Daemon) {
    let daemon = start();
    let endpoint = Arc::new(Mutex::new(daemon.otlp_http_endpoint()));
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let mut sent_any = Vec::new();

    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let endpoint = endpoint.clone();
        let stop = stop.clone();
        let acknowledged = acknowledged.clone();
        clients.push(std::thread::spawn(move || {
            let http = http();
            let mut attempted = Vec::new();
            let mut request = 0u64;
            while !stop.load(Ordering::Relaxed) {
                request += 1;
                let (ids, body) = load_request("load", client, request, SPANS_PER_REQUEST);
                let url = format!("{}/v1/traces", endpoint.lock().unwrap());
                attempted.extend(ids.iter().cloned());
                let answer = http
                    .post(url)
                    .header("content-type", "application/json")
                    .timeout(Duration::from_secs(5))
                    .body(body)
                    .send();
                match answer {
                    Ok(response) if response.status().as_u16() == 200 => {
                        acknowledged.lock().unwrap().extend(ids);
                    }
                    // Refused, or the daemon died mid-request: not acknowledged.
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            attempted
        }));
    }

    let mut daemon = daemon;
    for _ in 0..CYCLES {
        std::thread::sleep(Duration::from_millis(150 + jitter(600)));
        daemon.kill();
        daemon = start();
        *endpoint.lock().unwrap() = daemon.otlp_http_endpoint();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        sent_any.extend(client.join().unwrap());
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 100,
        "too little load to mean anything: {}",
        acknowledged.len()
    );
    let rows = daemon.rows("SELECT span_id, count(*) FROM spans GROUP BY span_id");
    let mut stored = HashSet::new();
    for row in &rows {
        let id = row[0].as_str().unwrap().to_owned();
        assert_eq!(row[1], json!(1), "span {id} is stored more than once");
        stored.insert(id);
    }
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged spans lost, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    let unacknowledged_arrived = stored.difference(&acknowledged).count();
    let attempted: HashSet<_> = sent_any.into_iter().collect();
    assert!(stored.is_subset(&attempted), "a span nobody sent is stored");
    println!(
        "crash test: {CYCLES} kill -9 cycles, {} spans acknowledged, all stored once; {unacknowledged_arrived} unacknowledged spans arrived anyway",
        acknowledged.len()
    );
    daemon.stop();
}

#[test]
fn a_damaged_wal_tail_is_moved_aside_and_the_daemon_starts() {
    let dir = tempfile::tempdir().unwrap();
    // A long flush interval keeps the rows in the WAL only.
    let daemon = Daemon::start_with(dir.path(), &["--flush-interval", "1h"]);
    let spans = (0..4)
        .map(|i| {
            span(
                &hex_id(9, 16),
                &hex_id(i + 1, 8),
                "GET /x",
                2,
                now_ns() - 1_000_000,
                1,
                json!([]),
            )
        })
        .collect();
    let (status, _) = crate::support::otlp::post(
        &daemon,
        "/v1/traces",
        "application/json",
        None,
        serde_json::to_vec(&traces("wal", spans)).unwrap(),
    );
    assert_eq!(status, 200);
    daemon.kill();

    // A torn write: half a record header and garbage after the last good record.
    let wal = dir.path().join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    let last = segments
        .iter()
        .rev()
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    std::fs::write(last, bytes).unwrap();

    let daemon = Daemon::start_with(dir.path(), &["--flush-interval", "1h"]);
    assert_eq!(daemon.count("SELECT count(*) FROM spans"), 4);
    let log = daemon.log().join("\n");
    assert!(log.contains("damaged WAL tail moved aside"), "{log}");
    let aside: Vec<_> = std::fs::read_dir(wal.join("damaged")).unwrap().collect();
    assert_eq!(aside.len(), 1);
    daemon.stop();
}
