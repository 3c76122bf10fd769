//! Traces for Grafana's trace view and the terminal: the Jaeger query API and the Tempo API
//! on the query HTTP port, over the `spans` table.
//!
//! Every answer starts from SQL run through [`Engine::query`], so the query guards (time,
//! memory, rows, queries at once) and the query scope hold as for `/api/v1/query`.
//!
//! ```text
//! jaeger, tempo       the two wire formats and their routes
//!   ├─ traceql        the TraceQL subset Grafana's search builder writes, compiled to SQL
//!   └─ shape          a fetched trace made safe to draw: duplicates, orphans, cycles, cap
//! (this module)       the span model, fetching a trace by id, `/api/traces/{id}` (which
//!                     both answer), ids, times, durations, SQL literals
//! ```

mod jaeger;
mod shape;
mod tempo;
mod traceql;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, MapArray, RecordBatch,
    StringArray, StructArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::engine::Engine;
use crate::error::{Error, Result};

pub use jaeger::jaeger_json;
pub use shape::Shaped;

/// The Jaeger and Tempo routes, for the query HTTP port. A trace longer than the engine's
/// `max_trace_spans` is cut to its first spans by start time, with a warning on its root.
pub fn router(engine: Engine) -> Router {
    let max_spans = engine.limits().max_trace_spans.max(1);
    let state = Traces { engine, max_spans };
    jaeger::routes()
        .merge(tempo::routes())
        .route("/api/traces/{id}", get(trace_by_id))
        .with_state(state)
}

/// `GET /api/traces/{id}`: Jaeger's JSON, or Tempo's protobuf `Trace` for its data source,
/// which falls back to this path (asking for protobuf) when `/api/v2/traces` answers 404.
async fn trace_by_id(
    State(traces): State<Traces>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if tempo::wants_protobuf(&headers) {
        tempo::trace_answer(&traces, &id, &params, tempo::TraceForm::Trace).await
    } else {
        jaeger::trace_json(&traces, &id, &params).await
    }
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Traces {
    pub(crate) engine: Engine,
    /// Spans of one trace returned at most.
    pub(crate) max_spans: usize,
}

/// One stored span, as the trace views need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's id; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// Resource `service.name`.
    pub service_name: String,
    /// The span's name.
    pub name: String,
    /// `server`, `client`, `producer`, `consumer`, `internal` or `unspecified`.
    pub kind: String,
    /// `unset`, `ok` or `error`.
    pub status_code: String,
    /// The status message, when set.
    pub status_message: Option<String>,
    /// apiscope's error flag (status error, or an HTTP status that counts as an error).
    pub is_error: bool,
    /// Instrumentation scope name.
    pub scope_name: Option<String>,
    /// Start, ns since the epoch.
    pub start_ns: i64,
    /// Duration, ns.
    pub duration_ns: i64,
    /// Span attributes, values as text.
    pub attributes: Vec<(String, String)>,
    /// Resource attributes, values as text.
    pub resource: Vec<(String, String)>,
    /// Span events.
    pub events: Vec<Event>,
    /// Links to other spans (of this trace or others).
    pub links: Vec<Link>,
}

/// A span link.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    /// The linked span's trace, 32 hex digits.
    pub trace_id: String,
    /// The linked span, 16 hex digits.
    pub span_id: String,
    /// The link's attributes, values as text.
    pub attributes: Vec<(String, String)>,
}

/// A span event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// ns since the epoch.
    pub time_ns: i64,
    /// The event's name.
    pub name: String,
    /// Its attributes, values as text.
    pub attributes: Vec<(String, String)>,
}

/// The columns [`spans_of`] reads, in SQL.
pub(crate) const SPAN_COLUMNS: &str = "trace_id, span_id, parent_span_id, service_name, \
    span_name, span_kind, status_code, status_message, is_error, scope_name, \
    arrow_cast(time, 'Int64') AS start_ns, duration_ns, attributes, resource_attributes, events, links";

