from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message

from meshkit.ca.x509 import LocalAuthority
from meshkit.middleware._asgi import ObservedSend
from meshkit.middleware.telemetry import TelemetryMiddleware
from meshkit.telemetry.metrics import MeshMetrics
from meshkit.telemetry.propagation import inject_context
from tests.middleware.servers import connect, get, running

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def echo_context(request: Request) -> JSONResponse:
    """What a mesh client call made from this handler would send on."""
    headers: dict[str, str] = {}
    inject_context(headers)
    return JSONResponse({"outgoing": headers, "baggage": dict(baggage.get_all())})


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


def build(
    metrics: MeshMetrics, provider: trace.TracerProvider | None = None, **options: bool
) -> ASGIApp:
    inner = Starlette(routes=[Route("/users/{user_id:int}", echo_context)])
    app = Starlette(
        routes=[
            Route("/orders/{order_id}", echo_context),
            Route("/boom", boom),
            Mount("/accounts/{account}", app=inner),
        ]
    )
    return TelemetryMiddleware(
        app, service="orders", metrics=metrics, tracer_provider=provider, **options
    )


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def sample(metrics: MeshMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def duration_count(metrics: MeshMetrics, route: str, status: str, source: str) -> float | None:
    return sample(
        metrics,
        "http_server_request_duration_seconds_count",
        http_request_method="GET",
        http_route=route,
        http_response_status_code=status,
        source_service=source,
        source_namespace="unknown" if source == "unknown" else "default",
    )


def test_metrics_carry_route_templates_and_the_verified_caller(
    authority: LocalAuthority, tmp_path: Path
) -> None:
    metrics = MeshMetrics()
    app = build(metrics)
    with running(app, identity=authority.issue("orders"), directory=tmp_path) as port:
        connection = connect(port, authority.issue("web"))
        assert get(connection, "/orders/17")[0] == 200
        assert get(connection, "/orders/18")[0] == 200
        assert get(connection, "/accounts/acme/users/3")[0] == 200
        assert get(connection, "/nowhere/9")[0] == 404
        assert get(connection, "/boom")[0] == 500
        connection.close()
    assert duration_count(metrics, "/orders/{order_id}", "200", "web") == 2
    assert duration_count(metrics, "/accounts/{account}/users/{user_id}", "200", "web") == 1
    assert duration_count(metrics, "unmatched", "404", "web") == 1
    assert duration_count(metrics, "/boom", "500", "web") == 1
    assert sample(metrics, "http_server_active_requests", http_request_method="GET") == 0


def test_a_caller_without_identity_is_unknown(tmp_path: Path) -> None:
    metrics = MeshMetrics()
    with running(build(metrics)) as port:
        connection = connect(port)
        connection.request("PROPFIND", "/orders/1")  # not an HTTP method of semconv: _OTHER
        connection.getresponse().read()
        assert get(connection, "/orders/1")[0] == 200
        connection.close()
    assert duration_count(metrics, "/orders/{order_id}", "200", "unknown") == 1
    other = sample(
        metrics,
        "http_server_request_duration_seconds_count",
        http_request_method="_OTHER",
        http_route="/orders/{order_id}",
        http_response_status_code="405",
        source_service="unknown",
        source_namespace="unknown",
    )
    assert other == 1


def test_server_span_continues_the_incoming_trace_and_is_current_in_the_handler(
    authority: LocalAuthority,
    tmp_path: Path,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    headers = {
        "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
        "tracestate": "vendor=opaque",
        "baggage": "tenant=acme",
    }
    app = build(MeshMetrics(), provider)
    with running(app, identity=authority.issue("orders"), directory=tmp_path) as port:
        connection = connect(port, authority.issue("web"))
        status, body = get(connection, "/orders/17?expand=1", headers)
        connection.close()
    assert status == 200
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET /orders/{order_id}"
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None and span.parent.is_remote
    assert span.parent.span_id == int(PARENT_ID, 16)
    assert span.context.trace_id == int(TRACE_ID, 16)
    assert span.context.trace_state.get("vendor") == "opaque"
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.route"] == "/orders/{order_id}"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.path"] == "/orders/17"
    assert attributes["url.query"] == "expand=1"
    assert attributes["url.scheme"] == "https"
    assert attributes["peer.service"] == "web"
    assert attributes["meshkit.peer.spiffe_id"] == "spiffe://meshkit.local/ns/default/svc/web"
    # The handler's outgoing calls continue this span's trace, baggage included.
    seen = json.loads(body)
    span_id = format(span.context.span_id, "016x")
    assert seen["outgoing"]["traceparent"] == f"00-{TRACE_ID}-{span_id}-01"
    assert seen["outgoing"]["baggage"] == "tenant=acme"
    assert seen["baggage"] == {"tenant": "acme"}


def test_each_server_span_has_its_own_request_attributes(
    authority: LocalAuthority,
    tmp_path: Path,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Spans of one route and caller share their constant attributes, nothing else."""
    provider, exporter = spans
    app = build(MeshMetrics(), provider)
    with running(app, identity=authority.issue("orders"), directory=tmp_path) as port:
        connection = connect(port, authority.issue("web"))
        get(connection, "/orders/17?expand=1")
        get(connection, "/orders/18")
        connection.close()
    first, second = (dict(span.attributes or {}) for span in exporter.get_finished_spans())
    assert first["url.query"] == "expand=1"
    assert second == {
        "http.request.method": "GET",
        "url.scheme": "https",
        "network.protocol.version": "1.1",
        "http.route": "/orders/{order_id}",
        "peer.service": "web",
        "meshkit.peer.spiffe_id": "spiffe://meshkit.local/ns/default/svc/web",
        "url.path": "/orders/18",
        "http.response.status_code": 200,
        "client.address": "127.0.0.1",
    }


@pytest.mark.parametrize(
    "traceparent",
    [
        "garbage",
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id is invalid
        f"00-{TRACE_ID}-{PARENT_ID}",  # missing flags
        f"zz-{TRACE_ID}-{PARENT_ID}-01",
    ],
)
def test_malformed_traceparent_starts_a_new_trace(
    traceparent: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    with running(build(MeshMetrics(), provider)) as port:
        connection = connect(port)
        status, _ = get(connection, "/orders/1", {"traceparent": traceparent})
        connection.close()
    assert status == 200
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.context.trace_id != int(TRACE_ID, 16)


@pytest.mark.parametrize("flags", ["00", "02"])
def test_unsampled_requests_still_propagate_the_trace(
    flags: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """An unsampled caller's SERVER span is decided from its traceparent's ids alone
    (no caller's context built): the handler's calls still go on in the caller's trace,
    from a span of their own, unsampled, keeping the random-trace-id flag (02)."""
    _, exporter = spans
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    incoming = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-{flags}"}
    with running(build(MeshMetrics(), provider)) as port:
        connection = connect(port)
        _, body = get(connection, "/orders/1", incoming)
        connection.close()
    assert exporter.get_finished_spans() == ()
    version, trace_id, span_id, sent_flags = json.loads(body)["outgoing"]["traceparent"].split("-")
    assert (version, trace_id, sent_flags) == ("00", TRACE_ID, flags)
    assert span_id not in (PARENT_ID, "0" * 16)


def test_kept_outcomes_are_bounded_and_still_counted(
    authority: LocalAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bound the kept (method, route, status, caller) outcomes are dropped and
    found again: every request is still counted under its own labels."""
    monkeypatch.setattr("meshkit.middleware.telemetry._OUTCOMES_LIMIT", 1)
    metrics = MeshMetrics()
    with running(build(metrics), identity=authority.issue("orders"), directory=tmp_path) as port:
        connection = connect(port, authority.issue("web"))
        for path in ("/orders/1", "/nowhere", "/orders/2", "/nowhere", "/orders/3"):
            get(connection, path)
        connection.close()
    assert duration_count(metrics, "/orders/{order_id}", "200", "web") == 3
    assert duration_count(metrics, "unmatched", "404", "web") == 2
    assert sample(metrics, "http_server_active_requests", http_request_method="GET") == 0


def test_failures_mark_the_span(spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = spans
    with running(build(MeshMetrics(), provider)) as port:
        connection = connect(port)
        assert get(connection, "/boom")[0] == 500
        connection.close()  # the server closes a connection whose handler failed
        connection = connect(port)
        assert get(connection, "/missing")[0] == 404
        connection.close()
    missing, boom = sorted(exporter.get_finished_spans(), key=_name)
    assert boom.name == "GET /boom"
    assert boom.status.status_code is StatusCode.ERROR
    assert (boom.attributes or {})["error.type"] == "RuntimeError"
    assert missing.name == "GET"  # no route: the method alone (semconv)
    assert missing.status.status_code is StatusCode.UNSET  # 4xx is not a server error


def _name(span: ReadableSpan) -> str:
    return span.name


def test_access_log_writes_one_json_line_per_request(
    authority: LocalAuthority,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    app = build(MeshMetrics(), provider, access_log=True)
    caplog.set_level(logging.INFO, logger="meshkit.access")
    with running(app, identity=authority.issue("orders"), directory=tmp_path) as port:
        connection = connect(port, authority.issue("web"))
        _, body = get(connection, "/orders/5")
        connection.close()
    (record,) = [r for r in caplog.records if r.name == "meshkit.access"]
    line = json.loads(record.getMessage())
    (span,) = exporter.get_finished_spans()
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    assert line["caller"] == "spiffe://meshkit.local/ns/default/svc/web"
    assert line["service"] == "orders"
    assert (line["method"], line["route"], line["path"]) == (
        "GET",
        "/orders/{order_id}",
        "/orders/5",
    )
    assert line["status"] == 200
    assert line["bytes"] == len(body)
    assert line["duration_ms"] >= 0
    assert line["time"].endswith("Z")


def test_access_log_is_off_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshkit.access")
    with running(build(MeshMetrics())) as port:
        connection = connect(port)
        get(connection, "/orders/5")
        connection.close()
    assert not [r for r in caplog.records if r.name == "meshkit.access"]


@pytest.mark.anyio
async def test_non_http_scopes_pass_straight_through() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append(str(scope["type"]))

    middleware = TelemetryMiddleware(app, service="orders", metrics=MeshMetrics())
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await middleware({"type": "websocket"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


def test_without_a_tracer_provider_the_context_is_still_carried_on() -> None:
    with running(build(MeshMetrics())) as port:  # the global provider: none configured
        connection = connect(port)
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "baggage": "tenant=acme"}
        _, body = get(connection, "/orders/1", headers)
        _, untraced = get(connection, "/orders/2")
        connection.close()
    outgoing = json.loads(body)["outgoing"]
    assert outgoing["traceparent"] == f"00-{TRACE_ID}-{PARENT_ID}-01"
    assert outgoing["baggage"] == "tenant=acme"
    assert json.loads(untraced)["outgoing"] == {}


def test_the_observed_send_notes_status_and_body_bytes() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def respond() -> ObservedSend:
        observed = ObservedSend(send)
        assert (observed.status, observed.sent) == (0, 0)
        await observed({"type": "http.response.start", "status": 201, "headers": []})
        await observed({"type": "http.response.body", "body": b"abc", "more_body": True})
        await observed({"type": "http.response.body", "body": bytearray(b"de")})
        await observed({"type": "http.response.body"})
        return observed

    observed = asyncio.run(respond())
    assert (observed.status, observed.sent) == (201, 5)
    assert [message["type"] for message in sent] == ["http.response.start"] + [
        "http.response.body"
    ] * 3
