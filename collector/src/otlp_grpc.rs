//! OTLP/gRPC receiver: `TraceService/Export` and `LogsService/Export`, gzip accepted.
//!
//! Refusals worth retrying are UNAVAILABLE with a `google.rpc.RetryInfo` detail, as OTLP
//! clients expect; bad input is INVALID_ARGUMENT naming the problem.
//!
//! The services are served here rather than through the generated `*ServiceServer` types:
//! those decode every request into owned messages (and report a malformed payload as
//! INTERNAL, a server bug to clients), where apiscope keeps the payload's bytes, decodes
//! them in place off the runtime's I/O threads and answers INVALID_ARGUMENT.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{
    Body, BoxFuture, CompressionEncoding, Context, EnabledCompressionEncodings, Poll, Service,
    StdError, http,
};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::signal::{Logs, Signal, Traces};
use crate::{Collector, Error, ROOM_PATIENCE};

/// The gRPC service of one signal, ready for `tonic::transport::Server::add_service`.
#[derive(Debug)]
pub struct ExportService<S> {
    collector: Arc<Collector>,
    signal: PhantomData<fn() -> S>,
}

impl<S> Clone for ExportService<S> {
    fn clone(&self) -> Self {
        Self {
            collector: self.collector.clone(),
            signal: PhantomData,
        }
    }
}

/// Both OTLP gRPC services, with gzip and the body limit applied.
pub fn services(collector: Arc<Collector>) -> (ExportService<Traces>, ExportService<Logs>) {
    let traces = ExportService {
        collector: collector.clone(),
        signal: PhantomData,
    };
    let logs = ExportService {
        collector,
        signal: PhantomData,
    };
    (traces, logs)
}

impl<S: Signal> NamedService for ExportService<S> {
    const NAME: &'static str = S::SERVICE;
}

impl<S, B> Service<http::Request<B>> for ExportService<S>
where
    S: Signal,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != S::PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        let limit = self.collector.config().max_body_bytes;
        let handler = Handler::<S> {
            collector: self.collector.clone(),
            signal: PhantomData,
        };
        Box::pin(async move {
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(ExportCodec::<S>(PhantomData))
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(handler, request).await)
        })
    }
}

struct Handler<S> {
    collector: Arc<Collector>,
    signal: PhantomData<fn() -> S>,
}

impl<S: Signal> UnaryService<Bytes> for Handler<S> {
    type Response = S::Response;
    type Future = BoxFuture<Response<S::Response>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let collector = self.collector.clone();
        let request = request.into_inner();
        let started = std::time::Instant::now();
        Box::pin(async move {
            collector.buffer().room(ROOM_PATIENCE).await;
            // Decoding and converting to Arrow are CPU work: keep them off the runtime's I/O
            // threads.
            let export = move || S::export_counted(&collector, request, "grpc", started);
            match tokio::task::spawn_blocking(export).await {
                Ok(Ok(response)) => Ok(Response::new(response)),
                Ok(Err(error)) => Err(status(&error)),
                Err(failed) => Err(status(&Error::from_task(failed))),
            }
        })
    }
}

/// Protobuf responses; requests are passed on as bytes, decoded by the ingest.
struct ExportCodec<S>(PhantomData<fn() -> S>);

impl<S: Signal> Codec for ExportCodec<S> {
    type Encode = S::Response;
    type Decode = Bytes;
    type Encoder = ExportCodec<S>;
    type Decoder = ExportCodec<S>;

    fn encoder(&mut self) -> Self::Encoder {
        ExportCodec(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ExportCodec(PhantomData)
    }
}

impl<S: Signal> Encoder for ExportCodec<S> {
    type Item = S::Response;
    type Error = Status;

    fn encode(&mut self, item: S::Response, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|error| Status::internal(format!("encoding the response: {error}")))
    }
}

impl<S: Signal> Decoder for ExportCodec<S> {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The gRPC status for `error`, with RetryInfo when the client should retry.
pub fn status(error: &Error) -> Status {
    match error.retry_after() {
        Some(after) => Status::with_error_details(
            error.grpc_code(),
            error.to_string(),
            ErrorDetails::with_retry_info(Some(after)),
        ),
        None => Status::new(error.grpc_code(), error.to_string()),
    }
}
