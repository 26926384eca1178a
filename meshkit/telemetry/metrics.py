"""MeshMetrics: every Prometheus metric meshkit records, in one registry owned by the app.

Names and labels follow the OpenTelemetry HTTP semantic conventions in Prometheus form
(``http.server.request.duration`` in seconds becomes ``http_server_request_duration_seconds``,
the attribute ``http.request.method`` becomes the label ``http_request_method``), plus
``source_service`` on the server side, ``destination_service`` on the client side, and
``meshkit_*`` for the mesh's own machinery. The app's own identity is not a label:
Prometheus attaches it as target labels (``job``, ``instance``) when it scrapes.

Server metrics
    http_server_request_duration_seconds  histogram  http_request_method, http_route,
                                                     http_response_status_code, source_service,
                                                     source_namespace
    http_server_active_requests           gauge      http_request_method
Client metrics (the mesh client)
    http_client_request_duration_seconds  histogram  http_request_method, destination_service,
                                                     http_response_status_code, error_type,
                                                     destination_subset (the resolver subset
                                                     the discovery chain chose, "" for none;
                                                     at most 16 per destination, then _OTHER)
    meshkit_client_attempts_total         counter    the same labels, one per attempt
Mesh internals
    meshkit_retries_total                 counter    destination_service
    meshkit_retry_budget_exhausted_total  counter    destination_service
    meshkit_endpoint_ejections_total      counter    destination_service
    meshkit_hedges_total                  counter    destination_service: hedged attempts
    meshkit_endpoint_busy_total           counter    destination_service: 429 or 503 with
                                                     Retry-After that made an endpoint less chosen
    meshkit_mirrored_requests_total       counter    destination_service, mirror_service,
                                                     outcome (ok, error, dropped)
    meshkit_circuit_state                 gauge      destination_service (0 closed,
                                                     1 half-open, 2 open): every destination
                                                     the client has watched, 0 until it trips
    meshkit_policy_denials_total          counter    source_service, source_namespace,
                                                     http_route, reason
    meshkit_cert_expiry_timestamp_seconds gauge      spiffe_id: the workload certificate's notAfter
    meshkit_registry_cache_staleness_seconds gauge   destination_service: seconds the watched
                                                     cache has served that list unconfirmed

Runtime: ``process_*`` (CPU, memory, file descriptors, start time) and ``python_*`` (GC,
version), prometheus_client's standard collectors, registered in the app's registry.

``source_namespace`` is the caller's namespace beside its service name: two callers of
one name in different namespaces are different callers. The service's own namespace is
a target label, as its name is (``meshkit prometheus-config`` relabels it from the
registry's metadata).

Every metric lives in the registry given to ``MeshMetrics`` (a fresh one by default),
never in prometheus_client's global ``REGISTRY``: two apps in one process never collide.

The server and client metrics are recorded on every request, on the event loop's thread:
they are ``meshkit.telemetry._loopmetrics`` metrics, updated without locks, so record
them from that thread only. They expose no ``_created`` series (see that module). The
mesh internals, rarely updated, are prometheus_client's own metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.types import Receive, Scope, Send

from meshkit.telemetry._loopmetrics import HistogramChild, LoopCounter, LoopGauge, LoopHistogram

if TYPE_CHECKING:
    from meshkit.tls import TLSContexts, TLSMaterial

#: Latency buckets, in seconds: from 0.25 ms (a cached in-mesh call) to 10 s.
DURATION_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: The route label of a request that matched no route (templates always start with "/").
UNMATCHED_ROUTE = "unmatched"
#: The ``source_namespace`` of a caller without a verified identity.
UNKNOWN_NAMESPACE = "unknown"
#: ``http_request_method`` values; any other method is recorded as ``_OTHER`` (semconv).
KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
CircuitState = Literal["closed", "half-open", "open"]
_CIRCUIT_VALUES: dict[CircuitState, int] = {"closed": 0, "half-open": 1, "open": 2}
_CLIENT_LABELS = (
    "http_request_method",
    "destination_service",
    "http_response_status_code",
    "error_type",
    "destination_subset",
)
#: Distinct ``destination_subset`` values kept per destination; the rest are ``_OTHER``.
MAX_SUBSETS = 16

M = TypeVar("M", Counter, Gauge)


def method_label(method: str) -> str:
    """The ``http_request_method`` value: the method, or ``_OTHER`` to bound cardinality."""
    return method if method in KNOWN_METHODS else "_OTHER"


class LabelCache(Generic[M]):
    """Memoized ``metric.labels(...)`` children: the lookup is a dict hit, not a lock + str()."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[tuple[object, ...], M] = {}

    def get(self, *key: object) -> M:
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metric.labels(*key)
        return child


class StalenessSource(Protocol):
    """What the staleness gauge reads at scrape time: the watched registry cache."""

    @property
    def services(self) -> Sequence[str]: ...

    def stale_seconds(self, service: str) -> float: ...


