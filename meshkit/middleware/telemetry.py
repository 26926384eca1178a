"""TelemetryMiddleware: metrics, a SERVER span and an access log line for every request.

``Mesh`` installs it outermost, so it times everything the app does, including the
other mesh middleware. Per request it

- counts the request in ``http_server_active_requests`` while it runs;
- observes ``http_server_request_duration_seconds`` labelled by method, route template,
  status code and the caller's verified service and namespace (``source_service``,
  ``source_namespace``);
- continues the caller's W3C trace (``traceparent``/``tracestate``, ``baggage``) in a
  SERVER span named ``METHOD /route/template``, made current for the handler so mesh
  client calls it makes carry the context on; a malformed header starts a new trace;
- writes one JSON line to the ``meshkit.access`` logger when ``access_log`` is on;
- adds the request to ``tap`` (a ``TapRing``: what ``meshkit tap`` reads), when given.

The route is known only after Starlette's router ran: the router records the matched
route in the (shared) scope, so the middleware reads it once the app has answered.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, format_trace_id
from starlette.routing import Host, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from meshkit.identity import SpiffeId, peer_identity
from meshkit.middleware._asgi import observe
from meshkit.middleware._starlette import ErrorAnswer
from meshkit.serving.protocol import NOTED_HEADERS_KEY
from meshkit.telemetry._loopmetrics import HistogramChild
from meshkit.telemetry._otel_sdk import (
    SpanStarter,
    attach,
    detach,
    set_mesh_attributes,
)
from meshkit.telemetry.metrics import (
    UNKNOWN_NAMESPACE,
    UNMATCHED_ROUTE,
    MeshMetrics,
    method_label,
)
from meshkit.telemetry.tap import TapRing, rfc3339

UNKNOWN_SOURCE = "unknown"
access_logger = logging.getLogger("meshkit.access")
_perf_counter = time.perf_counter
_SHAPES_LIMIT = 1024
_OUTCOMES_LIMIT = 1024
# (method label, id() of the matched route, status, caller's SPIFFE ID): by id, as in
# RouteTemplates, since Starlette routes are unhashable and live as long as the app.
_OutcomeKey = tuple[str, int, int, str | None]


class TelemetryMiddleware:
    """Pure ASGI telemetry; non-HTTP scopes (lifespan, websockets) pass straight through."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str,
        metrics: MeshMetrics,
        tracer_provider: trace.TracerProvider | None = None,
        access_log: bool = False,
        tap: TapRing | None = None,
        on_error: ErrorAnswer | None = None,
    ) -> None:
        self.app = app
        self.tap = tap if tap is not None and tap.size else None  # a ring of 0 keeps none
        # In the mesh's own stack (``_starlette.fast_stack``) no ServerErrorMiddleware is
        # outside: this answers an unhandled exception as it would, then re-raises.
        self.on_error = on_error
        self.service = service
        self.metrics = metrics
        self.access_log = access_log
        self._spans = SpanStarter(tracer_provider)
        self._routes = RouteTemplates()
        self._server_spans = _ServerSpans()
        # Found once, then kept (bounded): a request's method label and active-requests
        # series by its method, and by (method, route, status, caller) its route
        # template, source label and duration series.
        self._methods: dict[str, tuple[str, list[float], str]] = {}
        self._outcomes: dict[_OutcomeKey, tuple[str, str, HistogramChild]] = {}

    def _method(self, raw: str) -> tuple[str, list[float], str]:
        """The method label, its active-requests series and the SERVER span's name."""
        method = method_label(raw)
        name = "HTTP" if method == "_OTHER" else method
        started = (method, self.metrics.server_active(method), name)
        if method == raw:  # a known method: any other is _OTHER and left out of the cache
            self._methods[raw] = started
        return started

    def _outcome(
        self, key: _OutcomeKey, scope: Scope, identity: SpiffeId | None
    ) -> tuple[str, str, HistogramChild]:
        method, _, status, _ = key
        route = self._routes.lookup(scope)
        source = source_label(identity)
        series = self.metrics.server_duration(
            method, route, status, source, namespace_label(identity)
        )
        if len(self._outcomes) >= _OUTCOMES_LIMIT:
            self._outcomes.clear()  # bounded, whatever statuses and callers come
        outcome = self._outcomes[key] = (route, source, series)
        return outcome

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Every line here is paid on every request of every service: no per-request
        # helper objects, no coroutine where a plain call does.
        start = _perf_counter()
        started = self._methods.get(scope["method"])
        if started is None:
            started = self._method(scope["method"])
        method, active, name = started
        active[0] += 1
        # The SERVER span, made current (with the caller's baggage) when there is anything
        # to carry on to calls the handler makes. Its attributes are set at the end, in
        # one call, and only if it records: a dropped span costs no dict.
        # meshkit's protocol has set the trace headers apart from the others.
        noted = scope.get(NOTED_HEADERS_KEY)
        headers = scope["headers"] if noted is None else noted
        span, context, recording, trace_id = self._spans.start_server(name, headers)
        token = None if context is None else attach(context)
        # meshkit's server notes the response's status itself; elsewhere send is wrapped.
        observed, send = observe(scope, send)
        error: BaseException | None = None
        unanswered: tuple[ErrorAnswer, Exception] | None = None
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            error = exc
            if self.on_error is None:
                raise
            unanswered = (self.on_error, exc)
        except BaseException as exc:
            error = exc
            raise
        finally:
            duration = _perf_counter() - start
            # Before an answer started, the app failed: the server sends 500.
            status = observed.status or 500
            identity = peer_identity(scope)
            matched = scope.get("route")
            caller = identity.uri if identity is not None else None
            key = (method, id(matched), status, caller)
            outcome = self._outcomes.get(key)
            if outcome is None:
                outcome = self._outcome(key, scope, identity)
            route, source, duration_series = outcome
            duration_series.observe(duration)
            active[0] -= 1
            if self.tap is not None:
                self.tap.record(start, identity, method, route, status, duration, trace_id)
            if recording:
                self._server_spans.finish(
                    span, scope, method, route, status, identity, source, error
                )
                span.end()
            if token is not None:
                detach(token)
            if self.access_log and access_logger.isEnabledFor(logging.INFO):
                self._log(span, scope, route, status, identity, duration, observed.sent)
        if unanswered is not None:  # recorded above as a 500, answered outside as Starlette does
            answer, failure = unanswered
            await answer(scope, receive, send, failure, bool(observed.status))

    def _log(
        self,
        span: Span,
        scope: Scope,
        route: str,
        status: int,
        identity: SpiffeId | None,
        duration: float,
        sent: int,
    ) -> None:
        span_context = span.get_span_context()
        record = {
            "time": rfc3339(time.time() - duration),
            "service": self.service,
            "trace_id": format_trace_id(span_context.trace_id) if span_context.is_valid else None,
            "caller": str(identity) if identity else None,
            "method": scope["method"],
            "route": route,
            "path": scope["path"],
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "bytes": sent,
        }
        access_logger.info(json.dumps(record, separators=(",", ":")))


