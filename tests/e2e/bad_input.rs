//! Bad input gets a clear 4xx (or INVALID_ARGUMENT) and costs nothing already accepted.

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::now_ns;
use crate::support::daemon::Daemon;
use crate::support::otlp::{gzip, hex_id, post, span, traces};

/// `google.rpc.Status`, as OTLP/HTTP error bodies carry it.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn good_request(n: u64) -> Vec<u8> {
    let spans = (0..n)
        .map(|i| {
            span(
                &hex_id(0x5eed, 16),
                &hex_id(i + 1, 8),
                "GET /ok",
                2,
                now_ns() - 1_000_000_000,
                5,
                json!([]),
            )
        })
        .collect();
    serde_json::to_vec(&traces("steady", spans)).unwrap()
}

#[test]
fn malformed_payloads_are_refused_with_a_reason_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let (status, _) = post(
        &daemon,
        "/v1/traces",
        "application/json",
        None,
        good_request(4),
    );
    assert_eq!(status, 200);
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM spans", 4), 4);

    let protobuf = "application/x-protobuf";
    let valid = serde_json::from_slice::<ExportTraceServiceRequest>(&good_request(3))
        .unwrap()
        .encode_to_vec();

    // Garbage protobuf: a 400 whose google.rpc.Status names the problem.
    let (status, body) = post(
        &daemon,
        "/v1/traces",
        protobuf,
        None,
        vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x01],
    );
    assert_eq!(status, 400);
    let problem = RpcStatus::decode(body.as_slice()).expect("a google.rpc.Status body");
    assert!(
        problem.message.contains("invalid protobuf"),
        "{}",
        problem.message
    );
    assert_eq!(problem.code, 3, "INVALID_ARGUMENT");

    // A truncated body.
    let (status, body) = post(
        &daemon,
        "/v1/traces",
        protobuf,
        None,
        valid[..valid.len() - 7].to_vec(),
    );
    assert_eq!(
        status,
        400,
        "{}",
        RpcStatus::decode(body.as_slice())
            .map(|s| s.message)
            .unwrap_or_default()
    );

    // Wrongly typed JSON: the problem is named, as JSON since the request was JSON.
    for bad in [
        json!({"resourceSpans": "none"}),
        json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 42}]}]}]}),
        json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}),
        json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}),
    ] {
        let (status, body) = post(
            &daemon,
            "/v1/traces",
            "application/json",
            None,
            serde_json::to_vec(&bad).unwrap(),
        );
        assert_eq!(status, 400, "{bad}");
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            problem["message"]
                .as_str()
                .unwrap()
                .contains("invalid OTLP/JSON"),
            "{problem}"
        );
    }
    let (status, _) = post(
        &daemon,
        "/v1/traces",
        "application/json",
        None,
        b"{\"resourceSpans\": [".to_vec(),
    );
    assert_eq!(status, 400);

    // A body that claims gzip but is not.
    let (status, body) = post(&daemon, "/v1/traces", protobuf, Some("gzip"), valid.clone());
    assert_eq!(status, 400);
    assert!(
        RpcStatus::decode(body.as_slice())
            .unwrap()
            .message
            .contains("gzip")
    );
    // A gzip stream cut short.
    let zipped = gzip(&valid);
    let (status, _) = post(
        &daemon,
        "/v1/traces",
        protobuf,
        Some("gzip"),
        zipped[..zipped.len() / 2].to_vec(),
    );
    assert_eq!(status, 400);

    // A gzip bomb: 64 MiB of zeros in a few tens of KiB, over the 20 MiB limit after inflating.
    let bomb = gzip(&vec![0u8; 64 * 1024 * 1024]);
    assert!(bomb.len() < 200 * 1024);
    let (status, body) = post(&daemon, "/v1/traces", protobuf, Some("gzip"), bomb);
    assert_eq!(status, 413);
    assert!(
        RpcStatus::decode(body.as_slice())
            .unwrap()
            .message
            .contains("limit")
    );

    // Unknown content type and encoding.
    let (status, _) = post(&daemon, "/v1/traces", "text/plain", None, b"hello".to_vec());
    assert_eq!(status, 415);
    let (status, _) = post(&daemon, "/v1/traces", protobuf, Some("br"), valid.clone());
    assert_eq!(status, 415);

    // Over gRPC: garbage bytes are INVALID_ARGUMENT.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let grpc_status = runtime.block_on(raw_grpc_export(
        &daemon.grpc_endpoint(),
        Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
    ));
    let error = grpc_status.expect_err("garbage must be refused");
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error}");

    // Everything accepted before is still there, and nothing of the bad requests is.
    assert_eq!(daemon.count("SELECT count(*) FROM spans"), 4);
    // And the daemon still accepts good data.
    let (status, _) = post(&daemon, "/v1/traces", protobuf, Some("gzip"), gzip(&valid));
    assert_eq!(status, 200);
    assert_eq!(daemon.wait_for_count("SELECT count(*) FROM spans", 7), 7);
}

/// Sends raw bytes as the body of a gRPC TraceService/Export call.
pub(crate) async fn raw_grpc_export(
    endpoint: &str,
    payload: Bytes,
) -> Result<Bytes, tonic::Status> {
    raw_grpc_call(endpoint, payload, None).await
}

/// Like [`raw_grpc_export`], with the message gzip-compressed by the client.
pub(crate) async fn raw_grpc_export_compressed(
    endpoint: &str,
    payload: Bytes,
) -> Result<Bytes, tonic::Status> {
    raw_grpc_call(
        endpoint,
        payload,
        Some(tonic::codec::CompressionEncoding::Gzip),
    )
    .await
}

async fn raw_grpc_call(
    endpoint: &str,
    payload: Bytes,
    compression: Option<tonic::codec::CompressionEncoding>,
) -> Result<Bytes, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    if let Some(encoding) = compression {
        client = client.send_compressed(encoding);
    }
    client.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    client
        .unary(tonic::Request::new(payload), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A codec that sends and receives message bodies as they are.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
