"""Trace context on the wire, and the OpenTelemetry SDK set up from ``OTEL_*`` variables.

The mesh speaks W3C Trace Context (``traceparent``, ``tracestate``) and W3C Baggage
(``baggage``) between its services, whatever propagator the process has installed
globally: both ends are meshkit, so the wire format is fixed. The server extracts with
``extract_context``; the mesh client injects with ``inject_context``.

Library code here never sets OpenTelemetry globals. ``configure_tracing_from_env``
builds a ``TracerProvider`` for ``meshkit run``, which owns the process.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableMapping, Sequence
from contextvars import ContextVar, Token
from importlib import metadata
from typing import TYPE_CHECKING, NamedTuple

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from meshkit.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.exporter.http.transport._base import BaseHTTPTransport

    from meshkit._otlp import MeshOTLPSpanExporter

RawHeaders = Sequence[tuple[bytes, bytes]]
logger = logging.getLogger(__name__)
_TRACE_CONTEXT = TraceContextTextMapPropagator()
MESH_PROPAGATOR = CompositePropagator([_TRACE_CONTEXT, W3CBaggagePropagator()])
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
# What the W3C propagator accepts for version 00, without its optional spaces.
_TRACEPARENT_00 = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE_ID = b"0" * 32
_ZERO_SPAN_ID = b"0" * 16
# Contexts are immutable (setting a value makes a new one), so one empty context is shared.
EMPTY_CONTEXT = Context()


def extract_context(headers: RawHeaders) -> Context:
    """The caller's trace context and baggage, from the wire only (never the current one).

    An empty context (so a new trace) when the headers are absent or malformed. Most
    requests of an untraced mesh carry none: one scan finds that, with no propagator call.
    Between meshkit services the usual carrier is a lone version-00 ``traceparent``:
    that is parsed here as the W3C propagator would (a strict subset of what it accepts,
    to the same SpanContext), ~3 µs less than the composite propagator's passes.
    """
    traceparent = None
    for name, value in headers:
        if name in _TRACE_HEADERS:
            if traceparent is not None or name != b"traceparent":
                return MESH_PROPAGATOR.extract(headers, context=EMPTY_CONTEXT, getter=_ASGI_GETTER)
            traceparent = value
    if traceparent is None:
        return EMPTY_CONTEXT
    match = _TRACEPARENT_00.fullmatch(traceparent)
    if match is None or match[1] == _ZERO_TRACE_ID or match[2] == _ZERO_SPAN_ID:
        # Another version, spaces, or invalid: the propagator's own rules decide.
        carrier = [(b"traceparent", traceparent)]
        return _TRACE_CONTEXT.extract(carrier, context=EMPTY_CONTEXT, getter=_ASGI_GETTER)
    span_context = SpanContext(
        int(match[1], 16),
        int(match[2], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(match[3], 16)),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context), EMPTY_CONTEXT)


def attach_span(span: Span, parent: Context | None = None) -> Token[Context]:
    """Make ``span`` current, in ``parent``'s context (default: the current one, its
    baggage kept); ``detach`` undoes it.

    What ``attach(set_span_in_context(span, parent))`` does, ~0.2 µs cheaper per request
    when the API keeps the current context in its ContextVar (the default runtime).
    """
    if _CURRENT_CONTEXT is None:
        return otel_context.attach(trace.set_span_in_context(span, parent))
    if parent is EMPTY_CONTEXT:
        return _enter_span(_CURRENT_CONTEXT, Context, _SPAN_KEY, span)
    return _CURRENT_CONTEXT.set(trace.set_span_in_context(span, parent))


def _enter_span_in_python(
    var: ContextVar[Context], context_type: type[Context], key: str, span: Span
) -> Token[Context]:
    return var.set(context_type({key: span}))


try:  # the same in C (~80 ns less a request): see meshkit/_speedups.c
    from meshkit._speedups import enter_span as _enter_span
except ImportError:  # installed without a C compiler
    _enter_span = _enter_span_in_python


def detach(token: Token[Context]) -> None:
    """Restore the context current before ``attach_span`` (in the same task)."""
    if _CURRENT_CONTEXT is None:
        otel_context.detach(token)
        return
    try:
        _CURRENT_CONTEXT.reset(token)
    except ValueError:  # reset from another context; the API logs the same way
        logger.exception("Failed to detach context")


def _current_context_var() -> ContextVar[Context] | None:
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    if type(runtime) is not ContextVarsRuntimeContext:
        return None  # another runtime context: only the API knows where it keeps it
    return runtime._current_context


_CURRENT_CONTEXT = _current_context_var()


def inject_context(headers: MutableMapping[str, str], context: Context | None = None) -> None:
    """Add ``traceparent``/``tracestate``/``baggage`` for ``context`` (default: the current)."""
    MESH_PROPAGATOR.inject(headers, context=context)


def append_context_headers(headers: list[tuple[str, str]], context: Context | None = None) -> None:
    """Append the trace-context headers of ``context`` (default: the current) to a list."""
    MESH_PROPAGATOR.inject(headers, context=context, setter=_LIST_SETTER)


def append_span_headers(headers: list[tuple[str, str]], span: Span) -> None:
    """Append the headers ``append_context_headers`` writes for ``span`` made current
    (the mesh client's attempt span: the callee's SERVER span becomes its child).

    Mesh calls rarely carry baggage: then the W3C propagators' output is a
    ``traceparent`` (and a ``tracestate`` when the trace has one), formatted here as
    they format it, without a Context to hold the span and two propagator passes over
    it (~1 µs an attempt). With baggage, the propagators write all of it.
    """
    current = otel_context.get_current()
    if baggage.get_all(current):
        append_context_headers(headers, trace.set_span_in_context(span, current))
        return
    span_context = span.get_span_context()
    if span_context == trace.INVALID_SPAN_CONTEXT:
        return
    ids = (span_context.trace_id, span_context.span_id, span_context.trace_flags)
    # %-formatting of the ids takes ~0.2 µs, an f-string's format specs ~0.35.
    headers.append(("traceparent", "00-%032x-%016x-%02x" % ids))  # noqa: UP031
    if span_context.trace_state:
        headers.append(("tracestate", span_context.trace_state.to_header()))


def get_tracer(tracer_provider: trace.TracerProvider | None) -> trace.Tracer:
    """meshkit's tracer from ``tracer_provider``, else from the global one (resolved lazily)."""
    return trace.get_tracer(INSTRUMENTATION_NAME, _VERSION, tracer_provider=tracer_provider)