/// A trace id as stored: 32 lowercase hex digits. Shorter ids (Jaeger's and Zipkin's 64-bit
/// ids, 16 digits) are padded with zeros on the left, as OTLP stores them.
pub fn normalize_trace_id(id: &str) -> Result<String> {
    let id = id.trim();
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::BadRequest(format!(
            "`{}` is not a trace id: 1 to 32 hex digits (16 or 32 as sent)",
            id.chars().take(64).collect::<String>()
        )));
    }
    Ok(format!("{:0>32}", id.to_ascii_lowercase()))
}

/// A time given as seconds, milliseconds, microseconds or nanoseconds since the epoch, told
/// apart by magnitude (Grafana sends each, depending on the API and its version), in ns.
pub fn epoch_ns(value: i64) -> i64 {
    let magnitude = value.unsigned_abs();
    if magnitude < 100_000_000_000 {
        value.saturating_mul(1_000_000_000) // seconds until year 5138
    } else if magnitude < 100_000_000_000_000 {
        value.saturating_mul(1_000_000) // milliseconds
    } else if magnitude < 100_000_000_000_000_000 {
        value.saturating_mul(1_000) // microseconds
    } else {
        value
    }
}

/// Optional time bounds from two parameters, in any epoch unit (see [`epoch_ns`]).
pub(crate) fn bounds(
    params: &HashMap<String, String>,
    lo: &str,
    hi: &str,
) -> Result<(Option<i64>, Option<i64>)> {
    let read = |name: &str| -> Result<Option<i64>> {
        match given(params, name) {
            None => Ok(None),
            Some(value) => value
                .parse::<i64>()
                .map(|v| Some(epoch_ns(v)))
                .map_err(|_| {
                    Error::BadRequest(format!(
                        "`{name}` must be a time since the epoch (s, ms, µs or ns), not `{value}`"
                    ))
                }),
        }
    };
    Ok((read(lo)?, read(hi)?.map(|hi| hi.saturating_add(1))))
}

/// A Go duration (`1.2s`, `100ms`, `1h30m`, `250us`) in ns.
pub(crate) fn go_duration(text: &str) -> Result<i64> {
    let bad = || {
        Error::BadRequest(format!(
            "`{text}` is not a duration: a number and a unit (ns, us, µs, ms, s, m, h), like 100ms or 1.5s"
        ))
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_end].parse().map_err(|_| bad())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3_600e9,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(total as i64)
}

/// The first column of every row of `sql`, as text (nulls left out).
pub(crate) async fn first_column(engine: &Engine, sql: &str) -> Result<Vec<String>> {
    let output = engine.query(sql).await?;
    let mut values = Vec::new();
    for batch in &output.batches {
        let column = as_text(batch.column(0))?;
        values.extend(column.iter().flatten().map(str::to_owned));
    }
    Ok(values)
}

