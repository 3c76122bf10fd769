//! The OTLP signals apiscope receives, described once for both transports.

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Collector, Outcome};

/// One OTLP signal's export call: its names, messages and how it is ingested.
pub trait Signal: Send + Sync + 'static {
    /// The gRPC service name.
    const SERVICE: &'static str;
    /// The path of its `Export` method.
    const PATH: &'static str;
    /// The export request.
    type Request: Message + Default + DeserializeOwned + Send + 'static;
    /// The export response.
    type Response: Message + Serialize + Send + 'static;
    /// Stores the request's valid items and builds the response.
    fn export(collector: &Collector, request: Self::Request) -> crate::Result<Self::Response>;
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

    fn export(collector: &Collector, request: Self::Request) -> crate::Result<Self::Response> {
        let Outcome {
            rejected, message, ..
        } = collector.ingest_traces(&request)?;
        Ok(ExportTraceServiceResponse {
            partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: message,
            }),
        })
    }
}

impl Signal for Logs {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;

    fn export(collector: &Collector, request: Self::Request) -> crate::Result<Self::Response> {
        let Outcome {
            rejected, message, ..
        } = collector.ingest_logs(&request)?;
        Ok(ExportLogsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: message,
            }),
        })
    }
}
