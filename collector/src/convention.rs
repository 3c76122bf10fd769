//! OpenTelemetry semantic conventions: promoted attribute columns and derived columns.
//!
//! Current attribute names come first, then the older names many SDKs still send
//! (`http.method`, `http.status_code`, `net.peer.name`, ...). Everything here is a pure
//! function of the attributes so that it can be tested without any transport.

use std::borrow::Cow;

pub use schemas::routes::{template_path, version_prefix};

use arrow::array::StringBuilder;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};

use crate::attributes::{Attr, AttrValue};

/// The default attribute keys that name a client, first present wins.
pub const DEFAULT_CLIENT_ID_KEYS: &[&str] = &[
    "client.id",
    "app.client_id",
    "http.request.header.x-client-id",
    "enduser.id",
    "user.id",
];

/// Read access to one attribute list.
#[derive(Clone, Copy)]
pub(crate) struct Attrs<'a>(pub(crate) &'a [Attr<'a>]);

impl<'a> Attrs<'a> {
    fn value(&self, key: &str) -> Option<&'a AttrValue<'a>> {
        self.0.iter().find(|attr| attr.key == key)?.value.as_ref()
    }

    /// The attribute as text, whatever its type; empty strings count as absent.
    pub(crate) fn text(&self, key: &str) -> Option<Cow<'a, str>> {
        let text = value_text(self.value(key)?);
        (!text.is_empty()).then_some(text)
    }

    /// The first present of `keys`, as text.
    pub(crate) fn first_text(&self, keys: &[&str]) -> Option<Cow<'a, str>> {
        keys.iter().find_map(|key| self.text(key))
    }

    /// The attribute as an integer: int values, and strings that parse as one.
    pub(crate) fn int(&self, key: &str) -> Option<i64> {
        match self.value(key)? {
            AttrValue::Int(i) => Some(*i),
            AttrValue::Str(s) => s.trim().parse().ok(),
            AttrValue::Double(d) if d.fract() == 0.0 => Some(*d as i64),
            _ => None,
        }
    }

    /// The first present of `keys`, as an integer.
    pub(crate) fn first_int(&self, keys: &[&str]) -> Option<i64> {
        keys.iter().find_map(|key| self.int(key))
    }
}

/// What every row takes from the resource that sent it.
pub(crate) struct ResourceInfo<'a> {
    /// Which resource of its request this is (0, 1, ...): items of one resource share it.
    pub(crate) ordinal: usize,
    /// All resource attributes.
    pub(crate) attributes: &'a [Attr<'a>],
    /// `service.name`, or `unknown_service` as the specification says.
    pub(crate) service_name: Cow<'a, str>,
    pub(crate) service_version: Option<Cow<'a, str>>,
    /// `deployment.environment.name`, else the older `deployment.environment`.
    pub(crate) environment: Option<Cow<'a, str>>,
}

impl<'a> ResourceInfo<'a> {
    pub(crate) fn of(ordinal: usize, attributes: &'a [Attr<'a>]) -> Self {
        let attrs = Attrs(attributes);
        Self {
            ordinal,
            attributes,
            service_name: attrs
                .text("service.name")
                .unwrap_or("unknown_service".into()),
            service_version: attrs.text("service.version"),
            environment: attrs
                .first_text(&["deployment.environment.name", "deployment.environment"]),
        }
    }
}

/// An attribute value as text: strings as they are, numbers and booleans printed, bytes in
/// hex, arrays and key-value lists as JSON.
pub(crate) fn value_text<'a>(value: &AttrValue<'a>) -> Cow<'a, str> {
    match value {
        AttrValue::Str(s) => Cow::Borrowed(s),
        other => {
            let mut text = String::new();
            write_text(&mut text, other);
            Cow::Owned(text)
        }
    }
}

/// Writes `value` to `out` as [`value_text`] renders it.
fn write_text(out: &mut impl std::fmt::Write, value: &AttrValue<'_>) {
    // Neither a String nor a builder fails to take text.
    let _ = match value {
        AttrValue::Str(s) => out.write_str(s),
        AttrValue::Bool(b) => write!(out, "{b}"),
        AttrValue::Int(i) => write!(out, "{i}"),
        AttrValue::Double(d) => write!(out, "{d}"),
        AttrValue::Bytes(b) => {
            write_hex(out, b);
            Ok(())
        }
        // An index into a profile's string table; meaningless without the table.
        AttrValue::Strindex(index) => write!(out, "{index}"),
        AttrValue::Structured(value) => write!(out, "{}", proto_json(value)),
    };
}