# --- configure_tracing_from_env -------------------------------------------------------

_DEFAULT_ZIPKIN = "http://localhost:9411/api/v2/spans"
_EXPORTER_NAMES = ("otlp", "zipkin", "console", "none")


def configure_tracing_from_env(
    service_name: str, environ: Mapping[str, str]
) -> TracerProvider | None:
    """An SDK ``TracerProvider`` as the standard ``OTEL_*`` variables describe, or None.

    None when the process already has a global provider (the user configured tracing),
    when ``OTEL_SDK_DISABLED`` is true, or when no exporter is asked for: with neither
    ``OTEL_TRACES_EXPORTER`` nor an OTLP endpoint set, tracing stays off (the API's
    no-op tracer still propagates trace context) instead of the spec's default of
    exporting to an OTLP collector that usually is not there. ``service.name`` is the
    mesh identity's service. The caller owns the provider: ``shutdown()`` flushes it.
    """
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = _exporter_names(environ)
    if not names:
        return None
    # Every setting checked before any processor starts its thread.
    sampler = sampler_from_env(environ)
    batching = _batching(environ)
    if "otlp" in names:
        _check_otlp_protocol(environ)
    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource, sampler=sampler)
    for name in names:
        provider.add_span_processor(_processor(name, environ, batching))
    return provider


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    raw = environ.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        has_endpoint = any(
            environ.get(name)
            for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        return ["otlp"] if has_endpoint else []
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    for name in names:
        if name not in _EXPORTER_NAMES:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={raw!r}: unknown exporter {name!r} "
                f"(expected {', '.join(_EXPORTER_NAMES)})"
            )
    return [name for name in names if name != "none"]


