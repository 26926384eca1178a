"""The OpenTelemetry adapter: the one meshkit module that uses OpenTelemetry's private names.

Two things meshkit does per request cost more through the SDK's public path than the
request itself (bench/telemetry.py measures both paths side by side), and both need the
SDK's internals:

- ``SpanStarter`` takes the SDK's sampling decision before any span object exists (a
  dropped span is a ``NonRecordingSpan`` whose context is made only if read), and makes
  a sampled span a ``MeshSpan``: an SDK ``Span`` that skips the SDK's per-span setup
  and goes through the provider's span processors like any other;
- ``attach``/``detach`` and ``with_span`` make a span current (the SERVER span of every
  request) on the runtime context's ``ContextVar`` itself, where the API goes through
  three calls and copies the context twice, and ``trace_id_of`` reads a dropped span's
  trace id without making the context it defers;
- ``span_fields`` reads an ended span without the copies its properties make, and
  ``SpanPoster`` sends a body ``meshkit.telemetry.export`` encoded already as the stock
  ``OTLPSpanExporter`` sends its own: through the HTTP client, transport, settings
  and metrics the exporter is built from (its session, retries, headers, compression,
  TLS). The exporter's own module is never imported: with its protobuf encoder it
  would hold 3.1 MiB in every service (bench/memory.py).

The mesh client's attempts, one per call, lean on the same internals: a context's span
and baggage are read by the API's keys for them (``_Recorder.start``,
``append_trace_headers``: a dropped attempt's ``traceparent`` from its ids), and
``current_context`` is the API's ContextVar's own ``get`` (probed when this module is
imported; else, silently, ``opentelemetry.context.get_current``).

``check`` runs when this module is imported: it looks up every private name used here
and probes the shapes relied on (the fields the SDK's ``Span`` constructor sets, the
sampler delegates, the poster's parts) and makes a ``MeshSpan`` and an SDK span go
through the same calls. If anything is missing or differs (a new release), it logs one
warning naming it and ``usable()`` is False: every span then comes from
``Tracer.start_span`` and ``meshkit.telemetry.sdk`` exports with the stock
``BatchSpanProcessor`` and ``OTLPSpanExporter``. Nothing here may crash meshkit.
"""

from __future__ import annotations

import importlib
import logging
import operator
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from time import time_ns
from typing import Any, NamedTuple, cast

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY,
    OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
    OTEL_EXPORTER_OTLP_TRACES_HEADERS,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
    OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
)
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationInfo, InstrumentationScope
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.util import types

from meshkit.telemetry import tracecontext
from meshkit.telemetry.propagation import (
    EMPTY_CONTEXT,
    RawHeaders,
    append_span_headers,
    extract_context,
    get_tracer,
    lone_traceparent,
)

logger = logging.getLogger(__name__)

#: Trace flags by (sampled, random trace id), as the SDK sets them.
_FLAGS = {
    (sampled, random_id): TraceFlags(
        (TraceFlags.SAMPLED if sampled else 0) | (TraceFlags.RANDOM_TRACE_ID if random_id else 0)
    )
    for sampled in (False, True)
    for random_id in (False, True)
}
#: Trace flags by their value, for the known flags a parsed ``traceparent`` keeps.
_TRACE_FLAGS = tuple(TraceFlags(flags) for flags in range(tracecontext.KNOWN_FLAGS + 1))
_LOW_64 = TraceIdRatioBased.TRACE_ID_LIMIT
_MAX_TRACE_ID = 2**128 - 1
_MAX_SPAN_ID = 2**64 - 1
_new_tuple = tuple.__new__
_new_object = object.__new__
_SAMPLED = TraceFlags.SAMPLED
_RANDOM_TRACE_ID = TraceFlags.RANDOM_TRACE_ID
_PROVIDER_RECHECK_SECONDS = 1.0
_CLIENT = SpanKind.CLIENT  # an Enum member read from its class costs a lookup each time
#: The status of every span nobody set one on (one object: the encoder compares identity).
UNSET_STATUS = Status(StatusCode.UNSET)


# --- what is relied on, checked at import ---------------------------------------------

_OTLP_HTTP_COMMON = "opentelemetry.exporter.otlp.proto.http._common"
#: Private names looked up by ``check``, by the field of ``_Internals`` that holds them;
#: all but the first are what ``OTLPSpanExporter.__init__`` builds its sending from.
_PRIVATE_NAMES = {
    "no_op_tracer_metrics": ("opentelemetry.sdk.trace._tracer_metrics", "NoOpTracerMetrics"),
    "http_client": ("opentelemetry.exporter.otlp.common.http", "_OTLPHTTPClient"),
    "build_transport": (_OTLP_HTTP_COMMON, "_build_transport"),
    "resolve_headers": (_OTLP_HTTP_COMMON, "_resolve_headers"),
    "resolve_timeout": (_OTLP_HTTP_COMMON, "_resolve_timeout"),
    "resolve_compression": (_OTLP_HTTP_COMMON, "_resolve_compression"),
    "max_request_size": (_OTLP_HTTP_COMMON, "_DEFAULT_MAX_REQUEST_SIZE"),
    "exporter_metrics": (
        "opentelemetry.exporter.otlp.common._exporter_metrics",
        "create_exporter_metrics",
    ),
    "component_types": (
        "opentelemetry.semconv._incubating.attributes.otel_attributes",
        "OtelComponentTypeValues",
    ),
    "span_key": ("opentelemetry.trace.propagation", "_SPAN_KEY"),
    "baggage_key": ("opentelemetry.baggage", "_BAGGAGE_KEY"),
}
#: The fields the SDK's ``Span`` constructor sets: ``MeshSpan`` gives each a value, and
#: ``span_fields`` reads some of them.
_SDK_SPAN_FIELDS = frozenset(
    (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_instrumentation_info",
        "_instrumentation_scope",
        "_kind",
        "_limits",
        "_links",
        "_lock",
        "_name",
        "_parent",
        "_record_end_metrics",
        "_record_exception",
        "_resource",
        "_sampler",
        "_set_status_on_exception",
        "_span_processor",
        "_start_time",
        "_status",
        "_trace_config",
    )
)
_TRACER_FIELDS = ("_tracer_config", "_span_limits", "_instrumentation_scope", "_tracer_metrics")
_PRIVATE_METHODS = (
    (SdkTracer, "_is_enabled"),
    (SdkSpan, "_add_event"),
    (SdkSpan, "_add_link"),
    (SpanProcessor, "_on_ending"),
)
#: ``ParentBased``'s delegates and the defaults ``_sampling`` can stand in for.
_PARENT_BASED_DEFAULTS = {
    "_remote_parent_sampled": ALWAYS_ON,
    "_remote_parent_not_sampled": ALWAYS_OFF,
    "_local_parent_sampled": ALWAYS_ON,
    "_local_parent_not_sampled": ALWAYS_OFF,
}


