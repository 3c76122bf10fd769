//! The query guards on the PostgreSQL protocol, where rows stream to the client as they are
//! produced: a place among the queries running at once, held until the last row is sent,
//! and the time and row limits checked on every row.
//!
//! Connections run on the daemon's main runtime; what a statement computes runs on the query
//! runtime, as it does for HTTP. A query that computes for seconds without yielding (a cross
//! join) then holds query threads only, never a connection: other clients are still
//! answered or told the engine is busy, and its time limit fires on time.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion_postgres::pgwire;
use futures::Stream;
use pgwire::api::results::{Response, SendableRowStream};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};

use super::Running;
use super::errors::{from_library, statement_error};
use crate::engine::running::Admission;
use crate::engine::{Engine, timed_out, too_many_rows};
use crate::error::Error;

/// One statement's guards, shared by the responses it produces.
pub(super) struct Guard {
    permit: Arc<(Admission, Option<Running>)>,
    deadline: Instant,
    runtime: Handle,
}

impl Guard {
    /// Takes a place among the running queries, or refuses as busy.
    /// `running` marks the connection busy for as long as the statement's rows are sent.
    pub(super) fn admit(engine: &Engine, running: Option<Running>) -> PgWireResult<Self> {
        let permit = engine
            .admit(engine.shared_pool())
            .map_err(|error| statement_error(&error))?;
        let runtime = engine.runtime().map_err(|error| statement_error(&error))?;
        let limits = engine.limits();
        Ok(Self {
            permit: Arc::new((permit, running)),
            deadline: Instant::now() + limits.timeout,
            runtime,
        })
    }

    /// Runs `work` (planning, and the start of execution) within the time limit. It borrows
    /// the connection, so it is polled here, but inside the query runtime: the tasks
    /// DataFusion spawns for the plan's partitions start there.
    pub(super) async fn run<T>(
        &self,
        engine: &Engine,
        work: impl Future<Output = PgWireResult<T>>,
    ) -> PgWireResult<T> {
        use futures::FutureExt;
        let work = OnRuntime {
            runtime: &self.runtime,
            work: std::pin::pin!(work),
        };
        // A panic in planning is a bug, answered as one; the connection goes on.
        let work = std::panic::AssertUnwindSafe(work).catch_unwind();
        tokio::select! {
            waited = tokio::time::timeout_at(self.deadline, work) => match waited {
                Ok(Ok(answer)) => answer.map_err(from_library),
                Ok(Err(panic)) => Err(statement_error(&Error::from_panic(panic))),
                Err(_) => Err(statement_error(&timed_out(engine.limits()))),
            },
            reason = self.permit.0.cancelled() => {
                Err(statement_error(&Error::ResourcesExhausted(reason)))
            }
        }
    }

    /// `response` with its rows checked against the limits.
    pub(super) fn rows(&self, engine: &Engine, response: Response) -> Response {
        let Response::Query(mut query) = response else {
            return response;
        };
        let mut rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
        // The rows are computed by a task on the query runtime and handed over a short
        // queue; the connection only sends them.
        let (sender, received) = mpsc::channel(ROWS_IN_FLIGHT);
        let producer = self.runtime.spawn(async move {
            use futures::{FutureExt, StreamExt};
            let sending = std::panic::AssertUnwindSafe(async {
                while let Some(row) = rows.next().await {
                    if sender.send(row.map_err(from_library)).await.is_err() {
                        break;
                    }
                }
            });
            // A panic while encoding rows is a bug; the client is told, rather than given
            // the rows before it as if they were the whole answer.
            if let Err(panic) = sending.catch_unwind().await {
                let failed = Error::from_panic(panic);
                let _ = sender.send(Err(statement_error(&failed))).await;
            }
        });
        query.data_rows = Box::pin(Rows {
            received,
            producer: producer.abort_handle(),
            deadline: Box::pin(tokio::time::sleep_until(self.deadline)),
            sent: 0,
            limits: engine.limits().clone(),
            done: false,
            cancelled: Box::pin(self.permit.0.cancelled()),
            _permit: self.permit.clone(),
        }) as SendableRowStream;
        Response::Query(query)
    }
}

/// Rows computed ahead of the client.
const ROWS_IN_FLIGHT: usize = 256;

/// A future polled with the query runtime entered, so that what it spawns runs there.
struct OnRuntime<'a, F> {
    runtime: &'a Handle,
    work: Pin<&'a mut F>,
}

impl<F: Future> Future for OnRuntime<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _entered = self.runtime.enter();
        self.work.as_mut().poll(cx)
    }
}

/// The rows a producer task computes, checked against the limits as they are sent. The
/// producer stops when the rows are refused or dropped (the client went away).
struct Rows {
    received: mpsc::Receiver<PgWireResult<DataRow>>,
    producer: AbortHandle,
    deadline: Pin<Box<Sleep>>,
    sent: usize,
    limits: crate::engine::QueryLimits,
    done: bool,
    /// Completes when the daemon cancels the statement for its memory ceiling.
    cancelled: Pin<Box<dyn Future<Output = String> + Send>>,
    _permit: Arc<(Admission, Option<Running>)>,
}

impl Stream for Rows {
    type Item = PgWireResult<DataRow>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.stop();
            return Poll::Ready(Some(Err(statement_error(&timed_out(&self.limits)))));
        }
        if let Poll::Ready(reason) = self.cancelled.as_mut().poll(cx) {
            self.stop();
            let error = Error::ResourcesExhausted(reason);
            return Poll::Ready(Some(Err(statement_error(&error))));
        }
        match self.received.poll_recv(cx) {
            Poll::Ready(Some(Ok(row))) => {
                self.sent += 1;
                if self.sent > self.limits.max_rows {
                    self.stop();
                    let error = too_many_rows(&self.limits);
                    return Poll::Ready(Some(Err(statement_error(&error))));
                }
                Poll::Ready(Some(Ok(row)))
            }
            other => other,
        }
    }
}

impl Rows {
    fn stop(&mut self) {
        self.done = true;
        self.producer.abort();
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        self.producer.abort();
    }
}
