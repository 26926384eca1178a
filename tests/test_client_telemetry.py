"""Two real services over mTLS: one trace across both, and the client's metrics."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit._httpx import URL
from meshkit.ca.x509 import LocalAuthority
from meshkit.client import AttemptStarted, CallStarted, MeshClientFactory
from meshkit.middleware.telemetry import TelemetryMiddleware
from meshkit.settings import MeshSettings
from meshkit.telemetry.client import ClientTelemetry
from meshkit.telemetry.metrics import MeshMetrics
from meshkit.telemetry.propagation import append_context_headers
from tests.client.helpers import StaticSource, contexts, endpoint, serve

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
EDGE_SPAN = "00f067aa0ba902b7"


def traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def factory(
    authority: LocalAuthority, source: StaticSource, caller: str, hooks: ClientTelemetry | None
) -> MeshClientFactory:
    settings = MeshSettings(service=caller, trust_domain=authority.trust_domain)
    return MeshClientFactory(source, contexts(authority, caller), settings, hooks=hooks)


class ThroughEvents(ClientTelemetry):
    """A subclass changing how a call is recorded: the client builds it the events."""

    def on_call_start(self, event: CallStarted) -> object:
        return super().on_call_start(event)


def test_client_telemetry_offers_its_recorder_unless_a_subclass_changes_one() -> None:
    hooks = ClientTelemetry(MeshMetrics())
    assert hooks.call_recorder() is hooks
    assert ThroughEvents(MeshMetrics()).call_recorder() is None


@pytest.mark.anyio
@pytest.mark.parametrize("hooks_class", [ClientTelemetry, ThroughEvents])
async def test_one_trace_across_two_services(
    authority: LocalAuthority, hooks_class: type[ClientTelemetry]
) -> None:
    """The same spans and metrics whether the client calls ClientTelemetry's recorder
    (no events built, the call span handed to its attempts) or its hooks with events."""
    source = StaticSource()
    web_provider, web_spans = traced()
    orders_provider, orders_spans = traced()
    web_metrics, orders_metrics = MeshMetrics(), MeshMetrics()
    web_hooks = hooks_class(web_metrics, tracer_provider=web_provider)
    web_client = factory(authority, source, "web", web_hooks)

    async def checkout(request: Request) -> JSONResponse:
        # Application code forwards nothing: the trace context travels by itself.
        response = await web_client.client("orders").get("/orders/7")
        return JSONResponse({"orders": response.status_code})

    async def order(request: Request) -> JSONResponse:
        return JSONResponse({"order": request.path_params["order_id"]})

    web = _served("web", Route("/checkout", checkout), web_metrics, web_provider)
    orders = _served("orders", Route("/orders/{order_id}", order), orders_metrics, orders_provider)
    edge = factory(authority, source, "edge", None)
    async with (
        serve(orders, contexts(authority, "orders")) as orders_port,
        serve(web, contexts(authority, "web")) as web_port,
    ):
        source.set("orders", [endpoint("orders", orders_port)])
        source.set("web", [endpoint("web", web_port)])
        headers = {"traceparent": f"00-{TRACE_ID}-{EDGE_SPAN}-01"}
        response = await edge.client("web").get("/checkout", headers=headers)
        assert response.json() == {"orders": 200}
        await edge.aclose()
        await web_client.aclose()

    by_kind = {(span.kind, span.name): span for span in web_spans.get_finished_spans()}
    server = by_kind[SpanKind.SERVER, "GET /checkout"]
    client_spans = [s for s in web_spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    call, attempt = sorted(client_spans, key=_start)
    (callee,) = orders_spans.get_finished_spans()
    assert {s.context.trace_id for s in (server, call, attempt, callee)} == {int(TRACE_ID, 16)}
    assert _parent(server) == int(EDGE_SPAN, 16)
    assert _parent(call) == server.context.span_id
    assert _parent(attempt) == call.context.span_id
    # The caller's CLIENT span is the parent of the callee's SERVER span.
    assert callee.kind is SpanKind.SERVER and callee.name == "GET /orders/{order_id}"
    assert _parent(callee) == attempt.context.span_id
    assert (callee.attributes or {})["peer.service"] == "web"
    assert (attempt.attributes or {})["peer.service"] == "orders"
    assert (call.attributes or {})["http.response.status_code"] == 200
    assert (call.attributes or {})["url.path"] == "/orders/7"

    assert_one_call_to_orders(web_metrics)
    served = {
        "http_request_method": "GET",
        "http_route": "/orders/{order_id}",
        "http_response_status_code": "200",
        "source_service": "web",
        "source_namespace": "default",
    }
    assert (
        orders_metrics.registry.get_sample_value(
            "http_server_request_duration_seconds_count", served
        )
        == 1
    )


ORDERS_200 = {
    "http_request_method": "GET",
    "destination_service": "orders",
    "http_response_status_code": "200",
    "error_type": "",
    "destination_subset": "",
}


def assert_one_call_to_orders(metrics: MeshMetrics) -> None:
    """The client's two series counted one GET to orders answered 200."""
    sample = metrics.registry.get_sample_value
    assert sample("http_client_request_duration_seconds_count", ORDERS_200) == 1
    assert sample("meshkit_client_attempts_total", ORDERS_200) == 1


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def test_mesh_internals_come_from_the_client_events() -> None:
    from meshkit.client import (
        BreakerChanged,
        CallEnded,
        CallStarted,
        EndpointEjected,
        RetryBudgetSpent,
        RetryScheduled,
    )

    metrics = MeshMetrics()
    hooks = ClientTelemetry(metrics, tracer_provider=traced()[0])
    hooks.on_retry_scheduled(RetryScheduled("orders", "GET", 1, 0.01, "status 503"))
    hooks.on_retry_budget_spent(RetryBudgetSpent("orders", "GET", "status 503"))
    hooks.on_endpoint_ejected(EndpointEjected("orders", endpoint("orders", 1), 30.0, 1))
    hooks.on_breaker_changed(BreakerChanged("orders", "closed", "open"))
    state = hooks.on_call_start(CallStarted("orders", "GET", "/orders/1"))
    error = ConnectionError("refused")
    hooks.on_call_end(CallEnded("orders", "GET", "/orders/1", None, 0.2, 2, error, state))

    sample = metrics.registry.get_sample_value
    orders = {"destination_service": "orders"}
    assert sample("meshkit_retries_total", orders) == 1
    assert sample("meshkit_retry_budget_exhausted_total", orders) == 1
    assert sample("meshkit_endpoint_ejections_total", orders) == 1
    assert sample("meshkit_circuit_state", orders) == 2
    failed = {
        "http_request_method": "GET",
        "destination_service": "orders",
        "http_response_status_code": "",
        "error_type": "ConnectionError",
        "destination_subset": "",
    }
    assert sample("http_client_request_duration_seconds_count", failed) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": True})])
