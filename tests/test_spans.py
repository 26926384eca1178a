"""SpanStarter takes the SDK's sampling decision itself (the same spans, the same ids),
and its MeshSpans behave as SDK spans to processors, exporters and user code."""

from __future__ import annotations

import json
import random
import types

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import (
    ConcurrentMultiSpanProcessor,
    ReadableSpan,
    Span,
    SpanLimits,
    SpanProcessor,
    TracerProvider,
    _disable_tracer_configurator,
)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

import meshkit.telemetry._otel_sdk
from meshkit.telemetry._otel_sdk import MeshSpan, SpanStarter, set_mesh_attributes
from meshkit.telemetry.propagation import extract_context

LIMIT = TraceIdRatioBased.TRACE_ID_LIMIT


def provider_with(sampler: Sampler) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_root_spans_sampled_by_trace_id_ratio_exactly() -> None:
    sampler = TraceIdRatioBased(0.5)
    provider, exporter = provider_with(ParentBased(sampler))
    starter = SpanStarter(provider)
    spans = [starter.start("GET", SpanKind.SERVER, Context()) for _ in range(400)]
    for span in spans:
        span.end()
    sampled = {span.context.trace_id for span in exporter.get_finished_spans() if span.context}
    assert 100 < len(sampled) < 300  # both decisions happen
    for span in spans:
        context = span.get_span_context()
        assert context.is_valid
        is_sampled = context.trace_id & LIMIT < sampler.bound
        # The SDK recorded exactly the spans whose trace id the ratio samples.
        assert context.trace_flags.sampled == is_sampled
        assert (context.trace_id in sampled) == is_sampled
        if not is_sampled:
            assert isinstance(span, NonRecordingSpan)
            assert context.trace_flags.random_trace_id  # as the SDK sets it


def test_every_root_gets_a_new_trace_id() -> None:
    provider, _ = provider_with(ParentBased(TraceIdRatioBased(0.5)))
    starter = SpanStarter(provider)
    trace_ids = []
    for _ in range(100):
        root = starter.start("GET", SpanKind.SERVER, Context())
        child = starter.start("GET", SpanKind.CLIENT, trace.set_span_in_context(root))
        assert child.get_span_context().trace_id == root.get_span_context().trace_id
        assert child.is_recording() == root.is_recording()
        trace_ids.append(root.get_span_context().trace_id)
    assert len(set(trace_ids)) == 100


@pytest.mark.parametrize("sampler", [ParentBased(TraceIdRatioBased(0.5)), ALWAYS_ON])
def test_start_child_is_start_in_the_parents_context(sampler: Sampler) -> None:
    """The client's attempts: a child of the call's span, started from the span and
    the context the call began in, is what start() makes in the context holding it."""
    provider, exporter = provider_with(sampler)
    starter = SpanStarter(provider)
    outer = Context()
    for _ in range(100):
        parent = starter.start("GET", SpanKind.CLIENT, outer)
        child = starter.start_child("GET", SpanKind.CLIENT, parent, outer)
        stock = starter.start("GET", SpanKind.CLIENT, trace.set_span_in_context(parent, outer))
        assert child.is_recording() == stock.is_recording() == parent.is_recording()
        ids = child.get_span_context(), stock.get_span_context(), parent.get_span_context()
        assert len({context.trace_id for context in ids}) == 1
        assert child.get_span_context().trace_flags == stock.get_span_context().trace_flags
        assert child.get_span_context().span_id != parent.get_span_context().span_id
        if isinstance(child, Span):  # recorded: its parent is the call's span
            assert child.parent == parent.get_span_context()
        for span in (child, stock, parent):
            span.end()
    assert exporter.get_finished_spans()  # both decisions happen


def test_unsampled_remote_parent_propagates_its_trace() -> None:
    provider, exporter = provider_with(ParentBased(ALWAYS_ON))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = [
        (b"traceparent", f"00-{trace_id}-00f067aa0ba902b7-00".encode()),
        (b"tracestate", b"vendor=value"),
    ]
    span = SpanStarter(provider).start("GET", SpanKind.SERVER, extract_context(headers))
    context = span.get_span_context()
    assert isinstance(span, NonRecordingSpan)
    assert f"{context.trace_id:032x}" == trace_id
    assert context.span_id not in (0, 0x00F067AA0BA902B7)
    assert not context.trace_flags.sampled and not context.is_remote
    assert context.trace_state == TraceState([("vendor", "value")])
    span.end()
    assert exporter.get_finished_spans() == ()


