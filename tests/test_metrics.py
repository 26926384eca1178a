from __future__ import annotations

import functools
import shutil
import subprocess

import pytest
from prometheus_client import REGISTRY

from meshkit.ca.x509 import LocalAuthority
from meshkit.metrics import MeshMetrics
from meshkit.tls import TLSContexts, TLSMaterial


def populated() -> MeshMetrics:
    """Metrics with at least one series of every metric meshkit has."""
    metrics = MeshMetrics()
    metrics.server_duration_by.get("GET", "/orders/{order_id}", 200, "web").observe(0.0012)
    metrics.server_active_by.get("GET").inc()
    metrics.observe_client_call("POST", "payments", 201, "", 0.004)
    metrics.observe_client_call("POST", "payments", None, "ConnectError", 0.2)
    metrics.count_client_attempt("POST", "payments", 503, "")
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
    first.retried("payments")
    first.retried("payments")
    second.retried("payments")
    labels = {"destination_service": "payments"}
    assert first.registry.get_sample_value("meshkit_retries_total", labels) == 2
    assert second.registry.get_sample_value("meshkit_retries_total", labels) == 1
    assert REGISTRY.get_sample_value("meshkit_retries_total", labels) is None


def test_mesh_internals_are_recorded() -> None:
    metrics = populated()
    sample = metrics.registry.get_sample_value
    payments = {"destination_service": "payments"}
    assert sample("meshkit_circuit_state", payments) == 2
    metrics.set_circuit_state("payments", "half-open")
    assert sample("meshkit_circuit_state", payments) == 1
    assert sample("meshkit_retry_budget_exhausted_total", payments) == 1
    assert sample("meshkit_endpoint_ejections_total", payments) == 1
    denial = {"source_service": "cart", "http_route": "/orders/{order_id}", "reason": "caller"}
    assert sample("meshkit_policy_denials_total", denial) == 1
    failed = {
        "http_request_method": "POST",
        "destination_service": "payments",
        "http_response_status_code": "",
        "error_type": "ConnectError",
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
