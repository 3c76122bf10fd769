//! Decoding request logs (newline-delimited JSON, one request a line) into rows of the
//! `requests` table.
//!
//! A line is an object with `time` (RFC 3339, or epoch seconds, milliseconds, microseconds
//! or nanoseconds), `method`, `path` or `route`, `status`, and optionally `duration_ms`,
//! `client_id`, `client_address`, `user_agent`, `request_bytes`, `response_bytes`,
//! `service`, `trace_id`; every other field is kept in `attributes`. A bad line is refused
//! with its line number and the good lines are kept.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder,
};
use arrow::array::{MapBuilder, StringBuilder as Text};
use serde_json::{Map, Value};

use schemas::routes::OpenApi;

use crate::arrow_builders::timestamp_builder;
use crate::convention::version_prefix;
use crate::{Decoded, Rejections};

/// The fields read into columns; the others go to `attributes`.
const KNOWN: &[&str] = &[
    "time",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "client_id",
    "client_address",
    "user_agent",
    "request_bytes",
    "response_bytes",
    "service",
    "trace_id",
    "import_source",
    "import_line",
];

/// One valid line.
struct Request {
    time_ns: i64,
    service: String,
    method: String,
    route: String,
    path: Option<String>,
    status: i32,
    duration_ms: Option<f64>,
    client_id: Option<String>,
    client_address: Option<String>,
    user_agent: Option<String>,
    request_bytes: Option<i64>,
    response_bytes: Option<i64>,
    trace_id: Option<String>,
    attributes: Vec<(String, String)>,
    import_source: Option<String>,
    import_line: Option<i64>,
}

/// Decodes every valid line of `body`.
pub fn decode_requests(body: &[u8], routes: &OpenApi) -> Decoded {
    let mut rejections = Rejections::default();
    let mut requests = Vec::new();
    for (index, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(line, routes) {
            Ok(request) => requests.push(request),
            Err(problem) => rejections.reject(format!("line {}: {problem}", index + 1)),
        }
    }
    if requests.is_empty() {
        return Decoded {
            batch: None,
            rejections,
        };
    }
    Decoded {
        batch: Some(to_batch(&requests)),
        rejections,
    }
}

fn parse_line(line: &[u8], routes: &OpenApi) -> Result<Request, String> {
    let value: Value =
        serde_json::from_slice(line).map_err(|error| format!("not JSON: {error}"))?;
    let Value::Object(fields) = value else {
        return Err("not a JSON object".into());
    };
    let time_ns = time_of(fields.get("time").ok_or("missing `time`")?)?;
    let method = text(&fields, "method")?
        .ok_or("missing `method`")?
        .to_ascii_uppercase();
    let path = text(&fields, "path")?.map(|p| match p.split_once('?') {
        Some((path, _query)) => path.to_owned(),
        None => p,
    });
    let route = match (text(&fields, "route")?, &path) {
        (Some(route), _) => route,
        (None, Some(path)) => routes.route_of(path),
        (None, None) => return Err("missing `path` or `route`".into()),
    };
    let status = integer(&fields, "status")?.ok_or("missing `status`")?;
    if !(100..=599).contains(&status) {
        return Err(format!("`status` must be from 100 to 599, not {status}"));
    }
    let duration_ms = number(&fields, "duration_ms")?;
    if duration_ms.is_some_and(|d| d < 0.0) {
        return Err("`duration_ms` must not be negative".into());
    }
    let client_address = text(&fields, "client_address")?;
    let attributes = fields
        .iter()
        .filter(|(key, _)| !KNOWN.contains(&key.as_str()))
        .map(|(key, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (key.clone(), text)
        })
        .collect();
    Ok(Request {
        time_ns,
        service: text(&fields, "service")?.unwrap_or_else(|| "unknown_service".into()),
        method,
        route,
        path,
        status: status as i32,
        duration_ms,
        client_id: text(&fields, "client_id")?.or_else(|| client_address.clone()),
        client_address,
        user_agent: text(&fields, "user_agent")?,
        request_bytes: non_negative(&fields, "request_bytes")?,
        response_bytes: non_negative(&fields, "response_bytes")?,
        trace_id: text(&fields, "trace_id")?.map(|id| id.to_ascii_lowercase()),
        attributes,
        import_source: text(&fields, "import_source")?,
        import_line: integer(&fields, "import_line")?,
    })
}

