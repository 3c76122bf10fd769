//! End-to-end tests: the real `apiscope` binary on free loopback ports, fed by real
//! OpenTelemetry exporters (Rust and Python SDKs) and hand-written OTLP/JSON, queried over
//! its HTTP API, the PostgreSQL protocol (psql, tokio-postgres, psycopg), its Grafana
//! dashboards' queries and its CLI. Expected answers are computed here from what was sent.

mod abuse;
mod bad_input;
mod budgets;
mod cli;
mod cluster;
mod compose;
mod crash;
mod dashboards;
mod guards;
mod import;
mod layout;
mod limits;
mod metrics;
mod openapi;
mod otlp_json;
mod payloads;
mod pg;
mod python_sdk;
mod questions;
mod request_logs;
mod restart;
mod rust_sdk;
mod security;
mod store;
mod support;
mod traces;

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the epoch.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}