class _StalenessCollector(Collector):
    """Reports, at scrape time, how long each watched service's instance list has gone
    unconfirmed by the registry (0 while the watch is healthy)."""

    def __init__(self) -> None:
        self.source: StalenessSource | None = None

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "meshkit_registry_cache_staleness_seconds",
            "Seconds the registry cache has served a service's instances unconfirmed.",
            labels=["destination_service"],
        )
        if self.source is not None:
            for service in sorted(self.source.services):
                family.add_metric([service], self.source.stale_seconds(service))
        return [family]

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class _CircuitCollector(Collector):
    """The breaker state of every destination the client knows: the ones it has
    watched (a breaker that never tripped is closed, 0) and any that changed state.

    A series from the start means "open" is a change of value, not a new series, and
    ``max by (destination_service)`` covers every edge before anything fails.
    """

    def __init__(self) -> None:
        self.source: StalenessSource | None = None
        self.states: dict[str, int] = {}

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "meshkit_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            labels=["destination_service"],
        )
        known = set(self.states)
        if self.source is not None:
            known.update(self.source.services)
        for destination in sorted(known):
            family.add_metric([destination], self.states.get(destination, 0))
        return [family]

    def describe(self) -> Iterable[Metric]:
        return self.collect()


class MeshMetrics:
    """All meshkit metrics of one app, registered in ``registry`` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self._register_server()
        self._register_client()
        self._register_mesh()
        self._register_runtime()
        # Subsets come from resolver entries, which anyone who may write config sets:
        # a bound keeps a resolver with thousands of subsets from making as many series.
        self._subsets: dict[str, set[str]] = {}

    def _register_server(self) -> None:
        self._server_duration = LoopHistogram(
            "http_server_request_duration_seconds",
            "Duration of HTTP server requests.",
            [
                "http_request_method",
                "http_route",
                "http_response_status_code",
                "source_service",
                "source_namespace",
            ],
            self.registry,
            buckets=DURATION_BUCKETS,
        )
        self._server_active = LoopGauge(
            "http_server_active_requests",
            "Number of active HTTP server requests.",
            ["http_request_method"],
            self.registry,
        )
        # The gauge's series per method, kept: a request adds to it and takes away.
        self._active_by_method: dict[str, list[float]] = {}

    def _register_client(self) -> None:
        self._client_duration = LoopHistogram(
            "http_client_request_duration_seconds",
            "Duration of logical mesh client calls, retries included.",
            _CLIENT_LABELS,
            self.registry,
            buckets=DURATION_BUCKETS,
        )
        self._client_attempts = LoopCounter(
            "meshkit_client_attempts",
            "Attempts made by the mesh client (one logical call may make several).",
            _CLIENT_LABELS,
            self.registry,
        )

    def _register_mesh(self) -> None:
        destination = ["destination_service"]
        self._retries = LabelCache(
            Counter("meshkit_retries", "Retries made.", destination, registry=self.registry)
        )
        self._budget_exhausted = LabelCache(
            Counter(
                "meshkit_retry_budget_exhausted",
                "Retries not made because the retry budget was spent.",
                destination,
                registry=self.registry,
            )
        )
        self._ejections = LabelCache(
            Counter(
                "meshkit_endpoint_ejections",
                "Endpoints ejected by outlier detection.",
                destination,
                registry=self.registry,
            )
        )
        self._hedges = LabelCache(
            Counter(
                "meshkit_hedges",
                "Hedged attempts: a second attempt sent while the first was slow.",
                destination,
                registry=self.registry,
            )
        )
        self._busy = LabelCache(
            Counter(
                "meshkit_endpoint_busy",
                "Answers (429, 503 with Retry-After) that made an endpoint less chosen.",
                destination,
                registry=self.registry,
            )
        )
        self._mirrored = LabelCache(
            Counter(
                "meshkit_mirrored_requests",
                "Copies of calls sent to a mirror, by outcome (ok, error, dropped).",
                [*destination, "mirror_service", "outcome"],
                registry=self.registry,
            )
        )
        self._circuits = _CircuitCollector()
        self.registry.register(self._circuits)
        self._connections_refused = LabelCache(
            Counter(
                "meshkit_connections_refused",
                "Connections refused before any request (TLS handshake, plaintext, capacity).",
                ["reason"],
                registry=self.registry,
            )
        )
        self._policy_denials = LabelCache(
            Counter(
                "meshkit_policy_denials",
                "Requests refused by an authorization or admission policy.",
                ["source_service", "source_namespace", "http_route", "reason"],
                registry=self.registry,
            )
        )
        # Labelled so that no series exists (reading as "expired in 1970") before the
        # first certificate is known.
        self._cert_expiry = LabelCache(
            Gauge(
                "meshkit_cert_expiry_timestamp_seconds",
                "When the workload certificate expires (notAfter), in Unix seconds.",
                ["spiffe_id"],
                registry=self.registry,
            )
        )
        self._staleness = _StalenessCollector()
        self.registry.register(self._staleness)

    def _register_runtime(self) -> None:
        # The standard process_* and python_* series every Prometheus dashboard expects,
        # in this app's registry (the global one would collide across apps).
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    # Per-request recording: lock-free, so only ever from the event loop's thread.

    def server_active(self, method: str) -> list[float]:
        """The ``[value]`` of ``http_server_active_requests`` for ``method`` (its
        ``method_label``), for a caller that keeps it and adds and takes away itself."""
        active = self._active_by_method.get(method)
        if active is None:
            active = self._active_by_method[method] = self._server_active.series((method,))
        return active

    def server_duration(
        self, method: str, route: str, status: int, source: str, source_namespace: str
    ) -> HistogramChild:
        """The ``http_server_request_duration_seconds`` series of these labels, to keep."""
        return self._server_duration.child((method, route, status, source, source_namespace))

    def client_series(
        self, method: str, destination: str, status: int | None, error_type: str, subset: str = ""
    ) -> tuple[list[float], HistogramChild]:
        """The ``[value]`` of ``meshkit_client_attempts_total`` and the
        ``http_client_request_duration_seconds`` series of these labels, for a caller
        that keeps them (recording, as always, from the loop's thread)."""
        key = self._client_key(method, destination, status, error_type, subset)
        return self._client_attempts.series(key), self._client_duration.child(key)

    def _client_key(
        self, method: str, destination: str, status: int | None, error_type: str, subset: str
    ) -> tuple[object, ...]:
        # Twice a call: method_label and _subset spelled out here for the usual call.
        return (
            method if method in KNOWN_METHODS else "_OTHER",
            destination,
            "" if status is None else status,
            error_type,
            self._subset(destination, subset) if subset else subset,
        )

    def _subset(self, destination: str, subset: str) -> str:
        """``subset``, or ``_OTHER`` past the first ``MAX_SUBSETS`` of ``destination``."""
        if not subset:
            return subset
        seen = self._subsets.setdefault(destination, set())
        if subset in seen:
            return subset
        if len(seen) >= MAX_SUBSETS:
            return "_OTHER"
        seen.add(subset)
        return subset

    # The mesh's own, rarer events (prometheus_client: any thread may record them).

    def retried(self, destination: str) -> None:
        self._retries.get(destination).inc()

    def retry_budget_exhausted(self, destination: str) -> None:
        self._budget_exhausted.get(destination).inc()

    def endpoint_ejected(self, destination: str) -> None:
        self._ejections.get(destination).inc()

    def hedged(self, destination: str) -> None:
        self._hedges.get(destination).inc()

    def endpoint_busy(self, destination: str) -> None:
        self._busy.get(destination).inc()

    def mirrored(self, destination: str, mirror: str, outcome: str) -> None:
        """``outcome``: ``ok`` (any HTTP answer below 500), ``error`` or ``dropped``."""
        self._mirrored.get(destination, mirror, outcome).inc()

    def connection_refused(self, reason: str) -> None:
        """A connection refused before any request: a failed TLS handshake (``reason``
        as ``meshkit.serving.connections.refusal_reason`` names it), plaintext on a TLS
        port, or no room left."""
        self._connections_refused.get(reason).inc()

    def policy_denied(
        self, source: str, route: str, reason: str, source_namespace: str = UNKNOWN_NAMESPACE
    ) -> None:
        """``reason`` is a short fixed word (e.g. ``caller``, ``rate_limit``): it is a label."""
        self._policy_denials.get(source, source_namespace, route, reason).inc()

    def set_circuit_state(self, destination: str, state: CircuitState) -> None:
        self._circuits.states[destination] = _CIRCUIT_VALUES[state]

    def watch_cache(self, cache: StalenessSource) -> None:
        """Export the registry cache's staleness per watched service, and a breaker state
        (closed until it trips) for each of them."""
        self._staleness.source = cache
        self._circuits.source = cache

    def set_certificate(self, material: TLSMaterial) -> None:
        self._cert_expiry.get(str(material.spiffe_id)).set(material.not_after)

    def watch_certificates(self, contexts: TLSContexts) -> None:
        """Track the expiry of the current certificate and of every rotation after it."""
        self.set_certificate(contexts.material)
        contexts.on_update(self.set_certificate)

    # Exposition.

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics when ``accept`` asks)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    async def asgi_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An ASGI app answering any GET with the exposition (mount it at ``/metrics``)."""
        if scope["type"] != "http":
            return
        accept = b",".join(value for name, value in scope["headers"] if name == b"accept")
        body, content_type = self.render(accept.decode("latin-1"))
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
