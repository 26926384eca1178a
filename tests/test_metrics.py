from __future__ import annotations

import functools
import math
import shutil
import subprocess
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from meshkit.ca.x509 import LocalAuthority
from meshkit.telemetry._loopmetrics import LoopHistogram
from meshkit.telemetry.metrics import (
    _CLIENT_LABELS,
    DURATION_BUCKETS,
    MAX_SUBSETS,
    UNKNOWN_NAMESPACE,
    MeshMetrics,
)
from meshkit.tls import TLSContexts, TLSMaterial


def started(metrics: MeshMetrics, method: str) -> None:
    """A request came in, counted as the telemetry middleware counts it."""
    metrics.server_active(method)[0] += 1


def finished(
    metrics: MeshMetrics, method: str, route: str, status: int, source: str, seconds: float
) -> None:
    """The request ``started`` counted ended, recorded as the telemetry middleware does."""
    metrics.server_active(method)[0] -= 1
    metrics.server_duration(method, route, status, source, UNKNOWN_NAMESPACE).observe(seconds)


def called(
    metrics: MeshMetrics,
    method: str,
    destination: str,
    status: int | None,
    error_type: str,
    seconds: float,
    subset: str = "",
) -> None:
    """A mesh call ended, recorded as the client's telemetry does: through its series."""
    metrics.client_series(method, destination, status, error_type, subset)[1].observe(seconds)


def attempted(
    metrics: MeshMetrics,
    method: str,
    destination: str,
    status: int | None,
    error_type: str,
    subset: str = "",
) -> None:
    """An attempt of a mesh call ended, counted as the client's telemetry counts it."""
    metrics.client_series(method, destination, status, error_type, subset)[0][0] += 1


def populated() -> MeshMetrics:
    """Metrics with at least one series of every metric meshkit has."""
    metrics = MeshMetrics()
    started(metrics, "GET")
    started(metrics, "GET")
    finished(metrics, "GET", "/orders/{order_id}", 200, "web", 0.0012)
    called(metrics, "POST", "payments", 201, "", 0.004)
    called(metrics, "POST", "payments", None, "ConnectError", 0.2)
    attempted(metrics, "POST", "payments", 503, "")
    metrics.retried("payments")
    metrics.retry_budget_exhausted("payments")
    metrics.endpoint_ejected("payments")
    metrics.set_circuit_state("payments", "open")
    metrics.policy_denied("cart", "/orders/{order_id}", "caller")
    metrics.watch_cache(_Cache({"payments": 0.0}))
    return metrics


class _Cache:
    """Stands for WatchedCache's staleness view (the real one is tested with a registry)."""

    def __init__(self, stale: dict[str, float]) -> None:
        self.stale = stale

    @property
    def services(self) -> list[str]:
        return list(self.stale)

    def stale_seconds(self, service: str) -> float:
        return self.stale[service]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_promtool_check_metrics_reports_nothing(authority: LocalAuthority, accept: str) -> None:
    metrics = populated()
    issued = authority.issue("orders")
    metrics.set_certificate(TLSMaterial(issued.chain_pem, issued.key_pem, issued.bundle_pem))
    body, content_type = metrics.render(accept)
    assert content_type.startswith("application/openmetrics" if accept else "text/plain")
    if accept:
        return  # promtool lints the Prometheus text format only
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == b"" and result.stderr == b""


def test_two_apps_in_one_process_do_not_collide() -> None:
    first, second = MeshMetrics(), MeshMetrics()
    for metrics in (first, first, second):
        metrics.retried("payments")
        started(metrics, "GET")
        finished(metrics, "GET", "/orders", 200, "web", 0.001)
        attempted(metrics, "GET", "payments", 200, "")
    started(metrics, "GET")  # still running, in the second app only
    series = {
        "meshkit_retries_total": {"destination_service": "payments"},
        "http_server_request_duration_seconds_count": {
            "http_request_method": "GET",
            "http_route": "/orders",
            "http_response_status_code": "200",
            "source_service": "web",
            "source_namespace": "unknown",
        },
        "meshkit_client_attempts_total": {
            "http_request_method": "GET",
            "destination_service": "payments",
            "http_response_status_code": "200",
            "error_type": "",
            "destination_subset": "",
        },
    }
    for name, labels in series.items():
        assert first.registry.get_sample_value(name, labels) == 2
        assert second.registry.get_sample_value(name, labels) == 1
        assert REGISTRY.get_sample_value(name, labels) is None
    active = ("http_server_active_requests", {"http_request_method": "GET"})
    assert first.registry.get_sample_value(*active) == 0
    assert second.registry.get_sample_value(*active) == 1


