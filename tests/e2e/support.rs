//! What the end-to-end tests share: starting the daemon, the known fleet, requests written
//! by hand, the PostgreSQL and Python clients, and reading `/metrics`.

pub(crate) mod daemon;
pub(crate) mod fleet;
pub(crate) mod otlp;
pub(crate) mod pg;
pub(crate) mod prometheus;
pub(crate) mod proxy;
pub(crate) mod python;
pub(crate) mod s3;

/// `s` seconds since the epoch as RFC 3339 in UTC, to whole seconds: a time literal in SQL.
pub(crate) fn rfc3339(s: i64) -> String {
    chrono::DateTime::from_timestamp(s, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
