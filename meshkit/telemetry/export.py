"""OTLP/HTTP span export: each span encoded as it ends, batches posted by one thread.

The stock path keeps every ended span object in a queue until the batch thread builds
a protobuf object per span, per attribute and per value, and the queued spans outlive
enough allocations to be walked by the garbage collector on their way out. Here
``OTLPBatchProcessor`` encodes a span into its OTLP wire bytes when it ends and queues
only those bytes (spans of a mesh repeat the same few attributes, so each encoded
key/value pair is memoized). Its thread wraps them into ``ExportTraceServiceRequest``
bodies and posts them as the stock ``OTLPSpanExporter`` would (``SpanPoster``: its
HTTP session, retries, timeouts, headers and TLS settings). Every field is encoded
here as the stock encoder writes it (tests/test_otlp.py decodes both and compares), so
neither the protobuf runtime nor the exporter is imported: 3.1 MiB resident
(bench/memory.py). bench/telemetry.py measures this against the stock
``BatchSpanProcessor`` (mode ``sampled100_stockexport``).

Reading an ended span's fields and posting a ready body need the SDK's internals:
``meshkit.telemetry._otel_sdk`` does both, and ``meshkit.telemetry.sdk`` uses this
module only when that adapter's import-time check passed.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind, Status, TraceFlags, TraceState
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from meshkit.telemetry._otel_sdk import UNSET_STATUS, SpanFields, SpanPoster, span_fields

logger = logging.getLogger(__name__)

_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_INT64 = range(-(2**63), 2**63)
_LOW_64 = 2**64 - 1
_CACHE_LIMIT = 4096
_pack_double = struct.Struct("<d").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_short = struct.Struct("<H").pack
_pack_head = struct.Struct("BBB").pack  # a tag, then a length of two varint bytes
_pack_fixed64 = struct.Struct("<Q").pack
# Span fields 1 (trace_id) and 2 (span_id) with their tags and lengths, ids big-endian
# as on the wire in W3C headers; field 4 (parent_span_id); fields 7 and 8 (times).
_pack_ids = struct.Struct(">HQQHQ").pack
_pack_parent = struct.Struct(">HQ").pack
_pack_times = struct.Struct("<BQBQ").pack
# Field 16 (flags): the parent's is_remote is known (0x100), and whether it is (0x200).
_LOCAL_PARENT_FLAGS = b"\x85\x01" + struct.pack("<I", 0x100)
_REMOTE_PARENT_FLAGS = b"\x85\x01" + struct.pack("<I", 0x300)
_SMALL = [bytes((value,)) for value in range(128)]
_SHUTDOWN_SECONDS = 30.0
_NONE = ()  # the events and links of a span that has none (MeshSpan's, ReadableSpan's)
_SAMPLED = TraceFlags.SAMPLED
_UNSET_STATUS_FIELD = b"\x7a\x00"  # Span.status present and empty, as the stock encoder sends
# KeyValue fields: in Span (9), Event (3), Link (4), Resource (1), InstrumentationScope (3).
_SPAN_ATTRIBUTE = b"\x4a"
_EVENT_ATTRIBUTE = b"\x1a"
_LINK_ATTRIBUTE = b"\x22"
_RESOURCE_ATTRIBUTE = b"\x0a"
_SCOPE_ATTRIBUTE = b"\x1a"


class _Unencodable(Exception):
    """A value OTLP has no type for (the stock encoder logs and leaves out its key)."""


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if 0 < value < 16384:  # most messages: two bytes, without the loop
        return _pack_short((value & 0x7F | 0x80) | (value >> 7) << 8)
    if value < 0:
        value += 1 << 64  # int64 is sent as its two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _string(tag: bytes, value: str | None) -> bytes:
    """A string field: proto3 leaves out an empty one."""
    return _delimited(tag, value.encode()) if value else b""


def _count(tag: bytes, value: int) -> bytes:
    return tag + _varint(value) if value else b""


def _any_value(value: object) -> bytes:
    """AnyValue: a oneof, so even default values are written (None sets none)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _delimited(b"\x0a", value.encode())
    if isinstance(value, int):
        if value not in _INT64:
            raise _Unencodable
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _delimited(b"\x3a", value)
    if isinstance(value, Sequence):  # ArrayValue (5) of AnyValue (1)
        return _delimited(b"\x2a", b"".join(_delimited(b"\x0a", _any_value(v)) for v in value))
    if isinstance(value, Mapping):  # KeyValueList (6) of KeyValue (1)
        pairs = (_delimited(b"\x0a", _key_value(str(k), v)) for k, v in value.items())
        return _delimited(b"\x32", b"".join(pairs))
    raise _Unencodable


