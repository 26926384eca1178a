"""ClientTelemetry: the mesh client's hooks that record metrics and CLIENT spans.

Per logical call (retries included) a CLIENT span and one observation of
``http_client_request_duration_seconds``; per attempt a CLIENT span, child of the call's,
one count of ``meshkit_client_attempts_total``, and the W3C trace context
(``traceparent``, ``tracestate``, ``baggage``) of that attempt's span added to its
headers, so the callee's SERVER span is the attempt's child. Retries, budget
exhaustion, ejections and breaker changes feed the ``meshkit_*`` metrics.

The client reports its calls through ``call_recorder()``: the hooks' work with no events
built, and the call's span handed to its attempts in the call's state. Called through
the hooks (``on_call_start`` ...), as a subclass's overrides are, the call span is made
current between ``on_call_start`` and ``on_call_end``, where the attempt hooks find it:
the client calls both, and the attempt hooks between them, in the caller's task.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from meshkit._httpx import URL
from meshkit.client import (
    AttemptEnded,
    AttemptStarted,
    BaseClientHooks,
    BreakerChanged,
    CallEnded,
    CallRecorder,
    CallStarted,
    EndpointBusy,
    EndpointEjected,
    HedgeStarted,
    MirrorEnded,
    RetryBudgetSpent,
    RetryScheduled,
)
from meshkit.registry.base import Endpoint
from meshkit.telemetry._loopmetrics import HistogramChild
from meshkit.telemetry._otel_sdk import (
    DroppedSpan,
    SpanStarter,
    append_trace_headers,
    current_context,
    set_mesh_attributes,
)
from meshkit.telemetry.metrics import KNOWN_METHODS, MeshMetrics, method_label
from meshkit.telemetry.propagation import EMPTY_CONTEXT

#: A call's destination, method and subset: its metrics' labels and its spans'.
_Labels = tuple[str, str, str]
#: An outcome of a call or attempt, what its metric series are kept by: its status, or
#: with an error, its status and the error's class (which decide its ``error_type``).
_Outcome = int | None | tuple[int | None, type]
_Series = tuple[list[float], HistogramChild]
_ROUTES_LIMIT = 1024
_OUTCOMES_LIMIT = 64
#: The span name of a call by its method: semconv's "{method}" for a client span
#: without a URL template, "HTTP" for a method it does not know.
_SPAN_NAMES = {method: method for method in KNOWN_METHODS}
#: What a subclass overriding any of these is recorded through (the events).
_RECORDING = (
    "on_call_start",
    "on_call_end",
    "on_attempt_start",
    "on_attempt_end",
    "call_started",
    "call_ended",
    "attempt_started",
    "attempt_ended",
)


class _Route:
    """The labels of a destination, method and subset, its spans' name, and the metric
    series of its outcomes, found once, then kept (bounded)."""

    __slots__ = ("attributes", "labels", "name", "outcomes")

    def __init__(self, labels: _Labels) -> None:
        destination, method, _ = labels
        self.labels = labels
        self.name = _span_name(method)
        self.outcomes: dict[_Outcome, _Series] = {}
        # What every span of the route records (a recorded span gets a copy).
        self.attributes: dict[str, Any] = {
            "http.request.method": method_label(method),
            "server.address": destination,
            "peer.service": destination,
        }


#: The recorder's state of a call: its span, the context it began in, its route, and
#: its URL (or, through the events, its path).
_Call = tuple[Span, Context, _Route, "URL | str"]
#: The recorder's state of an attempt: its span (None: dropped, nothing to end), its
#: call's route, its number and endpoint.
_Attempt = tuple[Span | None, _Route, int, Endpoint | None]


class ClientTelemetry(BaseClientHooks):
    """``ClientHooks`` recording into ``metrics`` and tracing with ``tracer_provider``
    (the global provider when None)."""

    def __init__(
        self, metrics: MeshMetrics, *, tracer_provider: trace.TracerProvider | None = None
    ) -> None:
        self.metrics = metrics
        self._spans = SpanStarter(tracer_provider)
        self._routes: dict[_Labels, _Route] = {}

    def call_recorder(self) -> CallRecorder | None:
        """Itself, unless a subclass changed how calls are recorded (then the client
        builds the events for its hooks)."""
        cls = type(self)
        if any(getattr(cls, name) is not getattr(ClientTelemetry, name) for name in _RECORDING):
            return None
        return self

    # The call and attempt hooks, each in its two forms: events, and the recorder's. The
    # recorder's states carry what the end methods need: a call's span, the context it
    # began in (its attempts' parent's), its route and URL; an attempt's span, route,
    # number and endpoint. A route holds the labels and metric series a call's outcome
    # is recorded in, looked up once a call.

    def on_call_start(self, event: CallStarted) -> object:
        # The current context read once: the span's parent, and where its attempts go.
        current = current_context()
        span = self._spans.start(_span_name(event.method), SpanKind.CLIENT, current)
        return span, otel_context.attach(trace.set_span_in_context(span, current))

    def call_started(self, destination: str, method: str, url: URL, subset: str) -> _Call:
        route = self._routes.get((destination, method, subset))
        if route is None:
            route = self._route(destination, method, subset)
        span, current = self._spans.start_call(route.name)
        return span, current, route, url

    def on_call_end(self, event: CallEnded) -> None:
        span, token = cast("tuple[Span, Token[Context]]", event.state)
        otel_context.detach(token)
        route = self._route(event.destination, event.method, event.subset)
        call = (span, EMPTY_CONTEXT, route, event.path)  # its attempts have ended: no context
        self.call_ended(call, event.status, event.duration, event.attempts, event.error)

    def call_ended(
        self,
        state: _Call,
        status: int | None,
        duration: float,
        attempts: int,
        error: BaseException | None,
    ) -> None:
        span, _, route, url = state
        series = route.outcomes.get(status if error is None else (status, type(error)))
        if series is None:
            series = self._series(route, status, error)
        series[1].observe(duration)
        # A dropped call's span (often the dropped server span it continues) has
        # nothing to record or end.
        if type(span) is not DroppedSpan:
            if span.is_recording():
                attributes = _attributes(route, status, _error_type(status, error))
                # A URL is decoded only for a span that records.
                attributes["url.path"] = url if isinstance(url, str) else url.path
                attributes["meshkit.attempts"] = attempts
                _finish(span, attributes, error)
            span.end()

    def _route(self, destination: str, method: str, subset: str) -> _Route:
        """The route of these labels, kept (bounded, whatever destinations come)."""
        labels = (destination, method, subset)
        route = self._routes.get(labels)
        if route is None:
            if len(self._routes) >= _ROUTES_LIMIT:
                self._routes.clear()
            route = self._routes[labels] = _Route(labels)
        return route

    def _series(self, route: _Route, status: int | None, error: BaseException | None) -> _Series:
        """The metric series of a call's or attempt's route and outcome, kept."""
        destination, method, subset = route.labels
        error_type = _error_type(status, error)
        series = self.metrics.client_series(method, destination, status, error_type, subset)
        if len(route.outcomes) >= _OUTCOMES_LIMIT:
            route.outcomes.clear()  # bounded, whatever statuses and errors come
        route.outcomes[status if error is None else (status, type(error))] = series
        return series

    def on_attempt_start(self, event: AttemptStarted) -> object:
        # The call's span is current (on_call_start made it so): the attempt's parent.
        current = current_context()
        span = self._spans.start(_span_name(event.method), SpanKind.CLIENT, current)
        append_trace_headers(event.headers, span, current)
        return span

    def attempt_started(
        self,
        call_state: _Call,
        attempt: int,
        endpoint: Endpoint | None,
        headers: list[tuple[str, str]],
    ) -> _Attempt:
        call_span, current, route, _ = call_state
        span = self._spans.start_attempt(route.name, call_span, current, headers)
        return span, route, attempt, endpoint

    def on_attempt_end(self, event: AttemptEnded) -> None:
        route = self._route(event.destination, event.method, event.subset)
        attempt = (cast(Span, event.state), route, event.attempt, event.endpoint)
        self.attempt_ended(attempt, event.status, event.duration, event.error)

    def attempt_ended(
        self, state: _Attempt, status: int | None, duration: float, error: BaseException | None
    ) -> None:
        span, route, attempt, endpoint = state
        series = route.outcomes.get(status if error is None else (status, type(error)))
        if series is None:
            series = self._series(route, status, error)
        series[0][0] += 1
        if span is None:  # dropped: nothing to record or end
            return
        if span.is_recording():
            attributes = _attributes(route, status, _error_type(status, error))
            if attempt > 1:
                attributes["http.request.resend_count"] = attempt - 1
            if endpoint is not None:
                attributes["network.peer.address"] = endpoint.address
                attributes["network.peer.port"] = endpoint.port
            _finish(span, attributes, error)
        span.end()

    def on_retry_scheduled(self, event: RetryScheduled) -> None:
        self.metrics.retried(event.destination)

    def on_retry_budget_spent(self, event: RetryBudgetSpent) -> None:
        self.metrics.retry_budget_exhausted(event.destination)

    def on_endpoint_ejected(self, event: EndpointEjected) -> None:
        self.metrics.endpoint_ejected(event.destination)

    def on_breaker_changed(self, event: BreakerChanged) -> None:
        self.metrics.set_circuit_state(event.destination, event.new)

    def on_hedge_started(self, event: HedgeStarted) -> None:
        self.metrics.hedged(event.destination)

    def on_endpoint_busy(self, event: EndpointBusy) -> None:
        self.metrics.endpoint_busy(event.destination)

    def on_mirror_ended(self, event: MirrorEnded) -> None:
        outcome = "dropped" if event.dropped else "error"
        if event.status is not None and event.status < 500:
            outcome = "ok"
        self.metrics.mirrored(event.destination, event.mirror, outcome)


def _span_name(method: str) -> str:
    return _SPAN_NAMES.get(method, "HTTP")


def _error_type(status: int | None, error: BaseException | None) -> str:
    """semconv ``error.type`` for a client: the exception class, or a 4xx/5xx status."""
    if error is not None:
        return type(error).__qualname__
    if status is not None and status >= 400:
        return str(status)
    return ""


def _attributes(route: _Route, status: int | None, error: str) -> dict[str, Any]:
    attributes = route.attributes.copy()
    if status is not None:
        attributes["http.response.status_code"] = status
    if error:
        attributes["error.type"] = error
    return attributes


def _finish(span: Span, attributes: dict[str, Any], error: BaseException | None) -> None:
    set_mesh_attributes(span, attributes)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)))
    elif "error.type" in attributes:
        span.set_status(Status(StatusCode.ERROR))
