"""SpanStarter: meshkit's own spans, with the SDK's decisions at a fraction of its cost.

A request through the mesh makes up to three spans (the callee's SERVER span, the
caller's call and attempt spans), and the SDK's ``Tracer.start_span`` + ``Span`` cost
~20 µs of a ~40 µs request: sampling-result objects, a lock and a bounded attribute
dict per span, validation of every attribute, a snapshot copy at the end. When the
provider is a plain SDK one (a sampler whose decision is a pure function of the parent
and the trace id, the default id generator or any other, no per-span SDK metrics,
unbounded attribute values) ``SpanStarter`` takes the same decisions itself:

- a span the sampler drops is the same ``NonRecordingSpan`` the SDK makes (parent's
  trace id or a new one, a new span id, unsampled flags, parent's trace state);
- a recorded span is a ``MeshSpan``: a subclass of the SDK's ``Span`` built in a
  fraction of the time, started and ended through the provider's span processors like
  any SDK span, so exporters, processors and user code see an SDK span.

Any other provider, sampler or tracer goes through ``start_span`` as usual.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

from opentelemetry import trace
from opentelemetry.attributes import _clean_attribute_value
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import SpanProcessor, SynchronousMultiSpanProcessor
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import (
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
from opentelemetry.trace.span import DEFAULT_TRACE_STATE as _DEFAULT_TRACE_STATE
from opentelemetry.util import types

from meshkit.telemetry.propagation import EMPTY_CONTEXT, get_tracer

try:  # a private SDK name; without it every span is left to the SDK
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
except ImportError:  # pragma: no cover (a future SDK)
    NoOpTracerMetrics = None  # type: ignore[assignment,misc]

logger = logging.getLogger(__name__)
_time_ns = time.time_ns
_new_object = object.__new__

#: Trace flags by (sampled, random trace id), as the SDK sets them.
_FLAGS = {
    (sampled, random_id): TraceFlags(
        (TraceFlags.SAMPLED if sampled else 0) | (TraceFlags.RANDOM_TRACE_ID if random_id else 0)
    )
    for sampled in (False, True)
    for random_id in (False, True)
}
_PROVIDER_RECHECK_SECONDS = 1.0
#: The status of every span nobody set one on (one object: encoders compare identity).
UNSET_STATUS = Status(StatusCode.UNSET)


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
        # Read as _is_enabled() reads it, without its call: tracer configurators may
        # replace a tracer's config at any time.
        if recorder is None or not recorder.tracer._tracer_config.is_enabled:
            return self._tracer.start_span(name, context=context, kind=kind)
        # The recorder's decision, inline: every request makes a span here (~50 ns a call).
        parent: SpanContext | None = None
        if context is not EMPTY_CONTEXT:  # the usual request: no trace context came with it
            parent_span = trace.get_current_span(context)
            if isinstance(parent_span, _DroppedSpan) and recorder.sampling.follows_parent:
                # A child of a dropped span is dropped: its trace is the parent's, and the
                # parent's own context need not be made for it.
                return _dropped_span(
                    recorder, parent_span._trace_id, parent_span._random_id, parent_span._state
                )
            parent = parent_span.get_span_context()
            if not parent.is_valid:
                parent = None
        if parent is None:
            # A new trace; 0 is no valid id: the generator itself draws again.
            trace_id = (recorder.sdk_random_ids and random.getrandbits(128)) or (
                recorder.new_trace_id()
            )
            if trace_id & _LOW_64 >= recorder.bound:
                # Dropped, as most roots of a sampled mesh are: ~70 ns in all.
                dropped = _new_object(recorder.dropped_class)
                dropped._trace_id = trace_id
                return dropped
            trace_state, flags = _DEFAULT_TRACE_STATE, recorder.root_flags
        else:
            trace_id, random_id = parent.trace_id, parent.trace_flags.random_trace_id
            trace_state = parent.trace_state
            if not recorder.sampling.samples(parent, trace_id):
                return _dropped_span(recorder, trace_id, random_id, trace_state)
            flags = _FLAGS[True, random_id]
        return recorder.record(name, kind, context, parent, trace_id, flags, trace_state)

    def _use(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._tracing = not isinstance(tracer, (trace.NoOpTracer, trace.ProxyTracer))
        self._recorder = _Recorder.of(tracer)

    def _follow_global(self) -> None:
        # The global provider may be installed after the app is built: follow it, but
        # look at most once a second, since while none is set the API reads os.environ
        # on every call (~1 µs a request for nothing).
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + _PROVIDER_RECHECK_SECONDS
        provider = trace.get_tracer_provider()
        if provider is not self._provider:
            self._provider = provider
            self._use(get_tracer(provider))
        # The API sets the global provider once: found, it needs no more looking for
        # (no clock read per span from now on).
        self._global = isinstance(provider, trace.ProxyTracerProvider)


class _Recorder:
    """What one SDK tracer decides and records, taken over by meshkit."""

    def __init__(self, tracer: SdkTracer, sampling: _Sampling) -> None:
        self.tracer = tracer
        self.sampling = sampling
        self.bound = sampling.bound
        ids = tracer.id_generator
        self.new_trace_id = ids.generate_trace_id
        self.new_span_id = ids.generate_span_id
        # The SDK's default generator draws its ids with random.getrandbits: called here
        # directly, that saves a Python call per root span and per recorded span (~30 ns).
        self.sdk_random_ids = _is_sdk_random(ids)
        self.random_trace_ids = ids.is_trace_id_random()
        self.root_flags = _FLAGS[True, self.random_trace_ids]
        self.processor = tracer.span_processor
        self.hooks = _Hooks.of(tracer.span_processor)
        self.span_class = _bound_span_class(tracer, self.hooks)
        # A dropped root span of this recorder sets only its trace id (the rest is shared).
        self.dropped_class = _bound_dropped_class(self)

    @classmethod
    def of(cls, tracer: trace.Tracer) -> _Recorder | None:
        """A recorder for an SDK tracer meshkit can stand in for, else None."""
        if not isinstance(tracer, SdkTracer) or not hasattr(
            getattr(tracer, "_tracer_config", None), "is_enabled"
        ):
            return None
        if NoOpTracerMetrics is None or not isinstance(
            getattr(tracer, "_tracer_metrics", None), NoOpTracerMetrics
        ):
            return None  # the SDK's span metrics would miss the spans made here
        if tracer._span_limits.max_span_attribute_length is not None:
            return None  # meshkit's own attributes are set unchecked: they must not need cutting
        sampling = _sampling(tracer.sampler)
        return None if sampling is None else cls(tracer, sampling)

    def record(
        self,
        name: str,
        kind: SpanKind,
        context: Context | None,
        parent: SpanContext | None,
        trace_id: int,
        flags: TraceFlags,
        trace_state: TraceState,
    ) -> MeshSpan:
        """A span the sampler records, started through the tracer's processors."""
        # 0 is no valid id: the generator itself draws again.
        span_id = (self.sdk_random_ids and random.getrandbits(64)) or self.new_span_id()
        span_context = _span_context(trace_id, span_id, flags, trace_state)
        # The fields a MeshSpan sets itself, without SdkSpan.__new__'s (*args, **kwargs)
        # call: ~0.1 µs where the constructor costs ~0.3.
        span = _new_object(self.span_class)
        span._name = name
        span._context = span_context
        span._parent = parent
        span._kind = kind
        span._start_time = _time_ns()
        span._attributes = {}
        if self.hooks is None:
            self.processor.on_start(span, parent_context=context)
        else:
            for on_start in self.hooks.current().starts:
                on_start(span, parent_context=context)
        return span