fn any_json(value: &AnyValue) -> serde_json::Value {
    value
        .value
        .as_ref()
        .map_or(serde_json::Value::Null, proto_json)
}

/// A structured attribute value (an array or a key-value list) as JSON.
fn proto_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::StringValue(s) => J::String(s.clone()),
        Value::BoolValue(b) => J::Bool(*b),
        Value::IntValue(i) => J::from(*i),
        Value::DoubleValue(d) => J::from(*d),
        Value::BytesValue(b) => J::String(hex(b)),
        Value::StringValueStrindex(index) => J::from(*index),
        Value::ArrayValue(array) => J::Array(array.values.iter().map(any_json).collect()),
        Value::KvlistValue(list) => {
            let mut object = serde_json::Map::new();
            for kv in &list.values {
                let value = kv.value.as_ref().map_or(J::Null, any_json);
                object.insert(kv.key.clone(), value);
            }
            J::Object(object)
        }
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    write_hex(&mut out, bytes);
    out
}

/// Writes the lowercase hex of `bytes` to `out`, a stack buffer at a time.
fn write_hex(out: &mut impl std::fmt::Write, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buffer = [0u8; 64];
    for chunk in bytes.chunks(buffer.len() / 2) {
        for (byte, pair) in chunk.iter().zip(buffer.chunks_exact_mut(2)) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        let digits = &buffer[..chunk.len() * 2];
        // Only ASCII digits were written; neither a String nor a builder fails to take text.
        let _ = out.write_str(std::str::from_utf8(digits).unwrap_or_default());
    }
}

/// Appends the lowercase hex of `bytes` to `builder` as one value, without a `String` of
/// its own: ids are appended three times a span.
pub(crate) fn append_hex(builder: &mut StringBuilder, bytes: &[u8]) {
    write_hex(builder, bytes);
    builder.append_value("");
}

/// Appends `value` as [`value_text`] renders it, without a `String` of its own.
pub(crate) fn append_text(builder: &mut StringBuilder, value: &AttrValue<'_>) {
    write_text(builder, value);
    builder.append_value("");
}

/// The parts of a URL we promote.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct UrlParts<'a> {
    pub(crate) host: Option<&'a str>,
    pub(crate) port: Option<i64>,
    pub(crate) path: Option<&'a str>,
}

/// Splits an absolute URL (`https://host:port/path?q`) or an origin-form target (`/path?q`).
pub(crate) fn split_url(url: &str) -> UrlParts<'_> {
    let mut parts = UrlParts::default();
    let rest = match url.find("://") {
        Some(at) => {
            let after_scheme = &url[at + 3..];
            let authority_end = after_scheme
                .find(['/', '?', '#'])
                .unwrap_or(after_scheme.len());
            let authority = &after_scheme[..authority_end];
            let host_port = authority.rsplit('@').next().unwrap_or(authority);
            match host_port.rsplit_once(':') {
                Some((host, port))
                    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    parts.host = Some(host);
                    parts.port = port.parse().ok();
                }
                _ => parts.host = Some(host_port),
            }
            &after_scheme[authority_end..]
        }
        None => url,
    };
    let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
    let path = &rest[..path_end];
    if path.starts_with('/') {
        parts.path = Some(path);
    }
    if parts.host == Some("") {
        parts.host = None;
    }
    parts
}

