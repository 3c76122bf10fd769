//! The Tempo API that Grafana's Tempo data source calls: trace by id as Tempo's protobuf (its
//! trace is OTLP's `TracesData` on the wire), TraceQL search, tag discovery, echo.

use std::collections::HashMap;

use arrow::array::Array;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, TracesData, span,
};
use prost::Message;
use serde_json::{Value, json};

use super::traceql::{self, TagValues};
use super::{
    HOUR_NS, SEARCH_LIMIT, SEARCH_LIMIT_MAX, Shaped, Traces, bounds, count, first_column, given,
    literal, search_range, time_filter,
};
use crate::error::{Error, Result};

/// The media type of Tempo's protobuf answers.
pub(super) const PROTOBUF: &str = "application/protobuf";

/// Matching spans shown per trace when the search names no `spss`.
const SPANS_PER_SPANSET: usize = 3;
/// Tags or values listed at most.
const TAGS_MAX: usize = 1_000;

/// What Tempo shows for a trace whose root span is not stored.
const NO_ROOT: &str = "<root span not yet received>";

pub(super) fn routes() -> Router<Traces> {
    Router::new()
        .route("/api/echo", get(|| async { "echo" }))
        .route("/api/status/buildinfo", get(buildinfo))
        .route("/api/v2/traces/{id}", get(trace_v2))
        .route("/api/search", get(search))
        .route("/api/search/tags", get(tags_v1))
        .route("/api/v2/search/tags", get(tags_v2))
        .route("/api/search/tag/{tag}/values", get(values_v1))
        .route("/api/v2/search/tag/{tag}/values", get(values_v2))
}

type Params = Query<HashMap<String, String>>;

/// The Tempo version whose HTTP API apiscope answers, for clients that choose features by
/// version (Grafana asks for it); the revision names apiscope.
pub(super) const TEMPO_API_VERSION: &str = "2.4.0";

async fn buildinfo() -> Response {
    axum::Json(json!({
        "version": TEMPO_API_VERSION,
        "revision": concat!("apiscope-", env!("CARGO_PKG_VERSION")),
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
    .into_response()
}

/// Whether the client asks for protobuf.
pub(super) fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains(PROTOBUF))
}

/// Tempo answers errors as plain text.
fn failure(error: &Error) -> Response {
    let message = error.to_string();
    super::failure(super::status_of(error), &message, message.clone())
}

fn answer(result: Result<Response>) -> Response {
    result.unwrap_or_else(|error| failure(&error))
}

async fn trace_v2(
    State(traces): State<Traces>,
    Path(id): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let form = if wants_protobuf(&headers) {
        TraceForm::ByIdResponse
    } else {
        TraceForm::Json
    };
    trace_answer(&traces, &id, &params, form).await
}

/// How a trace by id is answered.
pub(super) enum TraceForm {
    /// Tempo's protobuf `TraceByIDResponse` (`/api/v2/traces`).
    ByIdResponse,
    /// Tempo's protobuf `Trace` (the older path). It holds OTLP `ResourceSpans` in field 1,
    /// as `TracesData` does.
    Trace,
    /// `{"trace": OTLP JSON}`.
    Json,
}

/// Trace `id` (bounded by `start`/`end` when given) in `form`; 404 when it is not stored.
pub(super) async fn trace_answer(
    traces: &Traces,
    id: &str,
    params: &HashMap<String, String>,
    form: TraceForm,
) -> Response {
    answer(
        async {
            let (lo, hi) = bounds(params, "start", "end")?;
            let Some(trace) = super::trace(&traces.engine, id, lo, hi, traces.max_spans).await?
            else {
                return Ok((StatusCode::NOT_FOUND, "trace not found").into_response());
            };
            let data = traces_data(&trace);
            let protobuf =
                |body: Vec<u8>| ([(header::CONTENT_TYPE, PROTOBUF)], body).into_response();
            Ok(match form {
                TraceForm::Json => {
                    let data = serde_json::to_value(data)
                        .map_err(|error| Error::Internal(error.to_string()))?;
                    axum::Json(json!({"trace": data})).into_response()
                }
                TraceForm::Trace => protobuf(data.encode_to_vec()),
                TraceForm::ByIdResponse => {
                    // TraceByIDResponse { Trace trace = 1; }
                    let data = data.encode_to_vec();
                    let mut wrapped = Vec::with_capacity(data.len() + 8);
                    prost::encoding::encode_key(
                        1,
                        prost::encoding::WireType::LengthDelimited,
                        &mut wrapped,
                    );
                    prost::encoding::encode_varint(data.len() as u64, &mut wrapped);
                    wrapped.extend_from_slice(&data);
                    protobuf(wrapped)
                }
            })
        }
        .await,
    )
}

/// Bytes of a hex id; a malformed one (never stored) as no bytes.
fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .unwrap_or_default()
}

