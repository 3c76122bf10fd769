//! Starting the real `apiscope` binary on free loopback ports, and talking to it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `apiscope serve`, killed when dropped.
pub(crate) struct Daemon {
    child: Option<Child>,
    pub(crate) grpc_addr: String,
    pub(crate) otlp_http_addr: String,
    pub(crate) http_addr: String,
    pub(crate) pg_addr: String,
    /// Sent as `Authorization: Bearer` by [`Daemon::try_query`] and what builds on it.
    pub(crate) token: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
    /// Reads the daemon's stderr into `log`; done once the daemon has exited.
    reader: Option<std::thread::JoinHandle<()>>,
}

pub(crate) fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_apiscope")
}

/// `apiscope serve` over `data_dir`, every listener on a free loopback port.
pub(crate) fn serve(data_dir: &Path) -> Command {
    let mut command = Command::new(binary());
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--otlp-grpc-addr", "127.0.0.1:0"])
        .args(["--otlp-http-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .args(["--pg-addr", "127.0.0.1:0"]);
    command
}

impl Daemon {
    /// Starts a daemon over `data_dir` with a short flush interval.
    pub(crate) fn start(data_dir: &Path) -> Daemon {
        Daemon::start_with(data_dir, &[])
    }

    /// Starts a daemon over `data_dir` with extra flags.
    pub(crate) fn start_with(data_dir: &Path, extra: &[&str]) -> Daemon {
        let mut command = serve(data_dir);
        command.args(extra);
        Daemon::start_command(command)
    }

    /// Starts `command`, an `apiscope serve` with its listeners on free ports.
    pub(crate) fn start_command(command: Command) -> Daemon {
        Daemon::start_reading(command, true)
    }

    /// Starts `command`, and closes its stderr after the ready line, as a supervisor that
    /// stops reading does: the daemon's log then goes nowhere.
    pub(crate) fn start_unread(command: Command) -> Daemon {
        Daemon::start_reading(command, false)
    }

    fn start_reading(mut command: Command, read_on: bool) -> Daemon {
        // The tests' HTTP clients, and the OTLP exporters', leave the TLS provider to the
        // program, so that a test run alone builds them as well as one run with the others.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut child = command
            .env("APISCOPE_FLUSH_INTERVAL", "1s")
            .env("APISCOPE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start apiscope");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let ready = line.contains("apiscope ready");
                if ready {
                    let _ = ready_tx.send(line.clone());
                }
                lines.lock().unwrap().push(line);
                if ready && !read_on {
                    break;
                }
            }
        });
        let ready = match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "apiscope did not become ready:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        let field = |name: &str| -> String {
            let start = ready.find(&format!(" {name}=")).unwrap() + name.len() + 2;
            ready[start..].split_whitespace().next().unwrap().to_owned()
        };
        Daemon {
            grpc_addr: field("otlp_grpc_addr"),
            otlp_http_addr: field("otlp_http_addr"),
            http_addr: field("http_addr"),
            pg_addr: field("pg_addr"),
            token: None,
            child: Some(child),
            log,
            reader: Some(reader),
        }
    }

    pub(crate) fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub(crate) fn otlp_http_endpoint(&self) -> String {
        format!("http://{}", self.otlp_http_addr)
    }

    pub(crate) fn query_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Runs `sql` over the HTTP API; returns the status and the JSON body.
    pub(crate) fn try_query(&self, sql: &str) -> (u16, Value) {
        let mut request = http().post(format!("{}/api/v1/query", self.query_url()));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .expect("query API reachable");
        let status = response.status().as_u16();
        let body: Value = response.json().expect("JSON answer");
        (status, body)
    }

    /// The rows of `sql`, which must succeed.
    pub(crate) fn rows(&self, sql: &str) -> Vec<Vec<Value>> {
        let (status, body) = self.try_query(sql);
        assert_eq!(status, 200, "{sql}: {body}");
        body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap().clone())
            .collect()
    }

    /// The rows of `sql`, which must succeed, each as a map from column name to value.
    pub(crate) fn records(&self, sql: &str) -> Vec<std::collections::BTreeMap<String, Value>> {
        let (status, body) = self.try_query(sql);
        assert_eq!(status, 200, "{sql}: {body}");
        let names: Vec<String> = body["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let cells = row.as_array().unwrap().iter().cloned();
                names.iter().cloned().zip(cells).collect()
            })
            .collect()
    }

    /// The single number `sql` answers.
    pub(crate) fn count(&self, sql: &str) -> i64 {
        self.rows(sql)[0][0].as_i64().unwrap()
    }

    /// Waits (bounded) until `sql` answers `expected`; returns the last answer.
    pub(crate) fn wait_for_count(&self, sql: &str, expected: i64) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = self.count(sql);
            if seen == expected || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the log.
    pub(crate) fn stop(mut self) -> Vec<String> {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = child.try_wait().unwrap() {
                assert!(
                    exit.success(),
                    "apiscope exited with {exit}:\n{}",
                    self.log().join("\n")
                );
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "apiscope did not stop within 30s:\n{}",
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The reader ends at the end of stderr, which closes when the daemon exits.
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.log()
    }

    /// The daemon's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The peak resident memory of the daemon so far, in bytes (Linux `VmHWM`).
    pub(crate) fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// SIGKILL: no chance to flush or sync anything.
    pub(crate) fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn http() -> reqwest::blocking::Client {
    // reqwest leaves the choice of TLS implementation to the program, as apiscope does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The rows of `sql` as (text, number) pairs, for two-column answers.
pub(crate) fn pairs(rows: &[Vec<Value>]) -> Vec<(String, i64)> {
    rows.iter()
        .map(|row| {
            (
                row[0].as_str().unwrap_or("<null>").to_owned(),
                row[1].as_i64().unwrap(),
            )
        })
        .collect()
}
