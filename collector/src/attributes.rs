//! Attributes as decoded: what the protobuf and JSON readers produce and the conventions
//! read (`service.name`, `http.route`, ...), borrowed from the payload where they can be.

use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// An attribute value as sent: text and bytes borrowed from the payload. Arrays and
/// key-value lists, rare in API telemetry, are decoded into their generated messages.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttrValue<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(&'a [u8]),
    /// An index into a profile's string table.
    Strindex(i32),
    /// An array or a key-value list.
    Structured(Value),
}

/// One attribute: its key and, unless it was sent without one, its value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attr<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: Option<AttrValue<'a>>,
}
