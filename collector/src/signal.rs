//! The OTLP signals apiscope receives, described once for both transports.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics::Items;
use crate::{Collector, Outcome};

/// One OTLP signal's export call: its names, messages and how it is ingested. Requests
/// reach [`Signal::ingest`] as protobuf, however they arrived: that is what the decoders
/// read in place and what the write-ahead log keeps.
pub trait Signal: Send + Sync + 'static {
    /// The gRPC service name.
    const SERVICE: &'static str;
    /// The path of its `Export` method.
    const PATH: &'static str;
    /// The export request's generated message, which OTLP/JSON is read into.
    type Request: Message + Default + DeserializeOwned + Send + 'static;
    /// The export response.
    type Response: Message + Serialize + Send + 'static;
    /// What it carries, for the receiver metrics.
    const ITEMS: Items;
    /// Stores the valid items of `request`: how many items it held (0 when it does not
    /// decode), and what became of them.
    fn ingest(collector: &Collector, request: Bytes) -> (u64, crate::Result<Outcome>);
    /// The response telling the client about `outcome`.
    fn response(outcome: Outcome) -> Self::Response;

    /// [`Signal::ingest`], recorded in the receiver metrics for `transport`.
    fn export_counted(
        collector: &Collector,
        request: Bytes,
        transport: &'static str,
        started: std::time::Instant,
    ) -> crate::Result<Self::Response> {
        if crate::faults::check(crate::faults::Point::Decode, &collector.config().data_dir).is_err()
        {
            panic!("injected panic while decoding");
        }
        let (count, result) = Self::ingest(collector, request);
        let counted = result
            .as_ref()
            .map(|outcome| outcome.rejected.max(0) as u64);
        crate::metrics::received(Self::ITEMS, transport, started, count, counted);
        result.map(Self::response)
    }
}

/// `opentelemetry.proto.collector.trace.v1.TraceService`.
#[derive(Debug)]
pub struct Traces;

/// `opentelemetry.proto.collector.logs.v1.LogsService`.
#[derive(Debug)]
pub struct Logs;

impl Signal for Traces {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    const ITEMS: Items = crate::metrics::SPANS;

    fn ingest(collector: &Collector, request: Bytes) -> (u64, crate::Result<Outcome>) {
        collector.ingest(crate::wal::Kind::Traces, request)
    }

    fn response(outcome: Outcome) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (outcome.rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: outcome.rejected,
                error_message: outcome.message,
            }),
        }
    }
}

impl Signal for Logs {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    const ITEMS: Items = crate::metrics::LOG_RECORDS;

    fn ingest(collector: &Collector, request: Bytes) -> (u64, crate::Result<Outcome>) {
        collector.ingest(crate::wal::Kind::Logs, request)
    }

    fn response(outcome: Outcome) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: (outcome.rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: outcome.rejected,
                error_message: outcome.message,
            }),
        }
    }
}
