//! The cluster (`apiscope scheduler`, `apiscope executor`, `serve --cluster`): Ballista's
//! scheduler and two executors on loopback over a bucket on an S3-compatible server, which
//! two collectors write, answer every question function and a corpus of SQL exactly as a
//! single daemon over the same bucket does; each role counts its work on `/metrics`; a
//! front-end over the cluster refuses what any front-end refuses, and a query over its time
//! limit stops on the executors too; a query that loses an executor midway is answered
//! right.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::daemon::{Daemon, binary};
use crate::support::fleet::Fleet;
use crate::support::prometheus::Scrape;
use crate::support::rfc3339;
use crate::support::s3::S3;

/// A cluster role (`scheduler`, `executor`) running, killed when dropped; its log kept.
struct Role {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Role {
    fn start(s3: &S3, args: &[&str]) -> Role {
        let mut command = Command::new(binary());
        command
            .args(args)
            .env("APISCOPE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in s3.env() {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("start a cluster role");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        Role { child, log }
    }

    /// Lines of its log that contain `text`.
    fn count(&self, text: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|line| line.contains(text)).count()
    }

    /// Waits (bounded) until its log has `times` lines with `text`.
    fn wait_for(&self, text: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count(text) < times {
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port whose next two ports are free too (an executor takes all three).
fn free_ports() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < u16::MAX - 2
            && (1..=2).all(|next| TcpListener::bind(("127.0.0.1", port + next)).is_ok())
        {
            return port;
        }
    }
}

/// A scheduler and `executors` executors over `store`, all registered.
struct Cluster {
    url: String,
    scheduler: Role,
    /// Each executor, and the directory it writes its tasks' output to.
    executors: Vec<(Role, tempfile::TempDir)>,
    /// The scheduler's `/metrics`, and each executor's.
    metrics: (String, Vec<String>),
}

impl Cluster {
    fn start(s3: &S3, store: &str, executors: usize) -> Cluster {
        let port = free_ports();
        let bind = format!("127.0.0.1:{port}");
        let scheduler = Role::start(s3, &["scheduler", "--bind", &bind, "--store", store]);
        let url = format!("df://127.0.0.1:{port}");
        let mut metrics = (format!("http://{bind}/metrics"), Vec::new());
        let executors = (0..executors)
            .map(|_| {
                let port = free_ports();
                let bind = format!("127.0.0.1:{port}");
                // The default: the port after the gRPC service's.
                metrics
                    .1
                    .push(format!("http://127.0.0.1:{}/metrics", port + 2));
                let work_dir = tempfile::tempdir().unwrap();
                let executor = Role::start(
                    s3,
                    &[
                        "executor",
                        "--scheduler",
                        &url,
                        "--bind",
                        &bind,
                        "--store",
                        store,
                        "--concurrency",
                        "2",
                        "--work-dir",
                        work_dir.path().to_str().unwrap(),
                    ],
                );
                (executor, work_dir)
            })
            .collect::<Vec<_>>();
        scheduler.wait_for("register executor request", executors.len());
        Cluster {
            url,
            scheduler,
            executors,
            metrics,
        }
    }
}

impl Cluster {
    /// Each role's `/metrics` (read by Prometheus' parser) counts the work done: jobs,
    /// stages, tasks and shuffle bytes on the scheduler, the same tasks and bytes on the
    /// executors.
    fn metrics_count_the_work(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let scheduler = Scrape::at(&self.metrics.0);
            let executors: Vec<Scrape> = self.metrics.1.iter().map(|url| Scrape::at(url)).collect();
            assert_eq!(scheduler.get("apiscope_cluster_executors", ""), 2.0);
            assert!(scheduler.get("apiscope_cluster_jobs_total", "outcome=completed") >= 40.0);
            assert!(scheduler.get("apiscope_cluster_stages_total", "") >= 40.0);
            let tasks = scheduler.get("apiscope_cluster_tasks_total", "outcome=succeeded");
            let bytes = scheduler.get("apiscope_cluster_shuffle_bytes_total", "");
            assert!(bytes > 0.0);
            for executor in &executors {
                assert!(executor.get("apiscope_executor_tasks_total", "outcome=succeeded") > 0.0);
                assert_eq!(executor.get("apiscope_executor_running_tasks", ""), 0.0);
            }
            let sum = |name: &str, labels: &str| -> f64 {
                executors.iter().map(|e| e.get(name, labels)).sum()
            };
            // A task's end reaches the scheduler a moment after the executor counts it.
            let (done, written) = (
                sum("apiscope_executor_tasks_total", "outcome=succeeded"),
                sum("apiscope_executor_shuffle_bytes_written_total", ""),
            );
            if (done, written) == (tasks, bytes) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the scheduler counts {tasks} tasks and {bytes} bytes, the executors {done} and {written}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Whether two answers are the same: numbers within a relative 1e-9 (sums of floating-point
/// values depend on the order they are added in), everything else exactly.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| same(x, y)))
        }
        _ => a == b,
    }
}

/// The SQL the cluster must answer as one node does, over the window `from`..`to`.
fn corpus(from: &str, to: &str, mid: &str) -> Vec<String> {
    let window = format!("time >= '{from}' AND time < '{to}'");
    let mut queries: Vec<String> = query::QUESTIONS
        .iter()
        .map(|question| {
            format!(
                "SELECT * FROM {}('{from}', '{to}') ORDER BY 1, 2, 3",
                question.name
            )
        })
        .collect();
    queries.extend([
        "SELECT count(*) FROM spans".to_owned(),
        "SELECT count(*) FROM logs".to_owned(),
        "SELECT service_name, count(*) FROM spans GROUP BY 1 ORDER BY 1".to_owned(),
        "SELECT endpoint, count(*), sum(duration_ms), min(duration_ms), max(duration_ms) \
             FROM spans GROUP BY 1 ORDER BY 1"
            .to_owned(),
        "SELECT span_kind, status_code, count(*) FROM spans GROUP BY 1, 2 ORDER BY 1, 2".to_owned(),
        "SELECT client_id, count(*) FROM spans WHERE client_id IS NOT NULL GROUP BY 1 \
             ORDER BY 1"
            .to_owned(),
        "SELECT endpoint, avg(duration_ms) FROM spans GROUP BY 1 ORDER BY 1".to_owned(),
        "SELECT count(DISTINCT trace_id) FROM spans".to_owned(),
        "SELECT endpoint, approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), \
             approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) FROM spans \
             GROUP BY 1 ORDER BY 1"
            .to_owned(),
        "SELECT approx_median(duration_ms) FROM spans".to_owned(),
        "SELECT sketch_percentile(s, 0.9), sketch_percentile(s, 0.5) FROM (SELECT endpoint, \
             percentile_sketch(duration_ms) AS s FROM spans GROUP BY 1)"
            .to_owned(),
        format!(
            "SELECT endpoint, sketch_percentile(latency, 0.95) FROM api_call_minutes('{from}', \
                 '{to}') GROUP BY 1 ORDER BY 1"
        ),
        "SELECT attributes['http.route'] AS route, count(*) FROM spans GROUP BY 1 ORDER BY 1"
            .to_owned(),
        "SELECT count(*) FROM spans WHERE attributes['http.request.method'] = 'POST'".to_owned(),
        "SELECT count(*) FROM spans WHERE attributes['http.request.method'] IN ('GET', 'PUT')"
            .to_owned(),
        "SELECT resource_attributes['service.name'] AS s, count(*) FROM spans GROUP BY 1 \
             ORDER BY 1"
            .to_owned(),
        format!("SELECT count(*) FROM spans WHERE time >= '{from}' AND time < '{mid}'"),
        format!(
            "SELECT date_trunc('minute', time) AS m, count(*) FROM spans WHERE {window} \
                 GROUP BY 1 ORDER BY 1"
        ),
        "SELECT endpoint, c, rank() OVER (ORDER BY c DESC, endpoint) FROM (SELECT endpoint, \
             count(*) AS c FROM spans GROUP BY 1) ORDER BY 3"
            .to_owned(),
        "SELECT endpoint, sum(count(*)) OVER (ORDER BY endpoint) FROM spans GROUP BY endpoint \
             ORDER BY 1"
            .to_owned(),
        format!(
            "SELECT m, c, lag(c) OVER (ORDER BY m) FROM (SELECT date_trunc('minute', time) \
                 AS m, count(*) AS c FROM spans WHERE {window} GROUP BY 1) ORDER BY 1"
        ),
        "SELECT s.endpoint, count(*) FROM spans s JOIN spans c ON c.trace_id = s.trace_id \
             AND c.parent_span_id = s.span_id WHERE s.span_kind = 'server' AND c.span_kind = \
             'client' GROUP BY 1 ORDER BY 1"
            .to_owned(),
        "SELECT count(*) FROM logs l JOIN spans s ON l.trace_id = s.trace_id AND l.span_id = \
             s.span_id"
            .to_owned(),
        "SELECT count(*) FROM spans WHERE trace_id IN (SELECT trace_id FROM logs)".to_owned(),
        "SELECT count(*) FROM spans s WHERE EXISTS (SELECT 1 FROM logs l WHERE l.trace_id = \
             s.trace_id)"
            .to_owned(),
        "SELECT count(*) FROM spans WHERE trace_id = (SELECT min(trace_id) FROM spans)".to_owned(),
        "WITH e AS (SELECT endpoint, count(*) AS c FROM spans GROUP BY 1) SELECT max(c), \
             min(c), count(*) FROM e"
            .to_owned(),
        "SELECT endpoint FROM spans GROUP BY 1 HAVING count(*) > 10 ORDER BY 1".to_owned(),
        "SELECT trace_id, span_id, duration_ms FROM spans ORDER BY duration_ms DESC, span_id \
             LIMIT 10"
            .to_owned(),
        "SELECT CASE WHEN duration_ms < 20 THEN 'fast' ELSE 'slow' END AS speed, count(*) \
             FROM spans GROUP BY 1 ORDER BY 1"
            .to_owned(),
        "SELECT upper(service_name), length(endpoint), count(*) FROM spans GROUP BY 1, 2 \
             ORDER BY 1, 2"
            .to_owned(),
        "SELECT service_name, endpoint, count(*) FROM spans GROUP BY ROLLUP(service_name, \
             endpoint) ORDER BY 1, 2"
            .to_owned(),
        "SELECT count(*) FROM spans WHERE parent_span_id IS NULL".to_owned(),
        "SELECT 'spans' AS t, count(*) FROM spans UNION ALL SELECT 'logs', count(*) FROM logs \
             ORDER BY 1"
            .to_owned(),
        "SELECT source, count(*) FROM api_calls GROUP BY 1 ORDER BY 1".to_owned(),
        "SELECT endpoint, client_id, count(*), sum(CAST(is_error AS INT)) FROM api_calls \
             GROUP BY 1, 2 ORDER BY 1, 2"
            .to_owned(),
        format!(
            "SELECT endpoint, count(*), sum(duration_ms) FROM api_calls WHERE {window} \
                 GROUP BY 1 ORDER BY 1"
        ),
        format!(
            "SELECT endpoint, sum(calls) FROM api_call_minutes('{from}', '{to}') GROUP BY 1 \
                 ORDER BY 1"
        ),
        "SELECT to_json(attributes) FROM spans ORDER BY span_id LIMIT 5".to_owned(),
        "SELECT severity_text, count(*) FROM logs GROUP BY 1 ORDER BY 1".to_owned(),
        "SELECT count(*) FROM logs WHERE body LIKE '%fail%'".to_owned(),
        "SELECT route_template('/v1/orders/' || service_name) AS r, count(*) FROM spans GROUP \
             BY 1 ORDER BY 1"
            .to_owned(),
        "SELECT route_shape(endpoint), api_version(attributes['http.route']), count(*) FROM \
             spans GROUP BY 1, 2 ORDER BY 1, 2"
            .to_owned(),
        "SELECT min(time), max(time), count(*) FROM spans".to_owned(),
    ]);
    queries
}

#[test]
fn a_cluster_answers_as_one_node_over_the_same_bucket_and_holds_the_guards() {
    let s3 = S3::start();
    s3.create_bucket("telemetry");
    let store = "s3://telemetry/apiscope";
    let openapi = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/openapi.yaml"
    );
    let collector_dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let front_dir = tempfile::tempdir().unwrap();
    // Two collectors write the bucket; the first one also answers as a node alone.
    let collector =
        Daemon::start_command(s3.serve(collector_dir.path(), store, &["--openapi", openapi]));
    let other = Daemon::start_command(s3.serve(other_dir.path(), store, &[]));

