"""The OpenTelemetry adapter's import-time check, and the stock path meshkit takes when an
OpenTelemetry release is not what the adapter was written for: a warning, never a crash,
and spans still made and exported."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import opentelemetry.exporter.otlp.common.http
import opentelemetry.sdk.trace._tracer_metrics
import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meshkit.middleware.telemetry import TelemetryMiddleware
from meshkit.telemetry import _otel_sdk
from meshkit.telemetry._otel_sdk import MeshSpan, SpanStarter
from meshkit.telemetry.export import OTLPBatchProcessor
from meshkit.telemetry.metrics import MeshMetrics
from meshkit.telemetry.sdk import configure_tracing_from_env
from tests._sink import PostSink, post_sink
from tests.middleware.servers import connect, get, running

ADAPTER = "meshkit.telemetry._otel_sdk"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def adapter_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == ADAPTER]


def test_the_installed_releases_pass_the_check(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=ADAPTER):
        assert _otel_sdk.check() is not None
    assert adapter_warnings(caplog) == []
    assert _otel_sdk.usable()


def a_new_span_field(monkeypatch: pytest.MonkeyPatch) -> None:
    constructor = SdkSpan.__init__

    def with_a_new_field(self: SdkSpan, *args: object, **kwargs: object) -> None:
        constructor(self, *args, **kwargs)  # type: ignore[arg-type]
        self._new_field = None  # type: ignore[attr-defined]

    monkeypatch.setattr(SdkSpan, "__init__", with_a_new_field)


def a_parent_based_delegate_renamed(monkeypatch: pytest.MonkeyPatch) -> None:
    constructor = ParentBased.__init__

    def renamed(self: ParentBased, *args: object, **kwargs: object) -> None:
        constructor(self, *args, **kwargs)  # type: ignore[arg-type]
        self._root_sampler = vars(self).pop("_root")  # type: ignore[attr-defined]

    monkeypatch.setattr(ParentBased, "__init__", renamed)


def the_exporters_http_client_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(opentelemetry.exporter.otlp.common.http, "_OTLPHTTPClient")


def the_exporters_http_client_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(opentelemetry.exporter.otlp.common.http._OTLPHTTPClient, "export")


def a_private_name_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(opentelemetry.sdk.trace._tracer_metrics, "NoOpTracerMetrics")


def a_processor_hook_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(SpanProcessor, "_on_ending")


def the_span_kept_under_another_key(monkeypatch: pytest.MonkeyPatch) -> None:
    def elsewhere(span: trace.Span, context: Context | None = None) -> Context:
        return otel_context.set_value("current-span-moved", span, context)

    monkeypatch.setattr(trace, "set_span_in_context", elsewhere)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (a_new_span_field, "_new_field"),
        (a_parent_based_delegate_renamed, "ParentBased._root"),
        (the_exporters_http_client_gone, "otlp.common.http._OTLPHTTPClient"),
        (the_exporters_http_client_changed, "_OTLPHTTPClient.export"),
        (a_private_name_gone, "opentelemetry.sdk.trace._tracer_metrics.NoOpTracerMetrics"),
        (a_processor_hook_gone, "SpanProcessor._on_ending"),
        (the_span_kept_under_another_key, "the current span's context key"),
    ],
)
def test_a_release_that_changed_what_meshkit_relies_on_fails_the_check_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    change: Callable[[pytest.MonkeyPatch], None],
    named: str,
) -> None:
    change(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=ADAPTER):
        assert _otel_sdk.check() is None
    (warning,) = adapter_warnings(caplog)
    assert named in warning
    assert "the SDK's public path" in warning


def test_current_context_reads_what_the_api_reads() -> None:
    context = baggage.set_baggage("tenant", "acme")
    token = otel_context.attach(context)
    try:
        assert _otel_sdk.current_context() is otel_context.get_current() is context
    finally:
        otel_context.detach(token)
    assert _otel_sdk.current_context() is otel_context.get_current()


async def order(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def otlp_provider(url: str) -> tuple[TracerProvider, SpanProcessor]:
    """The provider ``meshkit run`` builds to export to ``url``, and its processor."""
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": url}
    provider = configure_tracing_from_env("orders", environ)
    assert isinstance(provider, TracerProvider)
    (processor,) = provider._active_span_processor._span_processors
    return provider, processor


def serve_a_traced_request(provider: TracerProvider) -> None:
    """One request through a real server, continuing the caller's trace."""
    app = TelemetryMiddleware(
        Starlette(routes=[Route("/orders/{order_id}", order)]),
        service="orders",
        metrics=MeshMetrics(),
        tracer_provider=provider,
    )
    with running(app) as port:
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
        status, _ = get(connect(port), "/orders/7", {"traceparent": traceparent})
    assert status == 200


def assert_exported(collector: PostSink) -> None:
    """The collector decoded the server span, in the caller's trace, and the call span."""
    exported = {
        span.name: span
        for body in collector.bodies
        for resource in ExportTraceServiceRequest.FromString(body).resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    }
    assert exported.keys() == {"GET /orders/{order_id}", "POST"}
    server = exported["GET /orders/{order_id}"]
    assert (server.trace_id.hex(), server.parent_span_id.hex()) == (TRACE_ID, PARENT_ID)