def _is_sdk_random(ids: IdGenerator) -> bool:
    """Whether ``ids`` draws its trace and span ids as the SDK's ``RandomIdGenerator``."""
    return (
        getattr(ids.generate_trace_id, "__func__", None) is RandomIdGenerator.generate_trace_id
        and getattr(ids.generate_span_id, "__func__", None) is RandomIdGenerator.generate_span_id
    )


class _Hooks:
    """What a ``SynchronousMultiSpanProcessor`` calls, minus ``SpanProcessor``'s no-ops
    (a BatchSpanProcessor's on_start and _on_ending, say): ~0.1 µs each per span. Found
    again when a processor is added, since the SDK then makes a new tuple of them."""

    def __init__(self, multi: SynchronousMultiSpanProcessor) -> None:
        self._multi = multi
        self._seen: tuple[SpanProcessor, ...] | None = None
        self.starts: tuple[Callable[..., None], ...] = ()
        self.endings: tuple[Callable[[SdkSpan], None], ...] = ()
        self.ends: tuple[Callable[[SdkSpan], None], ...] = ()

    @classmethod
    def of(cls, processor: SpanProcessor) -> _Hooks | None:
        is_multi = type(processor) is SynchronousMultiSpanProcessor
        return cls(cast(SynchronousMultiSpanProcessor, processor)) if is_multi else None

    def current(self) -> _Hooks:
        processors = self._multi._span_processors
        if processors is not self._seen:
            self.starts = _overridden(processors, "on_start")
            self.endings = _overridden(processors, "_on_ending")
            self.ends = _overridden(processors, "on_end")
            self._seen = processors
        return self


