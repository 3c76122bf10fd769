//! Decoding an OTLP trace export into rows of the `spans` table.

use std::borrow::Cow;
use std::fmt::Write;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampNanosecondBuilder,
};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};

use crate::arrow_builders::{
    EventsBuilder, LinksBuilder, ResourceTextBuilder, StringMapBuilder, timestamp_builder,
};
use crate::convention::{Attrs, append_hex, dependency, split_url, version_prefix};
use crate::protobuf::{self, Attr, Fields, Shape, WireError, push_attr};
use crate::{Decoded, Rejections};

/// How spans become rows: which attributes name a client.
#[derive(Debug, Clone)]
pub struct SpanDecoder {
    /// Attribute keys tried in order for `client_id`.
    pub client_id_keys: Vec<String>,
    /// The OpenAPI documents whose path templates name raw paths (of spans without
    /// `http.route`, and of request logs).
    pub routes: std::sync::Arc<schemas::routes::OpenApi>,
}

impl Default for SpanDecoder {
    fn default() -> Self {
        Self {
            client_id_keys: crate::convention::DEFAULT_CLIENT_ID_KEYS
                .iter()
                .map(|k| (*k).to_owned())
                .collect(),
            routes: std::sync::Arc::default(),
        }
    }
}

const TRACES: Shape = Shape {
    resources: "ExportTraceServiceRequest.resource_spans",
    scopes: "ResourceSpans.scope_spans",
    items: "ScopeSpans.spans",
};

impl SpanDecoder {
    /// Decodes every valid span of `request`, an `ExportTraceServiceRequest` in protobuf;
    /// invalid spans are counted and described in the returned rejections (OTLP partial
    /// success), never silently skipped. A payload that is not protobuf is refused whole.
    pub fn decode(&self, request: &[u8]) -> Result<Decoded, WireError> {
        let mut columns = SpanColumns::default();
        let mut rejections = Rejections::default();
        let mut span = SpanView::default();
        protobuf::for_each_item(request, &TRACES, |resource, scope_name, message| {
            span.read(message)?;
            if let Err(problem) = check_span(&span) {
                rejections.reject(problem);
                return Ok(());
            }
            let c = &mut columns;
            c.service_name.append_value(&resource.service_name);
            c.service_version
                .append_option(resource.service_version.as_deref());
            c.deployment_environment
                .append_option(resource.environment.as_deref());
            c.scope_name
                .append_option(scope_name.filter(|s| !s.is_empty()));
            c.resource.append(resource);
            self.append_span(c, &span);
            Ok(())
        })?;
        let batch = (columns.rows > 0).then(|| columns.finish());
        Ok(Decoded { batch, rejections })
    }