async def test_client_durations_resolve_below_a_millisecond_on_uvloop(
    authority: LocalAuthority,
) -> None:
    """`meshkit run` serves on uvloop, whose loop.time() counts whole milliseconds:
    calls timed on it would all last 0, 1, 2... ms."""
    source, metrics = StaticSource(), MeshMetrics()
    web_client = factory(authority, source, "web", ClientTelemetry(metrics))

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({})

    async with serve(
        Starlette(routes=[Route("/ping", ping)]), contexts(authority, "orders")
    ) as port:
        source.set("orders", [endpoint("orders", port)])
        for _ in range(20):
            assert (await web_client.client("orders").get("/ping")).status_code == 200
        await web_client.aclose()
    labels = {
        "http_request_method": "GET",
        "destination_service": "orders",
        "http_response_status_code": "200",
        "error_type": "",
        "destination_subset": "",
    }
    total = metrics.registry.get_sample_value("http_client_request_duration_seconds_sum", labels)
    assert total is not None and total > 0
    milliseconds = total * 1000
    assert abs(milliseconds - round(milliseconds)) > 1e-6


def callers_context(
    flags: int, trace_state: list[tuple[str, str]], entries: dict[str, str]
) -> otel_context.Context:
    """What a request from the edge brings: its span (remote) and baggage ``entries``."""
    incoming = SpanContext(
        int(TRACE_ID, 16), int(EDGE_SPAN, 16), True, TraceFlags(flags), TraceState(trace_state)
    )
    context = trace.set_span_in_context(NonRecordingSpan(incoming))
    for name, value in entries.items():
        context = baggage.set_baggage(name, value, context)
    return context


