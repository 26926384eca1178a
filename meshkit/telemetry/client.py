"""ClientTelemetry: the mesh client's hooks that record metrics and CLIENT spans.

Per logical call (retries included) a CLIENT span and one observation of
``http_client_request_duration_seconds``; per attempt a CLIENT span, child of the call's,
one count of ``meshkit_client_attempts_total``, and the W3C trace context
(``traceparent``, ``tracestate``, ``baggage``) of that attempt's span added to its
headers, so the callee's SERVER span is the attempt's child. Retries, budget
exhaustion, ejections and breaker changes feed the ``meshkit_*`` metrics.

The call span is made current between ``on_call_start`` and ``on_call_end``: the client
calls both, and the attempt hooks between them, in the caller's task.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from meshkit.client import (
    AttemptEnded,
    AttemptStarted,
    BaseClientHooks,
    BreakerChanged,
    CallEnded,
    CallStarted,
    EndpointBusy,
    EndpointEjected,
    HedgeStarted,
    MirrorEnded,
    RetryBudgetSpent,
    RetryScheduled,
)
from meshkit.telemetry._otel_sdk import SpanStarter, append_trace_headers, set_mesh_attributes
from meshkit.telemetry.metrics import KNOWN_METHODS, MeshMetrics, method_label


class ClientTelemetry(BaseClientHooks):
    """``ClientHooks`` recording into ``metrics`` and tracing with ``tracer_provider``
    (the global provider when None)."""

    def __init__(
        self, metrics: MeshMetrics, *, tracer_provider: trace.TracerProvider | None = None
    ) -> None:
        self.metrics = metrics
        self._spans = SpanStarter(tracer_provider)

    def on_call_start(self, event: CallStarted) -> object:
        # The current context read once: the span's parent, and what it is set in.
        current = otel_context.get_current()
        span = self._spans.start(_span_name(event.method), SpanKind.CLIENT, current)
        token = otel_context.attach(trace.set_span_in_context(span, current))
        return span, token

    def on_call_end(self, event: CallEnded) -> None:
        span, token = cast("tuple[Span, Token[Context]]", event.state)
        otel_context.detach(token)
        error_type = _error_type(event.status, event.error)
        self.metrics.observe_client_call(
            event.method, event.destination, event.status, error_type, event.duration, event.subset
        )
        if span.is_recording():
            attributes = _attributes(event.method, event.destination, event.status, error_type)
            attributes["url.path"] = event.path
            attributes["meshkit.attempts"] = event.attempts
            _finish(span, attributes, event.error)
        span.end()

    def on_attempt_start(self, event: AttemptStarted) -> object:
        current = otel_context.get_current()
        span = self._spans.start(_span_name(event.method), SpanKind.CLIENT, current)
        append_trace_headers(event.headers, span, current)
        return span

    def on_attempt_end(self, event: AttemptEnded) -> None:
        span = cast(Span, event.state)
        error_type = _error_type(event.status, event.error)
        self.metrics.count_client_attempt(
            event.method, event.destination, event.status, error_type, event.subset
        )
        if span.is_recording():
            attributes = _attributes(event.method, event.destination, event.status, error_type)
            if event.attempt > 1:
                attributes["http.request.resend_count"] = event.attempt - 1
            if event.endpoint is not None:
                attributes["network.peer.address"] = event.endpoint.address
                attributes["network.peer.port"] = event.endpoint.port
            _finish(span, attributes, event.error)
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
    # semconv: "{method}" for a client span without a URL template; "HTTP" for others.
    return method if method in KNOWN_METHODS else "HTTP"


def _error_type(status: int | None, error: BaseException | None) -> str:
    """semconv ``error.type`` for a client: the exception class, or a 4xx/5xx status."""
    if error is not None:
        return type(error).__qualname__
    if status is not None and status >= 400:
        return str(status)
    return ""


def _attributes(method: str, destination: str, status: int | None, error: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": method_label(method),
        "server.address": destination,
        "peer.service": destination,
    }
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
