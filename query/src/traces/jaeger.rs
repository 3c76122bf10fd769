//! The Jaeger query API that Grafana's Jaeger data source calls, in Jaeger's UI JSON model:
//! services, operations, trace search, trace by id and service dependencies.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{
    HOUR_NS, SEARCH_LIMIT, SEARCH_LIMIT_MAX, Shaped, Traces, bounds, count, first_column, given,
    go_duration, literal, now_ns, search_range, time_filter,
};
use crate::error::{Error, Result};

/// How far back `/api/services` and the operation lists look.
pub(crate) const CATALOG_LOOKBACK_NS: i64 = 24 * HOUR_NS;

pub(super) fn routes() -> Router<Traces> {
    Router::new()
        .route("/api/services", get(services))
        .route(
            "/api/services/{service}/operations",
            get(service_operations),
        )
        .route("/api/operations", get(operations))
        .route("/api/traces", get(search))
        .route("/api/dependencies", get(dependencies))
}

type Params = Query<HashMap<String, String>>;

/// Jaeger's envelope around `data`.
fn envelope(data: Value) -> Response {
    let total = data.as_array().map_or(0, Vec::len);
    axum::Json(json!({
        "data": data,
        "total": total,
        "limit": 0,
        "offset": 0,
        "errors": null,
    }))
    .into_response()
}

/// An error in Jaeger's envelope, with its HTTP status.
fn failure(error: &Error) -> Response {
    failure_with(super::status_of(error), &error.to_string())
}

fn failure_with(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "data": null,
        "total": 0,
        "limit": 0,
        "offset": 0,
        "errors": [{"code": status.as_u16(), "msg": message}],
    });
    super::failure(status, message, axum::Json(body))
}

fn answer(result: Result<Response>) -> Response {
    result.unwrap_or_else(|error| failure(&error))
}

async fn services(State(traces): State<Traces>) -> Response {
    answer(
        async {
            let sql = format!(
                "SELECT DISTINCT service_name FROM spans WHERE {} ORDER BY 1",
                time_filter(Some(now_ns() - CATALOG_LOOKBACK_NS), None)
            );
            Ok(envelope(json!(first_column(&traces.engine, &sql).await?)))
        }
        .await,
    )
}

/// The span names of `service` in the catalog's lookback, with their kinds (of `kind` only,
/// when given), sorted.
async fn operation_names(
    traces: &Traces,
    service: &str,
    kind: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let kind_filter = match kind.filter(|k| !k.is_empty()) {
        Some(kind) => format!(" AND span_kind = {}", literal(&kind.to_ascii_lowercase())),
        None => String::new(),
    };
    let sql = format!(
        "SELECT span_name, span_kind FROM spans WHERE service_name = {} AND {}{kind_filter} \
         GROUP BY span_name, span_kind ORDER BY 1, 2",
        literal(service),
        time_filter(Some(now_ns() - CATALOG_LOOKBACK_NS), None)
    );
    let output = traces.engine.query(&sql).await?;
    let mut operations = Vec::new();
    for batch in &output.batches {
        let names = super::as_text(batch.column(0))?;
        let kinds = super::as_text(batch.column(1))?;
        for row in 0..batch.num_rows() {
            operations.push((names.value(row).to_owned(), kinds.value(row).to_owned()));
        }
    }
    Ok(operations)
}

async fn service_operations(State(traces): State<Traces>, Path(service): Path<String>) -> Response {
    answer(
        async {
            let mut names: Vec<String> = operation_names(&traces, &service, None)
                .await?
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            names.dedup();
            Ok(envelope(json!(names)))
        }
        .await,
    )
}

async fn operations(State(traces): State<Traces>, Query(params): Params) -> Response {
    answer(
        async {
            let service = params.get("service").ok_or_else(|| {
                Error::BadRequest("`service` is required: /api/operations?service=NAME".into())
            })?;
            let kind = params.get("spanKind").map(String::as_str);
            let operations: Vec<Value> = operation_names(&traces, service, kind)
                .await?
                .iter()
                .map(|(name, kind)| json!({"name": name, "spanKind": kind}))
                .collect();
            Ok(envelope(json!(operations)))
        }
        .await,
    )
}

/// Trace `id` in Jaeger's JSON (`GET /api/traces/{id}` without `Accept: application/protobuf`).
pub(super) async fn trace_json(
    traces: &Traces,
    id: &str,
    params: &HashMap<String, String>,
) -> Response {
    answer(
        async {
            let (lo, hi) = bounds(params, "start", "end")?;
            match super::trace(&traces.engine, id, lo, hi, traces.max_spans).await? {
                Some(trace) => Ok(envelope(json!([jaeger_json(&trace)]))),
                None => Ok(failure_with(StatusCode::NOT_FOUND, "trace not found")),
            }
        }
        .await,
    )
}

