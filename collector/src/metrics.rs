//! What the collector reports about itself, through the `metrics` facade: the daemon
//! installs a Prometheus recorder and serves it on `/metrics`; without one (tests, the
//! CLI) these calls do nothing.
//!
//! Names follow the OpenTelemetry Collector's own metrics (`otelcol_receiver_accepted_spans`
//! becomes `apiscope_receiver_accepted_spans_total`).

use std::time::Instant;

use crate::Error;

/// What a receiver takes in: the metric names' item word and the `receiver` label.
#[derive(Debug, Clone, Copy)]
pub struct Items {
    /// `spans`, `log_records` or `requests`.
    pub name: &'static str,
    /// `otlp` or `requests`.
    pub receiver: &'static str,
}

/// Spans over OTLP.
pub const SPANS: Items = Items {
    name: "spans",
    receiver: "otlp",
};
/// Log records over OTLP.
pub const LOG_RECORDS: Items = Items {
    name: "log_records",
    receiver: "otlp",
};
/// Request-log lines.
pub const REQUESTS: Items = Items {
    name: "requests",
    receiver: "requests",
};

/// Records one receiver request, and logs it when refused: `items` it held (0 when it did
/// not decode) and what became of them. `Ok(rejected)` means stored but for `rejected` invalid items; a
/// retryable error counts the items as refused (the client sends them again), any other
/// as failed.
pub(crate) fn received(
    items: Items,
    transport: &'static str,
    started: Instant,
    count: u64,
    result: Result<u64, &Error>,
) {
    let labels = [("receiver", items.receiver), ("transport", transport)];
    let (outcome, accepted, refused, failed) = match result {
        Ok(rejected) => ("accepted", count.saturating_sub(rejected), 0, rejected),
        Err(error) if error.retry_after().is_some() => ("refused", 0, count, 0),
        Err(_) => ("failed", 0, 0, count),
    };
    if let Err(error) = result {
        // One line per refused request, with its reason.
        tracing::warn!(
            receiver = items.receiver,
            transport,
            signal = items.name,
            items = count,
            retryable = error.retry_after().is_some(),
            reason = %error,
            "request refused"
        );
    }
    for (what, value) in [
        ("accepted", accepted),
        ("refused", refused),
        ("failed", failed),
    ] {
        metrics::counter!(
            format!("apiscope_receiver_{what}_{}_total", items.name),
            &labels
        )
        .increment(value);
    }
    metrics::counter!(
        "apiscope_receiver_exports_total",
        "receiver" => items.receiver,
        "transport" => transport,
        "signal" => items.name,
        "outcome" => outcome
    )
    .increment(1);
    metrics::histogram!(
        "apiscope_receiver_request_duration_seconds",
        "receiver" => items.receiver,
        "transport" => transport,
        "signal" => items.name
    )
    .record(started.elapsed().as_secs_f64());
}