/// An error answer: `body` (in the API's own error format) with the status `status`, and
/// `Retry-After` when the query engine is busy. Server errors are logged.
pub(crate) fn failure(status: StatusCode, message: &str, body: impl IntoResponse) -> Response {
    if status.is_server_error() {
        tracing::warn!(%message, "trace query failed");
    }
    let mut response = (status, body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// The HTTP status answering `error`.
pub(crate) fn status_of(error: &Error) -> StatusCode {
    StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Traces a search returns when it names no `limit`, and the most it may ask for.
pub(crate) const SEARCH_LIMIT: usize = 20;
pub(crate) const SEARCH_LIMIT_MAX: usize = 1_000;

/// A request parameter, trimmed; `None` when absent or empty.
pub(crate) fn given<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// A positive count parameter, `default` when absent, at most `max`.
pub(crate) fn count(
    params: &HashMap<String, String>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize> {
    match given(params, name) {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .map(|n| n.min(max))
            .ok_or_else(|| {
                Error::BadRequest(format!("`{name}` must be a positive number, not `{text}`"))
            }),
    }
}

/// A search's range from `start`/`end` (any epoch unit), else the last hour.
pub(crate) fn search_range(params: &HashMap<String, String>) -> Result<(i64, i64)> {
    let (lo, hi) = bounds(params, "start", "end")?;
    let hi = hi.unwrap_or_else(|| now_ns() + 1);
    Ok((lo.unwrap_or(hi - HOUR_NS), hi))
}

/// Now, ns since the epoch.
pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// `text` as a SQL string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `time >= lo AND time < hi` in SQL for a range in ns; `TRUE` when both are open.
pub(crate) fn time_filter(lo: Option<i64>, hi: Option<i64>) -> String {
    let bound = |ns: i64| format!("arrow_cast({ns}, 'Timestamp(Nanosecond, Some(\"UTC\"))')");
    match (lo, hi) {
        (Some(lo), Some(hi)) => format!("time >= {} AND time < {}", bound(lo), bound(hi)),
        (Some(lo), None) => format!("time >= {}", bound(lo)),
        (None, Some(hi)) => format!("time < {}", bound(hi)),
        (None, None) => "TRUE".to_owned(),
    }
}

/// The spans of trace `id` (as [`normalize_trace_id`] gives it) starting in `lo..hi`, in
/// start order, at most `max_spans + 1` of them (one more tells that the trace was cut).
pub async fn fetch(
    engine: &Engine,
    id: &str,
    lo: Option<i64>,
    hi: Option<i64>,
    max_spans: usize,
) -> Result<Vec<Span>> {
    let sql = format!(
        "SELECT {SPAN_COLUMNS} FROM spans WHERE trace_id = {} AND {} ORDER BY time, span_id LIMIT {}",
        literal(id),
        time_filter(lo, hi),
        max_spans.saturating_add(1)
    );
    spans_of(&engine.query(&sql).await?.batches)
}

/// A trace fetched by id and made safe to draw; `None` when no span of it is stored.
pub async fn trace(
    engine: &Engine,
    id: &str,
    lo: Option<i64>,
    hi: Option<i64>,
    max_spans: usize,
) -> Result<Option<Shaped>> {
    let id = normalize_trace_id(id)?;
    let spans = if lo.is_none() && hi.is_none() {
        newest_first(engine, &id, max_spans).await?
    } else {
        fetch(engine, &id, lo, hi, max_spans).await?
    };
    if spans.is_empty() {
        return Ok(None);
    }
    Ok(Some(Shaped::new(spans, max_spans)))
}

pub(crate) const HOUR_NS: i64 = 3_600 * 1_000_000_000;

/// How far back each step of a lookup without time bounds reaches; the last step reads
/// everything older.
const LOOKBACK_STEPS_NS: [i64; 4] = [2 * HOUR_NS, 6 * HOUR_NS, 24 * HOUR_NS, 7 * 24 * HOUR_NS];

/// The spans of trace `id` with no time bounds given: the newest window first, then older
/// ones, until one holds the trace, so that the lookup of a recent trace reads recent hours
/// only, however long the retention. Spans starting up to an hour before the window that
/// holds the trace are included (read again when the trace starts in the window's first hour).
async fn newest_first(engine: &Engine, id: &str, max_spans: usize) -> Result<Vec<Span>> {
    let now = now_ns();
    let mut newer = None;
    for step in LOOKBACK_STEPS_NS
        .iter()
        .map(|step| Some(now - step))
        .chain([None])
    {
        let found = fetch(engine, id, step, newer, max_spans).await?;
        let earliest = found.iter().map(|span| span.start_ns).min();
        match (earliest, step) {
            (None, Some(older)) => newer = Some(older),
            (None, None) => return Ok(found),
            // The windows newer than this one hold none of the trace.
            (Some(earliest), Some(lo)) if earliest < lo + HOUR_NS => {
                return fetch(engine, id, Some(lo - HOUR_NS), newer, max_spans).await;
            }
            (Some(_), _) => return Ok(found),
        }
    }
    Ok(Vec::new())
}

/// The spans in `batches`, which hold the [`SPAN_COLUMNS`].
pub(crate) fn spans_of(batches: &[RecordBatch]) -> Result<Vec<Span>> {
    let mut spans = Vec::new();
    for batch in batches {
        let text = |name: &str| text_column(batch, name);
        let trace_id = text("trace_id")?;
        let span_id = text("span_id")?;
        let parent = text("parent_span_id")?;
        let service = text("service_name")?;
        let name = text("span_name")?;
        let kind = text("span_kind")?;
        let status = text("status_code")?;
        let message = text("status_message")?;
        let scope = text("scope_name")?;
        let is_error = column(batch, "is_error")?;
        let is_error = is_error
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| internal("is_error is not boolean"))?;
        let start = int_column(batch, "start_ns")?;
        let duration = int_column(batch, "duration_ns")?;
        let attributes = column(batch, "attributes")?;
        let resource = column(batch, "resource_attributes")?;
        let events = column(batch, "events")?;
        let links = column(batch, "links")?;
        for row in 0..batch.num_rows() {
            let optional = |array: &StringArray| {
                (!array.is_null(row) && !array.value(row).is_empty())
                    .then(|| array.value(row).to_owned())
            };
            spans.push(Span {
                trace_id: trace_id.value(row).to_owned(),
                span_id: span_id.value(row).to_owned(),
                parent_span_id: optional(&parent),
                service_name: service.value(row).to_owned(),
                name: name.value(row).to_owned(),
                kind: kind.value(row).to_owned(),
                status_code: status.value(row).to_owned(),
                status_message: optional(&message),
                is_error: is_error.value(row),
                scope_name: optional(&scope),
                start_ns: start.value(row),
                duration_ns: duration.value(row),
                attributes: map_pairs(attributes, row)?,
                resource: map_pairs(resource, row)?,
                events: events_of(events, row)?,
                links: links_of(links, row)?,
            });
        }
    }
    Ok(spans)
}

fn internal(what: &str) -> Error {
    Error::Internal(format!("reading spans: {what}"))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| internal(&format!("no column {name}")))
}

/// A text column as plain UTF-8 (dictionaries and views cast).
pub(crate) fn text_column(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    as_text(column(batch, name)?)
}

fn as_text(array: &ArrayRef) -> Result<StringArray> {
    let text = cast(array, &DataType::Utf8).map_err(|error| internal(&error.to_string()))?;
    Ok(text.as_string::<i32>().clone())
}

pub(crate) fn int_column(batch: &RecordBatch, name: &str) -> Result<Int64Array> {
    let array = column(batch, name)?;
    let ints = cast(array, &DataType::Int64).map_err(|error| internal(&error.to_string()))?;
    Ok(ints.as_primitive::<Int64Type>().clone())
}

/// The entries of row `row` of a `map<text, text>` column.
fn map_pairs(array: &ArrayRef, row: usize) -> Result<Vec<(String, String)>> {
    let Some(map) = array.as_any().downcast_ref::<MapArray>() else {
        return Err(internal("an attributes column is not a map"));
    };
    if map.is_null(row) {
        return Ok(Vec::new());
    }
    entries(&map.value(row))
}

fn entries(entries: &StructArray) -> Result<Vec<(String, String)>> {
    let keys = as_text(entries.column(0))?;
    let values = as_text(entries.column(1))?;
    Ok((0..keys.len())
        .map(|i| {
            let value = if values.is_null(i) {
                ""
            } else {
                values.value(i)
            };
            (keys.value(i).to_owned(), value.to_owned())
        })
        .collect())
}

/// The structs of row `row` of a list-of-structs column; none where the row is null.
fn structs_of(array: &ArrayRef, row: usize, what: &str) -> Result<Option<StructArray>> {
    let Some(list) = array.as_any().downcast_ref::<ListArray>() else {
        return Err(internal(&format!("{what} is not a list")));
    };
    if list.is_null(row) {
        return Ok(None);
    }
    let items = list.value(row);
    match items.as_any().downcast_ref::<StructArray>() {
        Some(items) => Ok(Some(items.clone())),
        None => Err(internal(&format!("{what} do not hold structs"))),
    }
}

/// The attributes of struct `i` of `items`, whose column `at` is a map.
fn struct_attributes(items: &StructArray, at: usize, i: usize) -> Result<Vec<(String, String)>> {
    let attributes = items
        .column(at)
        .as_any()
        .downcast_ref::<MapArray>()
        .ok_or_else(|| internal("attributes are not a map"))?;
    if attributes.is_null(i) {
        return Ok(Vec::new());
    }
    entries(&attributes.value(i))
}

/// The links of one span; links whose ids are not hex of the right length are left out.
fn links_of(array: &ArrayRef, row: usize) -> Result<Vec<Link>> {
    let Some(items) = structs_of(array, row, "links")? else {
        return Ok(Vec::new());
    };
    let trace_ids = as_text(items.column(0))?;
    let span_ids = as_text(items.column(1))?;
    let mut links = Vec::with_capacity(items.len());
    for i in 0..items.len() {
        let (trace_id, span_id) = (trace_ids.value(i), span_ids.value(i));
        if items.is_null(i) || trace_id.len() != 32 || span_id.len() != 16 {
            continue;
        }
        links.push(Link {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            attributes: struct_attributes(&items, 2, i)?,
        });
    }
    Ok(links)
}

fn events_of(array: &ArrayRef, row: usize) -> Result<Vec<Event>> {
    let Some(items) = structs_of(array, row, "events")? else {
        return Ok(Vec::new());
    };
    let times =
        cast(items.column(0), &DataType::Int64).map_err(|error| internal(&error.to_string()))?;
    let times = times.as_primitive::<Int64Type>();
    let names = as_text(items.column(1))?;
    let mut events = Vec::with_capacity(items.len());
    for i in 0..items.len() {
        if items.is_null(i) {
            continue;
        }
        events.push(Event {
            time_ns: times.value(i),
            name: names.value(i).to_owned(),
            attributes: struct_attributes(&items, 2, i)?,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_padded_lowercase_hex_and_nothing_else() {
        assert_eq!(
            normalize_trace_id("ABCDEF0123456789").unwrap(),
            "0000000000000000abcdef0123456789"
        );
        let full = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(normalize_trace_id(full).unwrap(), full);
        for bad in ["", "xyz", "' OR 1=1 --", &"a".repeat(33)] {
            assert!(normalize_trace_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn epoch_times_are_read_in_the_unit_their_size_implies() {
        let ns = 1_765_000_000_123_456_789_i64;
        assert_eq!(epoch_ns(ns / 1_000_000_000), 1_765_000_000 * 1_000_000_000);
        assert_eq!(epoch_ns(ns / 1_000_000), 1_765_000_000_123 * 1_000_000);
        assert_eq!(epoch_ns(ns / 1_000), 1_765_000_000_123_456 * 1_000);
        assert_eq!(epoch_ns(ns), ns);
    }

    #[test]
    fn go_durations_read_as_go_reads_them() {
        assert_eq!(go_duration("100ms").unwrap(), 100_000_000);
        assert_eq!(go_duration("1.5s").unwrap(), 1_500_000_000);
        assert_eq!(go_duration("1h30m").unwrap(), 5_400_000_000_000);
        assert_eq!(go_duration("250us").unwrap(), 250_000);
        assert_eq!(go_duration("250µs").unwrap(), 250_000);
        for bad in ["", "ms", "10", "10 parsecs", "1e400s"] {
            assert!(go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn literals_double_their_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(r"a\'b"), r"'a\''b'");
    }
}