class _ServerSpans:
    """Names and sets the attributes of SERVER spans that record.

    Most of a span's attributes are the same for every request of one route from one
    caller: they are kept per (method, route, caller, scheme, HTTP version) with the
    span's name, and a request copies them and adds its own few.
    """

    def __init__(self) -> None:
        self._shapes: dict[tuple[str, str, str | None, str, str], tuple[str, dict[str, Any]]] = {}

    def finish(
        self,
        span: Span,
        scope: Scope,
        method: str,
        route: str,
        status: int,
        identity: SpiffeId | None,
        source: str,
        error: BaseException | None,
    ) -> None:
        caller = identity.uri if identity is not None else None
        key = (method, route, caller, scope["scheme"], scope["http_version"])
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(key, source)
        name, shared = shape
        attributes = shared.copy()
        attributes["url.path"] = scope["path"]
        attributes["http.response.status_code"] = status
        if scope["client"]:
            attributes["client.address"] = scope["client"][0]
        if scope["query_string"]:
            attributes["url.query"] = scope["query_string"].decode("latin-1")
        if method != scope["method"]:
            attributes["http.request.method_original"] = scope["method"]
        if error is not None:
            attributes["error.type"] = type(error).__qualname__
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        elif status >= 500:
            # Server spans are errors on 5xx only: a 4xx is the caller's mistake (semconv).
            attributes["error.type"] = str(status)
            span.set_status(Status(StatusCode.ERROR))
        set_mesh_attributes(span, attributes, name)

    def _shape(
        self, key: tuple[str, str, str | None, str, str], source: str
    ) -> tuple[str, dict[str, Any]]:
        method, route, caller, scheme, http_version = key
        verb = "HTTP" if method == "_OTHER" else method
        shared: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": scheme,
            "network.protocol.version": http_version,
        }
        name = verb
        if route != UNMATCHED_ROUTE:
            shared["http.route"] = route
            name = f"{verb} {route}"
        if caller is not None:
            shared["peer.service"] = source
            shared["meshkit.peer.spiffe_id"] = caller
        if len(self._shapes) >= _SHAPES_LIMIT:
            self._shapes.clear()  # bounded, whatever routes and callers come
        self._shapes[key] = (name, shared)
        return name, shared


def source_label(identity: SpiffeId | None) -> str:
    """The ``source_service`` label of a caller: its service name, else ``unknown``."""
    return (identity.service if identity else None) or UNKNOWN_SOURCE


def namespace_label(identity: SpiffeId | None) -> str:
    """The ``source_namespace`` label of a caller: its namespace, else ``unknown``."""
    return (identity.namespace if identity else None) or UNKNOWN_NAMESPACE


class RouteTemplates:
    """The full template of the route Starlette matched (``/shop/items/{item_id}``).

    Starlette puts the innermost matched route in ``scope["route"]``; templates of the
    mounts above it are found by walking the top router (``scope["router"]``) once and
    memoizing by route object. Never the raw path: it would explode label cardinality.
    """

    def __init__(self) -> None:
        # By id(): Starlette routes define __eq__ and so are unhashable; they live as long
        # as the app, so an id is never reused for another route while it is cached.
        self._templates: dict[int, str] = {}

    def lookup(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            return UNMATCHED_ROUTE
        template = self._templates.get(id(route))
        if template is None:
            template = self._resolve(scope, route)
        return template

    def _resolve(self, scope: Scope, route: Any) -> str:
        router = scope.get("router")
        if router is not None:
            # Rebuild on a miss: routes may be added after the first request.
            self._templates.update((id(r), t) for r, t in _templates(router.routes, ""))
        template = self._templates.get(id(route))
        if template is None:
            template = getattr(route, "path_format", None) or UNMATCHED_ROUTE
            self._templates[id(route)] = template
        return template


def _templates(routes: Iterable[Any], prefix: str) -> Iterator[tuple[Any, str]]:
    for route in routes:
        if isinstance(route, Mount):
            yield route, prefix + route.path_format
            yield from _templates(route.routes, prefix + route.path)
        elif isinstance(route, Host):
            yield from _templates(route.routes, prefix)
        elif hasattr(route, "path_format"):
            yield route, prefix + route.path_format
