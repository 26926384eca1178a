"""The fast OTLP encoder gives exactly what the stock encoder gives, parsed back."""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from meshkit._otlp import SpanEncoder


def record(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    remote = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "opaque"), ("other", "x")]),
    )
    parent = trace.set_span_in_context(NonRecordingSpan(remote))
    tracer = provider.get_tracer("meshkit", "0.1.0", schema_url="https://opentelemetry.io/s/1")
    other = provider.get_tracer("user-code")
    with tracer.start_as_current_span("GET", context=parent, kind=SpanKind.SERVER) as server:
        server.update_name("GET /orders/{order_id}")
        server.set_attributes(
            {
                "http.request.method": "GET",
                "http.response.status_code": 200,
                "url.path": "/orders/7",
                "ratio": 0.25,
                "flag": True,
                "off": False,
                "zero": 0,
                "negative": -5,
                "huge": 2**62,
                "empty": "",
                "unicode": "café ☕",
            }
        )
        with other.start_as_current_span("call", kind=SpanKind.CLIENT) as client:
            client.set_status(Status(StatusCode.ERROR, "upstream said no"))
        with other.start_as_current_span("ok") as internal:
            internal.set_status(Status(StatusCode.OK))
    assert len(exporter.get_finished_spans()) == 3


def spans(resource: Resource, limits: SpanLimits | None = None) -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    record(provider, exporter)
    return exporter.get_finished_spans()


def assert_same(batch: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> None:
    body = SpanEncoder().encode(batch)
    assert body is not None
    assert ExportTraceServiceRequest.FromString(body) == encode_spans(batch)


def test_same_message_as_the_stock_encoder() -> None:
    assert_same(spans(Resource.create({"service.name": "orders"})))


def test_several_resources_scopes_and_dropped_attributes() -> None:
    first = spans(Resource({"service.name": "orders"}, schema_url="https://example/s"))
    second = spans(Resource({"service.name": "web", "n": 3}), SpanLimits(max_span_attributes=2))
    assert any(span.dropped_attributes for span in second)
    assert_same([*first, *second, first[0]])


def test_memoized_values_are_told_apart_by_type() -> None:
    encoder = SpanEncoder()
    for value in (1, True, 1.0, "1"):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("t").start_as_current_span("s", attributes={"v": value}):
            pass
        batch = exporter.get_finished_spans()
        body = encoder.encode(batch)
        assert body is not None
        assert ExportTraceServiceRequest.FromString(body) == encode_spans(batch)


def test_unusual_spans_are_left_to_the_stock_encoder() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("events") as span:
        span.add_event("something", {"at": time.time()})
    with tracer.start_as_current_span("arrays", attributes={"tags": ["a", "b"]}):
        pass
    for span in exporter.get_finished_spans():
        assert SpanEncoder().encode([span]) is None


def test_the_exporter_posts_what_a_collector_decodes() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from meshkit._otlp import MeshOTLPSpanExporter

    received: list[ExportTraceServiceRequest] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(ExportTraceServiceRequest.FromString(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        exporter = MeshOTLPSpanExporter(
            endpoint=f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        )
        batch = spans(Resource.create({"service.name": "orders"}))
        assert exporter.export(batch).name == "SUCCESS"
        exporter.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    (request,) = received
    assert request == encode_spans(batch)
    names = [s.name for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
    assert "GET /orders/{order_id}" in names
