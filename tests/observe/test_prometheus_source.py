"""``meshkit dashboard --prometheus URL``: the same numbers, read from a real Prometheus
that scrapes a real mesh's admin ports."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from meshkit.cli import main
from meshkit.observe.golden import Edge
from meshkit.observe.prometheus import PrometheusScraper
from meshkit.observe.scrape import Observer, edge_golden
from meshkit.registry.consul import ConsulRegistry
from meshkit.testing import Mesh, ServiceProcess
from tests.observe.helpers import Traffic
from tests.prometheus import query, running_prometheus, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus is not installed (make prometheus)"
)


@pytest.fixture
def instances(mesh: Mesh) -> tuple[ServiceProcess, ServiceProcess]:
    (upstream,) = mesh.start("tests.apps.upstream:app", "upstream")
    (caller,) = mesh.start("tests.apps.caller:app", "caller")
    return upstream, caller


@pytest.fixture
def prometheus(tmp_path: Path, instances: tuple[ServiceProcess, ...]) -> Iterator[str]:
    targets = ", ".join(f"'127.0.0.1:{p.admin_port}'" for p in instances)
    job = f"  - job_name: mesh\n    static_configs:\n      - targets: [{targets}]\n"
    with running_prometheus(tmp_path, job) as base:
        wait_for(lambda: len(query(base, 'up{job="mesh"} == 1')) == 2, "the first scrapes")
        yield base


def test_edges_and_instances_come_from_prometheus(
    mesh: Mesh, instances: tuple[ServiceProcess, ServiceProcess], prometheus: str
) -> None:
    observer = Observer(
        ConsulRegistry(address=mesh.registry.address), scraper=PrometheusScraper(prometheus)
    )
    anyio.run(observer.round)
    assert all(observer.latest[t.instance_id] is not None for t in observer.targets)
    deadline = time.monotonic() + 30
    with Traffic(mesh.connect(instances[1], as_="tester")):
        while True:
            time.sleep(0.5)
            anyio.run(observer.round)
            ticks = observer.history.recent(30)
            edges = {e.edge: e.golden for e in edge_golden(ticks, observer.services)}
            upstream = edges.get(Edge("caller", "upstream"))
            if upstream is not None and upstream.requests > 0:
                break
            assert time.monotonic() < deadline, f"no traffic seen through prometheus: {edges}"
    assert upstream.success == 1.0 and upstream.p99 is not None
    assert edges[Edge("tester", "caller")].requests > 0
    (caller,) = (observer.latest[t.instance_id] for t in observer.targets if t.service == "caller")
    assert (
        caller is not None and caller.cert_expiry is not None and caller.cert_expiry > time.time()
    )


def test_a_prometheus_that_does_not_answer_leaves_instances_unread(
    mesh: Mesh, instances: tuple[ServiceProcess, ServiceProcess]
) -> None:
    scraper = PrometheusScraper("http://127.0.0.1:1")
    observer = Observer(ConsulRegistry(address=mesh.registry.address), scraper=scraper)
    anyio.run(observer.round)
    assert len(observer.targets) == 2
    assert set(observer.latest.values()) == {None}


def test_a_bad_prometheus_url_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--prometheus", "localhost:9090", "--port", "0"]) == 1
    assert capsys.readouterr().err == (
        "meshkit: error: --prometheus 'localhost:9090': expected http(s)://host:port\n"
    )
