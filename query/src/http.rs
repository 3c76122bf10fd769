//! SQL over HTTP: `POST /api/v1/query`.
//!
//! The body is `{"sql": "..."}` (or the SQL itself as `text/plain` or `application/sql`).
//! The answer is JSON by default and an Arrow IPC stream when the `Accept` header asks for
//! `application/vnd.apache.arrow.stream`. Errors are `application/problem+json`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::output::QueryOutput;
use crate::output::to_json;

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// The query API's routes.
pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/api/v1/query", post(query))
        .with_state(engine)
}

#[derive(Deserialize)]
struct QueryRequest {
    sql: String,
}

async fn query(State(engine): State<Engine>, headers: HeaderMap, body: Bytes) -> Response {
    let answered = async {
        let sql = sql_of(&headers, &body)?;
        let output = engine.query(&sql).await?;
        respond(&headers, &output)
    }
    .await;
    match answered {
        Ok(response) => response,
        Err(error) => problem(&error),
    }
}

fn sql_of(headers: &HeaderMap, body: &[u8]) -> Result<String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let sql = match media_type {
        "text/plain" | "application/sql" => String::from_utf8(body.to_vec())
            .map_err(|_| Error::BadRequest("the SQL must be UTF-8 text".into()))?,
        _ => {
            let request: QueryRequest = serde_json::from_slice(body).map_err(|error| {
                Error::BadRequest(format!(
                    "the body must be JSON like {{\"sql\": \"SELECT ...\"}}: {error}"
                ))
            })?;
            request.sql
        }
    };
    if sql.trim().is_empty() {
        return Err(Error::BadRequest("the SQL is empty".into()));
    }
    Ok(sql)
}

fn respond(headers: &HeaderMap, output: &QueryOutput) -> Result<Response> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains(ARROW_STREAM) {
        let mut bytes = Vec::new();
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &output.schema)
            .map_err(|error| Error::Internal(error.to_string()))?;
        for batch in &output.batches {
            writer
                .write(batch)
                .map_err(|error| Error::Internal(error.to_string()))?;
        }
        writer
            .finish()
            .map_err(|error| Error::Internal(error.to_string()))?;
        drop(writer);
        return Ok(([(header::CONTENT_TYPE, ARROW_STREAM)], bytes).into_response());
    }
    let body = to_json(output)?;
    Ok(axum::Json(body).into_response())
}

/// An RFC 9457 problem document: `status` with its `title` and `detail`.
pub fn problem_document(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// An RFC 9457 problem document for `error`.
pub fn problem(error: &Error) -> Response {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::warn!(%error, "query failed");
    }
    let mut response = problem_document(status, error.title(), &error.to_string());
    if matches!(error, Error::Busy(_)) {
        let retry = axum::http::HeaderValue::from_static("1");
        response.headers_mut().insert(header::RETRY_AFTER, retry);
    }
    response
}