def _key_value(key: str, value: object) -> bytes:
    return _string(b"\x0a", key) + _delimited(b"\x12", _any_value(value))


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    """Each attribute a ``KeyValue`` field ``tag``, in order, as the stock encoder does."""
    if not attributes:
        return b""
    return b"".join(_attribute(tag, key, value) for key, value in attributes.items())


def _attribute(tag: bytes, key: str, value: object) -> bytes:
    try:
        return _delimited(tag, _key_value(key, value))
    except _Unencodable:
        logger.error("Failed to encode key %s: invalid type %s", key, type(value))
        return b""


class _Memo:
    """Encoded pieces memoized by what they encode, bounded: a high-cardinality value
    (a path) must not grow it forever."""

    def __init__(self) -> None:
        self.cache: dict[Any, bytes] = {}

    def store(self, key: object, encoded: bytes) -> bytes:
        if len(self.cache) >= _CACHE_LIMIT:
            self.cache.clear()
        self.cache[key] = encoded
        return encoded


class _KeyValues:
    """Encoded ``KeyValue`` fields by value type, then key, then value. By type, since
    True == 1 == 1.0 but each goes out as its own type."""

    def __init__(self) -> None:
        self.by_type: dict[type, dict[str, dict[Any, bytes]]] = {}
        self._size = 0

    def encode(self, attributes: Mapping[str, Any]) -> bytes:
        by_type = self.by_type
        parts = []
        for key, value in attributes.items():
            try:
                parts.append(by_type[value.__class__][key][value])
            except (KeyError, TypeError):  # new, or unhashable (then unsupported anyway)
                parts.append(self._remember(key, value))
        return b"".join(parts)

    def _remember(self, key: str, value: Any) -> bytes:
        encoded = _attribute(_SPAN_ATTRIBUTE, key, value)
        if not isinstance(value, str | int | float) or (value == 0.0 and isinstance(value, float)):
            # Sequences compare equal across element types ((1,) == (True,)), and 0.0 ==
            # -0.0 as keys, not on the wire: none of them is memoized.
            return encoded
        if self._size >= _CACHE_LIMIT:
            self.by_type.clear()
            self._size = 0
        self.by_type.setdefault(value.__class__, {}).setdefault(key, {})[value] = encoded
        self._size += 1
        return encoded


#: A span encoded: its resource, its instrumentation scope, its ``ScopeSpans.spans`` field.
_Encoded = tuple[Resource, InstrumentationScope | None, bytes]


