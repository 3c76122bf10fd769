//! What the collector reports about itself, through the `metrics` facade: the daemon
//! installs a Prometheus recorder and serves it on `/metrics`; without one (tests, the
//! CLI) these calls do nothing.
//!
//! Names follow the OpenTelemetry Collector's own metrics (`otelcol_receiver_accepted_spans`
//! becomes `apiscope_receiver_accepted_spans_total`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::Error;

/// Retryable refusals come in floods (every sender retries while the daemon is at a limit,
/// a full disk say): they are logged at most once per this interval, each line saying how
/// many went unlogged before it. The metrics count every one.
const FLOOD_LOG_EVERY: Duration = Duration::from_secs(10);

static RETRYABLE_LOG: Mutex<Throttle> = Mutex::new(Throttle::new());

/// A log line repeated in floods, kept to one per [`FLOOD_LOG_EVERY`]: when one was last
/// logged, and the occurrences not logged since.
#[derive(Debug)]
pub struct Throttle {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// Nothing logged yet.
    pub const fn new() -> Self {
        Self {
            last: None,
            unlogged: 0,
        }
    }

    /// Whether an occurrence at `now` is logged: with how many went unlogged before it.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < FLOOD_LOG_EVERY)
        {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

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
        // A line per request refused for good, with its reason; retryable ones throttled.
        let retryable = error.retry_after().is_some();
        let unlogged = if retryable {
            RETRYABLE_LOG
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .admit(Instant::now())
        } else {
            Some(0)
        };
        if let Some(unlogged) = unlogged {
            tracing::warn!(
                receiver = items.receiver,
                transport,
                signal = items.name,
                items = count,
                retryable,
                retryable_refusals_not_logged = unlogged,
                reason = %error,
                "request refused"
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_refusals_are_logged_once_an_interval_with_the_count_of_the_others() {
        let mut throttle = Throttle::new();
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(throttle.admit(at(0)), Some(0));
        assert_eq!(throttle.admit(at(1)), None);
        assert_eq!(throttle.admit(at(9)), None);
        assert_eq!(throttle.admit(at(10)), Some(2));
        assert_eq!(throttle.admit(at(11)), None);
        assert_eq!(throttle.admit(at(30)), Some(1));
    }
}
