"""Discovery and scraping over a real mesh: a dev registry, real instances, real traffic."""

from __future__ import annotations

import anyio
import pytest

from meshkit.observe.golden import Edge, Flow
from meshkit.observe.scrape import (
    Observer,
    Target,
    edge_golden,
    inbound_golden,
    parse_metrics,
    scrape,
)
from meshkit.registry.consul import ConsulRegistry
from meshkit.testing import Connection, Mesh, ServiceProcess


def _traffic(connection: Connection, path: str, count: int) -> list[int]:
    return [connection.get(path)[0] for _ in range(count)]


def _observer(mesh: Mesh) -> Observer:
    return Observer(ConsulRegistry(address=mesh.registry.address))


@pytest.fixture
def shop(mesh: Mesh) -> tuple[list[ServiceProcess], ServiceProcess]:
    upstreams = mesh.start("tests.apps.upstream:app", "upstream", instances=2)
    (caller,) = mesh.start("tests.apps.caller:app", "caller")
    return upstreams, caller


@pytest.fixture
def observer(mesh: Mesh, shop: tuple[list[ServiceProcess], ServiceProcess]) -> Observer:
    """An observer of ``shop`` after its first round (the baseline rates start from)."""
    observer = _observer(mesh)
    anyio.run(observer.round)
    return observer


def test_discover_finds_every_instance_with_its_admin_port(
    shop: tuple[list[ServiceProcess], ServiceProcess], observer: Observer
) -> None:
    upstreams, caller = shop
    assert observer.error is None
    assert observer.services == ["caller", "upstream"]
    admin_ports = {t.admin_port for t in observer.targets}
    assert admin_ports == {p.admin_port for p in [*upstreams, caller]}
    assert all(t.health == "passing" and t.version for t in observer.targets)
    assert all(observer.latest[t.instance_id] is not None for t in observer.targets)


def test_edges_and_routes_carry_rate_success_and_latency(
    mesh: Mesh, shop: tuple[list[ServiceProcess], ServiceProcess], observer: Observer
) -> None:
    _, caller = shop
    connection = mesh.connect(caller, as_="tester")
    assert _traffic(connection, "/call", 20) == [200] * 20
    anyio.run(observer.round)
    ticks = observer.history.recent()
    edges = {e.edge: e for e in edge_golden(ticks, observer.services)}
    assert set(edges) == {Edge("tester", "caller"), Edge("caller", "upstream")}
    upstream = edges[Edge("caller", "upstream")]
    assert upstream.seen_by == "caller" and edges[Edge("tester", "caller")].seen_by == "callee"
    assert upstream.golden.requests == 20 and upstream.golden.rate > 0
    assert upstream.golden.success == 1.0
    assert upstream.golden.p50 is not None and upstream.golden.p99 is not None
    assert upstream.golden.p50 <= upstream.golden.p99
    flows = inbound_golden(ticks, "upstream")
    assert [f.flow for f in flows] == [Flow("caller", "upstream", "GET", "/work")]
    assert flows[0].golden.requests == 20


def test_failures_show_in_the_edge_success(mesh: Mesh) -> None:
    mesh.start("tests.apps.upstream:app", "upstream", faults="abort=503,percent=100")
    (caller,) = mesh.start("tests.apps.caller:app", "caller")
    observer = _observer(mesh)
    anyio.run(observer.round)
    connection = mesh.connect(caller, as_="tester")
    statuses = _traffic(connection, "/call", 5)
    assert all(status >= 500 for status in statuses)
    anyio.run(observer.round)
    edges = {e.edge: e.golden for e in edge_golden(observer.history.recent(), observer.services)}
    assert edges[Edge("caller", "upstream")].success == 0.0
    assert edges[Edge("tester", "caller")].success == 0.0


def test_a_killed_instance_is_not_scraped_and_its_counts_stay(
    mesh: Mesh, shop: tuple[list[ServiceProcess], ServiceProcess], observer: Observer
) -> None:
    upstreams, caller = shop
    mesh.kill(upstreams[0])
    anyio.run(observer.round)
    victim = next(t for t in observer.targets if t.admin_port == upstreams[0].admin_port)
    assert observer.latest[victim.instance_id] is None
    connection = mesh.connect(caller, as_="tester")
    assert _traffic(connection, "/call", 5) == [200] * 5  # the caller fails over
    anyio.run(observer.round)
    edges = {e.edge: e.golden for e in edge_golden(observer.history.recent(), observer.services)}
    assert edges[Edge("caller", "upstream")].requests == 5


def test_a_target_without_admin_port_or_answer_is_none() -> None:
    silent = Target("ghost", "ghost-1", "127.0.0.1", 1, admin_port=1, version=None, health="x")
    unpublished = Target("ghost", "ghost-2", "127.0.0.1", 1, None, None, "passing")
    assert anyio.run(scrape, [silent, unpublished]) == {"ghost-1": None, "ghost-2": None}


def test_parse_reads_in_flight_certificates_breakers_and_ejections() -> None:
    text = (
        "# TYPE http_server_active_requests gauge\n"
        'http_server_active_requests{http_request_method="GET"} 2\n'
        'http_server_active_requests{http_request_method="POST"} 1\n'
        "# TYPE meshkit_cert_expiry_timestamp_seconds gauge\n"
        'meshkit_cert_expiry_timestamp_seconds{spiffe_id="spiffe://x/ns/d/svc/a"} 1.9e9\n'
        "# TYPE meshkit_circuit_state gauge\n"
        'meshkit_circuit_state{destination_service="b"} 2\n'
        "# TYPE meshkit_endpoint_ejections counter\n"
        'meshkit_endpoint_ejections_total{destination_service="b"} 3\n'
    )
    metrics = parse_metrics(text, service="a")
    assert metrics.in_flight == 3
    assert metrics.cert_expiry == 1.9e9
    assert metrics.circuits == {"b": "open"}
    assert metrics.ejections == {"b": 3}