/// `time`: RFC 3339 text, or a number of seconds, milliseconds, microseconds or
/// nanoseconds since the epoch (told apart by size).
fn time_of(value: &Value) -> Result<i64, String> {
    match value {
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .or_else(|| text.parse::<f64>().ok().and_then(epoch_ns))
            .ok_or_else(|| format!("`time` {text:?} is neither RFC 3339 nor an epoch number")),
        Value::Number(number) => number
            .as_i64()
            .and_then(epoch_ns_exact)
            .or_else(|| number.as_f64().and_then(epoch_ns))
            .ok_or_else(|| format!("`time` {number} is out of range")),
        other => Err(format!("`time` must be text or a number, not {other}")),
    }
}

/// The same for whole numbers, without rounding through a float.
fn epoch_ns_exact(epoch: i64) -> Option<i64> {
    let scale = match epoch {
        ..=0 => return None,
        1..100_000_000_000 => 1_000_000_000,
        100_000_000_000..100_000_000_000_000 => 1_000_000,
        100_000_000_000_000..100_000_000_000_000_000 => 1_000,
        _ => 1,
    };
    epoch.checked_mul(scale)
}

fn epoch_ns(epoch: f64) -> Option<i64> {
    if !epoch.is_finite() || epoch <= 0.0 || epoch >= 9.2e18 {
        return None;
    }
    let whole = epoch.trunc();
    let scale = epoch_ns_exact(whole.max(1.0) as i64)? / (whole.max(1.0) as i64);
    // Whole and fraction apart, so that `1764237600.25` is exact to the nanosecond.
    let fraction = ((epoch - whole) * scale as f64).round() as i64;
    (whole as i64).checked_mul(scale)?.checked_add(fraction)
}

fn text(fields: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(format!("`{key}` must be text, not {other}")),
    }
}

/// A number, also when written as text (`"200"`), as many access logs do.
fn number(fields: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match fields.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => number
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("`{key}` is out of range")),
        Some(Value::String(text)) if text.is_empty() || text == "-" => Ok(None),
        Some(Value::String(text)) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a number, not {text:?}")),
        Some(other) => Err(format!("`{key}` must be a number, not {other}")),
    }
}

fn integer(fields: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match number(fields, key)? {
        None => Ok(None),
        Some(n) if n.fract() == 0.0 && n.abs() < 9e15 => Ok(Some(n as i64)),
        Some(n) => Err(format!("`{key}` must be a whole number, not {n}")),
    }
}

fn non_negative(fields: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match integer(fields, key)? {
        Some(n) if n < 0 => Err(format!("`{key}` must not be negative")),
        other => Ok(other),
    }
}

