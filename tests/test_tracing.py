from __future__ import annotations

import json
import threading

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ParentBased,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind

from meshkit.errors import ConfigError
from meshkit.telemetry._otel_sdk import MeshSpan, SpanPoster, SpanStarter, set_mesh_attributes
from meshkit.telemetry.export import OTLPBatchProcessor
from meshkit.telemetry.propagation import (
    MESH_PROPAGATOR,
    append_context_headers,
    extract_context,
)
from meshkit.telemetry.sdk import configure_tracing_from_env, otlp_traces_endpoint, sampler_from_env
from tests._sink import post_sink


def exporters(provider: TracerProvider) -> list[object]:
    processors = provider._active_span_processor._span_processors
    found = []
    for processor in processors:
        if isinstance(processor, OTLPBatchProcessor):
            found.append(processor._poster)
        else:
            assert isinstance(processor, BatchSpanProcessor | SimpleSpanProcessor)
            found.append(processor.span_exporter)
    return found


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_no_provider_unless_an_exporter_is_asked_for(environ: dict[str, str]) -> None:
    assert configure_tracing_from_env("orders", environ) is None


def test_no_provider_when_the_user_configured_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", TracerProvider)
    assert configure_tracing_from_env("orders", {"OTEL_TRACES_EXPORTER": "console"}) is None


def test_exporters_and_service_name_from_the_environment() -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "otlp,zipkin",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_EXPORTER_ZIPKIN_ENDPOINT": "http://zipkin:9411/api/v2/spans",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }
    provider = configure_tracing_from_env("orders", environ)
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "orders"
        otlp, zipkin = exporters(provider)
        assert isinstance(otlp, SpanPoster)
        assert otlp.endpoint == "http://collector:4318/v1/traces"
        assert isinstance(zipkin, ZipkinExporter)
        assert zipkin.endpoint == "http://zipkin:9411/api/v2/spans"
        assert isinstance(provider.sampler, ParentBased)
        assert "0.25" in provider.sampler.get_description()
    finally:
        provider.shutdown()


def test_otlp_batching_settings_from_the_environment() -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_BSP_SCHEDULE_DELAY": "250",
        "OTEL_BSP_MAX_QUEUE_SIZE": "100",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10",
    }
    provider = configure_tracing_from_env("orders", environ)
    assert provider is not None
    try:
        (processor,) = provider._active_span_processor._span_processors
        assert isinstance(processor, OTLPBatchProcessor)
        assert processor._schedule_delay == 0.25
        assert (processor._max_queue_size, processor._max_export_batch_size) == (100, 10)
    finally:
        provider.shutdown()


def test_an_otlp_endpoint_alone_turns_tracing_on() -> None:
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/custom"}
    provider = configure_tracing_from_env("orders", environ)
    assert provider is not None
    provider.shutdown()
    assert otlp_traces_endpoint(environ) == "http://collector:4318/custom"


def test_samplers() -> None:
    assert sampler_from_env({"OTEL_TRACES_SAMPLER": "always_off"}) is ALWAYS_OFF
    ratio = sampler_from_env(
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    )
    assert isinstance(ratio, TraceIdRatioBased) and ratio.rate == 0.1
    assert isinstance(sampler_from_env({}), ParentBased)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "sometimes"}, "SAMPLER"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_SCHEDULE_DELAY": "soon"}, "SCHEDULE_DELAY"),
        ({"OTEL_TRACES_EXPORTER": "zipkin", "OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "MAX_QUEUE_SIZE"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=4096: must not exceed OTEL_BSP_MAX_QUEUE_SIZE=2048",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "console",
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "2",
            },
            "OTEL_TRACES_SAMPLER_ARG",
        ),
    ],
)
def test_invalid_settings_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        configure_tracing_from_env("orders", environ)


def test_settings_are_checked_before_any_exporter_thread_starts() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "zipkin,otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    threads = threading.active_count()
    with pytest.raises(ConfigError, match="PROTOCOL"):
        configure_tracing_from_env("orders", environ)
    assert threading.active_count() == threads


