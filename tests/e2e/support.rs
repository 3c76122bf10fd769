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

/// Seconds since the epoch of a time as the HTTP API writes it.
pub(crate) fn seconds(value: &serde_json::Value) -> f64 {
    let text = value.as_str().unwrap();
    let time = chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|_| {
        chrono::DateTime::parse_from_rfc3339(&format!("{}Z", text.replace(' ', "T"))).unwrap()
    });
    time.timestamp_nanos_opt().unwrap() as f64 / 1e9
}
