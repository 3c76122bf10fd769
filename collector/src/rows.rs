//! Small Arrow building blocks shared by the span and log decoders.

use std::sync::Arc;

use crate::convention::append_text;
use crate::wire::Attr;
use arrow::array::{
    ArrayRef, ListArray, MapBuilder, StringBuilder, StructArray, TimestampNanosecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Fields};

/// A `Map<Utf8, Utf8>` column, filled from OTLP attribute lists.
pub(crate) struct StringMapBuilder(MapBuilder<StringBuilder, StringBuilder>);

impl StringMapBuilder {
    pub(crate) fn new() -> Self {
        Self(MapBuilder::new(
            None,
            StringBuilder::new(),
            StringBuilder::new(),
        ))
    }

    /// Appends one row holding every attribute, values rendered as text. Attributes
    /// without a value are kept with a null value.
    pub(crate) fn append_attributes(&mut self, attributes: &[Attr<'_>]) {
        for attr in attributes {
            self.0.keys().append_value(attr.key);
            match &attr.value {
                Some(value) => append_text(self.0.values(), value),
                None => self.0.values().append_null(),
            }
        }
        // Appending a map entry only fails when keys and values differ in length, which
        // the loop above rules out.
        let _ = self.0.append(true);
    }

    pub(crate) fn finish(&mut self) -> ArrayRef {
        Arc::new(self.0.finish())
    }
}

/// A `Timestamp(ns, "UTC")` column.
pub(crate) fn timestamp_builder() -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::new().with_timezone("UTC")
}

/// The `events` column: each span's events as a list of `{time, name, attributes}`.
pub(crate) struct EventsBuilder {
    times: TimestampNanosecondBuilder,
    names: StringBuilder,
    attributes: StringMapBuilder,
    lengths: Vec<usize>,
}

impl EventsBuilder {
    pub(crate) fn new() -> Self {
        Self {
            times: timestamp_builder(),
            names: StringBuilder::new(),
            attributes: StringMapBuilder::new(),
            lengths: Vec::new(),
        }
    }

    /// Appends one event to the current span's list.
    pub(crate) fn push_event(&mut self, time_ns: i64, name: &str, attributes: &[Attr<'_>]) {
        self.times.append_value(time_ns);
        self.names.append_value(name);
        self.attributes.append_attributes(attributes);
    }

    /// Closes the current span's list after `count` events were pushed for it.
    pub(crate) fn end_span(&mut self, count: usize) {
        self.lengths.push(count);
    }

    pub(crate) fn finish(&mut self) -> ArrayRef {
        let field = schemas::events_field();
        let DataType::List(item) = field.data_type() else {
            unreachable!("events_field is a list")
        };
        let DataType::Struct(fields) = item.data_type() else {
            unreachable!("events are structs")
        };
        let fields: Fields = fields.clone();
        let children: Vec<ArrayRef> = vec![
            Arc::new(self.times.finish()),
            Arc::new(self.names.finish()),
            self.attributes.finish(),
        ];
        let events = StructArray::new(fields, children, None);
        let offsets = OffsetBuffer::from_lengths(std::mem::take(&mut self.lengths));
        Arc::new(ListArray::new(
            item.clone(),
            offsets,
            Arc::new(events),
            None,
        ))
    }
}