class SpanEncoder:
    """OTLP protobuf encoding of SDK spans: one ``Span`` message, or a whole request."""

    def __init__(self) -> None:
        self._key_values = _KeyValues()
        self._names = _Memo()
        self._statuses = _Memo()

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The ``ExportTraceServiceRequest`` of ``spans``."""
        return request_body(_grouped(self.encoded(span) for span in spans))

    def encoded(self, span: ReadableSpan) -> _Encoded:
        """``span``'s resource and scope, and the span as a field of ``ScopeSpans`` (its
        tag and length, then the ``Span`` message): what a request body holds of it."""
        return self.encoded_fields(span_fields(span))

    def encoded_fields(self, fields: SpanFields) -> _Encoded:
        """``encoded`` for the span ``span_fields`` read."""
        message = self._message(fields)
        size = len(message)
        if 128 <= size < 16384:  # nearly every span: its length in two bytes, no call
            head = _pack_head(0x12, size & 0x7F | 0x80, size >> 7)
        else:
            head = b"\x12" + _varint(size)
        return fields[10], fields[11], head + message

    def _message(self, fields: SpanFields) -> bytes:
        # Fields in field-number order, as protobuf writes them.
        name, kind, context, parent, start, end, attributes, events, links, status, _, _ = fields
        assert context is not None  # an SDK span has one (the stock encoder needs it too)
        # A SpanContext is a tuple (its layout checked where span_fields is): its fields
        # without a property call each.
        trace_id, span_id, _, _, trace_state, _ = context
        # By the kind's id: a SpanKind's hash is a Python call.
        name_and_kind = self._names.cache.get((name, id(kind)))
        if name_and_kind is None:
            name_and_kind = self._name_and_kind(name, kind)
        if parent is None:
            parent_field, flags_field = b"", _LOCAL_PARENT_FLAGS
        else:
            parent_field = _pack_parent(0x2208, parent[1])
            flags_field = _REMOTE_PARENT_FLAGS if parent[2] else _LOCAL_PARENT_FLAGS
        return b"".join(
            (
                _pack_ids(0x0A10, trace_id >> 64, trace_id & _LOW_64, 0x1208, span_id),
                b""
                if trace_state is DEFAULT_TRACE_STATE or not trace_state
                else _trace_state_field(trace_state),
                parent_field,
                name_and_kind,
                _pack_times(0x39, start, 0x41, end) if start and end else _times(start, end),
                self._key_values.encode(attributes) if attributes else b"",
                # Nearly every span: no events, no links, no limits applied.
                b""
                if events is _NONE and links is _NONE and type(attributes) is dict
                else _after_attributes(attributes, events, links),
                _UNSET_STATUS_FIELD if status is UNSET_STATUS else self._status(status),
                flags_field,
            )
        )

    def _name_and_kind(self, name: str, kind: SpanKind) -> bytes:
        name_field = _delimited(b"\x2a", name.encode()) if name else b""
        return self._names.store((name, id(kind)), name_field + b"\x30" + _SMALL[_KIND[kind]])

    def _status(self, status: Status) -> bytes:
        key = (status.status_code, status.description)
        encoded = self._statuses.cache.get(key)
        if encoded is None:
            parts = []
            if status.description:
                parts.append(_delimited(b"\x12", status.description.encode()))
            if status.status_code.value:
                parts.append(b"\x18" + _varint(status.status_code.value))
            encoded = self._statuses.store(key, _delimited(b"\x7a", b"".join(parts)))
        return encoded


def _times(start: int | None, end: int | None) -> bytes:
    """Fields 7 and 8 when either is unset (a span not started or not ended)."""
    return (b"\x39" + _pack_fixed64(start) if start else b"") + (
        b"\x41" + _pack_fixed64(end) if end else b""
    )


def _trace_state_field(trace_state: TraceState) -> bytes:
    state = ",".join(f"{key}={value}" for key, value in trace_state.items())
    return _delimited(b"\x1a", state.encode())


def _after_attributes(attributes: object, events: Sequence[Event], links: Sequence[Link]) -> bytes:
    """Fields 10 to 14: what the span's limits refused, its events and links (nearly
    always none of them)."""
    # Exact types: an ABC's isinstance costs more than the rest of this on every span.
    dropped = attributes.dropped if type(attributes) is BoundedAttributes else 0
    # Empty here, but a bounded list that holds none may still count what it refused.
    dropped_events = events.dropped if type(events) is BoundedList else 0
    dropped_links = links.dropped if type(links) is BoundedList else 0
    if not (events or links or dropped or dropped_events or dropped_links):
        return b""
    return b"".join(
        (
            _count(b"\x50", dropped),
            *(_delimited(b"\x5a", _event(event)) for event in events),
            _count(b"\x60", dropped_events),
            *(_delimited(b"\x6a", _link(link)) for link in links),
            _count(b"\x70", dropped_links),
        )
    )


def _event(event: Event) -> bytes:
    return b"".join(
        (
            b"\x09" + _pack_fixed64(event.timestamp) if event.timestamp else b"",
            _string(b"\x12", event.name),
            _attributes(_EVENT_ATTRIBUTE, event.attributes),
            _count(b"\x20", event.dropped_attributes),
        )
    )


def _link(link: Link) -> bytes:
    """A ``Link``: the stock encoder sends no trace state for it; its flags say whether
    the linked context is remote."""
    context = link.context
    return b"".join(
        (
            _pack_ids(
                0x0A10, context.trace_id >> 64, context.trace_id & _LOW_64, 0x1208, context.span_id
            ),
            _attributes(_LINK_ATTRIBUTE, link.attributes),
            _count(b"\x28", link.dropped_attributes),
            b"\x35" + _pack_fixed32(0x300 if context.is_remote else 0x100),
        )
    )


class _Group:
    """Encoded spans (``ScopeSpans.spans`` fields) of one resource and one scope."""

    __slots__ = ("resource", "scope", "spans")

    def __init__(self, resource: Resource, scope: InstrumentationScope | None) -> None:
        self.resource = resource
        self.scope = scope
        self.spans: list[bytes] = []


def _grouped(encoded: Iterable[_Encoded]) -> Iterable[_Group]:
    """Spans by resource and scope, in the order each pair first appears."""
    # By identity: Resource.__hash__ serializes its attributes to JSON on each call. The
    # groups hold both objects, so their ids stay theirs while the dict lives.
    groups: dict[tuple[int, int], _Group] = {}
    last_resource: Resource | None = None
    last_scope: InstrumentationScope | None = None
    group: _Group | None = None
    for resource, scope, span in encoded:
        # Spans come in runs of one resource and scope (one tracer's): a run costs one
        # lookup, each span of it two identity checks and an append.
        if group is None or resource is not last_resource or scope is not last_scope:
            last_resource, last_scope = resource, scope
            key = (id(resource), id(scope or None))
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(resource, scope or None)
        group.spans.append(span)
    return groups.values()


def request_body(groups: Iterable[_Group]) -> bytes:
    """An ``ExportTraceServiceRequest`` of the groups' spans, a ResourceSpans per resource."""
    by_resource: dict[int, list[_Group]] = {}
    for group in groups:
        by_resource.setdefault(id(group.resource), []).append(group)
    return b"".join(_delimited(b"\x0a", _resource_spans(same)) for same in by_resource.values())