def test_mesh_internals_are_recorded() -> None:
    metrics = populated()
    sample = metrics.registry.get_sample_value
    payments = {"destination_service": "payments"}
    assert sample("meshkit_circuit_state", payments) == 2
    metrics.set_circuit_state("payments", "half-open")
    assert sample("meshkit_circuit_state", payments) == 1
    assert sample("meshkit_retry_budget_exhausted_total", payments) == 1
    assert sample("meshkit_endpoint_ejections_total", payments) == 1
    denial = {
        "source_service": "cart",
        "source_namespace": "unknown",
        "http_route": "/orders/{order_id}",
        "reason": "caller",
    }
    assert sample("meshkit_policy_denials_total", denial) == 1
    failed = {
        "http_request_method": "POST",
        "destination_service": "payments",
        "http_response_status_code": "",
        "error_type": "ConnectError",
        "destination_subset": "",
    }
    assert sample("http_client_request_duration_seconds_count", failed) == 1
    attempt = dict(failed, http_response_status_code="503", error_type="")
    assert sample("meshkit_client_attempts_total", attempt) == 1


def test_registry_cache_staleness_is_read_at_scrape_time() -> None:
    metrics = MeshMetrics()
    cache = _Cache({"payments": 0.0})
    metrics.watch_cache(cache)
    labels = {"destination_service": "payments"}
    sample = functools.partial(
        metrics.registry.get_sample_value, "meshkit_registry_cache_staleness_seconds", labels
    )
    assert sample() == 0.0
    cache.stale["payments"] = 5.5
    assert sample() == 5.5


def test_certificate_expiry_follows_rotation(authority: LocalAuthority) -> None:
    def material(hours: int) -> TLSMaterial:
        import datetime as dt

        issued = authority.issue("orders", ttl=dt.timedelta(hours=hours))
        return TLSMaterial(issued.chain_pem, issued.key_pem, issued.bundle_pem)

    metrics = MeshMetrics()
    labels = {"spiffe_id": "spiffe://meshkit.local/ns/default/svc/orders"}
    assert (
        metrics.registry.get_sample_value("meshkit_cert_expiry_timestamp_seconds", labels) is None
    )
    first = material(1)
    contexts = TLSContexts(first)
    metrics.watch_certificates(contexts)
    expiry = metrics.registry.get_sample_value("meshkit_cert_expiry_timestamp_seconds", labels)
    assert expiry == first.not_after
    second = material(2)
    contexts.update(second)
    expiry = metrics.registry.get_sample_value("meshkit_cert_expiry_timestamp_seconds", labels)
    assert expiry == second.not_after > first.not_after


# The per-request metrics are meshkit's own lock-free ones: they must expose exactly what
# prometheus_client's Histogram/Gauge/Counter of before exposed, minus ``_created``.

#: Every bound, a value just above each, zero, and one past the last bound.
DURATIONS = [
    0.0,
    *DURATION_BUCKETS,
    *(math.nextafter(bound, math.inf) for bound in DURATION_BUCKETS),
    0.0012,
    60.0,
]
ROUTE = "/orders/{order_id}"