@dataclass(frozen=True)
class _Internals:
    """The private objects ``check`` found."""

    no_op_tracer_metrics: type
    http_client: Any
    build_transport: Any
    resolve_headers: Any
    resolve_timeout: Any
    resolve_compression: Any
    max_request_size: int
    exporter_metrics: Any
    component_types: Any
    span_key: str  # where a Context holds its current span
    baggage_key: str  # where a Context holds its baggage (a dict)


def check() -> _Internals | None:
    """The private objects this module needs, or None (after one warning naming what is
    missing or changed) when OpenTelemetry is not what this module was written for."""
    problems: list[str] = []
    found: dict[str, Any] = {}
    for field, (module, name) in _PRIVATE_NAMES.items():
        try:
            found[field] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            problems.append(f"{module}.{name}")
    internals = None if problems else _Internals(**found)
    for probe in (_shape_problems, _sampler_problems):
        try:
            problems.extend(probe())
        except Exception as exc:  # a probe that cannot even run: the shape changed
            problems.append(f"{probe.__name__.strip('_')}: {exc!r}")
    if internals is not None and not problems:
        for named, internal_probe in (
            ("context keys probe", _key_problems),
            ("MeshSpan probe", _mesh_span_problems),
            ("SpanPoster probe", _poster_problems),
        ):
            try:
                problems.extend(internal_probe(internals))
            except Exception as exc:
                problems.append(f"{named}: {exc!r}")
    if problems:
        logger.warning(
            "OpenTelemetry internals meshkit relies on are missing or changed (%s): spans "
            "and OTLP export take the SDK's public path",
            "; ".join(problems),
        )
        return None
    return internals


def usable() -> bool:
    """Whether ``check`` passed: else spans and export take the SDK's public path."""
    return _INTERNALS is not None


