//! An unfriendly neighbour: connections held open and never used, headers sent a byte at a
//! time, PostgreSQL start-ups never finished, statements that would build huge values. Each
//! is refused or disconnected in its own protocol, and ingest goes on throughout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use crate::compose::summary_count;
use crate::security::spans_request;
use crate::support::daemon::{Daemon, binary, http, serve};
use crate::support::pg::{connect, runtime};
use crate::support::prometheus::Scrape;

/// Raises this process's open-files limit to the hard one: the test holds thousands of
/// sockets. Returns the limit in force.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls that read or write the struct given.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(1 << 16);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

fn open(addr: &str) -> TcpStream {
    let socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    socket
}

/// How long until the daemon closes `socket` (reads nothing more and sees the end), or
/// `None` when it was still open after `within`.
fn closed_after(socket: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    socket.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match socket.read(&mut buffer) {
            Ok(0) | Err(_) if started.elapsed() < within => return Some(started.elapsed()),
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[test]
fn a_connection_over_the_limit_is_refused_in_its_protocol_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(
        dir.path(),
        &[
            "--pg-max-connections",
            "2",
            "--http-max-connections",
            "2",
            "--otlp-http-max-connections",
            "2",
            "--otlp-grpc-max-connections",
            "2",
            "--pg-startup-timeout",
            "60s",
        ],
    );
    let before = Scrape::of(&daemon);
    assert_eq!(
        before.get("apiscope_connections_max", "listener=pg"),
        2.0,
        "the limit in force is published"
    );
    let held: Vec<TcpStream> = [
        &daemon.pg_addr,
        &daemon.http_addr,
        &daemon.otlp_http_addr,
        &daemon.grpc_addr,
    ]
    .iter()
    .flat_map(|addr| [open(addr), open(addr)])
    .collect();
    std::thread::sleep(Duration::from_millis(300));

    // PostgreSQL: SQLSTATE 53300, as PostgreSQL answers past max_connections.
    let refused = runtime()
        .block_on(connect(&daemon, None))
        .expect_err("a third PostgreSQL connection is refused");
    let error = refused.as_db_error().expect("an error from the server");
    assert_eq!(error.code().code(), "53300", "{error}");
    assert!(error.message().contains("pg_max_connections"), "{error}");

    // HTTP: 503 with Retry-After, naming the limit.
    for (addr, key) in [
        (&daemon.http_addr, "http_max_connections"),
        (&daemon.otlp_http_addr, "otlp_http_max_connections"),
    ] {
        let response = http().get(format!("http://{addr}/healthz")).send().unwrap();
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let body = response.text().unwrap();
        assert!(body.contains(key), "{body}");
    }

    // gRPC: UNAVAILABLE, which exporters retry.
    let status = runtime().block_on(async {
        let mut client = TraceServiceClient::connect(daemon.grpc_endpoint())
            .await
            .unwrap();
        client
            .export(spans_request("refused", 1, 1))
            .await
            .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(
        status.message().contains("otlp_grpc_max_connections"),
        "{status}"
    );

    // Once the connections close, every listener serves again, and the refusals were counted.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        let grpc = runtime().block_on(async {
            let mut client = TraceServiceClient::connect(daemon.grpc_endpoint()).await?;
            client
                .export(spans_request("after", 10, 3))
                .await
                .map_err(Into::into)
        });
        let pg = runtime().block_on(async {
            let client = connect(&daemon, None).await?;
            client.simple_query("SELECT 1").await?;
            Ok::<_, tokio_postgres::Error>(())
        });
        if grpc.is_ok() && pg.is_ok() || Instant::now() > deadline {
            break (
                grpc.map_err(|e: Box<dyn std::error::Error>| e.to_string()),
                pg,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(served.0.is_ok(), "{:?}", served.0);
    assert!(served.1.is_ok(), "{:?}", served.1);
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM spans", 3), 3);
    let after = Scrape::of(&daemon);
    for listener in ["pg", "http", "otlp_http", "otlp_grpc"] {
        let labels = format!("listener={listener}");
        assert!(
            after.get("apiscope_connections_refused_total", &labels) >= 1.0,
            "{listener}: refusals not counted"
        );
    }
    assert!(after.get("apiscope_connections_open", "listener=http") >= 1.0);
}

#[test]
fn silent_clients_are_disconnected_by_the_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(
        dir.path(),
        &[
            "--idle-timeout",
            "2s",
            "--http-header-timeout",
            "1s",
            "--pg-startup-timeout",
            "1s",
            "--pg-idle-session-timeout",
            "2s",
        ],
    );
    let within = Duration::from_secs(20);
    let mut slow_header = open(&daemon.http_addr);
    slow_header
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut kept_alive = open(&daemon.otlp_http_addr);
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut half_open_pg = open(&daemon.pg_addr);
    half_open_pg.write_all(&[0, 0, 0, 40]).unwrap();
    let mut idle_grpc = open(&daemon.grpc_addr);

    let mut times = Vec::new();
    for (what, socket) in [
        ("slow HTTP header", &mut slow_header),
        ("idle HTTP keep-alive", &mut kept_alive),
        ("half-open PostgreSQL start-up", &mut half_open_pg),
        ("idle gRPC connection", &mut idle_grpc),
    ] {
        let closed = closed_after(socket, within);
        assert!(closed.is_some(), "{what}: still open after {within:?}");
        times.push(format!("{what}: {:?}", closed.unwrap()));
    }

    // A logged-in PostgreSQL session that sits idle is closed; one that works is not.
    runtime().block_on(async {
        let busy = connect(&daemon, None).await.unwrap();
        let idle = connect(&daemon, None).await.unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(4) {
            busy.simple_query("SELECT 1").await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            idle.simple_query("SELECT 1").await.is_err(),
            "the idle session is closed"
        );
        busy.simple_query("SELECT 1").await.unwrap();
    });
    eprintln!("time until closed: {}", times.join(", "));

    let scrape = Scrape::of(&daemon);
    for reason in ["idle", "http_header", "pg_startup", "pg_idle_session"] {
        assert!(
            scrape.get(
                "apiscope_connections_timed_out_total",
                &format!("reason={reason}")
            ) >= 1.0,
            "{reason}: not counted"
        );
    }
}

/// Statements that would build values far larger than the limits, by every way found.
const CORPUS: &[&str] = &[
    "SELECT repeat('x', 2000000000)",
    "SELECT lpad('x', 2000000000)",
    "SELECT rpad('x', 1000000000, 'ab')",
    "SELECT overlay(repeat('x', 10000000) placing repeat('y', 10000000) from 2)",
    "SELECT array_repeat('x', 1000000000)",
    "SELECT array_resize([1], 1000000000)",
    "SELECT range(0, 10000000000)",
    "SELECT generate_series(1, 10000000000)",
    "SELECT count(*) FROM generate_series(1, 100000000000)",
    "SELECT string_agg(repeat('x', 1000000), ',') FROM generate_series(1, 100000)",
    "SELECT length(string_agg(s, ',')) FROM (SELECT repeat('x', 1000000 + v) AS s FROM generate_series(1, 2000) AS t(v))",
    "SELECT cardinality(array_agg(v)) FROM generate_series(1, 300000000) AS t(v)",
    "WITH RECURSIVE t(s, n) AS (SELECT 'x', 1 UNION ALL SELECT s || s, n + 1 FROM t WHERE n < 40) SELECT max(length(s)) FROM t",
    "SELECT replace(repeat('x', 1000000), 'x', repeat('y', 100))",
    "SELECT regexp_replace(repeat('x', 1000000), 'x', repeat('y', 100), 'g')",
    "SELECT s || s || s || s FROM (SELECT repeat('x', 10000000) AS s)",
    "SELECT concat(s, s, s, s) FROM (SELECT repeat('x', 10000000) AS s)",
    "SELECT repeat(repeat('x', 1000), 1000000)",
];

/// What a refusal of the corpus may name: the limit it hit.
const LIMITS: &[&str] = &[
    "max_value_bytes",
    "query_memory_limit",
    "query_timeout",
    "max_concurrent_queries",
];

#[test]
fn an_unfriendly_neighbour_does_not_stop_ingest() {
    let own_limit = raise_open_files();
    let per_port = (own_limit.saturating_sub(1000) / 4).min(1500) as usize;
    let dir = tempfile::tempdir().unwrap();
    // The limit most services start with, for the daemon alone.
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\""])
        .arg(binary())
        .args(serve(dir.path()).get_args())
        .args([
            "--idle-timeout",
            "30s",
            "--query-memory-limit",
            "256MiB",
            "--max-value-bytes",
            "16MiB",
            "--max-concurrent-queries",
            "4",
            "--query-timeout",
            "3s",
        ]);
    let daemon = Daemon::start_command(command);
    let warned = daemon.log().iter().any(|line| {
        line.contains("open-files limit is low") && line.contains("pg_max_connections=")
    });
    assert!(
        warned,
        "no warning names the limits in force:\n{}",
        daemon.log().join("\n")
    );

    // Steady ingest from exporters connected before the attack.
    let loadgen = Command::new(binary())
        .args(["loadgen", "--protocol", "grpc", "--endpoint"])
        .arg(daemon.grpc_endpoint())
        .args(["--rate", "2000", "--duration", "12s", "--connections", "2"])
        .args(["--batch", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Query clients, each with its connection made before the attack.
    let url = format!("{}/api/v1/query", daemon.query_url());
    let (ready, all_ready) = std::sync::mpsc::channel();
    let queriers: Vec<_> = (0..4)
        .map(|client| {
            let (url, ready) = (url.clone(), ready.clone());
            std::thread::spawn(move || {
                let http = http();
                let mut answers = Vec::new();
                let warm = http
                    .post(&url)
                    .json(&serde_json::json!({"sql": "SELECT 1"}));
                assert_eq!(warm.send().unwrap().status().as_u16(), 200);
                ready.send(()).unwrap();
                for sql in CORPUS.iter().cycle().skip(client * 5).take(CORPUS.len()) {
                    let response = http
                        .post(&url)
                        .json(&serde_json::json!({ "sql": sql }))
                        .send()
                        .unwrap();
                    let status = response.status().as_u16();
                    answers.push((sql.to_string(), status, response.text().unwrap()));
                }
                answers
            })
        })
        .collect();
    for _ in 0..4 {
        all_ready.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));

    // The attack: many more idle connections than any listener takes, slow headers on the
    // HTTP ports, start-ups that never finish on the PostgreSQL port.
    let mut held = Vec::new();
    for (addr, opening) in [
        (&daemon.grpc_addr, &b""[..]),
        (&daemon.otlp_http_addr, &b"POST /v1/traces HTTP/1.1\r\n"[..]),
        (
            &daemon.http_addr,
            &b"GET /healthz HTTP/1.1\r\nHost: x\r\n"[..],
        ),
        (&daemon.pg_addr, &[0u8, 0, 0, 40, 0, 3][..]),
    ] {
        for _ in 0..per_port {
            let Ok(mut socket) = TcpStream::connect(addr) else {
                continue;
            };
            let _ = socket.write_all(opening);
            held.push(socket);
        }
    }
    let answers: Vec<_> = queriers
        .into_iter()
        .flat_map(|querier| querier.join().unwrap())
        .collect();
    drop(held);

    for (sql, status, body) in &answers {
        let named = LIMITS.iter().any(|limit| body.contains(limit));
        assert!(
            *status == 200 || (matches!(status, 422 | 503) && named),
            "{sql}: {status} {body}"
        );
    }
    let refused = answers
        .iter()
        .filter(|(_, status, _)| *status != 200)
        .count();
    assert!(refused >= answers.len() / 2, "{answers:?}");
    let peak = daemon.peak_rss();
    let bound = 4 * 256 * 1024 * 1024 + 512 * 1024 * 1024;
    eprintln!("peak resident memory during the corpus: {} MiB", peak >> 20);
    assert!(peak < bound, "peak resident memory {peak} over {bound}");

    // Ingest went on: every span the exporters had acknowledged is stored.
    let output = loadgen.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout).to_string();
    let acknowledged = summary_count(&report, "acknowledged");
    assert!(acknowledged >= 20_000, "{report}");
    assert_eq!(summary_count(&report, "failed"), 0, "{report}");
    assert_eq!(
        daemon.wait_for_count("SELECT count(*) FROM spans", acknowledged),
        acknowledged,
        "{report}"
    );

    // After the attack, every listener serves again.
    runtime().block_on(async {
        let client = connect(&daemon, None).await.unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        let mut grpc = TraceServiceClient::connect(daemon.grpc_endpoint())
            .await
            .unwrap();
        grpc.export(spans_request("after", 1, 1)).await.unwrap();
    });
    let response = http()
        .get(format!("{}/healthz", daemon.otlp_http_endpoint()))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let scrape = Scrape::of(&daemon);
    assert!(scrape.get("apiscope_connections_refused_total", "listener=otlp_grpc") >= 1.0);
    assert!(scrape.get("apiscope_connections_refused_total", "listener=pg") >= 1.0);
}