    fn append_span(&self, c: &mut SpanColumns, span: &SpanView<'_>) {
        let attrs = Attrs(&span.attributes);
        let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
        let is_server = kind == SpanKind::Server;
        let is_client = matches!(kind, SpanKind::Client | SpanKind::Producer);

        // Times: checked to fit i64 and end >= start by check_span.
        let start = span.start as i64;
        let end = span.end as i64;
        let duration = end - start;
        // `end_time` and `duration_ms` are computed from these when read.
        c.time.append_value(start);
        c.duration_ns.append_value(duration);
        append_hex(&mut c.trace_id, span.trace_id);
        append_hex(&mut c.span_id, span.span_id);
        if span.parent_span_id.is_empty() {
            c.parent_span_id.append_null();
        } else {
            append_hex(&mut c.parent_span_id, span.parent_span_id);
        }
        c.span_name.append_value(span.name);
        c.span_kind.append_value(kind_name(kind));
        let status_code = StatusCode::try_from(span.status_code).unwrap_or(StatusCode::Unset);
        c.status_code.append_value(match status_code {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        });
        c.status_message
            .append_option(Some(span.status_message).filter(|m| !m.is_empty()));
        // HTTP and network attributes, current names first.
        let method = attrs.first_text(&["http.request.method", "http.method"]);
        let route = attrs.text("http.route");
        let http_status = attrs.first_int(&["http.response.status_code", "http.status_code"]);
        let full_url = attrs.first_text(&["url.full", "http.url"]);
        let url = full_url.as_deref().map(split_url).unwrap_or_default();
        let target = attrs.text("http.target");
        let path = attrs
            .text("url.path")
            .or_else(|| {
                target
                    .as_deref()
                    .and_then(|t| split_url(t).path)
                    .map(Into::into)
            })
            .or_else(|| url.path.map(Into::into));
        let older_host_keys: &[&str] = if is_server {
            &["server.address", "net.host.name"]
        } else {
            &["server.address", "net.peer.name"]
        };
        let older_port_keys: &[&str] = if is_server {
            &["server.port", "net.host.port"]
        } else {
            &["server.port", "net.peer.port"]
        };
        let server_address = attrs
            .first_text(older_host_keys)
            .or_else(|| url.host.map(Into::into));
        let server_port = attrs.first_int(older_port_keys).or(url.port);
        let client_address = attrs.first_text(&[
            "client.address",
            "http.client_ip",
            "network.peer.address",
            "net.sock.peer.addr",
            "net.peer.ip",
        ]);
        let error_type = attrs.text("error.type").or_else(|| exception_type(span));

        c.http_method.append_option(method.as_deref());
        c.http_route.append_option(route.as_deref());
        c.http_status_code
            .append_option(http_status.and_then(|s| i32::try_from(s).ok()));
        c.http_request_body_size.append_option(
            attrs.first_int(&["http.request.body.size", "http.request_content_length"]),
        );
        c.http_response_body_size.append_option(
            attrs.first_int(&["http.response.body.size", "http.response_content_length"]),
        );
        c.url_path.append_option(path.as_deref());
        c.server_address.append_option(server_address.as_deref());
        c.server_port
            .append_option(server_port.and_then(|p| i32::try_from(p).ok()));
        c.client_address.append_option(client_address.as_deref());
        c.user_agent.append_option(
            attrs
                .first_text(&["user_agent.original", "http.user_agent"])
                .as_deref(),
        );
        c.error_type.append_option(error_type.as_deref());

        // Derived columns.
        let templated_route = match (&route, &path) {
            (Some(route), _) => Some(route.clone()),
            (None, Some(path)) => Some(Cow::Owned(self.routes.route_of(path))),
            (None, None) => None,
        };
        match (&method, &templated_route) {
            (Some(method), Some(route)) => {
                // A builder takes any text: the write cannot fail.
                let _ = write!(c.endpoint, "{method} {route}");
                c.endpoint.append_value("");
            }
            _ => c.endpoint.append_value(span.name),
        }
        let client_id = self
            .client_id_keys
            .iter()
            .find_map(|key| attrs.text(key))
            .or(client_address);
        c.client_id.append_option(client_id.as_deref());
        let dependency = if is_client {
            dependency(attrs, server_address.as_deref(), server_port)
        } else {
            None
        };
        c.dependency.append_option(dependency);
        let api_version = attrs
            .text("api.version")
            .map(|v| v.into_owned())
            .or_else(|| {
                templated_route
                    .as_deref()
                    .and_then(version_prefix)
                    .map(str::to_owned)
            });
        c.api_version.append_option(api_version);
        let is_error = status_code == StatusCode::Error
            || (is_server && http_status.is_some_and(|s| s >= 500))
            || (is_client && http_status.is_some_and(|s| s >= 400));
        c.is_error.append_value(is_error);

        c.attributes.append_attributes(&span.attributes);
        for event in &span.events {
            let time = i64::try_from(event.time).unwrap_or(start);
            let attributes = &span.event_attributes[event.attributes.clone()];
            c.events.push_event(time, event.name, attributes);
        }
        c.events.end_span(span.events.len());
        for link in &span.links {
            let attributes = &span.link_attributes[link.attributes.clone()];
            c.links.push_link(link.trace_id, link.span_id, attributes);
        }
        c.links.end_span(span.links.len());
        c.rows += 1;
    }
}

/// One span as sent, borrowed from the payload. Its lists are reused from span to span.
#[derive(Default)]
struct SpanView<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    name: &'a str,
    kind: i32,
    start: u64,
    end: u64,
    attributes: Vec<Attr<'a>>,
    events: Vec<EventView<'a>>,
    /// The attributes of every event; each event names its range.
    event_attributes: Vec<Attr<'a>>,
    links: Vec<LinkView<'a>>,
    /// The attributes of every link; each link names its range.
    link_attributes: Vec<Attr<'a>>,
    status_code: i32,
    status_message: &'a str,
}

struct LinkView<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    attributes: Range<usize>,
}

struct EventView<'a> {
    time: u64,
    name: &'a str,
    attributes: Range<usize>,
}

