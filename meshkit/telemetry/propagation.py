"""Trace context on the wire (W3C Trace Context and Baggage), and meshkit's tracer.

The mesh speaks W3C Trace Context (``traceparent``, ``tracestate``) and W3C Baggage
(``baggage``) between its services, whatever propagator the process has installed
globally: both ends are meshkit, so the wire format is fixed. The server extracts with
``extract_context``; the mesh client writes each attempt's with ``append_span_headers``.

Library code here never sets OpenTelemetry globals; ``meshkit.telemetry.sdk`` builds
the SDK for ``meshkit run``, which owns the process.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from importlib import metadata

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshkit.telemetry import tracecontext

RawHeaders = Sequence[tuple[bytes, bytes]]
_BAGGAGE = W3CBaggagePropagator()
MESH_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), _BAGGAGE])
INSTRUMENTATION_NAME = "meshkit"
_VERSION = metadata.version("meshkit")


class _ASGIHeaderGetter(Getter[RawHeaders]):
    """Reads an ASGI scope's raw header list in place (no per-request dict)."""

    def get(self, carrier: RawHeaders, key: str) -> list[str] | None:
        wanted = key.encode("latin-1")
        values = [value.decode("latin-1") for name, value in carrier if name == wanted]
        return values or None

    def keys(self, carrier: RawHeaders) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


class _ListSetter(Setter[list[tuple[str, str]]]):
    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key, value))


_ASGI_GETTER = _ASGIHeaderGetter()
_LIST_SETTER = _ListSetter()
_TRACE_HEADERS = frozenset((b"traceparent", b"tracestate", b"baggage"))
# Contexts are immutable (setting a value makes a new one), so one empty context is shared.
EMPTY_CONTEXT = Context()


def extract_context(headers: RawHeaders) -> Context:
    """The caller's trace context and baggage, from the wire only (never the current one).

    ``traceparent`` and ``tracestate`` are read by meshkit's own W3C Trace Context rules
    (``meshkit.telemetry.tracecontext``): an empty context, so a new trace, when there
    is no valid ``traceparent`` or more than one. Baggage is the W3C propagator's.
    Most requests of an untraced mesh carry none of these headers and cost one scan;
    between meshkit services the usual carrier is a lone ``traceparent``.
    """
    found = lone_traceparent(headers)
    return traceparent_context(found) if isinstance(found, bytes) else found


def lone_traceparent(headers: RawHeaders) -> bytes | Context:
    """The caller's ``traceparent`` as it came (unparsed) when it is the only trace
    header (the usual mesh call), else the context ``extract_context`` makes:
    ``EMPTY_CONTEXT`` for none.

    The server's span starter decides from the field alone: an unsampled caller's
    context need never be built, nor its parent id read.
    """
    traceparent = None
    for name, value in headers:
        if name in _TRACE_HEADERS:
            if traceparent is not None or name != b"traceparent":
                return _extract_all(headers)
            traceparent = value
    return EMPTY_CONTEXT if traceparent is None else traceparent


def traceparent_context(traceparent: bytes) -> Context:
    """The context of a lone ``traceparent`` field: the caller's span, or
    ``EMPTY_CONTEXT`` (a new trace) when the field is invalid."""
    parent = tracecontext.parse_traceparent(traceparent.decode("latin-1"))
    return EMPTY_CONTEXT if parent is None else remote_parent_context(parent, ())


def _extract_all(headers: RawHeaders) -> Context:
    """``extract_context`` for any mix of the trace headers, repeated ones included."""
    traceparents: list[str] = []
    tracestates: list[str] = []
    has_baggage = False
    for name, value in headers:
        if name == b"traceparent":
            traceparents.append(value.decode("latin-1"))
        elif name == b"tracestate":
            tracestates.append(value.decode("latin-1"))
        else:
            has_baggage = has_baggage or name == b"baggage"
    parsed = tracecontext.parse_fields(traceparents, tracestates)
    context = EMPTY_CONTEXT if parsed is None else remote_parent_context(*parsed)
    if has_baggage:
        context = _BAGGAGE.extract(headers, context=context, getter=_ASGI_GETTER)
    return context


def remote_parent_context(
    parent: tracecontext.TraceParent, members: tuple[tracecontext.Member, ...]
) -> Context:
    """A context whose current span is the caller's (remote, not recording)."""
    span_context = SpanContext(
        parent.trace_id,
        parent.parent_id,
        is_remote=True,
        trace_flags=TraceFlags(parent.flags),
        trace_state=TraceState(members) if members else None,
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context), EMPTY_CONTEXT)


def inject_context(headers: MutableMapping[str, str], context: Context | None = None) -> None:
    """Add ``traceparent``/``tracestate``/``baggage`` for ``context`` (default: the current)."""
    MESH_PROPAGATOR.inject(headers, context=context)


def append_context_headers(headers: list[tuple[str, str]], context: Context | None = None) -> None:
    """Append the trace-context headers of ``context`` (default: the current) to a list."""
    MESH_PROPAGATOR.inject(headers, context=context, setter=_LIST_SETTER)


def append_span_headers(
    headers: list[tuple[str, str]], span: Span, current: Context | None = None
) -> None:
    """Append the headers ``append_context_headers`` writes for ``span`` made current in
    ``current`` (default: the current context), the mesh client's attempt span: the
    callee's SERVER span becomes its child.

    Mesh calls rarely carry baggage: then the W3C propagators' output is a
    ``traceparent`` (and a ``tracestate`` when the trace has one), formatted here as
    they format it, without a Context to hold the span and two propagator passes over
    it. With baggage, the propagators write all of it.
    """
    if current is None:
        current = otel_context.get_current()
    if baggage.get_all(current):
        append_context_headers(headers, trace.set_span_in_context(span, current))
        return
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return
    traceparent = tracecontext.format_ids(
        span_context.trace_id, span_context.span_id, span_context.trace_flags
    )
    headers.append(("traceparent", traceparent))
    if span_context.trace_state:
        headers.append(("tracestate", span_context.trace_state.to_header()))


def get_tracer(tracer_provider: trace.TracerProvider | None) -> trace.Tracer:
    """meshkit's tracer from ``tracer_provider``, else from the global one (resolved lazily)."""
    return trace.get_tracer(INSTRUMENTATION_NAME, _VERSION, tracer_provider=tracer_provider)