/// The tags of a search: a JSON object (what Grafana sends), or `key=value` pairs separated
/// by spaces (Jaeger UI's logfmt).
fn search_tags(text: &str) -> Result<Vec<(String, String)>> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if text.starts_with('{') {
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(text).map_err(|error| {
                Error::BadRequest(format!(
                    "`tags` must be a JSON object like {{\"http.status_code\":\"500\"}}: {error}"
                ))
            })?;
        return Ok(object
            .into_iter()
            .map(|(key, value)| {
                let value = match value {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                (key, value)
            })
            .collect());
    }
    text.split_whitespace()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| Error::BadRequest(format!("`tags`: `{pair}` is not key=value")))?;
            Ok((key.to_owned(), value.trim_matches('"').to_owned()))
        })
        .collect()
}

/// The SQL condition a span must meet for one Jaeger tag.
fn tag_condition(key: &str, value: &str) -> String {
    match key {
        "error" => format!("is_error = {}", value.eq_ignore_ascii_case("true")),
        "span.kind" => format!("span_kind = {}", literal(&value.to_ascii_lowercase())),
        "otel.status_code" => format!("status_code = {}", literal(&value.to_ascii_lowercase())),
        "otel.status_description" => format!("status_message = {}", literal(value)),
        "otel.scope.name" | "otel.library.name" => format!("scope_name = {}", literal(value)),
        "service.name" => format!("service_name = {}", literal(value)),
        _ => format!(
            "(attributes[{key}] = {value} OR resource_attributes[{key}] = {value})",
            key = literal(key),
            value = literal(value)
        ),
    }
}

async fn search(State(traces): State<Traces>, Query(params): Params) -> Response {
    answer(search_traces(&traces, &params).await)
}

async fn search_traces(traces: &Traces, params: &HashMap<String, String>) -> Result<Response> {
    let (lo, hi) = search_range(params)?;
    let mut conditions = vec![time_filter(Some(lo), Some(hi))];
    if let Some(service) = given(params, "service") {
        conditions.push(format!("service_name = {}", literal(service)));
    }
    if let Some(operation) = given(params, "operation") {
        conditions.push(format!("span_name = {}", literal(operation)));
    }
    if let Some(min) = given(params, "minDuration") {
        conditions.push(format!("duration_ns >= {}", go_duration(min)?));
    }
    if let Some(max) = given(params, "maxDuration") {
        conditions.push(format!("duration_ns <= {}", go_duration(max)?));
    }
    for (key, value) in search_tags(given(params, "tags").unwrap_or(""))? {
        conditions.push(tag_condition(&key, &value));
    }
    let limit = count(params, "limit", SEARCH_LIMIT, SEARCH_LIMIT_MAX)?;
    let sql = format!(
        "SELECT trace_id FROM spans WHERE {} GROUP BY trace_id ORDER BY max(time) DESC LIMIT {limit}",
        conditions.join(" AND ")
    );
    let ids = first_column(&traces.engine, &sql).await?;
    let found = fetch_many(traces, &ids, lo - HOUR_NS, hi + HOUR_NS).await?;
    let data: Vec<Value> = found.iter().map(jaeger_json).collect();
    Ok(envelope(json!(data)))
}

/// The traces `ids` (in that order), each cut at the span limit, from spans starting in
/// `lo..hi`.
pub(super) async fn fetch_many(
    traces: &Traces,
    ids: &[String],
    lo: i64,
    hi: i64,
) -> Result<Vec<Shaped>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let max = traces.max_spans;
    let list: Vec<String> = ids.iter().map(|id| literal(id)).collect();
    let sql = format!(
        "SELECT * FROM (SELECT {}, row_number() OVER (PARTITION BY trace_id ORDER BY time, span_id) AS n \
         FROM spans WHERE trace_id IN ({}) AND {}) WHERE n <= {} ORDER BY trace_id, n",
        super::SPAN_COLUMNS,
        list.join(", "),
        time_filter(Some(lo), Some(hi)),
        max.saturating_add(1)
    );
    let spans = super::spans_of(&traces.engine.query(&sql).await?.batches)?;
    let mut by_trace: HashMap<String, Vec<super::Span>> = HashMap::new();
    for span in spans {
        by_trace
            .entry(span.trace_id.clone())
            .or_default()
            .push(span);
    }
    Ok(ids
        .iter()
        .filter_map(|id| by_trace.remove(id))
        .map(|spans| Shaped::new(spans, max))
        .collect())
}

async fn dependencies(State(traces): State<Traces>, Query(params): Params) -> Response {
    answer(
        async {
            let read = |name: &str| -> Result<Option<i64>> {
                params
                    .get(name)
                    .map(|v| {
                        v.trim().parse::<i64>().map_err(|_| {
                            Error::BadRequest(format!("`{name}` must be milliseconds, not `{v}`"))
                        })
                    })
                    .transpose()
            };
            let end = read("endTs")?.map_or_else(now_ns, |ms| ms.saturating_mul(1_000_000));
            let lookback = read("lookback")?.map_or(24 * HOUR_NS, |ms| ms.saturating_mul(1_000_000));
            let lo = end.saturating_sub(lookback);
            let sql = format!(
                "SELECT p.service_name AS parent, c.service_name AS child, count(*) AS calls \
                 FROM spans c JOIN spans p ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id \
                 WHERE c.{} AND p.{} AND c.service_name <> p.service_name \
                 GROUP BY 1, 2 ORDER BY 1, 2",
                time_filter(Some(lo), Some(end)),
                time_filter(Some(lo - HOUR_NS), Some(end + HOUR_NS)),
            );
            let output = traces.engine.query(&sql).await?;
            let mut links = Vec::new();
            for batch in &output.batches {
                let parents = super::as_text(batch.column(0))?;
                let children = super::as_text(batch.column(1))?;
                let calls = super::int_column(batch, "calls")?;
                for row in 0..batch.num_rows() {
                    links.push(json!({
                        "parent": parents.value(row),
                        "child": children.value(row),
                        "callCount": calls.value(row),
                    }));
                }
            }
            Ok(envelope(json!(links)))
        }
        .await,
    )
}

