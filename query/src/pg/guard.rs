//! The query guards on the PostgreSQL protocol, where rows stream to the client as they are
//! produced: a place among the queries running at once, held until the last row is sent,
//! and the time and row limits checked on every row.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion_postgres::pgwire;
use futures::Stream;
use pgwire::api::results::{Response, SendableRowStream};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use crate::engine::{Engine, humanize};
use crate::error::Error;

/// One statement's guards, shared by the responses it produces.
pub(super) struct Guard {
    permit: Arc<OwnedSemaphorePermit>,
    deadline: Instant,
    max_rows: usize,
}

impl Guard {
    /// Takes a place among the running queries, or refuses with SQLSTATE 53000.
    pub(super) fn admit(engine: &Engine) -> PgWireResult<Self> {
        let permit = engine
            .admit()
            .map_err(|error| user_error("53000", &error))?;
        let limits = engine.limits();
        Ok(Self {
            permit: Arc::new(permit),
            deadline: Instant::now() + limits.timeout,
            max_rows: limits.max_rows,
        })
    }

    /// Runs `work` (planning, and the start of execution) within the time limit.
    pub(super) async fn run<T>(
        &self,
        engine: &Engine,
        work: impl Future<Output = PgWireResult<T>>,
    ) -> PgWireResult<T> {
        match tokio::time::timeout_at(self.deadline, work).await {
            Ok(answer) => answer,
            Err(_) => Err(timed_out(engine)),
        }
    }

    /// `response` with its rows checked against the limits.
    pub(super) fn rows(&self, engine: &Engine, response: Response) -> Response {
        let Response::Query(mut query) = response else {
            return response;
        };
        let rows = std::mem::replace(&mut query.data_rows, Box::pin(futures::stream::empty()));
        query.data_rows = Box::pin(Rows {
            rows,
            deadline: Box::pin(tokio::time::sleep_until(self.deadline)),
            sent: 0,
            max_rows: self.max_rows,
            timed_out: timed_out(engine).to_string(),
            done: false,
            _permit: self.permit.clone(),
        }) as SendableRowStream;
        Response::Query(query)
    }
}

struct Rows {
    rows: SendableRowStream,
    deadline: Pin<Box<Sleep>>,
    sent: usize,
    max_rows: usize,
    timed_out: String,
    done: bool,
    _permit: Arc<OwnedSemaphorePermit>,
}

impl Stream for Rows {
    type Item = PgWireResult<DataRow>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.done = true;
            let error = Error::ResourcesExhausted(self.timed_out.clone());
            return Poll::Ready(Some(Err(user_error("57014", &error))));
        }
        match self.rows.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(row))) => {
                self.sent += 1;
                if self.sent > self.max_rows {
                    self.done = true;
                    let error = Error::ResourcesExhausted(format!(
                        "the result has more than {} rows (max_result_rows); add a LIMIT, or aggregate",
                        self.max_rows
                    ));
                    return Poll::Ready(Some(Err(user_error("54000", &error))));
                }
                Poll::Ready(Some(Ok(row)))
            }
            other => other,
        }
    }
}

fn timed_out(engine: &Engine) -> PgWireError {
    let error = Error::ResourcesExhausted(format!(
        "the query ran longer than {} (query_timeout)",
        humanize(engine.limits().timeout)
    ));
    user_error("57014", &error)
}

fn user_error(code: &str, error: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        error.to_string(),
    )))
}