def _processor(name: str, environ: Mapping[str, str], batching: _Batching) -> SpanProcessor:
    if name == "otlp":
        from meshkit._otlp import OTLPBatchProcessor

        return OTLPBatchProcessor(
            _otlp_exporter(environ),
            schedule_delay=batching.schedule_delay_millis / 1000,
            max_queue_size=batching.max_queue_size,
            max_export_batch_size=batching.max_export_batch_size,
        )
    if name == "zipkin":
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        endpoint = environ.get("OTEL_EXPORTER_ZIPKIN_ENDPOINT", _DEFAULT_ZIPKIN)
        return BatchSpanProcessor(ZipkinExporter(endpoint=endpoint), **batching._asdict())
    # The console is for development: print each span as it ends, not in batches.
    return SimpleSpanProcessor(ConsoleSpanExporter())


def _check_otlp_protocol(environ: Mapping[str, str]) -> None:
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip() not in ("", "http/protobuf"):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: meshkit ships the http/protobuf "
            "OTLP exporter only"
        )


def _otlp_exporter(environ: Mapping[str, str]) -> MeshOTLPSpanExporter:
    from meshkit._otlp import MeshOTLPSpanExporter

    return MeshOTLPSpanExporter(
        endpoint=otlp_traces_endpoint(environ), _transport=_otlp_transport(environ)
    )


def _otlp_transport(environ: Mapping[str, str]) -> BaseHTTPTransport:
    """The exporter's HTTP transport (``meshkit._otlp_transport``), with the TLS settings
    of the same variables the stock exporter reads; an unreadable file is a ConfigError
    naming its variable."""
    from meshkit._otlp_transport import HTTPClientTransport, TLSFileError

    def setting(name: str) -> tuple[str, str | None]:
        for variable in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
            if environ.get(variable):
                return variable, environ[variable]
        return f"OTEL_EXPORTER_OTLP_{name}", None

    ca_variable, ca_bundle = setting("CERTIFICATE")
    cert_variable, client_certificate = setting("CLIENT_CERTIFICATE")
    key_variable, client_key = setting("CLIENT_KEY")
    cert = (
        (client_certificate, client_key)
        if client_certificate and client_key
        else client_certificate
    )
    try:
        return HTTPClientTransport(verify=ca_bundle or True, cert=cert)
    except TLSFileError as exc:
        variables = ca_variable if exc.of_ca else f"{cert_variable} / {key_variable}"
        raise ConfigError(f"{variables}: {exc}") from exc


class _Batching(NamedTuple):
    """The batch span processor's settings (``OTEL_BSP_*``, defaults as the SDK's)."""

    schedule_delay_millis: float
    max_queue_size: int
    max_export_batch_size: int


def _batching(environ: Mapping[str, str]) -> _Batching:
    batching = _Batching(
        schedule_delay_millis=_positive(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000),
        max_queue_size=_positive(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048),
        max_export_batch_size=_positive(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
    )
    if batching.max_export_batch_size > batching.max_queue_size:
        raise ConfigError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batching.max_export_batch_size}: must not "
            f"exceed OTEL_BSP_MAX_QUEUE_SIZE={batching.max_queue_size}"
        )
    return batching


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: expected a positive whole number")
    return value


def otlp_traces_endpoint(environ: Mapping[str, str]) -> str:
    """The signal-specific endpoint as given, else the base endpoint + ``/v1/traces`` (spec)."""
    specific = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if specific:
        return specific
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def sampler_from_env(environ: Mapping[str, str]) -> Sampler:
    """``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``; parentbased_always_on by default."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name == "always_on":
        return ALWAYS_ON
    if name == "always_off":
        return ALWAYS_OFF
    if name == "traceidratio":
        return TraceIdRatioBased(_ratio(environ))
    if name == "parentbased_always_on":
        return ParentBased(ALWAYS_ON)
    if name == "parentbased_always_off":
        return ParentBased(ALWAYS_OFF)
    if name == "parentbased_traceidratio":
        return ParentBased(TraceIdRatioBased(_ratio(environ)))
    raise ConfigError(
        f"OTEL_TRACES_SAMPLER={name!r}: expected always_on, always_off, traceidratio, "
        "parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
    )


def _ratio(environ: Mapping[str, str]) -> float:
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
    try:
        ratio = float(raw)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: expected a ratio from 0 to 1")
    return ratio