def record(metrics: MeshMetrics) -> None:
    """Several label sets, in an order that differs from the sorted one."""
    for n, seconds in enumerate(DURATIONS):
        method, source = ("POST", "web") if n % 3 else ("GET", "cart")
        started(metrics, method)
        finished(metrics, method, ROUTE, 503 if n % 5 == 0 else 200, source, seconds)
        status = None if n % 4 == 0 else 201
        error = "ConnectError" if status is None else ""
        attempted(metrics, "POST", "payments", status, error)
        called(metrics, "POST", "payments", status, error, seconds)
    started(metrics, "PATCH")  # one still active


def record_with_prometheus_client(registry: CollectorRegistry) -> None:
    """What ``record`` did with the metrics meshkit defined before its own ones."""
    duration = Histogram(
        "http_server_request_duration_seconds",
        "Duration of HTTP server requests.",
        [
            "http_request_method",
            "http_route",
            "http_response_status_code",
            "source_service",
            "source_namespace",
        ],
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    active = Gauge(
        "http_server_active_requests",
        "Number of active HTTP server requests.",
        ["http_request_method"],
        registry=registry,
    )
    client = Histogram(
        "http_client_request_duration_seconds",
        "Duration of logical mesh client calls, retries included.",
        _CLIENT_LABELS,
        buckets=DURATION_BUCKETS,
        registry=registry,
    )
    attempts = Counter(
        "meshkit_client_attempts",
        "Attempts made by the mesh client (one logical call may make several).",
        _CLIENT_LABELS,
        registry=registry,
    )
    for n, seconds in enumerate(DURATIONS):
        method, source = ("POST", "web") if n % 3 else ("GET", "cart")
        active.labels(method).inc()
        active.labels(method).dec()
        status = 503 if n % 5 == 0 else 200
        duration.labels(method, ROUTE, status, source, "unknown").observe(seconds)
        status, error = ("", "ConnectError") if n % 4 == 0 else (201, "")
        attempts.labels("POST", "payments", status, error, "").inc()
        client.labels("POST", "payments", status, error, "").observe(seconds)
    active.labels("PATCH").inc()


HOT_METRICS = (
    "http_server_request_duration_seconds",
    "http_server_active_requests",
    "http_client_request_duration_seconds",
    "meshkit_client_attempts",
    "meshkit_client_attempts_total",  # the family's name in the Prometheus text format
)


def hot_families(body: bytes, *, created: bool = False) -> list[str]:
    """The exposition's per-request metric families, in order; ``_created`` lines only
    when ``created``."""
    families = body.decode().replace("# EOF\n", "").split("# HELP ")
    return [
        "\n".join(line for line in family.splitlines() if created or "_created" not in line)
        for family in families
        if family.partition(" ")[0] in HOT_METRICS
    ]


@pytest.mark.parametrize("encode", [generate_latest, generate_openmetrics])
def test_per_request_metrics_expose_what_prometheus_client_did(
    encode: Callable[[CollectorRegistry], bytes],
) -> None:
    metrics = MeshMetrics()
    record(metrics)
    reference = CollectorRegistry()
    record_with_prometheus_client(reference)
    expected = hot_families(encode(reference))
    assert len(expected) == 4
    assert hot_families(encode(metrics.registry), created=True) == expected


@pytest.mark.parametrize("bound", DURATION_BUCKETS)
def test_a_value_equal_to_a_bound_counts_in_that_bucket(bound: float) -> None:
    metrics = MeshMetrics()
    started(metrics, "GET")
    started(metrics, "GET")
    finished(metrics, "GET", ROUTE, 200, "web", bound)
    finished(metrics, "GET", ROUTE, 200, "web", math.nextafter(bound, math.inf))
    labels = {
        "http_request_method": "GET",
        "http_route": ROUTE,
        "http_response_status_code": "200",
        "source_service": "web",
        "source_namespace": "unknown",
    }

    def bucket(index: int) -> float | None:
        le = str(DURATION_BUCKETS[index]) if index < len(DURATION_BUCKETS) else "+Inf"
        name = "http_server_request_duration_seconds_bucket"
        return metrics.registry.get_sample_value(name, dict(labels, le=le))

    index = DURATION_BUCKETS.index(bound)
    assert [bucket(index - 1) if index else 0, bucket(index), bucket(index + 1)] == [0, 1, 2]


def test_label_values_name_one_series_whatever_their_type() -> None:
    registry = CollectorRegistry()
    histogram = LoopHistogram("h", "Help.", ["code"], registry, buckets=[1.0])
    histogram.observe((200,), 0.5)
    histogram.observe(("200",), 2.0)
    (family,) = registry.collect()
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        ("h_bucket", {"code": "200", "le": "1.0"}, 1.0),
        ("h_bucket", {"code": "200", "le": "+Inf"}, 2.0),
        ("h_count", {"code": "200"}, 2.0),
        ("h_sum", {"code": "200"}, 2.5),
    ]