#[test]
fn over_the_memory_ceiling_queries_are_cancelled_and_ingest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // A ceiling the daemon is always over: every query that runs long enough is cancelled.
    let daemon = Daemon::start_with(dir.path(), &["--memory-limit", "1"]);
    let long = "SELECT count(*) FROM generate_series(1, 100000000000)";

    let (status, body) = daemon.try_query(long);
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("memory_limit (1 bytes)"), "{detail}");
    assert!(detail.contains("was cancelled"), "{detail}");

    let error = runtime().block_on(async {
        let client = connect(&daemon, None).await.unwrap();
        client.simple_query(long).await.unwrap_err()
    });
    let error = error.as_db_error().expect("an error from the server");
    assert_eq!(error.code().code(), "53200", "{error}");
    assert!(error.message().contains("memory_limit"), "{error}");

    // Ingest is never cancelled.
    runtime().block_on(async {
        let mut grpc = TraceServiceClient::connect(daemon.grpc_endpoint())
            .await
            .unwrap();
        grpc.export(spans_request("ceiling", 1, 5)).await.unwrap();
    });
    let scrape = Scrape::of(&daemon);
    assert!(scrape.get("apiscope_queries_cancelled_total", "reason=memory_limit") >= 2.0);
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM spans", 5), 5);
}