/// What a client or producer span called; `None` when nothing names it.
pub(crate) fn dependency(
    attrs: Attrs<'_>,
    server_address: Option<&str>,
    server_port: Option<i64>,
) -> Option<String> {
    if let Some(peer) = attrs.first_text(&["peer.service", "service.peer.name"]) {
        return Some(peer.into_owned());
    }
    if let Some(system) = attrs.first_text(&["db.system.name", "db.system"]) {
        return Some(match attrs.first_text(&["db.namespace", "db.name"]) {
            Some(namespace) => format!("{system}/{namespace}"),
            None => system.into_owned(),
        });
    }
    if let Some(service) = attrs.text("rpc.service") {
        return Some(service.into_owned());
    }
    if let Some(method) = attrs.text("rpc.method")
        && let Some((service, _)) = method.rsplit_once('/')
        && !service.is_empty()
    {
        return Some(service.to_owned());
    }
    if let Some(system) = attrs.text("messaging.system") {
        let destination =
            attrs.first_text(&["messaging.destination.name", "messaging.destination"]);
        return Some(match destination {
            Some(destination) => format!("{system}/{destination}"),
            None => system.into_owned(),
        });
    }
    let address = server_address?;
    Some(match server_port {
        Some(port) => format!("{address}:{port}"),
        None => address.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv<'a>(key: &'a str, value: AttrValue<'a>) -> Attr<'a> {
        Attr {
            key,
            value: Some(value),
        }
    }

    fn s<'a>(key: &'a str, value: &'a str) -> Attr<'a> {
        kv(key, AttrValue::Str(value))
    }

    #[test]
    fn splits_urls() {
        let parts = split_url("https://api.example.com:8443/v1/users/7?x=1");
        assert_eq!(parts.host, Some("api.example.com"));
        assert_eq!(parts.port, Some(8443));
        assert_eq!(parts.path, Some("/v1/users/7"));
        let parts = split_url("/search?q=a");
        assert_eq!((parts.host, parts.path), (None, Some("/search")));
        let parts = split_url("http://inventory");
        assert_eq!(
            (parts.host, parts.port, parts.path),
            (Some("inventory"), None, None)
        );
    }

    #[test]
    fn dependencies_in_order_of_precedence() {
        let db = [s("db.system", "postgresql"), s("db.name", "shop")];
        assert_eq!(
            dependency(Attrs(&db), None, None).as_deref(),
            Some("postgresql/shop")
        );
        let redis = [s("db.system.name", "redis"), s("server.address", "cache")];
        assert_eq!(
            dependency(Attrs(&redis), Some("cache"), None).as_deref(),
            Some("redis")
        );
        let peer = [s("peer.service", "billing"), s("db.system", "mysql")];
        assert_eq!(
            dependency(Attrs(&peer), None, None).as_deref(),
            Some("billing")
        );
        let rpc = [s("rpc.method", "shop.Inventory/Reserve")];
        assert_eq!(
            dependency(Attrs(&rpc), None, None).as_deref(),
            Some("shop.Inventory")
        );
        let kafka = [
            s("messaging.system", "kafka"),
            s("messaging.destination.name", "orders"),
        ];
        assert_eq!(
            dependency(Attrs(&kafka), None, None).as_deref(),
            Some("kafka/orders")
        );
        assert_eq!(
            dependency(Attrs(&[]), Some("inventory.internal"), Some(8443)).as_deref(),
            Some("inventory.internal:8443")
        );
        assert_eq!(dependency(Attrs(&[]), None, Some(80)), None);
    }

    #[test]
    fn values_as_text() {
        let attrs = [
            kv("n", AttrValue::Int(404)),
            kv("s", AttrValue::Str("503")),
            kv("b", AttrValue::Bool(true)),
            s("empty", ""),
        ];
        let attrs = Attrs(&attrs);
        assert_eq!(attrs.int("n"), Some(404));
        assert_eq!(attrs.int("s"), Some(503));
        assert_eq!(attrs.text("b").as_deref(), Some("true"));
        assert_eq!(attrs.text("empty"), None);
        assert_eq!(attrs.first_text(&["missing", "n"]).as_deref(), Some("404"));
    }

    #[test]
    fn values_appended_read_as_their_text() {
        let bytes: Vec<u8> = (0..=40).collect();
        let values = [
            AttrValue::Str("GET"),
            AttrValue::Str(""),
            AttrValue::Bool(false),
            AttrValue::Int(-9_007_199_254_740_993),
            AttrValue::Double(0.25),
            AttrValue::Double(1e300),
            AttrValue::Bytes(&bytes),
            AttrValue::Bytes(&[]),
            AttrValue::Structured(Value::ArrayValue(
                opentelemetry_proto::tonic::common::v1::ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::IntValue(1)),
                    }],
                },
            )),
        ];
        let mut builder = StringBuilder::new();
        for value in &values {
            append_text(&mut builder, value);
        }
        let ids: [&[u8]; 3] = [&[0xab; 8], &[0x01; 16], &[]];
        for id in ids {
            append_hex(&mut builder, id);
        }
        let appended = builder.finish();
        let expected: Vec<String> = values
            .iter()
            .map(|v| value_text(v).into_owned())
            .chain(ids.iter().map(|id| hex(id)))
            .collect();
        let appended: Vec<&str> = appended.iter().map(Option::unwrap).collect();
        assert_eq!(appended, expected);
        assert_eq!(appended[2..5], ["false", "-9007199254740993", "0.25"]);
        assert_eq!(appended[8], "[1]");
        // 41 bytes: past one stack buffer of digits.
        assert_eq!(&appended[6][..8], "00010203");
        assert_eq!(&appended[6][60..], "1e1f202122232425262728");
        assert_eq!(appended[9], "abababababababab");
    }
}