impl<'a> SpanView<'a> {
    /// Reads a `Span` message; fields sent twice count as protobuf says (the last scalar,
    /// every list entry, messages merged).
    fn read(&mut self, message: &'a [u8]) -> Result<(), WireError> {
        self.trace_id = &[];
        self.span_id = &[];
        self.parent_span_id = &[];
        self.name = "";
        self.kind = 0;
        self.start = 0;
        self.end = 0;
        self.attributes.clear();
        self.events.clear();
        self.event_attributes.clear();
        self.links.clear();
        self.link_attributes.clear();
        self.status_code = 0;
        self.status_message = "";
        for field in Fields::of(message) {
            let (number, field) = field?;
            match number {
                1 => self.trace_id = field.bytes("Span.trace_id")?,
                2 => self.span_id = field.bytes("Span.span_id")?,
                4 => self.parent_span_id = field.bytes("Span.parent_span_id")?,
                5 => self.name = field.text("Span.name")?,
                6 => self.kind = field.int32("Span.kind")?,
                7 => self.start = field.fixed64("Span.start_time_unix_nano")?,
                8 => self.end = field.fixed64("Span.end_time_unix_nano")?,
                9 => push_attr(&mut self.attributes, field.bytes("Span.attributes")?)?,
                11 => self.read_event(field.bytes("Span.events")?)?,
                13 => self.read_link(field.bytes("Span.links")?)?,
                15 => self.read_status(field.bytes("Span.status")?)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn read_event(&mut self, message: &'a [u8]) -> Result<(), WireError> {
        let first = self.event_attributes.len();
        let mut event = EventView {
            time: 0,
            name: "",
            attributes: first..first,
        };
        for field in Fields::of(message) {
            match field? {
                (1, time) => event.time = time.fixed64("Span.Event.time_unix_nano")?,
                (2, name) => event.name = name.text("Span.Event.name")?,
                (3, attr) => push_attr(
                    &mut self.event_attributes,
                    attr.bytes("Span.Event.attributes")?,
                )?,
                _ => {}
            }
        }
        event.attributes.end = self.event_attributes.len();
        self.events.push(event);
        Ok(())
    }

    fn read_link(&mut self, message: &'a [u8]) -> Result<(), WireError> {
        let first = self.link_attributes.len();
        let mut link = LinkView {
            trace_id: &[],
            span_id: &[],
            attributes: first..first,
        };
        for field in Fields::of(message) {
            match field? {
                (1, id) => link.trace_id = id.bytes("Span.Link.trace_id")?,
                (2, id) => link.span_id = id.bytes("Span.Link.span_id")?,
                (4, attr) => push_attr(
                    &mut self.link_attributes,
                    attr.bytes("Span.Link.attributes")?,
                )?,
                _ => {}
            }
        }
        link.attributes.end = self.link_attributes.len();
        self.links.push(link);
        Ok(())
    }

    fn read_status(&mut self, message: &'a [u8]) -> Result<(), WireError> {
        for field in Fields::of(message) {
            match field? {
                (2, text) => self.status_message = text.text("Status.message")?,
                (3, code) => self.status_code = code.int32("Status.code")?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// Why a span cannot be stored, if it cannot.
fn check_span(span: &SpanView<'_>) -> Result<(), String> {
    let name = span.name;
    if span.trace_id.len() != 16 || span.trace_id.iter().all(|b| *b == 0) {
        return Err(format!(
            "span {name:?}: trace_id must be 16 bytes and not all zero, got {} bytes",
            span.trace_id.len()
        ));
    }
    if span.span_id.len() != 8 || span.span_id.iter().all(|b| *b == 0) {
        return Err(format!(
            "span {name:?}: span_id must be 8 bytes and not all zero, got {} bytes",
            span.span_id.len()
        ));
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err(format!(
            "span {name:?}: parent_span_id must be empty or 8 bytes, got {} bytes",
            span.parent_span_id.len()
        ));
    }
    let start = span.start;
    let end = span.end;
    if start == 0 || i64::try_from(start).is_err() || i64::try_from(end).is_err() {
        return Err(format!(
            "span {name:?}: start_time_unix_nano {start} is missing or out of range"
        ));
    }
    if end < start {
        return Err(format!(
            "span {name:?}: end_time_unix_nano {end} is before start_time_unix_nano {start}"
        ));
    }
    Ok(())
}

fn exception_type<'a>(span: &'a SpanView<'a>) -> Option<Cow<'a, str>> {
    let event = span.events.iter().find(|e| e.name == "exception")?;
    Attrs(&span.event_attributes[event.attributes.clone()]).text("exception.type")
}

fn kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Unspecified => "unspecified",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    }
}

/// One builder per column of `spans`, in schema order.
struct SpanColumns {
    rows: usize,
    time: TimestampNanosecondBuilder,
    duration_ns: Int64Builder,
    trace_id: StringBuilder,
    span_id: StringBuilder,
    parent_span_id: StringBuilder,
    service_name: StringBuilder,
    service_version: StringBuilder,
    deployment_environment: StringBuilder,
    scope_name: StringBuilder,
    span_name: StringBuilder,
    span_kind: StringBuilder,
    status_code: StringBuilder,
    status_message: StringBuilder,
    http_method: StringBuilder,
    http_route: StringBuilder,
    http_status_code: Int32Builder,
    http_request_body_size: Int64Builder,
    http_response_body_size: Int64Builder,
    url_path: StringBuilder,
    server_address: StringBuilder,
    server_port: Int32Builder,
    client_address: StringBuilder,
    user_agent: StringBuilder,
    error_type: StringBuilder,
    endpoint: StringBuilder,
    client_id: StringBuilder,
    dependency: StringBuilder,
    api_version: StringBuilder,
    is_error: BooleanBuilder,
    attributes: StringMapBuilder,
    events: EventsBuilder,
    links: LinksBuilder,
    resource: ResourceTextBuilder,
}

impl Default for SpanColumns {
    fn default() -> Self {
        Self {
            rows: 0,
            time: timestamp_builder(),
            duration_ns: Int64Builder::new(),
            trace_id: StringBuilder::new(),
            span_id: StringBuilder::new(),
            parent_span_id: StringBuilder::new(),
            service_name: StringBuilder::new(),
            service_version: StringBuilder::new(),
            deployment_environment: StringBuilder::new(),
            scope_name: StringBuilder::new(),
            span_name: StringBuilder::new(),
            span_kind: StringBuilder::new(),
            status_code: StringBuilder::new(),
            status_message: StringBuilder::new(),
            http_method: StringBuilder::new(),
            http_route: StringBuilder::new(),
            http_status_code: Int32Builder::new(),
            http_request_body_size: Int64Builder::new(),
            http_response_body_size: Int64Builder::new(),
            url_path: StringBuilder::new(),
            server_address: StringBuilder::new(),
            server_port: Int32Builder::new(),
            client_address: StringBuilder::new(),
            user_agent: StringBuilder::new(),
            error_type: StringBuilder::new(),
            endpoint: StringBuilder::new(),
            client_id: StringBuilder::new(),
            dependency: StringBuilder::new(),
            api_version: StringBuilder::new(),
            is_error: BooleanBuilder::new(),
            attributes: StringMapBuilder::new(),
            events: EventsBuilder::new(),
            links: LinksBuilder::new(),
            resource: ResourceTextBuilder::default(),
        }
    }
}

impl SpanColumns {
    fn finish(mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.duration_ns.finish()),
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.service_name.finish()),
            Arc::new(self.service_version.finish()),
            Arc::new(self.deployment_environment.finish()),
            Arc::new(self.scope_name.finish()),
            Arc::new(self.span_name.finish()),
            Arc::new(self.span_kind.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
            Arc::new(self.http_method.finish()),
            Arc::new(self.http_route.finish()),
            Arc::new(self.http_status_code.finish()),
            Arc::new(self.http_request_body_size.finish()),
            Arc::new(self.http_response_body_size.finish()),
            Arc::new(self.url_path.finish()),
            Arc::new(self.server_address.finish()),
            Arc::new(self.server_port.finish()),
            Arc::new(self.client_address.finish()),
            Arc::new(self.user_agent.finish()),
            Arc::new(self.error_type.finish()),
            Arc::new(self.endpoint.finish()),
            Arc::new(self.client_id.finish()),
            Arc::new(self.dependency.finish()),
            Arc::new(self.api_version.finish()),
            Arc::new(self.is_error.finish()),
            self.attributes.finish(),
            self.events.finish(),
            self.links.finish(),
        ];
        columns.extend(self.resource.finish());
        // The columns above follow schemas::SPANS one for one; a mismatch is a bug caught
        // by the decoder's tests, not something input can cause.
        RecordBatch::try_new(schemas::SPANS.stored_schema(), columns)
            .unwrap_or_else(|error| panic!("spans columns do not match the schema: {error}"))
    }
}

#[cfg(test)]
mod tests;