fn to_batch(requests: &[Request]) -> RecordBatch {
    let mut time = timestamp_builder();
    let mut service_name = StringBuilder::new();
    let mut endpoint = StringBuilder::new();
    let mut http_method = StringBuilder::new();
    let mut http_route = StringBuilder::new();
    let mut url_path = StringBuilder::new();
    let mut http_status_code = Int32Builder::new();
    let mut duration_ms = Float64Builder::new();
    let mut client_id = StringBuilder::new();
    let mut client_address = StringBuilder::new();
    let mut user_agent = StringBuilder::new();
    let mut request_bytes = Int64Builder::new();
    let mut response_bytes = Int64Builder::new();
    let mut trace_id = StringBuilder::new();
    let mut api_version = StringBuilder::new();
    let mut is_error = BooleanBuilder::new();
    let mut attributes = MapBuilder::new(None, Text::new(), Text::new());
    let mut import_source = StringBuilder::new();
    let mut import_line = Int64Builder::new();
    for request in requests {
        time.append_value(request.time_ns);
        service_name.append_value(&request.service);
        endpoint.append_value(format!("{} {}", request.method, request.route));
        http_method.append_value(&request.method);
        http_route.append_value(&request.route);
        url_path.append_option(request.path.as_deref());
        http_status_code.append_value(request.status);
        duration_ms.append_option(request.duration_ms);
        client_id.append_option(request.client_id.as_deref());
        client_address.append_option(request.client_address.as_deref());
        user_agent.append_option(request.user_agent.as_deref());
        request_bytes.append_option(request.request_bytes);
        response_bytes.append_option(request.response_bytes);
        trace_id.append_option(request.trace_id.as_deref());
        api_version.append_option(version_prefix(&request.route));
        is_error.append_value(request.status >= 500);
        for (key, value) in &request.attributes {
            attributes.keys().append_value(key);
            attributes.values().append_value(value);
        }
        // Keys and values were appended in pairs just above.
        let _ = attributes.append(true);
        import_source.append_option(request.import_source.as_deref());
        import_line.append_option(request.import_line);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(service_name.finish()),
        Arc::new(endpoint.finish()),
        Arc::new(http_method.finish()),
        Arc::new(http_route.finish()),
        Arc::new(url_path.finish()),
        Arc::new(http_status_code.finish()),
        Arc::new(duration_ms.finish()),
        Arc::new(client_id.finish()),
        Arc::new(client_address.finish()),
        Arc::new(user_agent.finish()),
        Arc::new(request_bytes.finish()),
        Arc::new(response_bytes.finish()),
        Arc::new(trace_id.finish()),
        Arc::new(api_version.finish()),
        Arc::new(is_error.finish()),
        Arc::new(attributes.finish()),
        Arc::new(import_source.finish()),
        Arc::new(import_line.finish()),
    ];
    // The columns follow schemas::REQUESTS one for one; a mismatch is a bug the tests catch.
    RecordBatch::try_new(schemas::REQUESTS.schema(), columns)
        .unwrap_or_else(|error| panic!("requests columns do not match the schema: {error}"))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int32Type, TimestampNanosecondType};

    use super::*;

    #[test]
    fn good_lines_are_kept_and_bad_ones_named_by_line() {
        let body = br#"{"time": "2025-11-27T10:00:00Z", "method": "get", "path": "/v1/users/42?x=1", "status": 200, "duration_ms": 12.5, "client_id": "web", "region": "eu"}
{"time": 1764237600, "method": "POST", "route": "/v2/orders", "status": "503", "client_address": "10.0.0.1"}
not json

{"time": "yesterday", "method": "GET", "path": "/", "status": 200}
{"time": 1764237600123, "method": "GET", "status": 200}
{"time": 1764237600123456789, "method": "GET", "path": "/a", "status": 700}
{"time": 1764237600, "method": "GET", "path": "/a", "status": 200, "duration_ms": -1}
[1, 2]
"#;
        let decoded = decode_requests(body, &OpenApi::default());
        let batch = decoded.batch.unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(decoded.rejections.count, 6);
        let message = decoded.rejections.message();
        for line in [3, 5, 6, 7, 8, 9] {
            assert!(message.contains(&format!("line {line}:")), "{message}");
        }
        assert!(message.contains("missing `path` or `route`"), "{message}");
        assert!(message.contains("from 100 to 599"), "{message}");

        let column = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        let endpoint = column("endpoint");
        assert_eq!(endpoint.as_string::<i32>().value(0), "GET /v1/users/{id}");
        assert_eq!(endpoint.as_string::<i32>().value(1), "POST /v2/orders");
        assert_eq!(
            column("url_path").as_string::<i32>().value(0),
            "/v1/users/42"
        );
        assert_eq!(column("api_version").as_string::<i32>().value(0), "v1");
        assert_eq!(
            column("http_status_code")
                .as_primitive::<Int32Type>()
                .value(1),
            503
        );
        assert!(column("is_error").as_boolean().value(1));
        assert!(!column("is_error").as_boolean().value(0));
        assert_eq!(
            column("duration_ms").as_primitive::<Float64Type>().value(0),
            12.5
        );
        assert!(column("duration_ms").is_null(1));
        // The client is its id, else its address.
        assert_eq!(column("client_id").as_string::<i32>().value(1), "10.0.0.1");
        let times = column("time");
        let times = times.as_primitive::<TimestampNanosecondType>();
        assert_eq!(times.value(0), 1_764_237_600_000_000_000);
        assert_eq!(times.value(1), 1_764_237_600_000_000_000);
        assert_eq!(
            column("service_name").as_string::<i32>().value(0),
            "unknown_service"
        );
        let attributes = column("attributes");
        let attributes = attributes.as_map();
        assert_eq!(attributes.value(0).len(), 1);
    }

    #[test]
    fn epochs_of_every_size() {
        let second = 1_764_237_600_i64;
        for (value, expected) in [
            (Value::from(second), second * 1_000_000_000),
            (
                Value::from(second * 1000 + 5),
                (second * 1000 + 5) * 1_000_000,
            ),
            (
                Value::from(1_764_237_600.25),
                second * 1_000_000_000 + 250_000_000,
            ),
            (
                Value::from(second * 1_000_000_000 + 7),
                second * 1_000_000_000 + 7,
            ),
            (
                Value::from("2025-11-27T10:00:00.5+01:00"),
                (second - 3600) * 1_000_000_000 + 500_000_000,
            ),
        ] {
            assert_eq!(time_of(&value), Ok(expected), "{value}");
        }
        assert!(time_of(&Value::from(-5)).is_err());
        assert!(time_of(&Value::Bool(true)).is_err());
    }
}
