//! An S3-compatible server on loopback for the tests: moto's server (`moto[server]`, pinned
//! with the Python clients), started by the test that needs it and stopped with it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server.
pub(crate) struct S3 {
    child: Child,
    pub(crate) endpoint: String,
}

impl S3 {
    /// Starts a server on a free loopback port and waits until it answers.
    pub(crate) fn start() -> S3 {
        let python = crate::support::python::python();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = python.with_file_name("moto_server");
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let s3 = S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let client = crate::support::daemon::http();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.get(&s3.endpoint).send().is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        s3
    }

    /// Creates the bucket `name`.
    pub(crate) fn create_bucket(&self, name: &str) {
        let response = crate::support::daemon::http()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{:?}", response.text());
    }

    /// The keys under `prefix` in `bucket`.
    pub(crate) fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let listing = crate::support::daemon::http()
            .get(format!(
                "{}/{bucket}?list-type=2&prefix={prefix}",
                self.endpoint
            ))
            .send()
            .unwrap()
            .text()
            .unwrap();
        listing
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    /// The server's address.
    pub(crate) fn addr(&self) -> std::net::SocketAddr {
        self.endpoint.trim_start_matches("http://").parse().unwrap()
    }

    /// The variables that point a daemon or the CLI at this server.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        self.env_via(&self.endpoint)
    }

    /// The variables that point a daemon or the CLI at this server through `endpoint`.
    pub(crate) fn env_via(&self, endpoint: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", endpoint.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }
}

impl S3 {
    /// `apiscope serve` over `data_dir` with its tables in `store` on this server, and
    /// `extra` flags.
    pub(crate) fn serve(&self, data_dir: &std::path::Path, store: &str, extra: &[&str]) -> Command {
        let mut command = crate::support::daemon::serve(data_dir);
        command.args(["--store", store]).args(extra);
        for (name, value) in self.env() {
            command.env(name, value);
        }
        command
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
