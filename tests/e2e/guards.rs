//! Query guards: result rows, memory, time and queries at once, each refusal naming its
//! limit; the daemon keeps answering afterwards.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::daemon::{Daemon, http};
use crate::support::otlp::{hex_id, post, span, traces};

/// Eight billion rows, each compared: never done in two seconds.
pub(crate) const SLOW: &str = "SELECT count(*) FROM (SELECT duration_ns FROM spans) a, \
    (SELECT duration_ns FROM spans) b, (SELECT duration_ns FROM spans) c \
    WHERE a.duration_ns + b.duration_ns > c.duration_ns";

#[test]
fn queries_over_a_limit_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(
        dir.path(),
        &[
            "--max-result-rows",
            "5",
            "--query-timeout",
            "2s",
            "--query-memory-limit",
            "2000000",
            "--max-concurrent-queries",
            "1",
        ],
    );
    let start = crate::now_ns() - 60_000_000_000;
    let spans = (0..2000)
        .map(|i| {
            span(
                &hex_id(i / 10 + 1, 16),
                &hex_id(i + 1, 8),
                "GET /x",
                2,
                start,
                i as i64 % 50,
                json!([]),
            )
        })
        .collect();
    let body = serde_json::to_vec(&traces("guarded", spans)).unwrap();
    let (status, _) = post(&daemon, "/v1/traces", "application/json", None, body);
    assert_eq!(status, 200);
    assert_eq!(
        daemon.wait_for_count("SELECT count(*) FROM spans", 2000),
        2000
    );

    let refused = |sql: &str, limit: &str| {
        let (status, body) = daemon.try_query(sql);
        assert_eq!(status, 422, "{sql}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(limit), "{sql}: {detail}");
    };
    // Rows: refused, not cut.
    refused(
        "SELECT span_id FROM spans",
        "more than 5 rows (max_result_rows)",
    );
    assert_eq!(daemon.rows("SELECT span_id FROM spans LIMIT 5").len(), 5);
    // Memory: grouping the cross join by a key of both sides needs far more than 2 MB.
    refused(
        "SELECT count(*) FROM (SELECT a.span_id || b.span_id AS k, count(*) AS n \
         FROM spans a, spans b GROUP BY k) t",
        "bytes of memory (query_memory_limit)",
    );
    // Time: eight billion rows do not pass in two seconds.
    refused(SLOW, "longer than 2s (query_timeout)");

    // One query at a time: a second one meanwhile is told to retry. The slow query holds the
    // one slot until its time limit; the second is asked for until refused or until the slow
    // one has answered (a loaded machine may take long to start either, so no wall clock).
    let busy = one_slot_taken(&daemon, || {
        let answer = http()
            .post(format!("{}/api/v1/query", daemon.query_url()))
            .json(&json!({"sql": "SELECT 1"}))
            .send()
            .unwrap();
        (answer.status().as_u16() == 503).then_some(answer)
    });
    assert_eq!(busy.status().as_u16(), 503);
    assert_eq!(busy.headers()["retry-after"], "1");
    let detail: serde_json::Value = busy.json().unwrap();
    assert!(
        detail["detail"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_queries"),
        "{detail}"
    );

    // Over PostgreSQL the same place is taken: SQLSTATE 53000 naming the limit. The client
    // connects first, so only its queries race the slow one.
    let runtime = crate::support::pg::runtime();
    let client = runtime
        .block_on(crate::support::pg::connect(&daemon, None))
        .unwrap();
    let error = one_slot_taken(&daemon, || {
        runtime.block_on(client.simple_query("SELECT 1")).err()
    });
    assert_eq!(error.code().map(|c| c.code()), Some("53000"), "{error}");
    assert!(format!("{error:?}").contains("max_concurrent_queries"));
    // The same over the extended protocol.
    let error = one_slot_taken(&daemon, || {
        runtime.block_on(client.query("SELECT 1", &[])).err()
    });
    assert_eq!(error.code().map(|c| c.code()), Some("53000"), "{error}");
    drop(client);

    // The time and row limits over PostgreSQL, where rows stream: refused with the codes
    // PostgreSQL uses (57014 as for statement_timeout, 54000), naming the setting.
    crate::support::pg::runtime().block_on(async {
        let client = crate::support::pg::connect(&daemon, None).await.unwrap();
        for (sql, code, setting) in [
            ("SELECT span_id FROM spans", "54000", "max_result_rows"),
            (SLOW, "57014", "query_timeout"),
        ] {
            // The extended protocol, then the simple one. Queries run at a lower priority than
            // the tests beside this one: on a loaded machine the row limit's query may be
            // timed out before it reaches its sixth row, and is asked again.
            for simple in [false, true] {
                let started = Instant::now();
                let mut tries = 0;
                let error = loop {
                    let error = if simple {
                        client.simple_query(sql).await.map(|_| ()).unwrap_err()
                    } else {
                        client.query(sql, &[]).await.map(|_| ()).unwrap_err()
                    };
                    let timed_out = error.code().is_some_and(|c| c.code() == "57014");
                    if code == "57014" || !timed_out || tries == 5 {
                        break error;
                    }
                    tries += 1;
                };
                assert_eq!(
                    error.code().map(|c| c.code()),
                    Some(code),
                    "{sql} (simple: {simple}): {error:?}"
                );
                assert!(format!("{error:?}").contains(setting), "{sql}: {error:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{sql} was not stopped"
                );
            }
        }
        // The connection still answers (on a loaded machine even this one may be timed out,
        // and is asked again; any other refusal fails).
        let mut tries = 0;
        let rows = loop {
            match client.query("SELECT span_id FROM spans LIMIT 5", &[]).await {
                Err(error) if tries < 5 && error.code().is_some_and(|c| c.code() == "57014") => {
                    tries += 1;
                }
                answer => break answer.unwrap(),
            }
        };
        assert_eq!(rows.len(), 5);
    });
    // And the daemon still answers, and still takes data.
    assert_eq!(daemon.count("SELECT count(*) FROM spans"), 2000);
}

/// Runs [`SLOW`] over HTTP and meanwhile calls `ask` (every 50 ms) until it returns a
/// refusal, which is returned once the slow query has been refused for its time. Should a
/// quick query have taken the slot just as the slow one came (so the slow one was refused),
/// starts again, up to three times. Panics, saying what the slow query answered, if it ended
/// before any refusal.
fn one_slot_taken<T>(daemon: &Daemon, mut ask: impl FnMut() -> Option<T>) -> T {
    for _ in 0..3 {
        let url = daemon.query_url();
        let slow = std::thread::spawn(move || {
            http()
                .post(format!("{url}/api/v1/query"))
                .json(&json!({ "sql": SLOW }))
                .send()
                .unwrap()
                .text()
                .unwrap()
        });
        // Let the slow query take the slot before asking; asking first would take it.
        std::thread::sleep(Duration::from_millis(300));
        let mut refusal = None;
        let mut asked = 0;
        while refusal.is_none() && !slow.is_finished() {
            refusal = ask();
            asked += 1;
            if refusal.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let slow = slow.join().unwrap();
        if slow.contains("max_concurrent_queries") {
            continue;
        }
        let Some(refusal) = refusal else {
            panic!("no refusal in {asked} queries while the slow query ran: {slow}");
        };
        assert!(slow.contains("query_timeout"), "{slow}");
        return refusal;
    }
    panic!("the slow query never got the one slot in three tries");
}

/// Statements that would change something or read what is not a table, each of which every
/// front-end refuses; `dir` is where the file ones would write or read.
pub(crate) fn refusal_corpus(dir: &std::path::Path) -> Vec<String> {
    let written = dir.join("written.csv");
    let secret = dir.join("secret.csv");
    std::fs::write(&secret, "a,b\n1,2\n").unwrap();
    vec![
        "CREATE TABLE notes AS SELECT 1 AS n".to_owned(),
        "INSERT INTO spans (trace_id) VALUES ('x')".to_owned(),
        "DELETE FROM spans".to_owned(),
        "DROP TABLE spans".to_owned(),
        "SELECT 1; DROP TABLE spans".to_owned(),
        format!("COPY (SELECT * FROM spans) TO '{}'", written.display()),
        format!(
            "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '{}'",
            secret.display()
        ),
        format!("SELECT * FROM '{}'", secret.display()),
        format!("SELECT * FROM read_csv('{}')", secret.display()),
        "SET datafusion.execution.batch_size = 1".to_owned(),
    ]
}

/// Checks that `daemon` refuses every statement of `corpus` over HTTP and over PostgreSQL
/// (the simple and the extended protocol).
pub(crate) fn refuses_all(daemon: &Daemon, corpus: &[String]) {
    for sql in corpus {
        let (status, body) = daemon.try_query(sql);
        assert!((400..500).contains(&status), "HTTP ran {sql}: {body}");
    }
    crate::support::pg::runtime().block_on(async {
        let client = crate::support::pg::connect(daemon, None).await.unwrap();
        for sql in corpus {
            assert!(
                client.simple_query(sql).await.is_err(),
                "PostgreSQL (simple) ran {sql}"
            );
            assert!(
                client.query(sql.as_str(), &[]).await.is_err(),
                "PostgreSQL (extended) ran {sql}"
            );
        }
    });
}

#[test]
fn the_refusal_corpus_is_refused_over_http_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let start = crate::now_ns() - 60_000_000_000;
    let spans = (0..3)
        .map(|i| {
            span(
                &hex_id(9, 16),
                &hex_id(i + 1, 8),
                "GET /x",
                2,
                start,
                1,
                json!([]),
            )
        })
        .collect();
    let body = serde_json::to_vec(&traces("corpus", spans)).unwrap();
    let (status, _) = post(&daemon, "/v1/traces", "application/json", None, body);
    assert_eq!(status, 200);
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM spans", 3), 3);

    let written = dir.path().join("written.csv");
    refuses_all(&daemon, &refusal_corpus(dir.path()));
    crate::support::pg::runtime().block_on(async {
        let client = crate::support::pg::connect(&daemon, None).await.unwrap();
        let tables = client
            .query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1", &[])
            .await
            .unwrap();
        let tables: Vec<String> = tables.iter().map(|r| r.get(0)).collect();
        assert!(!tables.iter().any(|t| t == "notes" || t == "leak"), "{tables:?}");
    });
    assert!(!written.exists(), "COPY wrote a file");
    assert_eq!(daemon.count("SELECT count(*) FROM spans"), 3);
}