    // The fleet to one, and a few thousand spans more two hours back to the other, so that
    // the tables hold several files from each.
    let fleet = Fleet::new();
    fleet.send(&collector);
    let fleet_spans = collector.count("SELECT count(*) FROM spans");
    let loadgen = Command::new(binary())
        .args(["loadgen", "--endpoint", &other.otlp_http_endpoint()])
        .args([
            "--rate", "0", "--spans", "6000", "--batch", "200", "--ago", "2h",
        ])
        .output()
        .unwrap();
    assert!(loadgen.status.success(), "{loadgen:?}");
    // Each collector counts what it holds and what both committed: once they agree, twice
    // a second apart, each has committed all it holds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut agreed = None;
    let spans = loop {
        let sql = "SELECT count(*) FROM spans";
        let (one, two) = (collector.count(sql), other.count(sql));
        if one == two && agreed == Some(one) {
            break one;
        }
        agreed = (one == two).then_some(one);
        assert!(
            Instant::now() < deadline,
            "the collectors see {one} and {two} spans"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(spans >= fleet_spans + 6000, "{spans}");

    let mut cluster = Cluster::start(&s3, store, 2);
    let front = Daemon::start_command(s3.serve(
        front_dir.path(),
        store,
        &[
            "--openapi",
            openapi,
            "--cluster",
            &cluster.url,
            // Room for a query to outlive an executor's loss (see `an_executor_lost`).
            "--query-timeout",
            "120s",
        ],
    ));
    // Everything the collector holds is committed to the bucket.
    assert_eq!(
        front.wait_for_count("SELECT count(*) FROM spans", spans),
        spans,
        "the cluster sees the committed spans"
    );

    let (from, mid, to) = (
        rfc3339(fleet.start_s - 3 * 3600),
        rfc3339(fleet.start_s),
        rfc3339(fleet.end_s() + 60),
    );
    let queries = corpus(&from, &to, &mid);
    assert!(
        queries.len() >= 40 + query::QUESTIONS.len(),
        "{}",
        queries.len()
    );
    let jobs_before = cluster.scheduler.count("Job finished successfully");
    for sql in &queries {
        let (expected_status, expected) = collector.try_query(sql);
        let (status, answer) = front.try_query(sql);
        assert_eq!(
            (status, expected_status),
            (200, 200),
            "{sql}\none node: {expected}\ncluster: {answer}"
        );
        // A question's own order may leave ties, which either side may give in any order.
        let rows = |answer: &Value| {
            let mut rows = answer["rows"].as_array().cloned().unwrap_or_default();
            if sql.contains("SELECT * FROM") {
                rows.sort_by_key(|row| row.to_string());
            }
            Value::Array(rows)
        };
        assert!(
            same(&rows(&answer), &rows(&expected)),
            "{sql}\none node: {}\ncluster: {}",
            expected["rows"],
            answer["rows"]
        );
        assert_eq!(answer["columns"], expected["columns"], "{sql}");
    }
    // The queries ran on the cluster, on both executors.
    let jobs = cluster.scheduler.count("Job finished successfully") - jobs_before;
    assert!(jobs >= 40, "{jobs} jobs for {} queries", queries.len());
    for (_, work_dir) in &cluster.executors {
        let jobs = std::fs::read_dir(work_dir.path()).unwrap().count();
        assert!(jobs > 0, "an executor ran no task");
    }
    cluster.metrics_count_the_work();
    // PostgreSQL clients are answered by the cluster too.
    // (A question whose window the rollups answer whole is answered by the front-end.)
    let window = format!("time >= '{from}' AND time < '{to}'");
    let sql = format!("SELECT endpoint, count(*) FROM spans WHERE {window} GROUP BY 1 ORDER BY 1");
    let expected: Vec<(String, i64)> = collector
        .rows(&sql)
        .iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_owned(),
                row[1].as_i64().unwrap(),
            )
        })
        .collect();
    let submitted = cluster.scheduler.count("Job submitted");
    let answered: Vec<(String, i64)> = crate::support::pg::runtime().block_on(async {
        let client = crate::support::pg::connect(&front, None).await.unwrap();
        let rows = client.query(sql.as_str(), &[]).await.unwrap();
        rows.iter().map(|row| (row.get(0), row.get(1))).collect()
    });
    assert_eq!(answered, expected);
    cluster.scheduler.wait_for("Job submitted", submitted + 1);