@pytest.mark.parametrize(
    ("provider", "flags", "trace_state", "entries"),
    [
        (TracerProvider(), 1, [], {}),
        (TracerProvider(), 1, [("vendor", "x")], {}),
        (TracerProvider(sampler=ALWAYS_OFF), 0, [("vendor", "x")], {}),
        (TracerProvider(), 1, [], {"tenant": "blue", "plan": "gold"}),
        (TracerProvider(sampler=ALWAYS_OFF), 2, [("vendor", "x")], {"tenant": "blue"}),
        (trace.NoOpTracerProvider(), 1, [], {}),
    ],
    ids=["sampled", "tracestate", "dropped", "baggage", "dropped-baggage", "no-sdk"],
)
def test_attempt_headers_are_what_the_w3c_propagators_write(
    provider: trace.TracerProvider,
    flags: int,
    trace_state: list[tuple[str, str]],
    entries: dict[str, str],
) -> None:
    context = callers_context(flags, trace_state, entries)
    token = otel_context.attach(context)
    try:
        hooks = ClientTelemetry(MeshMetrics(), tracer_provider=provider)
        headers: list[tuple[str, str]] = []
        span = hooks.on_attempt_start(AttemptStarted("orders", "GET", 1, None, headers))
        expected: list[tuple[str, str]] = []
        append_context_headers(expected, trace.set_span_in_context(span))  # type: ignore[arg-type]
    finally:
        otel_context.detach(token)
    assert headers == expected
    assert headers[0][0] == "traceparent"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("flags", "tracestate"), [("00", None), ("02", "vendor=x,other=y")], ids=["plain", "random"]
)
async def test_a_call_from_an_unsampled_request_carries_its_trace_on(
    authority: LocalAuthority, flags: str, tracestate: str | None
) -> None:
    """A request the caller's sampler dropped: the call continues the server span's
    decision (no span recorded anywhere), and the callee gets the trace id, flags and
    trace state with a new span id, and the call is counted."""
    source, web_metrics = StaticSource(), MeshMetrics()
    web_provider, web_spans = traced()
    web_hooks = ClientTelemetry(web_metrics, tracer_provider=web_provider)
    web_client = factory(authority, source, "web", web_hooks)

    async def checkout(request: Request) -> JSONResponse:
        response = await web_client.client("orders").get("/echo")
        return JSONResponse(response.json())

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({k: request.headers.get(k) for k in ("traceparent", "tracestate")})

    web = _served("web", Route("/checkout", checkout), web_metrics, web_provider)
    edge = factory(authority, source, "edge", None)
    async with (
        serve(Starlette(routes=[Route("/echo", echo)]), contexts(authority, "orders")) as port,
        serve(web, contexts(authority, "web")) as web_port,
    ):
        source.set("orders", [endpoint("orders", port)])
        source.set("web", [endpoint("web", web_port)])
        headers = {"traceparent": f"00-{TRACE_ID}-{EDGE_SPAN}-{flags}"}
        if tracestate is not None:
            headers["tracestate"] = tracestate
        seen = (await edge.client("web").get("/checkout", headers=headers)).json()
        await edge.aclose()
        await web_client.aclose()

    version, trace_id, span_id, sent_flags = seen["traceparent"].split("-")
    assert (version, trace_id, sent_flags) == ("00", TRACE_ID, flags)
    assert len(span_id) == 16 and int(span_id, 16) not in (0, int(EDGE_SPAN, 16))
    assert seen["tracestate"] == tracestate
    assert web_spans.get_finished_spans() == ()
    assert_one_call_to_orders(web_metrics)


@pytest.mark.parametrize(
    ("provider", "flags", "trace_state", "entries"),
    [
        (TracerProvider(), 1, [], {}),
        (TracerProvider(), 1, [("vendor", "x")], {}),
        (TracerProvider(sampler=ALWAYS_OFF), 0, [("vendor", "x")], {}),
        (TracerProvider(sampler=ALWAYS_OFF), 2, [], {}),
        (TracerProvider(), 1, [], {"tenant": "blue", "plan": "gold"}),
        (TracerProvider(sampler=ALWAYS_OFF), 2, [("vendor", "x")], {"tenant": "blue"}),
        (trace.NoOpTracerProvider(), 1, [], {}),
    ],
    ids=[
        "sampled",
        "tracestate",
        "dropped",
        "dropped-random",
        "baggage",
        "dropped-baggage",
        "no-sdk",
    ],
)
def test_the_recorders_attempt_headers_are_what_the_w3c_propagators_write(
    provider: trace.TracerProvider,
    flags: int,
    trace_state: list[tuple[str, str]],
    entries: dict[str, str],
) -> None:
    """The recorder's attempt, a dropped one without a span included: the headers the
    propagators write for a span in the caller's trace, with the attempt's span id."""
    context = callers_context(flags, trace_state, entries)
    token = otel_context.attach(context)
    try:
        hooks = ClientTelemetry(MeshMetrics(), tracer_provider=provider)
        call = hooks.call_started("orders", "GET", URL("https://orders/x"), "")
        headers: list[tuple[str, str]] = []
        hooks.attempt_started(call, 1, None, headers)
    finally:
        otel_context.detach(token)
    span_id = int(headers[0][1].split("-")[2], 16)
    assert span_id not in (0, int(EDGE_SPAN, 16)) or isinstance(provider, trace.NoOpTracerProvider)
    sent = NonRecordingSpan(
        SpanContext(int(TRACE_ID, 16), span_id, False, TraceFlags(flags), TraceState(trace_state))
    )
    expected: list[tuple[str, str]] = []
    append_context_headers(expected, trace.set_span_in_context(sent, context))
    assert headers == expected


def _served(
    service: str, route: Route, metrics: MeshMetrics, provider: TracerProvider
) -> TelemetryMiddleware:
    """``route`` in a Starlette app behind the telemetry middleware of ``service``."""
    return TelemetryMiddleware(
        Starlette(routes=[route]), service=service, metrics=metrics, tracer_provider=provider
    )