def _overridden(processors: tuple[SpanProcessor, ...], name: str) -> tuple[Any, ...]:
    base = getattr(SpanProcessor, name)
    return tuple(getattr(p, name) for p in processors if getattr(type(p), name) is not base)


class _DroppedSpan(NonRecordingSpan):
    """The ``NonRecordingSpan`` of a span the sampler dropped, its context made on first use.

    Most dropped spans are never looked at (a request that calls nobody and logs no
    trace id), so they cost no span id and no SpanContext; once read, the context is
    the one the SDK would have made.
    """

    _recorder: _Recorder
    _trace_id: int
    _random_id: bool
    _state: TraceState

    @property
    def _context(self) -> SpanContext:  # type: ignore[override]
        made = self.__dict__.get("_made")
        if made is None:
            # In its trace (its parent's, or a new one), a new span id, unsampled flags
            # and the parent's trace state: what the SDK makes for a dropped span.
            flags = _FLAGS[False, self._random_id]
            span_id = self._recorder.new_span_id()
            context = _span_context(self._trace_id, span_id, flags, self._state)
            # setdefault is atomic: two threads reading at once agree on one context.
            made = self.__dict__.setdefault("_made", context)
        return cast(SpanContext, made)

    def get_span_context(self) -> SpanContext:
        return self._context


def _bound_dropped_class(recorder: _Recorder) -> type[_DroppedSpan]:
    """``_DroppedSpan`` with what a dropped root span of ``recorder`` shares set once."""
    shared = {
        "_recorder": recorder,
        "_random_id": recorder.random_trace_ids,
        "_state": _DEFAULT_TRACE_STATE,
        "__module__": __name__,
    }
    return type("_DroppedSpan", (_DroppedSpan,), shared)


def _dropped_span(
    recorder: _Recorder, trace_id: int, random_id: bool, state: TraceState
) -> _DroppedSpan:
    # Set the fields directly (~70 ns) rather than through NonRecordingSpan's
    # constructor call (~150 ns).
    span = _new_object(_DroppedSpan)
    span._recorder = recorder
    span._trace_id = trace_id
    span._random_id = random_id
    span._state = state
    return span


def _checked_span_context(
    trace_id: int, span_id: int, flags: TraceFlags, trace_state: TraceState
) -> SpanContext:
    return SpanContext(trace_id, span_id, False, flags, trace_state)


def _built_span_context(
    trace_id: int, span_id: int, flags: TraceFlags, trace_state: TraceState
) -> SpanContext:
    # SpanContext is a tuple; its __new__ checks the id ranges (~0.25 µs a span), which
    # ids from the id generator always pass.
    return tuple.__new__(SpanContext, (trace_id, span_id, False, flags, trace_state, True))


def _pick_span_context_builder() -> Callable[[int, int, TraceFlags, TraceState], SpanContext]:
    """The direct builder when it makes what SpanContext makes on this API version."""
    sample = (0xABC, 0xDEF, _FLAGS[True, True], TraceState([("k", "v")]))
    made, checked = _built_span_context(*sample), _checked_span_context(*sample)
    same = made == checked and (made.trace_id, made.span_id, made.is_valid) == (
        checked.trace_id,
        checked.span_id,
        checked.is_valid,
    )
    return _built_span_context if same else _checked_span_context


_span_context = _pick_span_context_builder()


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


_LOW_64 = TraceIdRatioBased.TRACE_ID_LIMIT


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
        defaults = {
            "_remote_parent_sampled": ALWAYS_ON,
            "_remote_parent_not_sampled": ALWAYS_OFF,
            "_local_parent_sampled": ALWAYS_ON,
            "_local_parent_not_sampled": ALWAYS_OFF,
        }
        if any(delegates.get(name) is not value for name, value in defaults.items()):
            return None
        root = _sampling(delegates["_root"])
        # A parent decides (its sampled flag honoured as is); a root asks the root sampler.
        return None if root is None else _Sampling(root.bound, follows_parent=True)
    return None


# --- MeshSpan ------------------------------------------------------------------------