def test_a_name_taken_by_a_prometheus_client_metric_is_refused() -> None:
    metrics = MeshMetrics()
    with pytest.raises(ValueError, match="Duplicated"):
        Histogram("http_server_request_duration_seconds", "", registry=metrics.registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("meshkit_client_attempts", "", registry=metrics.registry)


@pytest.mark.parametrize("buckets", [(), (1.0, 0.5), (0.5, 0.5), (0.5, math.inf)])
def test_histogram_buckets_must_be_finite_and_increasing(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="buckets"):
        LoopHistogram("h", "", [], CollectorRegistry(), buckets=buckets)


def test_active_requests_are_those_started_and_not_yet_finished_per_method() -> None:
    metrics = MeshMetrics()
    for method in ("GET", "GET", "GET", "POST", "POST"):
        started(metrics, method)
    finished(metrics, "GET", "/orders", 200, "web", 0.001)
    finished(metrics, "GET", "/orders/{order_id}", 404, "cart", 0.002)
    finished(metrics, "POST", "/orders", 201, "web", 0.003)

    def active(method: str) -> float | None:
        labels = {"http_request_method": method}
        return metrics.registry.get_sample_value("http_server_active_requests", labels)

    assert (active("GET"), active("POST"), active("PUT")) == (1, 1, None)
    finished(metrics, "GET", "/orders", 500, "web", 0.001)
    assert active("GET") == 0


def test_every_watched_destination_has_a_breaker_series_closed_until_it_trips() -> None:
    metrics = MeshMetrics()
    sample = metrics.registry.get_sample_value
    assert sample("meshkit_circuit_state", {"destination_service": "payments"}) is None
    metrics.watch_cache(_Cache({"payments": 0.0, "cart": 0.0}))
    for destination in ("payments", "cart"):
        assert sample("meshkit_circuit_state", {"destination_service": destination}) == 0
    metrics.set_circuit_state("cart", "open")
    assert sample("meshkit_circuit_state", {"destination_service": "cart"}) == 2
    assert sample("meshkit_circuit_state", {"destination_service": "payments"}) == 0


def test_process_and_python_collectors_live_in_the_app_registry() -> None:
    metrics = MeshMetrics()
    names = {family.name for family in metrics.registry.collect()}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names
    assert "python_gc_collections" in names


def test_subset_labels_are_bounded_per_destination() -> None:
    """Subsets come from config anyone allowed to write it sets: past MAX_SUBSETS per
    destination they share one ``_OTHER`` series."""
    metrics = MeshMetrics()
    for n in range(MAX_SUBSETS + 5):
        called(metrics, "GET", "payments", 200, "", 0.001, f"s{n}")
    called(metrics, "GET", "orders", 200, "", 0.001, "s99")

    def count(destination: str, subset: str) -> float | None:
        labels = {
            "http_request_method": "GET",
            "destination_service": destination,
            "http_response_status_code": "200",
            "error_type": "",
            "destination_subset": subset,
        }
        return metrics.registry.get_sample_value(
            "http_client_request_duration_seconds_count", labels
        )

    assert count("payments", f"s{MAX_SUBSETS - 1}") == 1
    assert count("payments", f"s{MAX_SUBSETS}") is None
    assert count("payments", "_OTHER") == 5
    assert count("orders", "s99") == 1  # another destination has its own bound
