//! OTLP/HTTP receiver: `POST /v1/traces` and `POST /v1/logs`, protobuf or JSON, optionally
//! gzip-compressed; and request logs: `POST /api/v1/requests`, newline-delimited JSON.
//!
//! Responses follow the OTLP/HTTP specification: the export response (with partial success
//! when items were refused) in the request's encoding, or a `google.rpc.Status` naming the
//! problem with a 4xx status, or 503 with `Retry-After` when the client should retry.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use flate2::read::GzDecoder;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics;
use crate::signal::{Logs, Signal, Traces};
use crate::{Collector, Error, ROOM_PATIENCE, Result};

/// The OTLP/HTTP routes, served on the OTLP HTTP port.
pub fn router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/v1/traces", post(export::<Traces>))
        .route("/v1/logs", post(export::<Logs>))
        .route("/api/v1/requests", post(requests))
        .with_state(collector)
}

/// Reads, decodes and ingests one export request, and encodes the answer.
async fn export<S: Signal>(
    State(collector): State<Arc<Collector>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    // A request refused before its items are counted.
    let refuse = |format, error: Error| {
        metrics::received(S::ITEMS, "http", started, 0, Err(&error));
        error_response(format, &error)
    };
    let format = match Format::of(&headers) {
        Ok(format) => format,
        Err(error) => return refuse(Format::Protobuf, error),
    };
    let limit = collector.config().max_body_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => return refuse(format, Error::TooLarge { limit }),
    };
    let encoding = headers.get(header::CONTENT_ENCODING).cloned();
    collector.buffer().room(ROOM_PATIENCE).await;
    // Decompressing, decoding and converting to Arrow are CPU work: keep them off the
    // runtime's I/O threads.
    let handled = tokio::task::spawn_blocking(move || {
        let request = decompress(encoding.as_ref(), body, limit)
            .and_then(|payload| format.protobuf::<S::Request>(payload));
        match request {
            Ok(request) => Ok(S::export_counted(&collector, request, "http", started)),
            Err(error) => Err(error),
        }
    })
    .await;
    match handled {
        Ok(Ok(Ok(response))) => format.respond(StatusCode::OK, &response),
        Ok(Ok(Err(error))) => error_response(format, &error),
        Ok(Err(error)) => refuse(format, error),
        Err(failed) => refuse(format, Error::from_task(failed)),
    }
}

/// Ingests a request log: one JSON object a line. Answers `{"accepted", "rejected",
/// "errors"}` where each error names its line: 200 when anything was stored (or the body
/// held no lines), 400 when every line was refused; `{"error"}` with 413, 415 or 503 (and
/// `Retry-After`) otherwise.
async fn requests(
    State(collector): State<Arc<Collector>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    let known = [
        "",
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/json",
        "text/plain",
    ];
    let started = Instant::now();
    let refuse = |count: u64, error: Error| {
        metrics::received(metrics::REQUESTS, "http", started, count, Err(&error));
        json_error(&error)
    };
    if !known.contains(&media_type.to_ascii_lowercase().as_str()) {
        return refuse(0, Error::UnsupportedMediaType(content_type.to_owned()));
    }
    let limit = collector.config().max_body_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(_) => return refuse(0, Error::TooLarge { limit }),
    };
    let encoding = headers.get(header::CONTENT_ENCODING).cloned();
    collector.buffer().room(ROOM_PATIENCE).await;
    let handled = tokio::task::spawn_blocking(move || {
        let payload = decompress(encoding.as_ref(), body, limit).map_err(|error| (0, error))?;
        let lines = payload
            .split(|&b| b == b'\n')
            .filter(|line| !line.trim_ascii().is_empty())
            .count() as u64;
        collector
            .ingest_requests(payload)
            .map(|outcome| (lines, outcome))
            .map_err(|error| (lines, error))
    })
    .await;
    let outcome = match handled {
        Ok(Ok((lines, outcome))) => {
            let rejected = outcome.rejected.max(0) as u64;
            metrics::received(metrics::REQUESTS, "http", started, lines, Ok(rejected));
            outcome
        }
        Ok(Err((lines, error))) => return refuse(lines, error),
        Err(failed) => {
            return refuse(0, Error::from_task(failed));
        }
    };
    let status = if outcome.accepted == 0 && outcome.rejected > 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let answer = serde_json::json!({
        "accepted": outcome.accepted,
        "rejected": outcome.rejected,
        "errors": outcome.problems,
    });
    (status, axum::Json(answer)).into_response()
}

