//! Access log lines as request-log records (the JSON objects `POST /api/v1/requests` takes).

use chrono::DateTime;
use serde_json::{Map, Value};

/// The access log formats `apiscope import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// nginx's `combined` log format, optionally followed by the request time in seconds
    /// (`... "$http_user_agent" $request_time`, or `rt=0.123`).
    NginxCombined,
    /// nginx `log_format ... escape=json` lines (`time_iso8601` or `time_local` or `msec`,
    /// `request` or `request_method` + `request_uri`, `status`, `request_time`, ...).
    NginxJson,
    /// Envoy JSON access logs with the default field names (`start_time`, `method`, `path`,
    /// `response_code`, `duration`, `bytes_received`, `bytes_sent`, ...).
    EnvoyJson,
    /// apiscope's own request-log lines, as `POST /api/v1/requests` takes them.
    Ndjson,
}

type Record = Map<String, Value>;

impl Format {
    /// The record of one line, or why the line cannot be read.
    pub(crate) fn parse(self, line: &str) -> Result<Record, String> {
        match self {
            Format::NginxCombined => nginx_combined(line),
            Format::NginxJson => nginx_json(object(line)?),
            Format::EnvoyJson => envoy_json(object(line)?),
            Format::Ndjson => object(line),
        }
    }
}

fn object(line: &str) -> Result<Record, String> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err("not a JSON object".into()),
        Err(error) => Err(format!("not JSON: {error}")),
    }
}

/// Splits a combined-format line into its fields: bare words, `[bracketed]` and
/// `"quoted"` (with `\"` inside quotes).
fn fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
            continue;
        }
        let mut field = String::new();
        match c {
            '"' => {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                field.push(escaped);
                            }
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        other => field.push(other),
                    }
                }
                if !closed {
                    return Err("unterminated quoted field".into());
                }
            }
            '[' => {
                chars.next();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == ']' {
                        closed = true;
                        break;
                    }
                    field.push(c);
                }
                if !closed {
                    return Err("unterminated [bracketed] field".into());
                }
            }
            _ => {
                while let Some(&c) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    field.push(c);
                    chars.next();
                }
            }
        }
        out.push(field);
    }
    Ok(out)
}

/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
/// "$http_referer" "$http_user_agent"`, then optionally the request time.
fn nginx_combined(line: &str) -> Result<Record, String> {
    let fields = fields(line)?;
    if fields.len() < 9 {
        return Err(format!(
            "expected the 9 fields of nginx's combined format, found {}",
            fields.len()
        ));
    }
    let time = DateTime::parse_from_str(&fields[3], "%d/%b/%Y:%H:%M:%S %z")
        .map_err(|error| format!("time {:?}: {error}", fields[3]))?;
    let mut record = Record::new();
    record.insert("time".into(), time.to_rfc3339().into());
    request_line(&fields[4], &mut record)?;
    record.insert("status".into(), fields[5].clone().into());
    put_text(&mut record, "client_address", &fields[0]);
    put_number(&mut record, "response_bytes", &fields[6]);
    put_text(&mut record, "referer", &fields[7]);
    put_text(&mut record, "user_agent", &fields[8]);
    put_text(&mut record, "remote_user", &fields[2]);
    for extra in &fields[9..] {
        let value = extra
            .strip_prefix("rt=")
            .or_else(|| extra.strip_prefix("request_time="))
            .unwrap_or(extra);
        if let Ok(seconds) = value.parse::<f64>() {
            record.insert("duration_ms".into(), (seconds * 1000.0).into());
        }
    }
    Ok(record)
}

/// `"GET /path?query HTTP/1.1"` into `method` and `path`.
fn request_line(request: &str, record: &mut Record) -> Result<(), String> {
    let mut parts = request.split(' ');
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(format!("request {request:?} is not `METHOD path PROTOCOL`"));
    };
    if method.is_empty() || !path.starts_with('/') {
        return Err(format!("request {request:?} is not `METHOD path PROTOCOL`"));
    }
    record.insert("method".into(), method.into());
    record.insert("path".into(), path.into());
    Ok(())
}

