"""The OpenTelemetry SDK set up from the standard ``OTEL_*`` variables, for ``meshkit run``.

Library code never sets OpenTelemetry globals; ``configure_tracing_from_env`` builds a
``TracerProvider`` for the process that owns it (``meshkit run``), which installs it.
The middleware and the client need none of this: they use the API (``propagation``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from opentelemetry import trace
from opentelemetry.exporter.http.transport._base import BaseHTTPTransport
from opentelemetry.exporter.zipkin.json import ZipkinExporter
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

from meshkit.errors import ConfigError
from meshkit.telemetry._otlp_transport import HTTPClientTransport, TLSFileError
from meshkit.telemetry.export import MeshOTLPSpanExporter, OTLPBatchProcessor

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
        return OTLPBatchProcessor(
            _otlp_exporter(environ),
            schedule_delay=batching.schedule_delay_millis / 1000,
            max_queue_size=batching.max_queue_size,
            max_export_batch_size=batching.max_export_batch_size,
        )
    if name == "zipkin":
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
    return MeshOTLPSpanExporter(
        endpoint=otlp_traces_endpoint(environ), _transport=_otlp_transport(environ)
    )


def _otlp_transport(environ: Mapping[str, str]) -> BaseHTTPTransport:
    """The exporter's HTTP transport (``meshkit.telemetry._otlp_transport``), with the TLS settings
    of the same variables the stock exporter reads; an unreadable file is a ConfigError
    naming its variable."""

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
