"""A real Prometheus scrapes a real server's /metrics; the test asks Prometheus's HTTP API."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit.ca.x509 import LocalAuthority
from meshkit.middleware.telemetry import TelemetryMiddleware
from meshkit.telemetry.metrics import MeshMetrics
from tests.middleware.servers import connect, get, running
from tests.prometheus import query, running_prometheus, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus is not installed (make prometheus)"
)
ROUTE = "/orders/{order_id}"


async def order(request: Request) -> JSONResponse:
    return JSONResponse({"order": request.path_params["order_id"]})


@pytest.fixture
def metrics() -> MeshMetrics:
    return MeshMetrics()


@pytest.fixture
def admin_port(metrics: MeshMetrics) -> Iterator[int]:
    """A test-only admin server: the lead serves ``metrics.asgi_app`` on the admin port."""
    with running(metrics.asgi_app) as port:
        yield port


@pytest.fixture
def prometheus(tmp_path: Path, admin_port: int) -> Iterator[str]:
    """A real Prometheus scraping the admin port every second; yields its base URL."""
    targets = f"    static_configs:\n      - targets: ['127.0.0.1:{admin_port}']\n"
    with running_prometheus(tmp_path, f"  - job_name: orders\n{targets}") as base:
        wait_for(lambda: query(base, 'up{job="orders"} == 1'), "the first scrape")
        yield base


def test_prometheus_sees_the_traffic_by_route_and_verified_caller(
    authority: LocalAuthority, tmp_path: Path, metrics: MeshMetrics, prometheus: str
) -> None:
    app = TelemetryMiddleware(
        Starlette(routes=[Route(ROUTE, order)]), service="orders", metrics=metrics
    )
    with running(app, identity=authority.issue("orders"), directory=tmp_path) as port:
        callers = {name: connect(port, authority.issue(name)) for name in ("web", "cart")}
        # Traffic over a few scrapes, so that rate() has two samples in its window.
        deadline = time.monotonic() + 2.5
        sent = 0
        while time.monotonic() < deadline:
            for connection in callers.values():
                assert get(connection, f"/orders/{sent}")[0] == 200
            sent += 1
            time.sleep(0.005)
        for connection in callers.values():
            connection.close()

    rate = (
        "sum by (job, source_service, http_route) "
        '(rate(http_server_request_duration_seconds_count{http_route="/orders/{order_id}"}[1m]))'
    )
    series = wait_for(lambda: _two_callers(query(prometheus, rate)), "rates of both callers")
    for labels, value in series.items():
        assert labels[0] == "orders" and labels[2] == ROUTE
        assert value > 0
    p50 = (
        "histogram_quantile(0.5, sum by (le, source_service) "
        '(rate(http_server_request_duration_seconds_bucket{source_service="web"}[1m])))'
    )
    (result,) = query(prometheus, p50)
    assert 0 < float(result["value"][1]) < 1.0  # seconds; a tiny handler over loopback
    # No raw path ever became a label.
    raw = query(
        prometheus, 'count(http_server_request_duration_seconds_count{http_route=~".*[0-9].*"})'
    )
    assert raw == []


def _two_callers(result: list[dict[str, Any]]) -> dict[tuple[str, str, str], float] | None:
    series = {
        (r["metric"]["job"], r["metric"]["source_service"], r["metric"]["http_route"]): float(
            r["value"][1]
        )
        for r in result
    }
    if {key[1] for key, value in series.items() if value > 0} != {"web", "cart"}:
        return None
    return series