fn text_value(text: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(text.to_owned())),
    })
}

fn key_value(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: text_value(value),
        ..Default::default()
    }
}

fn key_values(pairs: &[(String, String)]) -> Vec<KeyValue> {
    pairs
        .iter()
        .map(|(key, value)| key_value(key, value))
        .collect()
}

fn kind_number(kind: &str) -> i32 {
    match kind {
        "internal" => span::SpanKind::Internal as i32,
        "server" => span::SpanKind::Server as i32,
        "client" => span::SpanKind::Client as i32,
        "producer" => span::SpanKind::Producer as i32,
        "consumer" => span::SpanKind::Consumer as i32,
        _ => span::SpanKind::Unspecified as i32,
    }
}

/// `trace` as OTLP: one `ResourceSpans` per service and resource, one `ScopeSpans` per scope.
/// Warnings (see [`Shaped`]) become the span attribute `apiscope.warning`.
pub(super) fn traces_data(trace: &Shaped) -> TracesData {
    let mut resources: Vec<ResourceSpans> = Vec::new();
    let mut keys: Vec<(&str, &[(String, String)])> = Vec::new();
    for (i, stored) in trace.spans.iter().enumerate() {
        let key = (stored.service_name.as_str(), stored.resource.as_slice());
        let at = match keys.iter().position(|k| *k == key) {
            Some(at) => at,
            None => {
                let mut attributes = key_values(&stored.resource);
                if !stored.resource.iter().any(|(k, _)| k == "service.name") {
                    attributes.insert(0, key_value("service.name", &stored.service_name));
                }
                keys.push(key);
                resources.push(ResourceSpans {
                    resource: Some(Resource {
                        attributes,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                keys.len() - 1
            }
        };
        let scope_name = stored.scope_name.clone().unwrap_or_default();
        let scopes = &mut resources[at].scope_spans;
        let scope = match scopes
            .iter()
            .position(|s| s.scope.as_ref().map(|s| s.name.as_str()) == Some(&scope_name))
        {
            Some(scope) => scope,
            None => {
                scopes.push(ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: scope_name,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                scopes.len() - 1
            }
        };
        let mut attributes = key_values(&stored.attributes);
        for warning in &trace.warnings[i] {
            attributes.push(key_value("apiscope.warning", warning));
        }
        let status_code = match stored.status_code.as_str() {
            "ok" => 1,
            "error" => 2,
            _ => 0,
        };
        scopes[scope].spans.push(OtlpSpan {
            trace_id: hex_bytes(&stored.trace_id),
            span_id: hex_bytes(&trace.ids[i]),
            parent_span_id: trace.parents[i]
                .map(|p| hex_bytes(&trace.ids[p]))
                .unwrap_or_default(),
            name: stored.name.clone(),
            kind: kind_number(&stored.kind),
            start_time_unix_nano: stored.start_ns.max(0) as u64,
            end_time_unix_nano: stored.start_ns.saturating_add(stored.duration_ns).max(0) as u64,
            attributes,
            events: stored
                .events
                .iter()
                .map(|event| span::Event {
                    time_unix_nano: event.time_ns.max(0) as u64,
                    name: event.name.clone(),
                    attributes: key_values(&event.attributes),
                    ..Default::default()
                })
                .collect(),
            links: stored
                .links
                .iter()
                .map(|link| span::Link {
                    trace_id: hex_bytes(&link.trace_id),
                    span_id: hex_bytes(&link.span_id),
                    attributes: key_values(&link.attributes),
                    ..Default::default()
                })
                .collect(),
            status: Some(Status {
                code: status_code,
                message: stored.status_message.clone().unwrap_or_default(),
            }),
            ..Default::default()
        });
    }
    TracesData {
        resource_spans: resources,
    }
}

/// Per trace (grouped by `trace_id`): its start and duration, root span name and root service.
const SUMMARY: &str = "min(arrow_cast(time, 'Int64')) AS start_ns, \
    max(arrow_cast(time, 'Int64') + duration_ns) - min(arrow_cast(time, 'Int64')) AS trace_duration_ns, \
    first_value(CASE WHEN parent_span_id IS NULL THEN span_name END ORDER BY (parent_span_id IS NULL) DESC, time) AS root_name, \
    first_value(CASE WHEN parent_span_id IS NULL THEN service_name END ORDER BY (parent_span_id IS NULL) DESC, time) AS root_service";

/// `FROM` for spans meeting a condition compiled from TraceQL in `lo..hi`.
fn matching(compiled: &traceql::Compiled, lo: i64, hi: i64) -> (String, String) {
    let range = time_filter(Some(lo), Some(hi));
    if compiled.needs_trace {
        (
            format!(
                "WITH t AS (SELECT trace_id AS summary_of, {SUMMARY} FROM spans WHERE {range} GROUP BY trace_id) "
            ),
            format!(
                "spans JOIN t ON trace_id = summary_of WHERE {range} AND {}",
                compiled.condition
            ),
        )
    } else {
        (
            String::new(),
            format!("spans WHERE {range} AND {}", compiled.condition),
        )
    }
}

/// The TraceQL query in `q`; `{}` (every trace) when there is none.
fn traceql_of(params: &HashMap<String, String>) -> Result<traceql::Compiled> {
    traceql::compile(given(params, "q").unwrap_or("{}"))
}

async fn search(State(traces): State<Traces>, Query(params): Params) -> Response {
    answer(search_traces(&traces, &params).await)
}

async fn search_traces(traces: &Traces, params: &HashMap<String, String>) -> Result<Response> {
    let compiled = traceql_of(params)?;
    let limit = count(params, "limit", SEARCH_LIMIT, SEARCH_LIMIT_MAX)?;
    let spss = count(params, "spss", SPANS_PER_SPANSET, SEARCH_LIMIT_MAX)?;
    let (lo, hi) = search_range(params)?;
    let (with, from) = matching(&compiled, lo, hi);
    let sql = format!(
        "{with}SELECT trace_id FROM {from} GROUP BY trace_id ORDER BY max(time) DESC LIMIT {limit}"
    );
    let ids = first_column(&traces.engine, &sql).await?;
    if ids.is_empty() {
        return Ok(axum::Json(json!({"traces": [], "metrics": {}})).into_response());
    }
    let list = ids
        .iter()
        .map(|id| literal(id))
        .collect::<Vec<_>>()
        .join(", ");

    // The matching spans of each trace found, the first `spss` of them.
    let sql = format!(
        "{with}SELECT * FROM (SELECT trace_id, span_id, span_name, arrow_cast(time, 'Int64') AS start_ns, duration_ns, \
         row_number() OVER (PARTITION BY trace_id ORDER BY time, span_id) AS n, \
         count(*) OVER (PARTITION BY trace_id) AS matched \
         FROM {from} AND trace_id IN ({list})) WHERE n <= {spss} ORDER BY trace_id, n"
    );
    let output = traces.engine.query(&sql).await?;
    let mut spansets: HashMap<String, (Vec<Value>, i64)> = HashMap::new();
    for batch in &output.batches {
        let trace_ids = super::text_column(batch, "trace_id")?;
        let span_ids = super::text_column(batch, "span_id")?;
        let names = super::text_column(batch, "span_name")?;
        let starts = super::int_column(batch, "start_ns")?;
        let durations = super::int_column(batch, "duration_ns")?;
        let matched = super::int_column(batch, "matched")?;
        for row in 0..batch.num_rows() {
            let set = spansets
                .entry(trace_ids.value(row).to_owned())
                .or_insert_with(|| (Vec::new(), matched.value(row)));
            set.0.push(json!({
                "spanID": span_ids.value(row),
                "name": names.value(row),
                "startTimeUnixNano": starts.value(row).to_string(),
                "durationNanos": durations.value(row).to_string(),
            }));
        }
    }

    // Each trace's root, start and duration, from all its spans near the range.
    let sql = format!(
        "SELECT trace_id, {SUMMARY} FROM spans WHERE trace_id IN ({list}) AND {} GROUP BY trace_id",
        time_filter(Some(lo - HOUR_NS), Some(hi + HOUR_NS))
    );
    let output = traces.engine.query(&sql).await?;
    let mut summaries: HashMap<String, Value> = HashMap::new();
    for batch in &output.batches {
        let trace_ids = super::text_column(batch, "trace_id")?;
        let starts = super::int_column(batch, "start_ns")?;
        let durations = super::int_column(batch, "trace_duration_ns")?;
        let root_names = super::text_column(batch, "root_name")?;
        let root_services = super::text_column(batch, "root_service")?;
        for row in 0..batch.num_rows() {
            let mut summary = serde_json::Map::new();
            summary.insert("traceID".into(), json!(trace_ids.value(row)));
            if root_services.is_null(row) {
                summary.insert("rootServiceName".into(), json!(NO_ROOT));
            } else {
                summary.insert("rootServiceName".into(), json!(root_services.value(row)));
                summary.insert("rootTraceName".into(), json!(root_names.value(row)));
            }
            summary.insert(
                "startTimeUnixNano".into(),
                json!(starts.value(row).to_string()),
            );
            let ms = (durations.value(row) / 1_000_000).clamp(0, u32::MAX as i64);
            summary.insert("durationMs".into(), json!(ms));
            summaries.insert(trace_ids.value(row).to_owned(), Value::Object(summary));
        }
    }
    let found: Vec<Value> = ids
        .iter()
        .filter_map(|id| {
            let mut summary = summaries.remove(id)?;
            let (spans, matched) = spansets.remove(id).unwrap_or_default();
            let set = json!({"spans": spans, "matched": matched});
            summary["spanSet"] = set.clone();
            summary["spanSets"] = json!([set]);
            Some(summary)
        })
        .collect();
    Ok(axum::Json(json!({"traces": found, "metrics": {}})).into_response())
}

/// Distinct keys of a map column of `spans` in `lo..hi`.
async fn keys_of(traces: &Traces, column: &str, lo: i64, hi: i64) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT DISTINCT k FROM (SELECT unnest(map_keys({column})) AS k FROM spans WHERE {}) \
         ORDER BY k LIMIT {TAGS_MAX}",
        time_filter(Some(lo), Some(hi))
    );
    first_column(&traces.engine, &sql).await
}

/// Span and resource attribute names, with `service.name` among the resource's.
async fn scoped_tags(
    traces: &Traces,
    params: &HashMap<String, String>,
) -> Result<(Vec<String>, Vec<String>)> {
    let (lo, hi) = search_range(params)?;
    let span = keys_of(traces, "attributes", lo, hi).await?;
    let mut resource = keys_of(traces, "resource_attributes", lo, hi).await?;
    if !resource.iter().any(|k| k == "service.name") {
        resource.insert(0, "service.name".into());
    }
    Ok((span, resource))
}

async fn tags_v2(State(traces): State<Traces>, Query(params): Params) -> Response {
    answer(
        async {
            let scope = params.get("scope").map(String::as_str).unwrap_or("all");
            if !["all", "span", "resource", "intrinsic", ""].contains(&scope) {
                return Err(Error::BadRequest(format!(
                    "`scope` is one of span, resource, intrinsic, all; not `{scope}`"
                )));
            }
            let (span, resource) = scoped_tags(&traces, &params).await?;
            let mut scopes = Vec::new();
            for (name, tags) in [
                ("span", span),
                ("resource", resource),
                (
                    "intrinsic",
                    traceql::INTRINSICS.iter().map(|s| s.to_string()).collect(),
                ),
            ] {
                if matches!(scope, "all" | "") || scope == name {
                    scopes.push(json!({"name": name, "tags": tags}));
                }
            }
            Ok(axum::Json(json!({"scopes": scopes})).into_response())
        }
        .await,
    )
}

async fn tags_v1(State(traces): State<Traces>, Query(params): Params) -> Response {
    answer(
        async {
            let (span, resource) = scoped_tags(&traces, &params).await?;
            let mut names: Vec<String> = span.into_iter().chain(resource).collect();
            names.sort();
            names.dedup();
            Ok(axum::Json(json!({"tagNames": names})).into_response())
        }
        .await,
    )
}

/// The values tag `tag` takes in the range, among spans meeting the query `q` when given.
async fn values_of(
    traces: &Traces,
    tag: &str,
    params: &HashMap<String, String>,
) -> Result<Vec<String>> {
    let how = traceql::tag_values(tag).ok_or_else(|| {
        Error::BadRequest(format!(
            "`{tag}` is not a TraceQL tag: resource.NAME, span.NAME, .NAME or an intrinsic"
        ))
    })?;
    let (sql, needs_trace) = match how {
        TagValues::Fixed(values) => return Ok(values.iter().map(|v| v.to_string()).collect()),
        TagValues::Duration => return Ok(Vec::new()),
        TagValues::Column { sql, needs_trace } => (sql, needs_trace),
    };
    let mut compiled = traceql_of(params)?;
    compiled.needs_trace |= needs_trace;
    let (lo, hi) = search_range(params)?;
    let (with, from) = matching(&compiled, lo, hi);
    let statement = format!(
        "{with}SELECT DISTINCT v FROM (SELECT {sql} AS v FROM {from}) WHERE v IS NOT NULL \
         ORDER BY v LIMIT {TAGS_MAX}"
    );
    first_column(&traces.engine, &statement).await
}

async fn values_v2(
    State(traces): State<Traces>,
    Path(tag): Path<String>,
    Query(params): Params,
) -> Response {
    answer(
        async {
            let fixed = matches!(traceql::tag_values(&tag), Some(TagValues::Fixed(_)));
            let kind = if fixed { "keyword" } else { "string" };
            let values: Vec<Value> = values_of(&traces, &tag, &params)
                .await?
                .into_iter()
                .map(|value| json!({"type": kind, "value": value}))
                .collect();
            Ok(axum::Json(json!({"tagValues": values})).into_response())
        }
        .await,
    )
}

async fn values_v1(
    State(traces): State<Traces>,
    Path(tag): Path<String>,
    Query(params): Params,
) -> Response {
    answer(
        async {
            // The first API names tags without a scope: a span or resource attribute.
            let name = if traceql::tag_values(&tag).is_some() {
                tag
            } else {
                format!(".{tag}")
            };
            let values = values_of(&traces, &name, &params).await?;
            Ok(axum::Json(json!({"tagValues": values})).into_response())
        }
        .await,
    )
}
