//! OTLP attributes for the tests, as a client would build them.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};

/// `key` with `value`.
pub(crate) fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// `key` with a string value.
pub(crate) fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

/// `key` with an int value.
pub(crate) fn i(key: &str, value: i64) -> KeyValue {
    kv(key, Value::IntValue(value))
}