fn json_error(error: &Error) -> Response {
    let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = serde_json::json!({ "error": error.to_string() });
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(after) = error.retry_after() {
        let seconds = HeaderValue::from(after.as_secs().max(1));
        response.headers_mut().insert(header::RETRY_AFTER, seconds);
    }
    response
}

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn of(headers: &HeaderMap) -> Result<Format> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        match media_type.to_ascii_lowercase().as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
            "application/json" => Ok(Format::Json),
            _ => Err(Error::UnsupportedMediaType(content_type.to_owned())),
        }
    }

    /// The request in protobuf, as the ingest reads it: OTLP/JSON is read into `T` and
    /// encoded.
    fn protobuf<T: Message + DeserializeOwned + Default>(self, payload: Bytes) -> Result<Bytes> {
        match self {
            Format::Protobuf => Ok(payload),
            Format::Json => serde_json::from_slice::<T>(&payload)
                .map(|request| request.encode_to_vec().into())
                .map_err(|error| {
                    Error::InvalidInput(format!("invalid OTLP/JSON payload: {error}"))
                }),
        }
    }

    fn respond<T: Message + Serialize>(self, status: StatusCode, message: &T) -> Response {
        let (content_type, body) = match self {
            Format::Protobuf => ("application/x-protobuf", message.encode_to_vec()),
            Format::Json => ("application/json", json_body(message)),
        };
        (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
    }
}

/// The OTLP/JSON encoding of a response. The generated serializer writes the 64-bit
/// `rejected*` counts as numbers; proto3's JSON mapping (which OTLP follows) writes 64-bit
/// integers as strings, so they are rewritten.
fn json_body<T: Serialize>(message: &T) -> Vec<u8> {
    let mut value = serde_json::to_value(message).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        fields.retain(|_, field| !field.is_null());
    }
    if let Some(partial) = value
        .get_mut("partialSuccess")
        .and_then(|p| p.as_object_mut())
    {
        for (key, count) in partial.iter_mut() {
            if key.starts_with("rejected") && count.is_number() {
                *count = serde_json::Value::String(count.to_string());
            }
        }
    }
    // Serializing a JSON value to a Vec cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes.
fn decompress(encoding: Option<&HeaderValue>, body: Bytes, limit: usize) -> Result<Bytes> {
    let encoding = encoding.and_then(|v| v.to_str().ok()).unwrap_or("identity");
    match encoding.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(body),
        "gzip" | "x-gzip" => {
            let mut inflated = Vec::new();
            // Read one byte past the limit to tell "exactly at the limit" from "over it"
            // without ever holding more than that.
            let read = GzDecoder::new(body.as_ref())
                .take(limit as u64 + 1)
                .read_to_end(&mut inflated);
            if let Err(error) = read {
                return Err(Error::InvalidInput(format!("invalid gzip body: {error}")));
            }
            if inflated.len() > limit {
                return Err(Error::TooLarge { limit });
            }
            Ok(inflated.into())
        }
        other => Err(Error::UnsupportedEncoding(other.to_owned())),
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, Message, Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn error_response(format: Format, error: &Error) -> Response {
    let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = RpcStatus {
        code: error.grpc_code() as i32,
        message: error.to_string(),
    };
    let mut response = format.respond(status, &body);
    if let Some(after) = error.retry_after() {
        let seconds = HeaderValue::from(after.as_secs().max(1));
        response.headers_mut().insert(header::RETRY_AFTER, seconds);
    }
    response
}
