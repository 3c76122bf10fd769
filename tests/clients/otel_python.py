"""Sends spans and logs to apiscope with the OpenTelemetry Python SDK's OTLP exporters.

Usage: otel_python.py GRPC_ENDPOINT HTTP_ENDPOINT

Spans use the older HTTP semantic conventions (http.method, http.target, http.status_code,
net.peer.name, ...) that many SDK instrumentations still emit. One JSON line is printed per
span sent (ids and what it was), so the test can check every span by id.
"""

import json
import logging
import sys
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

import grpc

grpc_endpoint, http_endpoint = sys.argv[1], sys.argv[2]


def provider(service, exporter):
    p = TracerProvider(resource=Resource.create({"service.name": service, "service.version": "0.9.1"}))
    p.add_span_processor(SimpleSpanProcessor(exporter))
    return p


def emit(tracer, transport, name, kind, attributes, error=False, parent=None, event=None):
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    span = tracer.start_span(name, kind=kind, attributes=attributes, context=ctx)
    events = []
    if event is not None:
        event_name, event_attributes = event
        event_time = time.time_ns()
        span.add_event(event_name, event_attributes, timestamp=event_time)
        events.append({"name": event_name, "time_ns": event_time, "attributes": event_attributes})
    if error:
        span.set_status(Status(StatusCode.ERROR, "upstream failed"))
    span.end()
    sc = span.get_span_context()
    print(json.dumps({
        "transport": transport,
        "trace_id": format(sc.trace_id, "032x"),
        "span_id": format(sc.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": name,
        "kind": kind.name.lower(),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": attributes,
        "events": events,
        "error": error,
    }), flush=True)
    return span


grpc_provider = provider(
    "legacy-shop",
    GrpcSpanExporter(endpoint=grpc_endpoint, insecure=True, compression=grpc.Compression.Gzip),
)
http_provider = provider(
    "legacy-shop",
    HttpSpanExporter(endpoint=http_endpoint + "/v1/traces", compression=HttpCompression.Gzip),
)

for transport, p in (("grpc", grpc_provider), ("http", http_provider)):
    tracer = p.get_tracer("e2e.python")
    for user in (17, 23):
        server = emit(tracer, transport, "HTTP POST", SpanKind.SERVER, {
            "http.method": "POST",
            "http.target": f"/v1/users/{user}/cart?coupon=XMAS",
            "http.status_code": 201,
            "http.client_ip": "198.51.100.7",
            "http.user_agent": "python-requests/2.32",
            "net.host.name": "shop.example",
        }, event=("cart loaded", {"cart.items": "3"}))
        emit(tracer, transport, "SELECT cart", SpanKind.CLIENT, {
            "db.system": "postgresql",
            "db.name": "carts",
            "net.peer.name": "db.internal",
            "net.peer.port": 5432,
        }, parent=server)
    emit(tracer, transport, "HTTP GET", SpanKind.SERVER, {
        "http.method": "GET",
        "http.target": "/v1/orders/9f86d081884c7d659a2feaa0c55ad015",
        "http.status_code": 502,
        "app.client_id": "partner-acme",
    })
    emit(tracer, transport, "HTTP GET", SpanKind.CLIENT, {
        "http.method": "GET",
        "http.url": "http://inventory.internal:8443/stock/5",
        "http.status_code": 503,
    }, error=True)
    p.shutdown()

# Logs over gRPC through the logging bridge.
logger_provider = LoggerProvider(resource=Resource.create({"service.name": "legacy-shop"}))
logger_provider.add_log_record_processor(SimpleLogRecordProcessor(
    GrpcLogExporter(endpoint=grpc_endpoint, insecure=True, compression=grpc.Compression.Gzip)))
handler = LoggingHandler(level=logging.INFO, logger_provider=logger_provider)
log = logging.getLogger("e2e.python")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.warning("cart service slow: %d ms", 812)
logger_provider.shutdown()