def _probe_tracer(processor: SpanProcessor | None = None) -> SdkTracer:
    """An SDK tracer built directly (a provider would read ``OTEL_SDK_DISABLED``)."""
    processors = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
    if processor is not None:
        processors.add_span_processor(processor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the Tracer still takes it
        info = InstrumentationInfo("meshkit.probe", "0")
    return SdkTracer(
        ALWAYS_ON,
        Resource.get_empty(),
        processors,
        RandomIdGenerator(),
        info,
        SpanLimits(),
        InstrumentationScope("meshkit.probe", "0"),
    )


def _shape_problems() -> list[str]:
    problems = [
        f"{owner.__name__}.{name}" for owner, name in _PRIVATE_METHODS if not hasattr(owner, name)
    ]
    tracer = _probe_tracer()
    problems += [f"Tracer.{name}" for name in _TRACER_FIELDS if not hasattr(tracer, name)]
    if not hasattr(getattr(tracer, "_tracer_config", None), "is_enabled"):
        problems.append("Tracer._tracer_config.is_enabled")
    fields = set(vars(tracer.start_span("probe")))
    if fields != _SDK_SPAN_FIELDS:
        added, gone = sorted(fields - _SDK_SPAN_FIELDS), sorted(_SDK_SPAN_FIELDS - fields)
        problems.append(f"Span fields: new {added}, gone {gone}")
    if not isinstance(getattr(SynchronousMultiSpanProcessor(), "_span_processors", None), tuple):  # type: ignore[no-untyped-call]
        problems.append("SynchronousMultiSpanProcessor._span_processors")
    if set(vars(NonRecordingSpan(trace.INVALID_SPAN_CONTEXT))) != {"_context"}:
        problems.append("NonRecordingSpan fields")
    flags = TraceFlags(_SAMPLED | _RANDOM_TRACE_ID)
    probe = SpanContext(1, 2, True, flags, DEFAULT_TRACE_STATE)
    if tuple(probe) != (1, 2, True, flags, DEFAULT_TRACE_STATE, True):
        problems.append("SpanContext tuple layout")
    return problems


def _sampler_problems() -> list[str]:
    """``_sampling`` must decide as the samplers do, on the trace ids that matter."""
    delegates = vars(ParentBased(ALWAYS_ON))
    missing = [name for name in ("_root", *_PARENT_BASED_DEFAULTS) if name not in delegates]
    if missing:
        return [f"ParentBased.{name}" for name in missing]
    problems = []
    ratio = TraceIdRatioBased(0.5)
    trace_ids = (1, ratio.bound - 1, ratio.bound, _LOW_64, (7 << 64) | ratio.bound)
    for sampler in (ALWAYS_ON, ALWAYS_OFF, ratio, ParentBased(ratio)):
        sampling = _sampling(sampler)
        decided = [sampler.should_sample(None, trace_id, "probe") for trace_id in trace_ids]
        expected = [result.decision is Decision.RECORD_AND_SAMPLE for result in decided]
        if sampling is None or [sampling.samples(None, t) for t in trace_ids] != expected:
            problems.append(f"sampling of {sampler.get_description()}")
    return problems


def _poster_problems(internals: _Internals) -> list[str]:
    """A ``SpanPoster`` builds from the exporter's parts and has what ``post`` calls."""
    poster = SpanPoster("http://127.0.0.1:4318/v1/traces", internals=internals)
    try:
        problems = []
        if not callable(getattr(poster._client, "export", None)):
            problems.append("_OTLPHTTPClient.export")
        if not callable(getattr(poster._metrics, "export_operation", None)):
            problems.append("create_exporter_metrics().export_operation")
        return problems
    finally:
        poster.shutdown()


def _key_problems(internals: _Internals) -> list[str]:
    """The API must keep a context's span and baggage where ``_Internals`` says."""
    problems = []
    span = NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
    if trace.set_span_in_context(span, EMPTY_CONTEXT).get(internals.span_key) is not span:
        problems.append("the current span's context key")
    if baggage.set_baggage("k", "v", EMPTY_CONTEXT).get(internals.baggage_key) != {"k": "v"}:
        problems.append("the baggage's context key")
    return problems


class _Keeping(SpanProcessor):
    def __init__(self) -> None:
        self.ended: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


def _mesh_span_problems(internals: _Internals) -> list[str]:
    """A ``MeshSpan`` and an SDK span through the same calls must end the same."""
    kept = _Keeping()
    tracer = _probe_tracer(kept)
    recorder = _Recorder.of(tracer, internals)
    if recorder is None:
        return ["a plain SDK tracer is not one MeshSpan can stand in for"]
    parent = SpanContext(0xABC, 0xDEF, True, _FLAGS[True, True])
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    for span in (
        recorder.start("probe", SpanKind.SERVER, context),
        tracer.start_span("probe", context, SpanKind.SERVER),
    ):
        span.set_attribute("key", "value")
        span.set_attributes({"count": 1, "list": ["a", "b"]})
        span.add_event("event", {"at": 1})
        span.add_link(parent, {"why": "probe"})
        span.update_name("renamed")
        span.record_exception(ValueError("probe"))
        span.set_status(Status(StatusCode.ERROR, "probe"))
        span.end()
    if len(kept.ended) != 2 or not isinstance(kept.ended[0], MeshSpan):
        return ["MeshSpan: not ended through the span processors"]
    mesh, sdk = (_public_view(span) for span in kept.ended)
    if mesh != sdk:
        return [f"MeshSpan ends as {mesh}, an SDK span as {sdk}"]
    return []


def _public_view(span: ReadableSpan) -> tuple[object, ...]:
    return (
        span.kind,
        span.parent,
        span.name,
        dict(span.attributes or {}),
        [event.name for event in span.events],
        [link.context.span_id for link in span.links],
        (span.status.status_code, span.status.description),
        span.dropped_attributes,
        span.end_time is not None,
        span.resource,
        span.instrumentation_scope,
    )


# --- SpanStarter ----------------------------------------------------------------------


class SpanStarter:
    """Starts meshkit's spans (see the module docstring) from ``tracer_provider``, or
    from the global provider, followed if it is installed after the app was built."""

    def __init__(self, tracer_provider: trace.TracerProvider | None) -> None:
        tracer = get_tracer(tracer_provider)
        self._global = isinstance(tracer, trace.ProxyTracer)
        self._provider: trace.TracerProvider | None = None
        self._next_check = 0.0
        self._use(tracer)

    @property
    def tracing(self) -> bool:
        """False while no SDK is configured: the API's no-op tracer makes no spans."""
        if self._global and time.monotonic() >= self._next_check:
            self._follow_global()
        return self._tracing

    def start(self, name: str, kind: SpanKind, context: Context | None = None) -> Span:
        """A span of ``kind`` whose parent is the span of ``context`` (default: current)."""
        if self._global and time.monotonic() >= self._next_check:
            self._follow_global()
        recorder = self._recorder
        if recorder is None or not recorder.tracer._is_enabled():
            return self._tracer.start_span(name, context=context, kind=kind)
        return recorder.start(name, kind, context)

    def start_server(
        self, name: str, headers: RawHeaders
    ) -> tuple[Span, Context | None, bool, int]:
        """A request's SERVER span continuing the caller's trace from ``headers``; the
        context to make current for the handler (the caller's, baggage included, with
        the span in it; None when there is nothing to carry on); whether the span
        records; its trace id (0 for none).

        For the usual caller, a lone ``traceparent`` that is not sampled and a sampler
        that follows it, the span is decided from the field's trace id and flags
        (``tracecontext.parse_unsampled``): the caller's parent id, ``SpanContext``,
        span and context are never made (a dropped span's children read none of them).
        Any other lone ``traceparent`` is parsed, and the span started from the caller's
        ids (``_Recorder.start_remote``). Without tracing the caller's context is
        carried on as it came.
        """
        if self._global and time.monotonic() >= self._next_check:
            self._follow_global()
        recorder = self._recorder
        if recorder is None or not recorder.tracer._tracer_config.is_enabled:
            return self._start_server_stock(name, headers)
        found = lone_traceparent(headers)
        if not isinstance(found, bytes):  # no trace header, or more than a traceparent
            span = recorder.start(name, SpanKind.SERVER, found)
            return _server_span(span, with_span(span, found))
        if recorder.follows_parent:
            unsampled = tracecontext.parse_unsampled(found)
            if unsampled is not None:
                trace_id, flags = unsampled
                # _DroppedSpan's fields set here, without its constructor's call.
                dropped = _new_object(_DroppedSpan)
                dropped.recorder = recorder
                dropped.trace_id = trace_id
                dropped.random_id = flags == _RANDOM_TRACE_ID
                dropped.state = DEFAULT_TRACE_STATE
                return dropped, Context({recorder.span_key: dropped}), False, trace_id
        caller = tracecontext.parse_traceparent(found.decode("latin-1"))
        if caller is None:
            span = recorder.start(name, SpanKind.SERVER, EMPTY_CONTEXT)
            return _server_span(span, Context({recorder.span_key: span}))
        span = recorder.start_remote(name, SpanKind.SERVER, caller)
        recording = type(span) is not _DroppedSpan
        return span, Context({recorder.span_key: span}), recording, caller[0]  # in its trace

    def _start_server_stock(
        self, name: str, headers: RawHeaders
    ) -> tuple[Span, Context | None, bool, int]:
        """``start_server`` where meshkit does not stand in for the tracer: without
        tracing, the caller's span and context as they came; else the tracer's span."""
        parent = extract_context(headers)
        if self._tracing:
            span = self.start(name, SpanKind.SERVER, parent)
            return span, with_span(span, parent), span.is_recording(), trace_id_of(span)
        if parent is EMPTY_CONTEXT:
            return INVALID_SPAN, None, False, 0
        span = trace.get_current_span(parent)
        return span, parent, False, trace_id_of(span)

    def start_call(self, name: str) -> tuple[Span, Context]:
        """A mesh call's CLIENT span, child of the current span, and the current context
        (where its attempts start).

        A call whose parent is a dropped span its sampler follows is dropped in the
        parent's trace, with the parent's flags and trace state: its span is then the
        parent itself. A dropped call's own span id is never read (its attempts carry
        theirs on), so none is made, and the server's decision is reused as it is.
        """
        if self._global and time.monotonic() >= self._next_check:
            self._follow_global()
        current = current_context()
        recorder = self._recorder
        if recorder is not None and recorder.tracer._tracer_config.is_enabled:
            parent: Any = current.get(recorder.span_key)
            if parent is None:  # a call outside any span: the root of a trace
                return recorder.root(name, _CLIENT, current), current
            if type(parent) is _DroppedSpan and recorder.sampling.follows_parent:
                return parent, current
            return recorder.start(name, _CLIENT, current), current
        return self._tracer.start_span(name, context=current, kind=_CLIENT), current

    def start_attempt(
        self, name: str, call: Span, context: Context, headers: list[tuple[str, str]]
    ) -> Span | None:
        """The CLIENT span of one attempt of the call of span ``call`` started in
        ``context`` (``start_call``'s), its trace headers appended to ``headers``.

        None when the attempt is dropped and the context holds no baggage (the usual
        mesh call): its ``traceparent`` is formatted from the call's trace and a new
        span id, and no span object is made (nothing would record or read it).
        """
        recorder = self._recorder
        if (
            recorder is None
            or not recorder.tracer._tracer_config.is_enabled
            or context.get(recorder.baggage_key)
        ):
            span = self.start_child(name, _CLIENT, call, context)
            append_trace_headers(headers, span, context)
            return span
        if type(call) is _DroppedSpan and recorder.sampling.follows_parent:
            # The id the SDK's RandomIdGenerator draws, without its frame; 0 is invalid.
            span_id = random.getrandbits(64) if recorder.stock_ids else 0
            if not span_id:
                span_id = recorder.ids.generate_span_id()
            flags = _RANDOM_TRACE_ID if call.random_id else 0
            headers.append(("traceparent", tracecontext.format_ids(call.trace_id, span_id, flags)))
            state = call.state
            if state is not DEFAULT_TRACE_STATE and state:
                headers.append(("tracestate", state.to_header()))
            return None
        span = recorder.start(name, _CLIENT, with_span(call, context))
        if type(span) is recorder.span_class:
            # A recorded attempt (a call's recorded span has recorded children): its
            # ids read from its SpanContext's tuple, without a property call each.
            ids: Any = span._context
            trace_id, span_id, _, flags, state, _ = ids
            _append_ids(headers, trace_id, span_id, flags, state)
        else:
            append_trace_headers(headers, span, context)
        return span

    def start_child(self, name: str, kind: SpanKind, parent: Span, context: Context) -> Span:
        """The span ``start(name, kind, trace.set_span_in_context(parent, context))``
        makes; the context is made only if the child may record (a dropped parent
        whose sampler follows it has a dropped child)."""
        recorder = self._recorder
        if (
            type(parent) is _DroppedSpan
            and parent.recorder is recorder
            and recorder.sampling.follows_parent
            and recorder.tracer._is_enabled()
        ):
            return parent.child()
        return self.start(name, kind, trace.set_span_in_context(parent, context))

    def _use(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._tracing = not isinstance(tracer, trace.NoOpTracer | trace.ProxyTracer)
        self._recorder = None if _INTERNALS is None else _Recorder.of(tracer, _INTERNALS)

    def _follow_global(self) -> None:
        # The global provider may be installed after the app is built: follow it, but
        # look at most once a second (both callers check the time), since while none is
        # set the API reads os.environ on every call.
        self._next_check = time.monotonic() + _PROVIDER_RECHECK_SECONDS
        provider = trace.get_tracer_provider()
        if provider is not self._provider:
            self._provider = provider
            self._use(get_tracer(provider))
        # The API sets the global provider once: found, it needs no more looking for.
        self._global = isinstance(provider, trace.ProxyTracerProvider)


class _Processors(NamedTuple):
    """A tracer's span processors (``all``), and those whose ``on_start``,
    ``_on_ending`` and ``on_end`` do something: a recorded span is handed to these
    directly, where the SDK calls every processor's no-op hooks through its own."""

    all: tuple[SpanProcessor, ...]
    starting: tuple[SpanProcessor, ...]
    ending: tuple[SpanProcessor, ...]
    ended: tuple[SpanProcessor, ...]

    @classmethod
    def of(cls, processors: tuple[SpanProcessor, ...]) -> _Processors:
        def overriding(name: str) -> tuple[SpanProcessor, ...]:
            noop = getattr(SpanProcessor, name)
            return tuple(p for p in processors if getattr(type(p), name) is not noop)

        return cls(
            processors, overriding("on_start"), overriding("_on_ending"), overriding("on_end")
        )


#: ``_Recorder._record``'s context for a span ``start_remote`` made: the caller's, made
#: only if a span processor's ``on_start`` is to read it.
_REMOTE_PARENT = Context()


class _Recorder:
    """What one SDK tracer decides and records, taken over by meshkit."""

    def __init__(self, tracer: SdkTracer, sampling: _Sampling, internals: _Internals) -> None:
        self.tracer = tracer
        self.sampling = sampling
        self.follows_parent = sampling.follows_parent
        self.span_key = internals.span_key
        self.baggage_key = internals.baggage_key
        self.ids = tracer.id_generator
        # The SDK's default generator draws from the random module: its ids are drawn
        # here as it draws them, one frame fewer per id.
        self.stock_ids = type(self.ids) is RandomIdGenerator
        self._processors: _Processors | None = None
        self.random_trace_ids = self.ids.is_trace_id_random()
        self.root_flags = _FLAGS[True, self.random_trace_ids]
        self.span_class = _span_class(tracer, self)

    @classmethod
    def of(cls, tracer: trace.Tracer, internals: _Internals) -> _Recorder | None:
        """A recorder for an SDK tracer meshkit can stand in for, else None."""
        if not isinstance(tracer, SdkTracer):
            return None
        if not isinstance(tracer._tracer_metrics, internals.no_op_tracer_metrics):
            return None  # the SDK's span metrics would miss the spans made here
        if tracer._span_limits.max_span_attribute_length is not None:
            return None  # meshkit's own attributes go in unchecked: they must need no cutting
        sampling = _sampling(tracer.sampler)
        return None if sampling is None else cls(tracer, sampling, internals)

    def start(self, name: str, kind: SpanKind, context: Context | None) -> Span:
        """The span the tracer's sampler decides for, recorded or dropped."""
        parent: SpanContext | None = None
        if context is not EMPTY_CONTEXT:  # the usual request: no trace context came with it
            if context is None:
                context = otel_context.get_current()
            # The context's span read as trace.get_current_span reads it, without its
            # isinstance check against the Span ABC for the usual parents.
            parent_span: Any = context.get(self.span_key)
            if type(parent_span) is _DroppedSpan and self.sampling.follows_parent:
                # A child of a dropped span is dropped, in its trace: the parent's own
                # context need not be made for it.
                return parent_span.child()
            if type(parent_span) is self.span_class:  # a span of ours: its field as is
                parent = parent_span._context
            elif parent_span is not None and (
                type(parent_span) in _SPAN_TYPES or isinstance(parent_span, Span)
            ):
                parent = parent_span.get_span_context()
            if parent is not None:
                # A SpanContext is a tuple (checked at import): its fields without a
                # property call each; sampled as ``_Sampling.samples`` decides.
                trace_id, _, _, flags, state, valid = parent
                if valid:
                    random_id = bool(flags & _RANDOM_TRACE_ID)
                    if self.sampling.follows_parent:
                        sampled = bool(flags & _SAMPLED)
                    else:
                        sampled = trace_id & _LOW_64 < self.sampling.bound
                    if not sampled:
                        return _DroppedSpan(self, trace_id, random_id, state)
                    flags = _FLAGS[True, random_id]
                    return self._record(name, kind, context, parent, trace_id, flags)
        return self.root(name, kind, context)

    def root(self, name: str, kind: SpanKind, context: Context | None) -> Span:
        """The span ``start`` decides for in ``context`` without a span: a new trace's."""
        trace_id = random.getrandbits(128) if self.stock_ids else 0
        if not trace_id:
            trace_id = self.ids.generate_trace_id()
        if trace_id & _LOW_64 >= self.sampling.bound:
            return _DroppedSpan(self, trace_id, self.random_trace_ids, DEFAULT_TRACE_STATE)
        return self._record(name, kind, context, None, trace_id, self.root_flags)

    def start_remote(self, name: str, kind: SpanKind, caller: tracecontext.TraceParent) -> Span:
        """``start(name, kind, propagation.remote_parent_context(caller, ()))``: the
        caller's ``SpanContext`` made from its tuple (valid by parsing), and the context
        holding it only for span processors that read it in ``on_start``."""
        trace_id, parent_id, flags = caller
        random_id = bool(flags & _RANDOM_TRACE_ID)
        if self.follows_parent:
            sampled = bool(flags & _SAMPLED)
        else:
            sampled = trace_id & _LOW_64 < self.sampling.bound
        if not sampled:
            return _DroppedSpan(self, trace_id, random_id, DEFAULT_TRACE_STATE)
        fields = (trace_id, parent_id, True, _TRACE_FLAGS[flags], DEFAULT_TRACE_STATE, True)
        parent = _new_tuple(SpanContext, fields)
        return self._record(name, kind, _REMOTE_PARENT, parent, trace_id, _FLAGS[True, random_id])

    def _remote_context(self, parent: SpanContext) -> Context:
        """The context ``propagation.remote_parent_context`` makes for ``parent``."""
        remote = _new_object(NonRecordingSpan)
        remote._context = parent
        return Context({self.span_key: remote})

    def _record(
        self,
        name: str,
        kind: SpanKind,
        context: Context | None,
        parent: SpanContext | None,
        trace_id: int,
        flags: TraceFlags,
    ) -> MeshSpan:
        """A span the sampler records, started through the tracer's processors."""
        state = DEFAULT_TRACE_STATE if parent is None else parent[4]  # its trace_state
        span_id = random.getrandbits(64) if self.stock_ids else 0
        if not span_id:
            span_id = self.ids.generate_span_id()
        # What SpanContext.__new__ makes (its tuple layout is checked at import). The
        # trace id is a valid parent's, parsed, or drawn as the span id is: only another
        # generator's ids need checking.
        valid = self.stock_ids or (0 < trace_id <= _MAX_TRACE_ID and 0 < span_id <= _MAX_SPAN_ID)
        span_context = _new_tuple(SpanContext, (trace_id, span_id, False, flags, state, valid))
        # Not the SDK's constructor (nor its __new__): the fields it sets that differ
        # per span; MeshSpan's class holds the rest.
        span = _new_object(self.span_class)
        span._name = name
        span._context = span_context
        span._parent = parent
        span._kind = kind
        span._attributes = {}
        span._start_time = time_ns()
        processors = self.processors()
        if processors is None or processors.starting:
            if context is _REMOTE_PARENT:
                context = self._remote_context(cast(SpanContext, parent))
            if processors is None:
                self.tracer.span_processor.on_start(span, parent_context=context)
            else:
                for processor in processors.starting:
                    processor.on_start(span, parent_context=context)
        return span

    def processors(self) -> _Processors | None:
        """The tracer's span processors by the hooks they implement, when it holds
        them in the SDK's ``SynchronousMultiSpanProcessor``, else None."""
        multi = self.tracer.span_processor
        if type(multi) is not SynchronousMultiSpanProcessor:
            return None
        known = self._processors
        if known is None or known.all is not multi._span_processors:
            known = self._processors = _Processors.of(multi._span_processors)
        return known


class _DroppedSpan(NonRecordingSpan):
    """The ``NonRecordingSpan`` of a span the sampler dropped, its context made on first use.

    Most dropped spans are never looked at (a request that calls nobody and logs no
    trace id), so they draw no span id and make no SpanContext; once read, the context
    is the one the SDK would have made: in its trace (its parent's, or a new one), a new
    span id, unsampled flags and the parent's trace state.
    """

    def __init__(
        self, recorder: _Recorder, trace_id: int, random_id: bool, state: TraceState
    ) -> None:
        # Not NonRecordingSpan's constructor: it takes the context this span defers.
        self.recorder = recorder
        self.trace_id = trace_id
        self.random_id = random_id
        self.state = state

    @property
    def _context(self) -> SpanContext:  # type: ignore[override]
        made = self.__dict__.get("_made")
        if made is None:
            flags = _FLAGS[False, self.random_id]
            context = SpanContext(self.trace_id, self.span_id(), False, flags, self.state)
            # setdefault is atomic: two threads reading at once agree on one context.
            made = self.__dict__.setdefault("_made", context)
        return cast(SpanContext, made)

    def get_span_context(self) -> SpanContext:
        return self._context

    def child(self) -> _DroppedSpan:
        """A dropped child: in this span's trace, with its trace state."""
        return _DroppedSpan(self.recorder, self.trace_id, self.random_id, self.state)

    def span_id(self) -> int:
        """This span's id, drawn on first use (the same one its context holds)."""
        span_id: int | None = self.__dict__.get("_span_id")
        if span_id is None:
            span_id = self.__dict__.setdefault("_span_id", self.recorder.ids.generate_span_id())
        return span_id

    def traceparent(self) -> str:
        """The ``traceparent`` of this span, from its ids (no SpanContext made)."""
        flags = tracecontext.RANDOM_TRACE_ID if self.random_id else 0
        return tracecontext.format_ids(self.trace_id, self.span_id(), flags)


#: The type of the spans the sampler dropped that meshkit made: nothing to record or end.
DroppedSpan: type[Span] = _DroppedSpan


def _context_variable() -> ContextVar[Context] | None:
    """The API's own ContextVar when the runtime context is the stock contextvars one
    and it holds what ``opentelemetry.context`` attaches (probed), else None."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if not isinstance(runtime, ContextVarsRuntimeContext) or not isinstance(variable, ContextVar):
        return None
    probe = Context()
    token = otel_context.attach(probe)
    try:
        if variable.get() is not probe:
            return None
    finally:
        otel_context.detach(token)
    return variable


_CONTEXT_VAR = _context_variable()
#: ``opentelemetry.context.get_current``, ``attach`` and ``detach``, on the ContextVar
#: itself where it can be (no Python call at all; the API's attach and detach are three
#: calls each): the mesh client reads the current context with them, and a request's
#: SERVER span is made current with them.
current_context: Callable[[], Context]
attach: Callable[[Context], Token[Context]]
detach: Callable[[Token[Context]], None]
if _CONTEXT_VAR is None:
    current_context, attach, detach = (
        otel_context.get_current,
        otel_context.attach,
        otel_context.detach,
    )
else:
    current_context, attach, detach = _CONTEXT_VAR.get, _CONTEXT_VAR.set, _CONTEXT_VAR.reset

#: The spans a context usually holds, known to be ``Span``s without asking the ABC.
_SPAN_TYPES = frozenset((_DroppedSpan, NonRecordingSpan, SdkSpan))


def append_trace_headers(headers: list[tuple[str, str]], span: Span, context: Context) -> None:
    """``propagation.append_span_headers(headers, span, context)``: for a dropped span in
    a context without baggage (the usual mesh call), its ``traceparent`` formatted from
    its ids, without a SpanContext, and the baggage looked for without the API's copies."""
    if _INTERNALS is None or type(span) is not _DroppedSpan or context.get(_INTERNALS.baggage_key):
        append_span_headers(headers, span, context)
        return
    headers.append(("traceparent", span.traceparent()))
    state = span.state
    if state is not DEFAULT_TRACE_STATE and state:  # the usual state: no call of its len()
        headers.append(("tracestate", state.to_header()))


def _append_ids(
    headers: list[tuple[str, str]], trace_id: int, span_id: int, flags: int, state: TraceState
) -> None:
    """The ``traceparent`` and ``tracestate`` the W3C propagator writes for these."""
    headers.append(("traceparent", tracecontext.format_ids(trace_id, span_id, flags)))
    if state is not DEFAULT_TRACE_STATE and state:  # the usual state: no len() call
        headers.append(("tracestate", state.to_header()))


class _Sampling(NamedTuple):
    """A pure sampler's decision as data: a root span (or, unless ``follows_parent``, any
    span) is sampled when the low 64 bits of its trace id are below ``bound``; with
    ``follows_parent`` a child takes its parent's sampled flag."""

    bound: int
    follows_parent: bool

    def samples(self, parent: SpanContext | None, trace_id: int) -> bool:
        if parent is not None and self.follows_parent:
            return parent.trace_flags.sampled
        return trace_id & _LOW_64 < self.bound


def _sampling(sampler: Sampler) -> _Sampling | None:
    """What ``sampler`` decides, when it is one of the SDK's pure samplers, else None."""
    if sampler is ALWAYS_ON:
        return _Sampling(_LOW_64 + 1, follows_parent=False)
    if sampler is ALWAYS_OFF:
        return _Sampling(0, follows_parent=False)
    if type(sampler).should_sample is TraceIdRatioBased.should_sample:
        return _Sampling(cast(TraceIdRatioBased, sampler).bound, follows_parent=False)
    if type(sampler).should_sample is ParentBased.should_sample:
        delegates = vars(sampler)
        if any(delegates.get(name) is not d for name, d in _PARENT_BASED_DEFAULTS.items()):
            return None
        root = _sampling(delegates["_root"])
        # A parent decides (its sampled flag honoured as is); a root asks the root sampler.
        return None if root is None else _Sampling(root.bound, follows_parent=True)
    return None


# --- MeshSpan -------------------------------------------------------------------------


class MeshSpan(SdkSpan):
    """An SDK ``Span`` made without the SDK's per-span setup (``_Recorder._record``
    sets the fields that differ per span).

    What every span of one tracer shares (its processors, limits, resource and scope) is
    set once on a subclass per tracer (``_span_class``); what most spans never use
    (events, links, a status) defaults on the class and is made on first use. Attributes start as
    a plain dict that meshkit's own, valid by construction, go into as they are
    (``set_mesh_attributes``); the first attribute set through the API turns them into
    the SDK's ``BoundedAttributes``, checked and bounded as on any SDK span. An ended
    span refuses every change, so the processors get it as is, with no snapshot copy.
    """

    _end_time: int | None = None
    _events: Any = ()
    _links: Any = ()
    _status = UNSET_STATUS
    _sampler = None
    _trace_config = None
    _record_end_metrics = None
    _record_exception = True
    _set_status_on_exception = True
    # SDK methods hold it for a few bytecodes: one lock for all spans, none made per span.
    _lock = threading.Lock()
    _attributes: dict[str, types.AnyValue] | BoundedAttributes
    _recorder: _Recorder  # the one that makes this class's spans (set per class)

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if not self._refuse("set attributes"):
            checked = self._checked_attributes()
            for key, value in attributes.items():
                checked[key] = value

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if not self._refuse("set an attribute"):
            self._checked_attributes()[key] = value

    def _checked_attributes(self) -> BoundedAttributes:
        attributes = self._attributes
        if not isinstance(attributes, BoundedAttributes):
            limits = self._limits
            attributes = self._attributes = BoundedAttributes(
                limits.max_span_attributes,
                attributes,
                immutable=False,
                max_value_len=limits.max_span_attribute_length,
            )
        return attributes

    def _add_event(self, event: Any) -> None:
        if not self._refuse("add an event"):
            if not isinstance(self._events, BoundedList):
                self._events = BoundedList(self._limits.max_events)
            self._events.append(event)

    def _add_link(self, link: Link) -> None:
        if not self._refuse("add a link"):
            if not isinstance(self._links, BoundedList):
                self._links = BoundedList(self._limits.max_links)
            self._links.append(link)

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._end_time is not None:
                self._refuse("end")
                return
            self._end_time = end_time if end_time is not None else time_ns()
        processors = self._recorder.processors()
        if processors is None:
            self._span_processor._on_ending(self)
            self._span_processor.on_end(self)
            return
        for processor in processors.ending:
            processor._on_ending(self)
        for processor in processors.ended:
            processor.on_end(self)

    def _refuse(self, what: str) -> bool:
        if self._end_time is None:
            return False
        logger.warning("Tried to %s on an ended span.", what)
        return True


def _span_class(tracer: SdkTracer, recorder: _Recorder) -> type[MeshSpan]:
    """``MeshSpan`` with ``tracer``'s shared fields set once, on a class of its own."""
    shared = {
        "_recorder": recorder,
        "_span_processor": tracer.span_processor,
        "_resource": tracer.resource,
        "_limits": tracer._span_limits,
        "_instrumentation_info": tracer.instrumentation_info,
        "_instrumentation_scope": tracer._instrumentation_scope,
        "__module__": __name__,
    }
    return type("MeshSpan", (MeshSpan,), shared)


def set_mesh_attributes(span: Span, attributes: dict[str, Any], name: str | None = None) -> None:
    """Set meshkit's own attributes (valid by construction) on ``span`` in one call, and
    rename it to ``name`` if given; ``attributes`` becomes the span's: the caller must
    not change it afterwards."""
    # Every MeshSpan's class is its tracer's subclass: known without the Span ABC's
    # isinstance check.
    if type(span).__base__ is MeshSpan:
        mesh = cast(MeshSpan, span)
        own = mesh._attributes
        limit = mesh._limits.max_span_attributes
        if (
            mesh._end_time is None
            and type(own) is dict
            and (limit is None or len(own) + len(attributes) <= limit)
        ):
            if own:
                own.update(attributes)
            else:
                mesh._attributes = attributes  # handed over: no copy
            if name is not None:
                mesh._name = name
            return
    # Another span, an ended one, or limits to apply: the checked path warns or bounds.
    if name is not None:
        span.update_name(name)
    span.set_attributes(attributes)


# --- reading ended spans and posting encoded ones -------------------------------------

#: An ended span's name, kind, context, parent, start and end times, attributes,
#: events, links, status, resource and instrumentation scope, as ``span_fields`` reads them.
SpanFields = tuple[
    str,
    SpanKind,
    SpanContext | None,
    SpanContext | None,
    int | None,
    int | None,
    Mapping[str, types.AnyValue] | None,
    Sequence[Any],
    Sequence[Link],
    Status,
    Resource,
    InstrumentationScope | None,
]
#: ``span``'s fields in one call, without the copies its properties make: an encoder
#: reads every field of every span, and must not change them. The getter itself, no
#: Python frame around it: it runs for every span that ends.
span_fields = cast(
    Callable[[ReadableSpan], SpanFields],
    operator.attrgetter(
        "_name",
        "_kind",
        "_context",
        "_parent",
        "_start_time",
        "_end_time",
        "_attributes",
        "_events",
        "_links",
        "_status",
        "_resource",
        "_instrumentation_scope",
    ),
)


class SpanPoster:
    """Sends ready ``ExportTraceServiceRequest`` bodies to an OTLP/HTTP collector as
    ``OTLPSpanExporter.export`` sends the bodies it encodes: built as its constructor
    builds its sending, from the same ``OTEL_EXPORTER_OTLP_*`` variables (headers,
    timeout, compression, TLS files) where no argument is given."""

    def __init__(
        self,
        endpoint: str,
        *,
        certificate_file: str | None = None,
        client_key_file: str | None = None,
        client_certificate_file: str | None = None,
        session: Any = None,
        internals: _Internals | None = None,
    ) -> None:
        parts = internals or _INTERNALS
        if parts is None:
            raise RuntimeError("SpanPoster needs the exporter parts check() found")
        self.endpoint = endpoint
        transport = parts.build_transport(
            certificate_file,
            client_key_file,
            client_certificate_file,
            OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
            OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY,
            OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
            session=session,
        )
        self._client = parts.http_client(
            transport=transport,
            endpoint=endpoint,
            kind="spans",
            timeout=parts.resolve_timeout(OTEL_EXPORTER_OTLP_TRACES_TIMEOUT),
            compression=parts.resolve_compression(OTEL_EXPORTER_OTLP_TRACES_COMPRESSION),
            headers=parts.resolve_headers(None, OTEL_EXPORTER_OTLP_TRACES_HEADERS),
            logger=logger,
        )
        self._max_request_size = parts.max_request_size
        enabled = os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED, "")
        self._metrics = parts.exporter_metrics(
            parts.component_types.OTLP_HTTP_SPAN_EXPORTER,
            "traces",
            endpoint,
            None,
            enabled.strip().lower() == "true",
        )
        self._shutdown = False

    def post(self, body: bytes, count: int) -> SpanExportResult:
        """Send one ``ExportTraceServiceRequest`` body holding ``count`` spans."""
        if self._shutdown:
            logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(count) as result:
            # A non-positive max_request_size turns the limit off, as in the exporter.
            if 0 < self._max_request_size < len(body):
                logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size "
                    "%d bytes.",
                    len(body),
                    self._max_request_size,
                )
                return SpanExportResult.FAILURE
            sent = self._client.export(body)
            if not sent.success:
                result.error = sent.error
                if sent.status_code is not None:
                    result.error_attrs = {HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if not self._shutdown:
            self._shutdown = True
            self._client.shutdown()


# --- a request's SERVER span ----------------------------------------------------------


def with_span(span: Span, parent: Context) -> Context:
    """``parent`` with ``span`` as its current span (``trace.set_span_in_context``, in
    one copy of the context where the API makes two)."""
    if _INTERNALS is None:
        return trace.set_span_in_context(span, parent)
    values = dict(parent)
    values[_INTERNALS.span_key] = span
    return Context(values)


def _server_span(span: Span, context: Context) -> tuple[Span, Context, bool, int]:
    """``start_server``'s answer for a span ``_Recorder.start`` made: a ``_DroppedSpan``,
    else a ``MeshSpan`` just started (so recording)."""
    return span, context, type(span) is not _DroppedSpan, trace_id_of(span)


def trace_id_of(span: Span) -> int:
    """The trace id of ``span``; a dropped span's without making its context."""
    if type(span) is _DroppedSpan:
        return span.trace_id
    return span.get_span_context().trace_id


_INTERNALS = check()
