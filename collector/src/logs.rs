//! Decoding an OTLP logs export into rows of the `logs` table.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Builder, RecordBatch, StringBuilder};

use crate::arrow_builders::{ResourceTextBuilder, StringMapBuilder, timestamp_builder};
use crate::convention::{hex, value_text};
use crate::protobuf::{self, Attr, AttrValue, Fields, Shape, WireError, any_value, push_attr};
use crate::{Decoded, Rejections};

const LOGS: Shape = Shape {
    resources: "ExportLogsServiceRequest.resource_logs",
    scopes: "ResourceLogs.scope_logs",
    items: "ScopeLogs.log_records",
};

/// Decodes every valid log record of `request`, an `ExportLogsServiceRequest` in protobuf.
/// `received_ns` stands in for the observed time of records that carry none. A payload
/// that is not protobuf is refused whole.
pub fn decode_logs(request: &[u8], received_ns: i64) -> Result<Decoded, WireError> {
    let mut rejections = Rejections::default();
    let mut time = timestamp_builder();
    let mut observed_time = timestamp_builder();
    let mut trace_id = StringBuilder::new();
    let mut span_id = StringBuilder::new();
    let mut severity_number = Int32Builder::new();
    let mut severity_text = StringBuilder::new();
    let mut body = StringBuilder::new();
    let mut service_name = StringBuilder::new();
    let mut service_version = StringBuilder::new();
    let mut scope_name = StringBuilder::new();
    let mut attributes = StringMapBuilder::new();
    let mut resource = ResourceTextBuilder::default();
    let mut rows = 0;
    let mut record = RecordView::default();

    protobuf::for_each_item(request, &LOGS, |from, scope, message| {
        record.read(message)?;
        let times = match record_times(&record, received_ns) {
            Ok(times) => times,
            Err(problem) => {
                rejections.reject(problem);
                return Ok(());
            }
        };
        time.append_value(times.0);
        observed_time.append_value(times.1);
        trace_id.append_option(id_hex(record.trace_id));
        span_id.append_option(id_hex(record.span_id));
        severity_number.append_value(record.severity_number);
        let text = record.severity_text;
        severity_text.append_option((!text.is_empty()).then_some(text));
        body.append_option(record.body.as_ref().map(value_text));
        service_name.append_value(&from.service_name);
        service_version.append_option(from.service_version.as_deref());
        scope_name.append_option(scope.filter(|s| !s.is_empty()));
        attributes.append_attributes(&record.attributes);
        resource.append(from);
        rows += 1;
        Ok(())
    })?;
    if rows == 0 {
        return Ok(Decoded {
            batch: None,
            rejections,
        });
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(observed_time.finish()),
        Arc::new(trace_id.finish()),
        Arc::new(span_id.finish()),
        Arc::new(severity_number.finish()),
        Arc::new(severity_text.finish()),
        Arc::new(body.finish()),
        Arc::new(service_name.finish()),
        Arc::new(service_version.finish()),
        Arc::new(scope_name.finish()),
        attributes.finish(),
    ];
    columns.extend(resource.finish());
    // The columns follow schemas::LOGS one for one; a mismatch is a bug the tests catch.
    let batch = RecordBatch::try_new(schemas::LOGS.stored_schema(), columns)
        .unwrap_or_else(|error| panic!("logs columns do not match the schema: {error}"));
    Ok(Decoded {
        batch: Some(batch),
        rejections,
    })
}

