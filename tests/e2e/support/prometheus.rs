//! `/metrics` as Prometheus' own Python parser reads it.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::daemon::{Daemon, http};
use crate::support::python::{here, python};

/// The samples of one scrape, by name and sorted labels.
pub(crate) struct Scrape(pub(crate) BTreeMap<(String, String), f64>);

impl Scrape {
    pub(crate) fn of(daemon: &Daemon) -> Scrape {
        Scrape::at(&format!("{}/metrics", daemon.query_url()))
    }

    /// The scrape of `url`.
    pub(crate) fn at(url: &str) -> Scrape {
        let response = http().get(url).send().unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = response.text().unwrap();
        let mut parser = Command::new(python())
            .arg(here().join("prometheus_parse.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        parser
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = parser.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "the Prometheus parser refused /metrics: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut samples = BTreeMap::new();
        for line in String::from_utf8(output.stdout).unwrap().lines() {
            let sample: Value = serde_json::from_str(line).unwrap();
            let labels: BTreeMap<String, String> =
                serde_json::from_value(sample["labels"].clone()).unwrap();
            let labels = labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let name = sample["name"].as_str().unwrap().to_owned();
            samples.insert((name, labels), sample["value"].as_f64().unwrap());
        }
        Scrape(samples)
    }

    /// The sample `name{labels}`, which must be in the scrape: a renamed or vanished series
    /// fails here rather than reading as 0.
    pub(crate) fn get(&self, name: &str, labels: &str) -> f64 {
        if let Some(value) = self.0.get(&(name.to_owned(), labels.to_owned())) {
            return *value;
        }
        let same_name: Vec<&str> = self
            .0
            .keys()
            .filter(|(n, _)| n == name)
            .map(|(_, l)| l.as_str())
            .collect();
        panic!("no series {name}{{{labels}}} in the scrape; with that name: {same_name:?}");
    }

    /// The sample `name{labels}`, or 0 when the scrape has none: for a counter that only
    /// appears once something has counted (a refusal that has not happened yet).
    pub(crate) fn get_or_zero(&self, name: &str, labels: &str) -> f64 {
        self.0
            .get(&(name.to_owned(), labels.to_owned()))
            .copied()
            .unwrap_or(0.0)
    }
}