def test_sampled_parent_is_honoured_whatever_the_ratio() -> None:
    provider, exporter = provider_with(ParentBased(TraceIdRatioBased(0.0)))
    parent = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    SpanStarter(provider).start("GET", SpanKind.SERVER, context).end()
    (finished,) = exporter.get_finished_spans()
    assert finished.context is not None and finished.context.trace_id == 0xABC
    assert finished.parent is not None and finished.parent.span_id == 0xDEF


class EveryOther(Sampler):
    """Not a pure function of the trace id: SpanStarter must leave it to the SDK."""

    def __init__(self) -> None:
        self.calls = 0

    def should_sample(self, *args: object, **kwargs: object) -> SamplingResult:
        self.calls += 1
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self.calls % 2 else Decision.DROP)

    def get_description(self) -> str:
        return "EveryOther"


def test_other_samplers_decide_in_the_sdk() -> None:
    sampler = EveryOther()
    provider, exporter = provider_with(sampler)
    starter = SpanStarter(provider)
    for _ in range(4):
        starter.start("GET", SpanKind.CLIENT).end()
    assert sampler.calls == 4
    assert len(exporter.get_finished_spans()) == 2


def test_no_sdk_means_no_tracing() -> None:
    starter = SpanStarter(trace.NoOpTracerProvider())
    assert not starter.tracing


def test_a_global_provider_installed_later_is_followed_within_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(
        meshkit.telemetry._otel_sdk, "time", types.SimpleNamespace(monotonic=lambda: clock.now)
    )
    starter = meshkit.telemetry._otel_sdk.SpanStarter(None)
    assert not starter.tracing  # no SDK anywhere yet
    sdk = TracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: sdk)
    clock.now += 0.5
    assert not starter.tracing  # the global provider is looked up at most once a second
    clock.now += 0.6
    assert starter.tracing

    def no_clock() -> float:
        raise AssertionError("the global provider is set once: no more looking for it")

    monkeypatch.setattr(
        meshkit.telemetry._otel_sdk, "time", types.SimpleNamespace(monotonic=no_clock)
    )
    assert starter.tracing
    starter.start("GET", SpanKind.SERVER, Context()).end()


class Counting(IdGenerator):
    """Ids in sequence: nothing random, so nothing a shortcut could draw instead."""

    def __init__(self) -> None:
        self.last = 0

    def generate_span_id(self) -> int:
        self.last += 1
        return self.last

    def generate_trace_id(self) -> int:
        self.last += 1
        return self.last << 64  # low 64 bits 0: sampled by any ratio above 0


class EvenTraceIds(RandomIdGenerator):
    """The SDK's generator with its trace ids replaced (a subclass, as users write them)."""

    def generate_trace_id(self) -> int:
        return super().generate_trace_id() & ~1


class OddSpanIds(RandomIdGenerator):
    def generate_span_id(self) -> int:
        return super().generate_span_id() | 1


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_roots_take_their_trace_ids_from_the_providers_id_generator(ratio: float) -> None:
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(ratio)), id_generator=Counting()
    )
    starter = SpanStarter(provider)
    spans = [starter.start("GET", SpanKind.SERVER, Context()) for _ in range(3)]
    trace_ids = [span.get_span_context().trace_id for span in spans]
    assert all(trace_id & LIMIT == 0 < trace_id >> 64 < 7 for trace_id in trace_ids)
    assert len(set(trace_ids)) == 3
    span_ids = [span.get_span_context().span_id for span in spans]
    assert all(0 < span_id < 7 for span_id in span_ids)
    even = SpanStarter(TracerProvider(id_generator=EvenTraceIds()))
    odd = SpanStarter(TracerProvider(id_generator=OddSpanIds()))
    for _ in range(50):
        assert even.start("GET", SpanKind.SERVER).get_span_context().trace_id % 2 == 0
        assert odd.start("GET", SpanKind.SERVER).get_span_context().span_id % 2 == 1