    // A statement that reads no stored file is answered by the front-end itself.
    let submitted = cluster.scheduler.count("Job submitted");
    assert_eq!(front.count("SELECT 1 + 1"), 2);
    assert_eq!(cluster.scheduler.count("Job submitted"), submitted);

    guards_hold(&s3, store, &cluster);
    an_executor_lost(&collector, &front, &mut cluster);
}

/// An executor killed while a query runs: the query is answered right (the scheduler fails
/// the job, and the front-end runs it again), or refused with a reason; the next query is
/// answered right by the executor left; nothing hangs.
fn an_executor_lost(collector: &Daemon, front: &Daemon, cluster: &mut Cluster) {
    // Shuffled twice (the join, the aggregation): seconds on two executors.
    let sql = "SELECT a.endpoint, count(*) AS pairs, sum(b.duration_ns % 1000) AS total \
        FROM spans a JOIN spans b ON a.service_name = b.service_name AND a.span_kind = b.span_kind \
        WHERE b.duration_ns % 3 = 0 GROUP BY a.endpoint ORDER BY a.endpoint";
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(150))
        .build()
        .unwrap();
    let ask = |daemon: &Daemon| -> (u16, Value) {
        let response = client
            .post(format!("{}/api/v1/query", daemon.query_url()))
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .expect("the daemon answers");
        (response.status().as_u16(), response.json().unwrap())
    };
    let (status, expected) = ask(collector);
    assert_eq!(status, 200, "{expected}");
    let expected = expected["rows"].clone();
    assert!(expected.as_array().unwrap().len() > 3, "{expected}");

    let submitted = cluster.scheduler.count("Job submitted");
    let tasks_done = || {
        Scrape::at(&cluster.metrics.0)
            .get_or_zero("apiscope_cluster_tasks_total", "outcome=succeeded")
    };
    let done_before = tasks_done();
    let (status, answer) = std::thread::scope(|scope| {
        let asked = scope.spawn(|| ask(front));
        // Once the job's first tasks have written their output (on both executors: the scan
        // is cut into more tasks than one executor runs at once), with more to come.
        cluster.scheduler.wait_for("Job submitted", submitted + 1);
        let deadline = Instant::now() + Duration::from_secs(60);
        while tasks_done() == done_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (victim, _) = &mut cluster.executors[1];
        victim.child.kill().unwrap();
        victim.child.wait().unwrap();
        asked.join().unwrap()
    });
    if status == 200 {
        assert_eq!(
            answer["rows"], expected,
            "the answer of a query that lost an executor"
        );
    } else {
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("executor") && detail.contains("again"),
            "{status}: {answer}"
        );
    }
    // The executor was lost while the query ran (not after it had been answered), and the
    // scheduler knows it (at the latest when its heartbeats are 15 s late).
    let deadline = Instant::now() + Duration::from_secs(30);
    let scheduler = loop {
        let scheduler = Scrape::at(&cluster.metrics.0);
        if scheduler.get("apiscope_cluster_executors", "") == 1.0 || Instant::now() > deadline {
            break scheduler;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(scheduler.get("apiscope_cluster_executors", ""), 1.0);
    assert!(scheduler.get("apiscope_cluster_executors_lost_total", "") >= 1.0);
    assert!(scheduler.get("apiscope_cluster_jobs_total", "outcome=executor_lost") >= 1.0);
    // The executor left answers the next query, right.
    let (status, answer) = ask(front);
    assert_eq!((status, &answer["rows"]), (200, &expected), "{answer}");
}

/// Read-only, result rows and time are held by a front-end over the cluster; a query over
/// its time is cancelled on the executors too.
fn guards_hold(s3: &S3, store: &str, cluster: &Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let guarded = Daemon::start_command(s3.serve(
        dir.path(),
        store,
        &[
            "--cluster",
            &cluster.url,
            "--query-timeout",
            "3s",
            "--max-result-rows",
            "100",
        ],
    ));
    let submitted = cluster.scheduler.count("Job submitted");
    crate::guards::refuses_all(&guarded, &crate::guards::refusal_corpus(dir.path()));
    assert_eq!(
        cluster.scheduler.count("Job submitted"),
        submitted,
        "a refused statement reached the cluster"
    );

    let (status, body) = guarded.try_query("SELECT trace_id, span_id FROM spans");
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("max_result_rows"),
        "{body}"
    );

    let started = Instant::now();
    let (status, body) = guarded.try_query(crate::guards::SLOW);
    assert!((400..600).contains(&status), "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("query_timeout"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // Cancelled on the executors: within a few seconds they use next to no CPU.
    let executors: Vec<u32> = cluster
        .executors
        .iter()
        .map(|(e, _)| e.child.id())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_seconds(&executors);
    std::thread::sleep(Duration::from_secs(3));
    let busy = cpu_seconds(&executors) - before;
    assert!(
        busy < 1.0,
        "the executors used {busy:.2} CPU-seconds in 3 s after the cancel"
    );
    // And the cluster answers the next query.
    assert!(guarded.count("SELECT count(*) FROM spans WHERE span_kind = 'server'") > 0);
}

/// CPU time used by the processes `pids` so far, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            // The fields after the command name, which is in parentheses.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            let (user, system): (f64, f64) =
                (fields[11].parse().unwrap(), fields[12].parse().unwrap());
            (user + system) / ticks
        })
        .sum()
}

#[test]
fn a_cluster_role_listens_off_loopback_only_when_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap();
    for args in [
        vec!["scheduler", "--bind", "0.0.0.0:0", "--store", store],
        vec![
            "executor",
            "--scheduler",
            "df://127.0.0.1:1",
            "--bind",
            "0.0.0.0:0",
            "--store",
            store,
        ],
    ] {
        let output = Command::new(binary()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started");
        assert!(
            stderr.contains("off loopback") && stderr.contains("--insecure-no-auth"),
            "{args:?}: {stderr}"
        );
    }
}