def test_extract_ignores_the_current_context_and_bad_headers() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("unrelated"):
        context = extract_context([(b"traceparent", b"00-bad")])
    assert not trace.get_current_span(context).get_span_context().is_valid


def test_append_context_headers_carries_the_span_and_baggage() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("call") as span:
        headers: list[tuple[str, str]] = []
        append_context_headers(headers, baggage.set_baggage("tenant", "acme"))
    names = dict(headers)
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert names["traceparent"].split("-")[1] == trace_id
    assert names["baggage"] == "tenant=acme"


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"traceparent", f"00-{TRACE}-00f067aa0ba902b7-01".encode())],
        [(b"traceparent", f"00-{TRACE}-00f067aa0ba902b7-00".encode())],
        [(b"traceparent", f"00-{TRACE.upper()}-00f067aa0ba902b7-01".encode())],
        [(b"traceparent", f"00-{'0' * 32}-00f067aa0ba902b7-01".encode())],
        [(b"traceparent", f"00-{TRACE}-{'0' * 16}-01".encode())],
        [(b"traceparent", f"00-{TRACE}-00f067aa0ba902b7-01-extra".encode())],
        [(b"traceparent", f"01-{TRACE}-00f067aa0ba902b7-03-extra".encode())],
        [(b"traceparent", f"ff-{TRACE}-00f067aa0ba902b7-01".encode())],
        [(b"traceparent", f" 00-{TRACE}-00f067aa0ba902b7-01\t".encode())],
        [(b"traceparent", f"00-{TRACE}-00f067aa0ba902b7-01".encode()), (b"tracestate", b"a=1")],
        [(b"traceparent", f"00-{TRACE}-00f067aa0ba902b7-01".encode()), (b"baggage", b"k=v")],
        # Two traceparents: the propagator takes the first, meshkit starts a new trace
        # (tests/telemetry/test_tracecontext.py).
    ],
)
def test_extract_reads_as_the_w3c_propagators(headers: list[tuple[bytes, bytes]]) -> None:
    ours = extract_context(headers)
    textual = {name.decode(): value.decode() for name, value in reversed(headers)}
    theirs = MESH_PROPAGATOR.extract(textual, context=Context())
    assert (
        trace.get_current_span(ours).get_span_context()
        == trace.get_current_span(theirs).get_span_context()
    )
    assert baggage.get_all(ours) == baggage.get_all(theirs)


def test_zipkin_receives_meshkit_spans_as_sdk_spans() -> None:
    """The seed names Zipkin: spans meshkit records reach a real Zipkin endpoint, in its
    v2 JSON, through the stock exporter configured from the environment."""
    with post_sink(status=202) as zipkin:
        environ = {
            "OTEL_TRACES_EXPORTER": "zipkin",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT": zipkin.url("/api/v2/spans"),
        }
        provider = configure_tracing_from_env("orders", environ)
        assert provider is not None
        try:
            span = SpanStarter(provider).start("GET", SpanKind.SERVER, Context())
            assert isinstance(span, MeshSpan)
            span.update_name("GET /orders/{order_id}")
            attributes = {"http.route": "/orders/{order_id}", "http.response.status_code": 200}
            set_mesh_attributes(span, attributes)
            span.end()
            provider.force_flush()
        finally:
            provider.shutdown()
    received = [json.loads(body) for body in zipkin.bodies]
    (zipkin_span,) = [span for batch in received for span in batch]
    assert zipkin_span["name"] == "GET /orders/{order_id}"
    assert zipkin_span["kind"] == "SERVER"
    assert zipkin_span["localEndpoint"] == {"serviceName": "orders"}
    assert zipkin_span["tags"]["http.response.status_code"] == "200"  # type: ignore[index]
    assert zipkin_span["traceId"] == f"{span.get_span_context().trace_id:032x}"