fn put_text(record: &mut Record, key: &str, value: &str) {
    if !value.is_empty() && value != "-" {
        record.insert(key.into(), value.into());
    }
}

fn put_number(record: &mut Record, key: &str, value: &str) {
    if let Ok(number) = value.parse::<i64>() {
        record.insert(key.into(), number.into());
    }
}

/// The text of a JSON field, whatever its JSON type.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) if text.is_empty() || text == "-" => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// Moves `from` (if present) to `to`, with `convert` applied; the remaining fields are kept
/// as they are and end up in `attributes`.
fn rename(
    fields: &mut Record,
    out: &mut Record,
    from: &str,
    to: &str,
    convert: impl Fn(&str) -> Option<Value>,
) {
    if out.contains_key(to) {
        return;
    }
    if let Some(value) = fields.remove(from)
        && let Some(converted) = text_of(&value).and_then(|text| convert(&text))
    {
        out.insert(to.into(), converted);
    }
}

fn as_text(text: &str) -> Option<Value> {
    Some(text.into())
}

fn as_ms_from_seconds(text: &str) -> Option<Value> {
    text.parse::<f64>().ok().map(|s| (s * 1000.0).into())
}

fn as_number(text: &str) -> Option<Value> {
    text.parse::<f64>().ok().map(Value::from)
}

fn first_address(text: &str) -> Option<Value> {
    let first = text.split(',').next()?.trim();
    (!first.is_empty()).then(|| first.into())
}

/// How a field of a JSON access log becomes a field of a request record.
type Convert = fn(&str) -> Option<Value>;

fn nginx_time(text: &str) -> Option<Value> {
    DateTime::parse_from_str(text, "%d/%b/%Y:%H:%M:%S %z")
        .ok()
        .map(|t| t.to_rfc3339().into())
}

fn envoy_address(text: &str) -> Option<Value> {
    let host = text.rsplit_once(':').map_or(text, |(host, _port)| host);
    Some(host.trim_matches(['[', ']']).into())
}

/// nginx `escape=json` fields, in order of preference for each target.
const NGINX_JSON: &[(&str, &str, Convert)] = &[
    ("time_iso8601", "time", as_text),
    ("time_local", "time", nginx_time),
    ("msec", "time", as_number),
    ("time", "time", as_text),
    ("request_method", "method", as_text),
    ("request_uri", "path", as_text),
    ("uri", "path", as_text),
    ("status", "status", as_text),
    ("request_time", "duration_ms", as_ms_from_seconds),
    ("body_bytes_sent", "response_bytes", as_number),
    ("bytes_sent", "response_bytes", as_number),
    ("request_length", "request_bytes", as_number),
    ("http_user_agent", "user_agent", as_text),
    ("http_x_forwarded_for", "client_address", first_address),
    ("remote_addr", "client_address", as_text),
    ("http_x_client_id", "client_id", as_text),
    ("trace_id", "trace_id", as_text),
];

/// Envoy's default access log field names.
const ENVOY_JSON: &[(&str, &str, Convert)] = &[
    ("start_time", "time", as_text),
    ("method", "method", as_text),
    ("x_envoy_original_path", "path", as_text),
    ("path", "path", as_text),
    ("response_code", "status", as_text),
    ("duration", "duration_ms", as_number),
    ("bytes_received", "request_bytes", as_number),
    ("bytes_sent", "response_bytes", as_number),
    ("user_agent", "user_agent", as_text),
    ("x_forwarded_for", "client_address", first_address),
    ("downstream_remote_address", "client_address", envoy_address),
    ("x_client_id", "client_id", as_text),
    ("trace_id", "trace_id", as_text),
];

/// `fields` mapped by `table` into `out`; unmapped fields are kept (as attributes).
fn mapped(mut fields: Record, mut out: Record, table: &[(&str, &str, Convert)]) -> Record {
    for (from, to, convert) in table {
        rename(&mut fields, &mut out, from, to, convert);
    }
    out.extend(fields);
    out
}