class MeshSpan(SdkSpan):
    """An SDK ``Span`` without the SDK's per-span setup cost.

    What every span of one tracer shares (resource, scope, processor, limits) lives on a
    subclass made per tracer (``_bound_span_class``), and what most spans never use
    (events, links, a status) defaults on the class: ``_Recorder.start`` sets six fields
    on a new instance (name, context, parent, kind, start time, attributes). Attributes
    are a plain dict, checked and bounded as the SDK does when set through the API;
    meshkit's own, known-valid attributes go in unchecked (``set_mesh_attributes``). An
    ended span is handed to the processors as is: it refuses every change after ``end``,
    so it needs no snapshot copy.
    """

    _end_time: int | None = None
    _events: Any = ()
    _links: Any = ()
    _status = UNSET_STATUS
    _dropped_attributes = 0
    _record_exception = True
    _set_status_on_exception = True
    # Held for a few bytecodes by the SDK method this class inherits (set_status): one
    # lock for all spans costs no allocation per span.
    _lock = threading.Lock()
    _attributes: dict[str, types.AnyValue]
    _hooks: _Hooks | None

    @property
    def dropped_attributes(self) -> int:
        return self._dropped_attributes

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._refuse("set an attribute"):
            return
        if not key or not isinstance(key, str):
            logger.warning("invalid attribute key %r: must be a non-empty string", key)
            self._dropped_attributes += 1
            return
        self._put(key, _clean_attribute_value(value, None))

    def _put(self, key: str, value: types.AnyValue) -> None:
        attributes = self._attributes
        attributes.pop(key, None)
        limit = self._limits.max_span_attributes
        if limit is not None and len(attributes) >= limit:
            if limit == 0:
                self._dropped_attributes += 1
                return
            del attributes[next(iter(attributes))]  # the oldest goes, as in the SDK
            self._dropped_attributes += 1
        attributes[key] = value

    def update_name(self, name: str) -> None:
        if self._end_time is None:  # _refuse's test, without its call on every span
            self._name = name
        else:
            self._refuse("update the name")

    def _add_event(self, event: Any) -> None:
        if not self._refuse("add an event"):
            if not self._events:
                self._events = BoundedList(self._limits.max_events)
            self._events.append(event)

    def _add_link(self, link: Link) -> None:
        if not self._refuse("add a link"):
            if not self._links:
                self._links = BoundedList(self._limits.max_links)
            self._links.append(link)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            self._refuse("end")
            return
        self._end_time = end_time if end_time is not None else _time_ns()
        hooks = self._hooks
        if hooks is None:
            self._span_processor._on_ending(self)
            self._span_processor.on_end(self)
            return
        if hooks._seen is not hooks._multi._span_processors:
            hooks.current()  # a processor was added: find the hooks again
        for on_ending in hooks.endings:
            on_ending(self)
        for on_end in hooks.ends:
            on_end(self)

    def _refuse(self, what: str) -> bool:
        if self._end_time is None:
            return False
        logger.warning("Tried to %s on an ended span.", what)
        return True


def _bound_span_class(tracer: SdkTracer, hooks: _Hooks | None) -> type[MeshSpan]:
    """``MeshSpan`` with ``tracer``'s shared fields set once, on a class of its own."""
    shared = {
        "_hooks": hooks,
        "_resource": tracer.resource,
        "_instrumentation_info": tracer.instrumentation_info,
        "_instrumentation_scope": tracer._instrumentation_scope,
        "_span_processor": tracer.span_processor,
        "_limits": tracer._span_limits,
        "__module__": __name__,
    }
    return type("MeshSpan", (MeshSpan,), shared)


def set_mesh_attributes(span: Span, attributes: dict[str, Any], name: str | None = None) -> None:
    """Set meshkit's own attributes (valid by construction) on ``span`` in one call, and
    rename it to ``name`` if given; ``attributes`` becomes the span's: the caller must
    not change it afterwards."""
    if isinstance(span, MeshSpan) and span._end_time is None:
        own = span._attributes
        limit = span._limits.max_span_attributes
        if not own and (limit is None or len(attributes) <= limit):
            span._attributes = attributes  # the caller hands it over: no copy
            if name is not None:
                span._name = name
            return
        if limit is None or len(own) + len(attributes) <= limit:
            own.update(attributes)
            if name is not None:
                span._name = name
            return
    # Another span, an ended one, or limits to apply: the checked path warns or bounds.
    if name is not None:
        span.update_name(name)
    span.set_attributes(attributes)
