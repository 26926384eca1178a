"""The dashboard's server over real sockets: its document, its bounded event stream, and
``meshkit up`` / ``meshkit demo`` starting it. (The page itself: test_dashboard_browser.)"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from meshkit.cli import main
from meshkit.observe.dashboard import LISTENING, MAX_CLIENTS, SERIES_STEP, DashboardState
from meshkit.observe.golden import Flow, Histogram
from meshkit.observe.scrape import Tick
from meshkit.testing import Mesh, MeshProcess, admin_get


@pytest.fixture
def dashboard(mesh: Mesh) -> Iterator[int]:
    argv = ["dashboard", "--registry", mesh.registry.address, "--port", "0"]
    with MeshProcess([*argv, "--interval", "0.2"], ready=LISTENING, name="dashboard") as process:
        assert process.match is not None
        yield int(urlsplit(process.match["url"]).port or 0)


def _state(port: int) -> dict[str, Any]:
    status, body = admin_get(port, "/api/state")
    assert status == 200
    return dict(json.loads(body))


def _until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _open_stream(port: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/events")
    return connection, connection.getresponse()


def test_the_document_lists_services_instances_and_admin_ports(mesh: Mesh, dashboard: int) -> None:
    (upstream,) = mesh.start("tests.apps.upstream:app", "upstream")
    _until(lambda: _state(dashboard).get("services"))
    state = _state(dashboard)
    assert [node["id"] for node in state["nodes"]] == ["upstream"]
    (instance,) = state["services"][0]["instances"]
    assert instance["admin_port"] == upstream.admin_port and instance["scraped"]
    assert instance["cert_expiry"] > time.time()
    assert state["registry"] == f"http://{mesh.registry.address}"


def test_events_stream_documents_to_a_bounded_number_of_clients(dashboard: int) -> None:
    streams = [_open_stream(dashboard) for _ in range(MAX_CLIENTS)]
    try:
        for _, response in streams:
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.readline() == b"retry: 2000\n"
            response.readline()
            assert response.readline().startswith(b"id: ")
            assert json.loads(response.readline().removeprefix(b"data: "))["registry"]
        extra, refused = _open_stream(dashboard)
        assert refused.status == 503 and refused.headers["retry-after"] == "5"
        assert json.loads(refused.read()) == {
            "error": "too many dashboard clients",
            "limit": MAX_CLIENTS,
        }
        extra.close()
        streams.pop()[0].close()  # a client leaves: its place is free again
        _until(lambda: _accepted(dashboard))
    finally:
        for connection, _ in streams:
            connection.close()


def _accepted(port: int) -> bool:
    connection, response = _open_stream(port)
    connection.close()
    return response.status == 200


def test_the_page_and_its_static_files_are_served_with_a_strict_policy(dashboard: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", dashboard, timeout=10)
    connection.request("GET", "/")
    page = connection.getresponse()
    body = page.read().decode()
    assert page.status == 200 and '<svg id="topology"' in body
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for path in re.findall(r'(?:href|src)="(/static/[^"]+)"', body):
        assert admin_get(dashboard, path)[0] == 200
    assert admin_get(dashboard, "/static/../dashboard.py")[0] == 404


def test_a_bad_interval_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--interval", "0", "--port", "0"]) == 1
    assert capsys.readouterr().err == (
        "meshkit: error: --interval 0.0: expected 0.1 to 60 seconds\n"
    )


def test_up_starts_the_dashboard_on_its_registry(tmp_path: Path) -> None:
    ports = ("--registry-port", "0", "--ca-port", "0", "--dashboard-port", "0")
    up = MeshProcess(
        ["up", "--dir", str(tmp_path / "plane"), *ports],
        ready=re.compile(r"dashboard: (?P<url>http://\S+/)"),
        name="up",
    )
    with up:
        assert up.match is not None
        port = int(urlsplit(up.match["url"]).port or 0)
        registry = next(line for line in up.lines if "CONSUL_HTTP_ADDR=" in line)
        _until(lambda: "at" in _state(port))
        assert _state(port)["registry"] == "http://" + registry.partition("=")[2].strip()


def test_the_time_series_has_one_point_per_step_and_keeps_only_its_span() -> None:
    state = DashboardState(keep=60.0)
    edge = Flow("web", "cart", "GET")
    for second in range(1, 121):  # two minutes of one-second rounds, 10 calls each
        tick = Tick(1000.0 + second, 1.0, {}, {edge: Histogram({0.01: 10, math.inf: 10}, 10)})
        state.add_tick(tick, ["web", "cart"])
    times = [at for at, _ in state.series]
    assert len(times) == 60 / SERIES_STEP + 1  # the span is bounded by time
    assert all(b - a == SERIES_STEP for a, b in itertools.pairwise(times))
    assert all(point == {"web->cart": [10.0, 1.0, 0.005, 0.0099]} for _, point in state.series)