fn nginx_json(mut fields: Record) -> Result<Record, String> {
    let mut out = Record::new();
    if let Some(request) = fields.remove("request").as_ref().and_then(text_of) {
        request_line(&request, &mut out)?;
    }
    Ok(mapped(fields, out, NGINX_JSON))
}

fn envoy_json(fields: Record) -> Result<Record, String> {
    if fields.get("response_code").and_then(text_of).as_deref() == Some("0") {
        return Err("response_code 0: the request got no response (stream reset)".into());
    }
    Ok(mapped(fields, Record::new(), ENVOY_JSON))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nginx_combined_lines() {
        let line = r#"203.0.113.9 - alice [27/Nov/2026:10:00:00 +0100] "GET /v1/users/42?x=1 HTTP/1.1" 200 512 "https://example.com/" "curl/8.5 \"quoted\"" 0.125"#;
        let record = Format::NginxCombined.parse(line).unwrap();
        assert_eq!(record["time"], "2026-11-27T10:00:00+01:00");
        assert_eq!(record["method"], "GET");
        assert_eq!(record["path"], "/v1/users/42?x=1");
        assert_eq!(record["status"], "200");
        assert_eq!(record["response_bytes"], 512);
        assert_eq!(record["user_agent"], r#"curl/8.5 "quoted""#);
        assert_eq!(record["client_address"], "203.0.113.9");
        assert_eq!(record["duration_ms"], 125.0);
        let without_time = r#"10.0.0.1 - - [27/Nov/2026:10:00:00 +0000] "POST /v2/orders HTTP/2.0" 503 - "-" "okhttp""#;
        let record = Format::NginxCombined.parse(without_time).unwrap();
        assert!(!record.contains_key("duration_ms"));
        assert!(!record.contains_key("response_bytes"));
        for bad in [
            r#"10.0.0.1 - - [27/Nov/2026:10:00:00 +0000] "-" 400 0 "-" "-""#,
            r#"10.0.0.1 - - [yesterday] "GET / HTTP/1.1" 200 1 "-" "-""#,
            r#"10.0.0.1 - - [27/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1"#,
            "garbage",
        ] {
            assert!(Format::NginxCombined.parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nginx_and_envoy_json_lines() {
        let nginx = json!({"time_iso8601": "2026-11-27T10:00:00+00:00", "request": "GET /a/1 HTTP/1.1",
            "status": "404", "request_time": "0.010", "body_bytes_sent": "9", "remote_addr": "10.0.0.2",
            "http_x_forwarded_for": "198.51.100.4, 10.0.0.9", "upstream_addr": "10.1.1.1:80"});
        let record = Format::NginxJson.parse(&nginx.to_string()).unwrap();
        assert_eq!(record["method"], "GET");
        assert_eq!(record["path"], "/a/1");
        assert_eq!(record["duration_ms"], 10.0);
        assert_eq!(record["client_address"], "198.51.100.4");
        assert_eq!(record["upstream_addr"], "10.1.1.1:80");
        let envoy = json!({"start_time": "2026-11-27T10:00:00.250Z", "method": "POST",
            "path": "/v2/orders", "response_code": 201, "duration": 37, "bytes_received": 120,
            "bytes_sent": 88, "downstream_remote_address": "[2001:db8::1]:51234",
            "request_id": "abc", "response_flags": "-"});
        let record = Format::EnvoyJson.parse(&envoy.to_string()).unwrap();
        assert_eq!(record["status"], "201");
        assert_eq!(record["duration_ms"], 37.0);
        assert_eq!(record["client_address"], "2001:db8::1");
        assert_eq!(record["request_id"], "abc");
        let reset = json!({"start_time": "2026-11-27T10:00:00Z", "method": "GET", "path": "/",
            "response_code": 0});
        assert!(Format::EnvoyJson.parse(&reset.to_string()).is_err());
        assert!(Format::EnvoyJson.parse("[1]").is_err());
    }
}