/// A tag of Jaeger's model.
fn tag(key: &str, value: &str) -> Value {
    json!({"key": key, "type": "string", "value": value})
}

/// `trace` in Jaeger's UI JSON model.
pub fn jaeger_json(trace: &Shaped) -> Value {
    let mut processes: Vec<(&str, &[(String, String)])> = Vec::new();
    let mut process_ids = Vec::with_capacity(trace.spans.len());
    for span in &trace.spans {
        let key = (span.service_name.as_str(), span.resource.as_slice());
        let index = match processes.iter().position(|p| *p == key) {
            Some(index) => index,
            None => {
                processes.push(key);
                processes.len() - 1
            }
        };
        process_ids.push(format!("p{}", index + 1));
    }
    let spans: Vec<Value> = trace
        .spans
        .iter()
        .enumerate()
        .map(|(i, span)| {
            let mut references = Vec::new();
            if let Some(parent) = trace.parents[i] {
                references.push(json!({
                    "refType": "CHILD_OF",
                    "traceID": span.trace_id,
                    "spanID": trace.ids[parent],
                }));
            }
            // Views hang a span under its first reference: a link may come first only when
            // it leads out of this trace, where it cannot close a loop. A link inside the
            // trace from a span shown as a root stays a tag.
            let mut tags: Vec<Value> = span.attributes.iter().map(|(k, v)| tag(k, v)).collect();
            for link in &span.links {
                if references.is_empty() && link.trace_id == span.trace_id {
                    tags.push(tag(
                        "otel.link",
                        &format!("{}/{}", link.trace_id, link.span_id),
                    ));
                } else {
                    references.push(json!({
                        "refType": "FOLLOWS_FROM",
                        "traceID": link.trace_id,
                        "spanID": link.span_id,
                    }));
                }
            }
            if span.kind != "unspecified" {
                tags.push(tag("span.kind", &span.kind));
            }
            if span.status_code != "unset" {
                tags.push(tag(
                    "otel.status_code",
                    &span.status_code.to_ascii_uppercase(),
                ));
            }
            if let Some(message) = &span.status_message {
                tags.push(tag("otel.status_description", message));
            }
            if let Some(scope) = &span.scope_name {
                tags.push(tag("otel.scope.name", scope));
            }
            if span.is_error {
                tags.push(json!({"key": "error", "type": "bool", "value": true}));
            }
            let logs: Vec<Value> = span
                .events
                .iter()
                .map(|event| {
                    let mut fields = vec![tag("event", &event.name)];
                    fields.extend(event.attributes.iter().map(|(k, v)| tag(k, v)));
                    json!({"timestamp": event.time_ns / 1_000, "fields": fields})
                })
                .collect();
            let warnings = &trace.warnings[i];
            json!({
                "traceID": span.trace_id,
                "spanID": trace.ids[i],
                "flags": 1,
                "operationName": span.name,
                "references": references,
                "startTime": span.start_ns / 1_000,
                "duration": span.duration_ns / 1_000,
                "tags": tags,
                "logs": logs,
                "processID": process_ids[i],
                "warnings": if warnings.is_empty() { Value::Null } else { json!(warnings) },
            })
        })
        .collect();
    let processes: serde_json::Map<String, Value> = processes
        .iter()
        .enumerate()
        .map(|(index, (service, resource))| {
            let mut tags: Vec<Value> = resource.iter().map(|(k, v)| tag(k, v)).collect();
            if !resource.iter().any(|(k, _)| k == "service.name") {
                tags.insert(0, tag("service.name", service));
            }
            (
                format!("p{}", index + 1),
                json!({"serviceName": service, "tags": tags}),
            )
        })
        .collect();
    json!({
        "traceID": trace.spans.first().map(|s| s.trace_id.as_str()).unwrap_or_default(),
        "spans": spans,
        "processes": processes,
        "warnings": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_come_as_json_or_logfmt() {
        let json = search_tags(r#"{"http.status_code":"500","error":true}"#).unwrap();
        assert!(json.contains(&("http.status_code".into(), "500".into())));
        assert!(json.contains(&("error".into(), "true".into())));
        let logfmt = search_tags(r#"a=1 b="two""#).unwrap();
        assert_eq!(
            logfmt,
            vec![("a".into(), "1".into()), ("b".into(), "two".into())]
        );
        assert!(search_tags("{not json").is_err());
        assert!(search_tags("novalue").is_err());
    }
}