def test_the_default_generator_never_makes_an_id_0(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = {128: iter([0, 0, 0xABC << 64]), 64: iter([0, 0xDEF])}
    monkeypatch.setattr(random, "getrandbits", lambda bits: next(draws[bits]))
    span = SpanStarter(TracerProvider()).start("GET", SpanKind.SERVER, Context())
    context = span.get_span_context()
    assert (context.trace_id, context.span_id) == (0xABC << 64, 0xDEF)  # 0s drawn again


def test_a_tracer_disabled_by_a_configurator_makes_no_spans() -> None:
    provider, exporter = provider_with(ALWAYS_ON)
    starter = SpanStarter(provider)
    starter.start("before", SpanKind.SERVER).end()
    provider._set_tracer_configurator(tracer_configurator=_disable_tracer_configurator)
    span = starter.start("after", SpanKind.SERVER)
    span.end()
    assert not span.is_recording()
    assert [span.name for span in exporter.get_finished_spans()] == ["before"]


# --- MeshSpan: an SDK span to everything that looks at it ------------------------------


class Recording(SpanProcessor):
    """A processor that writes on start and keeps what ends."""

    def __init__(self) -> None:
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        span.set_attribute("started.by", "processor")

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


def test_processors_added_later_see_the_spans_that_start_after() -> None:
    provider, first = provider_with(ALWAYS_ON)
    starter = SpanStarter(provider)
    starter.start("before", SpanKind.SERVER, Context()).end()
    second = Recording()
    provider.add_span_processor(second)
    span = starter.start("after", SpanKind.SERVER, Context())
    assert isinstance(span, MeshSpan)
    span.end()
    assert [s.name for s in first.get_finished_spans()] == ["before", "after"]
    assert [s.name for s in second.ended] == ["after"]
    assert second.ended[0].attributes["started.by"] == "processor"


def test_attributes_are_checked_and_bounded_as_the_sdk_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=3))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    mesh = SpanStarter(provider).start("GET", SpanKind.SERVER, Context())
    sdk = provider.get_tracer("user").start_span("GET", Context(), SpanKind.SERVER)
    assert isinstance(mesh, MeshSpan) and not isinstance(sdk, MeshSpan)
    for span in (mesh, sdk):
        set_mesh_attributes(span, {"http.route": "/a"})
        span.set_attribute("", "no key")
        span.set_attributes({"list": ["a", "b"], "n": 1, "object": object()})
        span.set_attribute("last", True)
        span.end()
    ours, theirs = exporter.get_finished_spans()
    assert dict(ours.attributes) == dict(theirs.attributes)
    assert dict(ours.attributes) == {"n": 1, "object": None, "last": True}  # oldest dropped
    assert ours.dropped_attributes == theirs.dropped_attributes == 3  # "", route, list
    assert caplog.text.count("invalid key ``") == 2


def test_mesh_attributes_events_status_and_exceptions() -> None:
    provider, exporter = provider_with(ALWAYS_ON)
    span = SpanStarter(provider).start("GET", SpanKind.SERVER, Context())
    set_mesh_attributes(span, {"http.route": "/a/{id}", "http.response.status_code": 500})
    span.update_name("GET /a/{id}")
    span.add_event("retry", {"attempt": 2})
    span.record_exception(ValueError("bad"))
    span.set_status(Status(StatusCode.ERROR, "bad"))
    span.add_link(SpanContext(0xA, 0xB, is_remote=True), {"why": "batch"})
    span.end()
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "GET /a/{id}"
    assert finished.attributes["http.response.status_code"] == 500
    assert [event.name for event in finished.events] == ["retry", "exception"]
    assert finished.events[1].attributes["exception.type"] == "ValueError"
    assert finished.status.status_code is StatusCode.ERROR
    assert finished.links[0].context.span_id == 0xB
    assert json.loads(finished.to_json())["name"] == "GET /a/{id}"


def test_an_ended_span_refuses_changes_and_ends_once(caplog: pytest.LogCaptureFixture) -> None:
    provider, exporter = provider_with(ALWAYS_ON)
    span = SpanStarter(provider).start("GET", SpanKind.SERVER, Context())
    span.end()
    span.set_attribute("late", 1)
    set_mesh_attributes(span, {"late": 2})
    span.update_name("renamed")
    span.add_event("late")
    span.end()
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "GET" and "late" not in finished.attributes and not finished.events
    assert caplog.text.count("on an ended span") >= 4