def trace_a_request_and_a_call(url: str) -> str:
    """A request through a real server and a call span, exported to ``url``; what made
    the call span and what exported it."""
    provider, processor = otlp_provider(url)
    serve_a_traced_request(provider)
    call = SpanStarter(provider).start("POST", SpanKind.CLIENT)
    assert call.is_recording()
    call.end()
    provider.shutdown()  # flushes
    exporter = getattr(processor, "span_exporter", None)
    return f"{type(call).__name__} {type(processor).__name__} {type(exporter).__name__}"


#: A process whose SDK differs from what the adapter was written for (a new field in
#: Span) before meshkit is imported, as with a new OpenTelemetry release.
STOCK_PATH_PROCESS = """
import sys
from opentelemetry.sdk.trace import Span
constructor = Span.__init__
def with_a_new_field(self, *args, **kwargs):
    constructor(self, *args, **kwargs)
    self._new_field = None
Span.__init__ = with_a_new_field
from tests.test_otel_sdk import trace_a_request_and_a_call
print(trace_a_request_and_a_call(sys.argv[1]))
"""


def test_without_the_internals_spans_are_made_and_exported_the_stock_way() -> None:
    """As with an SDK release the adapter was not written for: its check fails at import,
    one warning says so, and a request through a real server is traced and exported
    through the stock BatchSpanProcessor and OTLPSpanExporter (imported only then) to a
    real collector."""
    with post_sink() as collector:
        done = subprocess.run(
            [sys.executable, "-c", STOCK_PATH_PROCESS, collector.url("/v1/traces")],
            cwd=Path(__file__).resolve().parent.parent,  # where `tests` imports from
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["_Span", "BatchSpanProcessor", "OTLPSpanExporter"]
    (warning,) = [line for line in done.stderr.splitlines() if "relies on" in line]
    assert "_new_field" in warning
    assert_exported(collector)


def test_with_the_internals_the_mesh_path_is_taken() -> None:
    """The same request and call with the check passed: MeshSpans, encoded and posted by
    OTLPBatchProcessor, decode at the collector as the stock path's spans do."""
    with post_sink() as collector:
        made = trace_a_request_and_a_call(collector.url("/v1/traces"))
    assert made == f"MeshSpan {OTLPBatchProcessor.__name__} NoneType"
    assert_exported(collector)


def test_a_mesh_span_has_every_field_the_sdk_span_constructor_sets() -> None:
    span = SpanStarter(TracerProvider()).start("GET", SpanKind.SERVER)
    assert isinstance(span, MeshSpan)
    assert all(hasattr(span, field) for field in _otel_sdk._SDK_SPAN_FIELDS)


def test_a_span_made_current_on_the_context_var_is_the_apis_current_span() -> None:
    """``attach(with_span(...))`` is ``attach(set_span_in_context(...))`` as the API and a
    nested ``start_as_current_span`` see it; ``detach`` restores what was current."""
    provider = TracerProvider()
    parent = SpanStarter(provider).start("GET", SpanKind.SERVER, Context())
    before = otel_context.get_current()
    token = _otel_sdk.attach(_otel_sdk.with_span(parent, Context({"other": 1})))
    try:
        assert trace.get_current_span() is parent
        assert otel_context.get_value("other") == 1
        with provider.get_tracer("t").start_as_current_span("child") as child:
            assert child.parent == parent.get_span_context()  # type: ignore[attr-defined]
    finally:
        _otel_sdk.detach(token)
    assert otel_context.get_current() is before


def test_a_dropped_spans_trace_id_is_read_without_making_its_context() -> None:
    starter = SpanStarter(TracerProvider(sampler=ParentBased(ALWAYS_OFF)))
    dropped = starter.start("GET", SpanKind.SERVER, Context())
    trace_id = _otel_sdk.trace_id_of(dropped)
    assert "_made" not in vars(dropped)  # no span id drawn, no SpanContext made
    assert dropped.get_span_context().trace_id == trace_id
    assert _otel_sdk.trace_id_of(trace.INVALID_SPAN) == 0


@pytest.mark.parametrize("sampled", [False, True])
def test_a_child_of_a_remote_parent_takes_its_trace_and_sampled_flag(sampled: bool) -> None:
    """What ``_Recorder.start`` reads from the parent's SpanContext tuple."""
    flags = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID if sampled else 0)
    remote = SpanContext(0xABC, 0xDEF, True, flags, TraceState([("k", "v")]))
    context = trace.set_span_in_context(NonRecordingSpan(remote))
    span = SpanStarter(TracerProvider()).start("GET", SpanKind.SERVER, context)
    made = span.get_span_context()
    assert (made.trace_id, made.trace_flags.sampled, span.is_recording()) == (
        0xABC,
        sampled,
        sampled,
    )
    assert made.trace_state == remote.trace_state
    assert made.trace_flags.random_trace_id == sampled
