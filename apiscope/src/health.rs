//! `GET /healthz` and `GET /readyz`, which every HTTP listener serves without credentials.
//!
//! Liveness says the process answers. Readiness says it takes data now: the write-ahead log
//! is replayed before any listener opens, and then the daemon is ready unless it is
//! draining for shutdown or ingest is paused because the disk is under `min_free_bytes`.
//! A load balancer or Kubernetes then sends exporters elsewhere while either lasts.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use collector::Collector;
use tokio_util::sync::CancellationToken;

/// What readiness depends on.
#[derive(Clone)]
struct Readiness {
    collector: Arc<Collector>,
    /// Cancelled when shutdown starts draining the listeners.
    draining: CancellationToken,
}

/// `/healthz` and `/readyz`.
pub(crate) fn router(collector: Arc<Collector>, draining: CancellationToken) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Readiness {
            collector,
            draining,
        })
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    let reason = if readiness.draining.is_cancelled() {
        Some("shutting down: draining requests".to_owned())
    } else {
        readiness
            .collector
            .not_accepting()
            .map(|error| error.to_string())
    };
    match reason {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn not_ready_while_draining() {
        let dir = tempfile::tempdir().unwrap();
        let (collector, _) = Collector::open(collector::Config::new(dir.path())).unwrap();
        let readiness = Readiness {
            collector: Arc::new(collector),
            draining: CancellationToken::new(),
        };
        let (status, text) = readyz(State(readiness.clone())).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "ready\n"));
        readiness.draining.cancel();
        let (status, text) = readyz(State(readiness)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("draining"), "{text}");
    }
}
