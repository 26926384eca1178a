"""The OpenTelemetry SDK set up from the standard ``OTEL_*`` variables, for ``meshkit run``.

Library code never sets OpenTelemetry globals; ``configure_tracing_from_env`` builds a
``TracerProvider`` for the process that owns it (``meshkit run``), which installs it.
The middleware and the client need none of this: they take whatever provider they are
given (``propagation``, ``_otel_sdk``). OTLP spans go through ``export``'s encoding
processor and the adapter's ``SpanPoster`` when the OpenTelemetry adapter's import
check passed. Only when it failed is the stock ``OTLPSpanExporter`` (with the protobuf
runtime its encoder needs, 3.1 MiB) imported, and spans take the stock
``BatchSpanProcessor`` to it.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, NamedTuple

import requests
from opentelemetry import trace
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
from meshkit.telemetry import _otel_sdk
from meshkit.telemetry._otel_sdk import SpanPoster
from meshkit.telemetry.export import OTLPBatchProcessor

#: Decided once, at import: the SDK's public path when the adapter's check failed.
_STOCK_EXPORT = not _otel_sdk.usable()
if _STOCK_EXPORT:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

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
    otlp = _otlp_exporter(environ) if "otlp" in names else None
    resource = Resource.create({"service.name": service_name})
    provider = TracerProvider(resource=resource, sampler=sampler)
    for name in names:
        provider.add_span_processor(_processor(name, environ, batching, otlp))
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


def _processor(
    name: str,
    environ: Mapping[str, str],
    batching: _Batching,
    otlp: SpanPoster | OTLPSpanExporter | None,
) -> SpanProcessor:
    if otlp is not None and name == "otlp":
        if isinstance(otlp, SpanPoster):  # the encoding processor, with the adapter
            return OTLPBatchProcessor(
                otlp,
                schedule_delay=batching.schedule_delay_millis / 1000,
                max_queue_size=batching.max_queue_size,
                max_export_batch_size=batching.max_export_batch_size,
            )
        return BatchSpanProcessor(otlp, **batching._asdict())
    if name == "zipkin":
        endpoint = environ.get("OTEL_EXPORTER_ZIPKIN_ENDPOINT", _DEFAULT_ZIPKIN)
        return BatchSpanProcessor(ZipkinExporter(endpoint=endpoint), **batching._asdict())
    # The console is for development: print each span as it ends, not in batches.
    return SimpleSpanProcessor(ConsoleSpanExporter())


def _otlp_exporter(environ: Mapping[str, str]) -> SpanPoster | OTLPSpanExporter:
    """What posts OTLP/HTTP (the adapter's poster, else the stock exporter: either way
    the stock HTTP session posts), with the TLS files of the standard variables, read
    here: an unreadable one is a ConfigError naming its variable now, not a failed post
    later."""
    _check_otlp_protocol(environ)
    tls = _OTLPFiles.from_env(environ)
    tls.check()
    build = OTLPSpanExporter if _STOCK_EXPORT else SpanPoster
    return build(
        endpoint=otlp_traces_endpoint(environ),
        certificate_file=tls.ca_bundle,
        client_certificate_file=tls.client_certificate,
        client_key_file=tls.client_key,
        session=_CollectorSession(),
    )


class _CollectorSession(requests.Session):
    """The exporter's HTTP session, keeping the collector's CA bundle it is given.

    requests lets ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` replace a session's own
    CA bundle (psf/requests#4726): on a host that sets either, as many images do,
    ``OTEL_EXPORTER_OTLP_CERTIFICATE`` would be ignored and the collector refused.
    """

    def merge_environment_settings(
        self,
        url: str,
        proxies: dict[str, str] | None,
        stream: bool | None,
        verify: bool | str | None,
        cert: str | tuple[str, str] | None,
    ) -> dict[str, Any]:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and isinstance(self.verify, str):
            settings["verify"] = self.verify
        return settings


def _check_otlp_protocol(environ: Mapping[str, str]) -> None:
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip() not in ("", "http/protobuf"):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: meshkit ships the http/protobuf "
            "OTLP exporter only"
        )


class _OTLPFiles(NamedTuple):
    """TLS to the collector: its CA bundle, and a client certificate and key for a
    collector that asks for mutual TLS, each with the variable that named it."""

    ca_bundle: str | None
    client_certificate: str | None
    client_key: str | None
    ca_variable: str
    certificate_variable: str
    key_variable: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> _OTLPFiles:
        """The traces-specific variable where set, else the general one (spec)."""

        def setting(name: str) -> tuple[str, str | None]:
            for variable in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
                if environ.get(variable):
                    return variable, environ[variable]
            return f"OTEL_EXPORTER_OTLP_{name}", None

        ca_variable, ca_bundle = setting("CERTIFICATE")
        certificate_variable, client_certificate = setting("CLIENT_CERTIFICATE")
        key_variable, client_key = setting("CLIENT_KEY")
        return cls(
            ca_bundle,
            client_certificate,
            client_key,
            ca_variable,
            certificate_variable,
            key_variable,
        )

    def check(self) -> None:
        """Load the files as the exporter's TLS will: a ConfigError names what fails."""
        try:
            context = ssl.create_default_context(cafile=self.ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{self.ca_variable}: CA bundle {self.ca_bundle!r}: {_reason(exc)}"
            ) from exc
        if not self.client_certificate:
            return
        try:
            context.load_cert_chain(self.client_certificate, self.client_key)
        except (OSError, ssl.SSLError) as exc:
            key = f" (key {self.client_key!r})" if self.client_key else ""
            raise ConfigError(
                f"{self.certificate_variable} / {self.key_variable}: client certificate "
                f"{self.client_certificate!r}{key}: {_reason(exc)}"
            ) from exc


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)


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
