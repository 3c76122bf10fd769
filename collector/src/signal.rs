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

/// An export request and, when it arrived as protobuf, the bytes it was decoded from: the
/// write-ahead log keeps those bytes as they are rather than encoding the request again.
#[derive(Debug, Clone, Default)]
pub struct Received<R> {
    /// The decoded request.
    pub request: R,
    /// Its protobuf encoding as received; `None` when it came in another encoding (JSON) or
    /// was built in memory.
    pub protobuf: Option<Bytes>,
}

impl<R: Message + Default> Received<R> {
    /// Decodes a protobuf payload, keeping it.
    pub fn decode(protobuf: Bytes) -> Result<Self, prost::DecodeError> {
        let request = R::decode(protobuf.clone())?;
        Ok(Self {
            request,
            protobuf: Some(protobuf),
        })
    }

    /// The protobuf encoding: the bytes received, or the request encoded now.
    pub(crate) fn protobuf(&self) -> Bytes {
        match &self.protobuf {
            Some(bytes) => bytes.clone(),
            None => self.request.encode_to_vec().into(),
        }
    }
}

impl<R> From<R> for Received<R> {
    fn from(request: R) -> Self {
        Self {
            request,
            protobuf: None,
        }
    }
}

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
    /// What it carries, for the receiver metrics.
    const ITEMS: Items;
    /// Stores the request's valid items and builds the response.
    fn export(
        collector: &Collector,
        received: Received<Self::Request>,
    ) -> crate::Result<Self::Response>;
    /// How many items the request holds.
    fn count(request: &Self::Request) -> u64;
    /// How many the response says were refused as invalid.
    fn rejected(response: &Self::Response) -> u64;

    /// [`Signal::export`], recorded in the receiver metrics for `transport`.
    fn export_counted(
        collector: &Collector,
        received: Received<Self::Request>,
        transport: &'static str,
        started: std::time::Instant,
    ) -> crate::Result<Self::Response> {
        let count = Self::count(&received.request);
        let result = Self::export(collector, received);
        let counted = result.as_ref().map(Self::rejected);
        crate::metrics::received(Self::ITEMS, transport, started, count, counted);
        result
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

    fn count(request: &Self::Request) -> u64 {
        let spans = request.resource_spans.iter().flat_map(|r| &r.scope_spans);
        spans.map(|s| s.spans.len() as u64).sum()
    }

    fn rejected(response: &Self::Response) -> u64 {
        let partial = response.partial_success.as_ref();
        partial.map_or(0, |p| p.rejected_spans.max(0) as u64)
    }

    fn export(
        collector: &Collector,
        received: Received<Self::Request>,
    ) -> crate::Result<Self::Response> {
        let Outcome {
            rejected, message, ..
        } = collector.ingest_traces(&received)?;
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
    const ITEMS: Items = crate::metrics::LOG_RECORDS;

    fn count(request: &Self::Request) -> u64 {
        let scopes = request.resource_logs.iter().flat_map(|r| &r.scope_logs);
        scopes.map(|s| s.log_records.len() as u64).sum()
    }

    fn rejected(response: &Self::Response) -> u64 {
        let partial = response.partial_success.as_ref();
        partial.map_or(0, |p| p.rejected_log_records.max(0) as u64)
    }

    fn export(
        collector: &Collector,
        received: Received<Self::Request>,
    ) -> crate::Result<Self::Response> {
        let Outcome {
            rejected, message, ..
        } = collector.ingest_logs(&received)?;
        Ok(ExportLogsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: message,
            }),
        })
    }
}