def _resource_spans(groups: list[_Group]) -> bytes:
    resource = groups[0].resource
    parts: list[bytes] = []
    for group in groups:
        resource_field, scope_field = _resource_and_scope(resource, group.scope)
        if not parts:
            parts.append(_delimited(b"\x0a", resource_field))
        scope_spans = [_delimited(b"\x0a", scope_field)]
        scope_spans.extend(group.spans)  # tagged already
        if group.scope is not None and group.scope.schema_url:
            scope_spans.append(_delimited(b"\x1a", group.scope.schema_url.encode()))
        parts.append(_delimited(b"\x12", b"".join(scope_spans)))
    if resource.schema_url:
        parts.append(_delimited(b"\x1a", resource.schema_url.encode()))
    return b"".join(parts)


def _resource_and_scope(
    resource: Resource, scope: InstrumentationScope | None
) -> tuple[bytes, bytes]:
    """The ``Resource`` and ``InstrumentationScope`` messages (once per request body and
    scope): the resource's attributes; the scope's name, version and attributes."""
    resource_field = _attributes(_RESOURCE_ATTRIBUTE, resource.attributes)
    if scope is None:
        return resource_field, b""
    scope_field = _string(b"\x0a", scope.name) + _string(b"\x12", scope.version)
    return resource_field, scope_field + _attributes(_SCOPE_ATTRIBUTE, scope.attributes)


class OTLPBatchProcessor(SpanProcessor):
    """A ``BatchSpanProcessor`` for OTLP/HTTP, queueing encoded spans.

    Same knobs and behaviour as the SDK's (``OTEL_BSP_*``): sampled spans only, a batch
    posted every ``schedule_delay`` seconds or as soon as ``max_export_batch_size`` spans
    wait, at most ``max_queue_size`` spans waiting (newer ones dropped with a warning),
    ``force_flush`` and ``shutdown`` post what waits, a forked child starts afresh.
    Ending a span takes no lock: the queue is a deque, whose appends and pops are atomic.
    """

    def __init__(
        self,
        poster: SpanPoster,
        *,
        schedule_delay: float = 5.0,
        max_queue_size: int = 2048,
        max_export_batch_size: int = 512,
    ) -> None:
        self._poster = poster
        self._encoder = SpanEncoder()
        self._schedule_delay = schedule_delay
        self._max_queue_size = max_queue_size
        self._max_export_batch_size = max_export_batch_size
        self._shutdown = False
        self._start_worker()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_restart_in_child(self))

    def _start_worker(self) -> None:
        self._queue: deque[_Encoded] = deque()
        self._dropped = 0
        self._export_lock = threading.Lock()
        self._wake = threading.Event()
        self._worker = threading.Thread(target=self._run, name="meshkit-otlp-export", daemon=True)
        self._worker.start()

    def on_end(self, span: ReadableSpan) -> None:
        if self._shutdown:
            return
        fields = span_fields(span)
        context = fields[2]
        if context is None or not context[3] & _SAMPLED:  # its trace_flags
            return
        queue = self._queue
        if len(queue) >= self._max_queue_size:
            self._dropped += 1  # two threads at once may count one: it only feeds a warning
            return
        # Encoded now, so that the span object goes as soon as it ends.
        queue.append(self._encoder.encoded_fields(fields))
        if len(queue) >= self._max_export_batch_size and not self._wake.is_set():
            self._wake.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Post every waiting span now (the exporter's own timeout bounds each post)."""
        return self._post_waiting()

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._wake.set()
        self._worker.join(_SHUTDOWN_SECONDS)
        self._poster.shutdown()

    def _run(self) -> None:
        while not self._shutdown:
            self._wake.wait(self._schedule_delay)
            self._wake.clear()
            self._post_waiting()
        self._post_waiting()

    def _post_waiting(self) -> bool:
        """Post what waits now, in requests of at most ``max_export_batch_size`` spans
        (spans ending meanwhile wait for the next round)."""
        with self._export_lock:
            dropped, self._dropped = self._dropped, 0
            if dropped:
                logger.warning("Span queue full: dropped %d spans.", dropped)
            queue, results = self._queue, []
            waiting = len(queue)
            while waiting:
                count = min(waiting, self._max_export_batch_size)
                batch = [queue.popleft() for _ in range(count)]
                body = request_body(_grouped(batch))
                results.append(self._poster.post(body, count))
                waiting -= count
        return all(result is SpanExportResult.SUCCESS for result in results)


def _restart_in_child(processor: OTLPBatchProcessor) -> Callable[[], None]:
    """A fork hook giving the child its own thread and an empty queue (the parent's
    spans are the parent's to post), without keeping the processor alive."""
    reference = weakref.ref(processor)

    def restart() -> None:
        alive = reference()
        if alive is not None:
            alive._start_worker()

    return restart
