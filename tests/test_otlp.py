"""The OTLP encoder gives exactly what the stock encoder gives, and OTLPBatchProcessor
posts it to real collectors through the stock exporter."""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from meshkit.telemetry._otel_sdk import MeshSpan, SpanPoster, SpanStarter, set_mesh_attributes
from meshkit.telemetry.export import OTLPBatchProcessor, SpanEncoder
from meshkit.testing import Mesh
from tests._sink import PostSink, post_sink


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


def assert_same(
    batch: tuple[ReadableSpan, ...] | list[ReadableSpan], encoder: SpanEncoder | None = None
) -> None:
    body = (encoder or SpanEncoder()).encode(batch)
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
    for value in (1, True, 1.0, "1", 0.0, -0.0, 0, False):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("t").start_as_current_span("s", attributes={"v": value}):
            pass
        batch = exporter.get_finished_spans()
        assert_same(batch, encoder)


def test_unusual_spans_encode_as_the_stock_encoder_encodes_them() -> None:
    """Events, links, arrays, a scope with a version and attributes, a resource with an
    array, a value OTLP cannot carry: rare in a mesh, encoded all the same."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "web", "args": ("a", "-v")}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t", "1.2", attributes={"scope.flag": True, "n": [1, 2]})
    with tracer.start_as_current_span("events") as span:
        span.add_event("something", {"at": time.time(), "tags": (True, False)})
        span.add_event("", {})
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    local = SpanContext(7 << 64 | 9, 5, is_remote=False, trace_state=TraceState([("k", "v")]))
    links = [Link(remote, {"why": "retry", "n": [1.5, -0.0]}), Link(local)]
    with tracer.start_as_current_span("links", links=links):
        pass
    with tracer.start_as_current_span("arrays", attributes={"tags": ["a", "b"], "e": []}):
        pass
    with tracer.start_as_current_span("big", attributes={"n": 2**64}):
        pass
    with tracer.start_as_current_span("plain", attributes={"n": 1}):
        pass
    assert_same(exporter.get_finished_spans())


def test_mesh_spans_encode_as_sdk_spans_do() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "orders"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    starter = SpanStarter(provider)
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    server = starter.start(
        "GET", SpanKind.SERVER, trace.set_span_in_context(NonRecordingSpan(remote))
    )
    set_mesh_attributes(server, {"http.route": "/orders/{id}", "http.response.status_code": 503})
    server.set_status(Status(StatusCode.ERROR))
    client = starter.start("POST", SpanKind.CLIENT, trace.set_span_in_context(server))
    client.record_exception(ValueError("boom"))
    client.end()
    server.end()
    batch = exporter.get_finished_spans()
    assert all(isinstance(span, MeshSpan) for span in batch)
    assert_same(batch)


def test_readable_spans_made_directly_encode_as_the_stock_encoder_encodes_them() -> None:
    """A ReadableSpan built by hand (as other SDKs' bridges build them): events and
    links in tuples, attributes in a plain dict; sizes whose length takes one, two and
    three bytes."""
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    context = SpanContext(0xABC, 0x123, is_remote=False, trace_flags=TraceFlags(1))
    event = Event("retried", {"attempt": 2}, timestamp=5)
    resource = Resource({"service.name": "bridged"})  # one: the encoder groups by identity
    made = [
        ReadableSpan("tiny", context, start_time=1, end_time=2, resource=resource),
        ReadableSpan("dict", context, remote, resource, {"k": "v"}, start_time=1, end_time=2),
        ReadableSpan("events", context, None, resource, None, (event,), (Link(remote),)),
        ReadableSpan("huge", context, attributes={"blob": "x" * 20000}, resource=resource),
    ]
    assert_same(made)


#: Attribute values of every kind the encoders meet, the unusual ones included.
VALUES: list[Any] = [
    *("", "x", "café ☕", "k" * 300),
    *(True, False, 0, 1, -1, 127, 128, 2**63 - 1, -(2**63), 2**64),
    *(0.0, -0.0, 1.5, float("inf"), ["a"], (1, 2)),
]


def random_spans(seed: int, count: int) -> list[ReadableSpan]:
    """Mesh spans and SDK spans of random names, kinds, parents, attributes and statuses."""
    rng = random.Random(seed)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=4))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    starter, tracer = SpanStarter(provider), provider.get_tracer("user")
    for _ in range(count):
        state = rng.choice([TraceState(), TraceState([("v", "1")])])
        remote = rng.random() < 0.5
        parent = SpanContext(rng.getrandbits(128) or 1, 7, remote, TraceFlags(1), state)
        context = rng.choice([None, trace.set_span_in_context(NonRecordingSpan(parent))])
        name, kind = rng.choice(["", "GET", "ünï" * 40]), rng.choice(list(SpanKind))
        if rng.random() < 0.7:
            span = starter.start(name, kind, context)
        else:
            span = tracer.start_span(name, context, kind)
        for _ in range(rng.randrange(6)):
            span.set_attribute(rng.choice(["a", "b", "ключ", "k" * 200]), rng.choice(VALUES))
        code = rng.choice([None, StatusCode.OK, StatusCode.ERROR])
        if code is not None:
            description = rng.choice([None, "", "boom ü"])
            span.set_status(Status(code, description if code is StatusCode.ERROR else None))
        if rng.random() < 0.05:
            span.add_event("e")
        span.end()
    return list(exporter.get_finished_spans())


@pytest.mark.parametrize("seed", range(5))
def test_random_spans_encode_as_the_stock_encoder_encodes_them(seed: int) -> None:
    encoder = SpanEncoder()  # one encoder throughout: its memos must never mix values up
    for batch in range(4):
        assert_same(random_spans(seed * 10 + batch, 60), encoder)


# --- over HTTP ---------------------------------------------------------------------


class Collector:
    """A real OTLP/HTTP endpoint on 127.0.0.1; ``received`` decodes what was posted."""

    def __init__(self, sink: PostSink) -> None:
        self.url = sink.url("/v1/traces")
        self._sink = sink

    @property
    def received(self) -> list[ExportTraceServiceRequest]:
        return [ExportTraceServiceRequest.FromString(body) for body in self._sink.bodies]

    def span_names(self) -> list[str]:
        return [
            span.name
            for request in self.received
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]


@pytest.fixture
def collector() -> Iterator[Collector]:
    with post_sink() as sink:
        yield Collector(sink)


def test_the_processor_posts_what_a_collector_decodes(collector: Collector) -> None:
    processor = OTLPBatchProcessor(SpanPoster(collector.url), schedule_delay=60)
    batch = spans(Resource.create({"service.name": "orders"}))
    for span in batch:
        processor.on_end(span)
    assert processor.force_flush()
    processor.shutdown()
    (request,) = collector.received
    assert request == encode_spans(batch)
    assert "GET /orders/{order_id}" in collector.span_names()


def batched_provider(processor: OTLPBatchProcessor, sampler: Sampler = ALWAYS_ON) -> TracerProvider:
    provider = TracerProvider(sampler=sampler, resource=Resource.create({"service.name": "o"}))
    provider.add_span_processor(processor)
    return provider


def test_the_batch_processor_posts_sampled_spans_in_batches_of_at_most_the_size(
    collector: Collector,
) -> None:
    processor = OTLPBatchProcessor(
        SpanPoster(collector.url), schedule_delay=60, max_export_batch_size=4
    )
    provider = batched_provider(processor, ParentBased(ALWAYS_ON))
    starter = SpanStarter(provider)
    unsampled = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(0))
    starter.start(
        "dropped", SpanKind.SERVER, trace.set_span_in_context(NonRecordingSpan(unsampled))
    ).end()
    tracer = provider.get_tracer("user-code")
    for index in range(10):
        span = starter.start(f"mesh-{index}", SpanKind.SERVER, Context())
        tracer.start_span(f"user-{index}", context=trace.set_span_in_context(span)).end()
        span.end()
    assert processor.force_flush()
    sizes = [
        sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        for request in collector.received
    ]
    assert sizes == [4, 4, 4, 4, 4]  # twenty spans, two scopes, no request above four
    names = collector.span_names()
    assert sorted(names) == sorted(
        [f"mesh-{i}" for i in range(10)] + [f"user-{i}" for i in range(10)]
    )
    provider.shutdown()


def test_a_full_batch_is_posted_without_waiting_for_the_delay(collector: Collector) -> None:
    processor = OTLPBatchProcessor(
        SpanPoster(collector.url), schedule_delay=60, max_export_batch_size=3
    )
    provider = batched_provider(processor)
    for index in range(3):
        provider.get_tracer("t").start_span(f"s{index}").end()
    deadline = time.monotonic() + 10
    while not collector.received and time.monotonic() < deadline:
        time.sleep(0.01)
    assert collector.span_names() == ["s0", "s1", "s2"]
    provider.shutdown()


def test_a_full_queue_drops_new_spans_with_a_warning(
    collector: Collector, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    processor = OTLPBatchProcessor(
        SpanPoster(collector.url),
        schedule_delay=60,
        max_queue_size=5,
        max_export_batch_size=5,
    )
    monkeypatch.setattr(processor._wake, "set", lambda: None)  # keep them waiting
    provider = batched_provider(processor)
    for index in range(8):
        provider.get_tracer("t").start_span(f"s{index}").end()
    with caplog.at_level(logging.WARNING, logger="meshkit.telemetry.export"):
        assert processor.force_flush()
    assert collector.span_names() == [f"s{index}" for index in range(5)]
    assert "dropped 3 spans" in caplog.text
    monkeypatch.undo()
    provider.shutdown()


def test_shutdown_posts_what_waits_and_then_refuses(collector: Collector) -> None:
    processor = OTLPBatchProcessor(SpanPoster(collector.url), schedule_delay=60)
    provider = batched_provider(processor)
    provider.get_tracer("t").start_span("last").end()
    provider.shutdown()
    assert collector.span_names() == ["last"]
    assert not processor._worker.is_alive()
    provider.get_tracer("t").start_span("late").end()
    assert collector.span_names() == ["last"]


def test_a_failed_post_is_reported_by_force_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # retries until then
    poster = SpanPoster(f"http://127.0.0.1:{port}/v1/traces")
    processor = OTLPBatchProcessor(poster, schedule_delay=60)
    provider = batched_provider(processor)
    provider.get_tracer("t").start_span("lost").end()
    assert not processor.force_flush()
    provider.shutdown()


def service_name(resource: Any) -> str:
    (name,) = [a.value.string_value for a in resource.attributes if a.key == "service.name"]
    return str(name)


def test_two_meshkit_services_post_one_trace_to_a_collector(
    mesh: Mesh, collector: Collector
) -> None:
    """`meshkit run` configures the exporter from OTEL_*; SIGTERM flushes what waits."""
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # only the shutdown flush posts
    }
    mesh.start("examples.hello.greeter:app", "greeter", env=env)
    (frontend,) = mesh.start("examples.hello.frontend:app", "frontend", env=env)
    status, _ = mesh.connect(frontend, as_="web").get("/")
    assert status == 200
    assert not collector.received  # nothing posted before the flush
    for process in reversed(mesh.processes):
        assert process.stop() == 0
    spans = [
        (service_name(resource.resource), span)
        for request in collector.received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    server_kind, client_kind = 2, 3  # Span.SpanKind in the OTLP protobuf
    (callee,) = [s for name, s in spans if name == "greeter" and s.kind == server_kind]
    (caller_server,) = [s for name, s in spans if name == "frontend" and s.kind == server_kind]
    clients = [s for name, s in spans if name == "frontend" and s.kind == client_kind]
    assert (callee.name, caller_server.name) == ("GET /hello", "GET /")
    # The caller's CLIENT spans: the call (child of its SERVER span) and its attempt,
    # the parent of the callee's SERVER span.
    (call,) = [s for s in clients if s.parent_span_id == caller_server.span_id]
    attempts = [s for s in clients if s.span_id == callee.parent_span_id]
    assert len(attempts) == 1 and attempts[0].parent_span_id == call.span_id
    assert callee.trace_id == caller_server.trace_id == attempts[0].trace_id