/// One log record as sent, borrowed from the payload; its attribute list is reused.
#[derive(Default)]
struct RecordView<'a> {
    time_unix_nano: u64,
    observed_time_unix_nano: u64,
    severity_number: i32,
    severity_text: &'a str,
    body: Option<AttrValue<'a>>,
    attributes: Vec<Attr<'a>>,
    trace_id: &'a [u8],
    span_id: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// Reads a `LogRecord` message.
    fn read(&mut self, message: &'a [u8]) -> Result<(), WireError> {
        self.time_unix_nano = 0;
        self.observed_time_unix_nano = 0;
        self.severity_number = 0;
        self.severity_text = "";
        self.body = None;
        self.attributes.clear();
        self.trace_id = &[];
        self.span_id = &[];
        for field in Fields::of(message) {
            let (number, field) = field?;
            match number {
                1 => self.time_unix_nano = field.fixed64("LogRecord.time_unix_nano")?,
                11 => {
                    self.observed_time_unix_nano =
                        field.fixed64("LogRecord.observed_time_unix_nano")?
                }
                2 => self.severity_number = field.int32("LogRecord.severity_number")?,
                3 => self.severity_text = field.text("LogRecord.severity_text")?,
                5 => {
                    if let Some(body) = any_value(field.bytes("LogRecord.body")?)? {
                        self.body = Some(body);
                    }
                }
                6 => push_attr(&mut self.attributes, field.bytes("LogRecord.attributes")?)?,
                9 => self.trace_id = field.bytes("LogRecord.trace_id")?,
                10 => self.span_id = field.bytes("LogRecord.span_id")?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// (time, observed time): the record's time, else its observed time, else the receipt.
fn record_times(record: &RecordView<'_>, received_ns: i64) -> Result<(i64, i64), String> {
    let to_i64 = |ns: u64, what: &str| {
        i64::try_from(ns).map_err(|_| format!("log record {what} {ns} is out of range"))
    };
    let observed = match record.observed_time_unix_nano {
        0 => received_ns,
        ns => to_i64(ns, "observed_time_unix_nano")?,
    };
    let time = match record.time_unix_nano {
        0 => observed,
        ns => to_i64(ns, "time_unix_nano")?,
    };
    Ok((time, observed))
}

/// Hex of a trace or span id; empty or all-zero ids mean "not correlated".
fn id_hex(id: &[u8]) -> Option<String> {
    (!id.is_empty() && id.iter().any(|b| *b != 0)).then(|| hex(id))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;

    use super::*;
    use crate::testing::s as text;

    #[test]
    fn reads_protobuf_as_the_generated_decoder_does() {
        let records = vec![
            LogRecord {
                time_unix_nano: 1_795_773_600_000_000_000,
                severity_number: 17,
                severity_text: "ERROR".into(),
                body: Some(AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList {
                        values: vec![text("order", "7")],
                    })),
                }),
                attributes: vec![text("http.route", "/orders")],
                trace_id: vec![3; 16],
                span_id: vec![0; 8],
                ..Default::default()
            },
            LogRecord {
                observed_time_unix_nano: 1_795_773_600_000_000_005,
                body: Some(AnyValue {
                    value: Some(Value::StringValue("plain".into())),
                }),
                ..Default::default()
            },
            // Out of range: refused, counted.
            LogRecord {
                time_unix_nano: u64::MAX,
                ..Default::default()
            },
        ];
        let payload = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![text("service.name", "billing")],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let received_ns = 1_795_773_600_000_000_009;
        for end in 0..=payload.len() {
            let ours = decode_logs(&payload[..end], received_ns);
            let Ok(theirs) = ExportLogsServiceRequest::decode(&payload[..end]) else {
                assert!(
                    ours.is_err(),
                    "prost refuses {end} bytes, the decoder does not"
                );
                continue;
            };
            let canonical = decode_logs(&theirs.encode_to_vec(), received_ns).unwrap();
            let ours = ours.unwrap();
            assert_eq!(ours.batch, canonical.batch);
            assert_eq!(ours.rejections.count, canonical.rejections.count);
        }
        let decoded = decode_logs(&payload, received_ns).unwrap();
        assert_eq!(decoded.rejections.count, 1);
        let batch = decoded.batch.unwrap();
        let body = batch.column_by_name("body").unwrap().as_string::<i32>();
        assert_eq!(body.value(0), "{\"order\":\"7\"}");
        assert_eq!(body.value(1), "plain");
        let span_id = batch.column_by_name("span_id").unwrap();
        assert!(span_id.is_null(0), "an all-zero id is no id");
        let trace_id = batch.column_by_name("trace_id").unwrap().as_string::<i32>();
        assert_eq!(trace_id.value(0), "03".repeat(16));
        let service = batch
            .column_by_name("service_name")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(service.value(1), "billing");
        let time = batch
            .column_by_name("time")
            .unwrap()
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        assert_eq!(
            time.value(1),
            1_795_773_600_000_000_005,
            "observed time stands in"
        );
    }
}
