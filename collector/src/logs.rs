//! Decoding an OTLP logs export into rows of the `logs` table.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Builder, RecordBatch, StringBuilder};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;

use crate::convention::{ResourceInfo, hex, value_text};
use crate::rows::{StringMapBuilder, timestamp_builder};
use crate::{Decoded, Rejections};

/// Decodes every valid log record of `request`. `received_ns` stands in for the observed
/// time of records that carry none.
pub fn decode_logs(request: &ExportLogsServiceRequest, received_ns: i64) -> Decoded {
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
    let mut resource_attributes = StringMapBuilder::new();
    let mut rows = 0;

    for resource_logs in &request.resource_logs {
        let resource = ResourceInfo::of(resource_logs.resource.as_ref());
        for scope_logs in &resource_logs.scope_logs {
            let scope = scope_logs.scope.as_ref().map(|s| s.name.as_str());
            for record in &scope_logs.log_records {
                let times = match record_times(record, received_ns) {
                    Ok(times) => times,
                    Err(problem) => {
                        rejections.reject(problem);
                        continue;
                    }
                };
                time.append_value(times.0);
                observed_time.append_value(times.1);
                trace_id.append_option(id_hex(&record.trace_id));
                span_id.append_option(id_hex(&record.span_id));
                severity_number.append_value(record.severity_number);
                let text = record.severity_text.as_str();
                severity_text.append_option((!text.is_empty()).then_some(text));
                let value = record.body.as_ref().and_then(|b| b.value.as_ref());
                body.append_option(value.map(value_text));
                service_name.append_value(&resource.service_name);
                service_version.append_option(resource.service_version.as_deref());
                scope_name.append_option(scope.filter(|s| !s.is_empty()));
                attributes.append_attributes(&record.attributes);
                resource_attributes.append_attributes(resource.attributes);
                rows += 1;
            }
        }
    }
    if rows == 0 {
        return Decoded {
            batch: None,
            rejections,
        };
    }
    let columns: Vec<ArrayRef> = vec![
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
        resource_attributes.finish(),
    ];
    // The columns follow schemas::LOGS one for one; a mismatch is a bug the tests catch.
    let batch = RecordBatch::try_new(schemas::LOGS.schema(), columns)
        .unwrap_or_else(|error| panic!("logs columns do not match the schema: {error}"));
    Decoded {
        batch: Some(batch),
        rejections,
    }
}

/// (time, observed time): the record's time, else its observed time, else the receipt.
fn record_times(record: &LogRecord, received_ns: i64) -> Result<(i64, i64), String> {
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