def test_a_dropped_span_draws_its_ids_once_when_read() -> None:
    provider, _ = provider_with(ParentBased(TraceIdRatioBased(0.0)))
    span = SpanStarter(provider).start("GET", SpanKind.SERVER, Context())
    assert "_made" not in vars(span)
    first = span.get_span_context()
    assert first is span.get_span_context()
    assert first.is_valid and not first.trace_flags.sampled and not first.is_remote


def test_a_child_of_a_dropped_span_needs_no_context_of_its_parent() -> None:
    provider, _ = provider_with(ParentBased(TraceIdRatioBased(0.0)))
    starter = SpanStarter(provider)
    remote = SpanContext(
        0xABC,
        0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(0),
        trace_state=TraceState([("k", "v")]),
    )
    for parent in (
        starter.start("root", SpanKind.SERVER, Context()),
        starter.start(
            "server", SpanKind.SERVER, trace.set_span_in_context(NonRecordingSpan(remote))
        ),
    ):
        child = starter.start("call", SpanKind.CLIENT, trace.set_span_in_context(parent))
        assert "_made" not in vars(parent)
        made, expected = child.get_span_context(), parent.get_span_context()
        assert (made.trace_id, made.trace_flags, made.trace_state) == (
            expected.trace_id,
            expected.trace_flags,
            expected.trace_state,
        )
        assert made.span_id != expected.span_id and not made.trace_flags.sampled


class Hooked(SpanProcessor):
    """Notes each hook a span goes through, in order."""

    def __init__(self, hooks: list[str]) -> None:
        self.hooks = hooks

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.hooks.append(f"start {span.name}")

    def _on_ending(self, span: Span) -> None:
        self.hooks.append(f"ending {span.name}")

    def on_end(self, span: ReadableSpan) -> None:
        self.hooks.append(f"end {span.name}")


def test_every_processor_hook_a_span_goes_through_runs_in_order() -> None:
    """Processors that leave a hook to SpanProcessor's no-op are left out of it, the
    others run as the SDK's multi-processor runs them; a ConcurrentMultiSpanProcessor
    (not one meshkit hands spans to directly) runs them itself."""
    hooks: list[str] = []
    provider, _ = provider_with(ALWAYS_ON)
    provider.add_span_processor(Hooked(hooks))
    provider.add_span_processor(Recording())
    span = SpanStarter(provider).start("a", SpanKind.SERVER, Context())
    span.end()
    assert hooks == ["start a", "ending a", "end a"]
    concurrent = TracerProvider(active_span_processor=ConcurrentMultiSpanProcessor(2))
    concurrent.add_span_processor(Hooked(hooks))
    span = SpanStarter(concurrent).start("b", SpanKind.SERVER, Context())
    assert isinstance(span, MeshSpan)
    span.end()
    assert hooks[3:] == ["start b", "ending b", "end b"]
    concurrent.shutdown()


class Parents(SpanProcessor):
    """Notes the span of the context each span starts in."""

    def __init__(self) -> None:
        self.parents: list[SpanContext] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.parents.append(trace.get_current_span(parent_context).get_span_context())


@pytest.mark.parametrize("sampler", [ParentBased(TraceIdRatioBased(0.0)), ALWAYS_ON])
def test_a_server_span_continues_its_callers_lone_traceparent(sampler: Sampler) -> None:
    """The caller's span context is made from the parsed field, as the API makes it; the
    context holding it only for a processor that reads it in ``on_start``."""
    provider, exporter = provider_with(sampler)
    starter = SpanStarter(provider)
    header = [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03")]
    caller = trace.get_current_span(extract_context(header)).get_span_context()
    without, _, _, _ = starter.start_server("GET", header)
    parents = Parents()
    provider.add_span_processor(parents)
    span, context, recording, trace_id = starter.start_server("GET", header)
    assert isinstance(span, MeshSpan) and recording and trace_id == caller.trace_id
    assert context is not None and trace.get_current_span(context) is span
    assert parents.parents == [caller]
    for made in (without, span):
        assert made.parent == caller and made.parent.is_remote
        assert made.get_span_context().trace_flags == caller.trace_flags
        made.end()
    assert [s.parent for s in exporter.get_finished_spans()] == [caller, caller]
