"""``meshkit.testing``: its processes (on ``meshkit.testing.supervisor``, whose contract
tests/test_supervisor.py checks), and the ``mesh`` fixture: a real mesh in a test, an
instance killed under steady load, and faults injected into instances (``MESHKIT_FAULTS``)."""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshkit.errors import ConfigError, MeshError
from meshkit.testing import (
    CAProcess,
    Connection,
    Mesh,
    RegistryProcess,
    ServiceProcess,
    admin_get,
)
from tests._procs import gone

pytestmark = pytest.mark.timeout(90)

UPSTREAM = "tests.apps.upstream:app"
CALLER = "tests.apps.caller:app"


def _sample(process: ServiceProcess, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples carrying ``labels``, from the process's /metrics."""
    status, body = admin_get(process.admin_port, "/metrics")
    assert status == 200
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def _retries(caller: ServiceProcess) -> float:
    return _sample(caller, "meshkit_retries_total", destination_service="upstream")


# A script check that writes its pid and outlives the registry unless its group is killed.
CHECK = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"


def _register(registry: RegistryProcess, body: dict[str, Any]) -> None:
    connection = http.client.HTTPConnection(registry.address, timeout=10)
    connection.request("PUT", "/v1/agent/service/register", json.dumps(body))
    assert connection.getresponse().status == 200
    connection.close()


def test_a_killed_process_takes_what_it_started_along(tmp_path: Path) -> None:
    registry = RegistryProcess()
    registry.args.append("--enable-script-checks")
    with registry:
        assert registry.child.pgid == registry.process.pid != os.getpgid(0)
        assert any("serving the Consul HTTP API" in line for line in registry.lines)
        pid_file = tmp_path / "check.pid"
        argv = [sys.executable, "-c", CHECK, str(pid_file)]
        _register(
            registry, {"Name": "web", "Check": {"Args": argv, "Interval": "1s", "Timeout": "60s"}}
        )
        registry.child.wait_until(lambda: pid_file.exists() and pid_file.read_text() != "")
        registry.kill()  # no chance to stop its check: only the group signal reaches it
        assert registry.process.returncode == -9
        assert gone(int(pid_file.read_text()))


def test_a_process_that_fails_to_start_says_why_and_is_gone(tmp_path: Path) -> None:
    ca = CAProcess(tmp_path / "no-such-ca")
    with pytest.raises(MeshError, match=r"ca exited with 1:\n(.|\n)*no-such-ca"):
        ca.start()
    assert not ca.child.running
    assert ca.stop() == 1  # stopping a stopped process is harmless


class Traffic:
    """GETs through the caller from a few threads, each on its own connection."""

    def __init__(self, connections: list[Connection]) -> None:
        self.connections = connections
        self.served: Counter[int] = Counter()  # by upstream pid
        self.failures: list[Any] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._drive, args=(c,)) for c in connections]

    def _drive(self, connection: Connection) -> None:
        while not self._stop.is_set():
            try:
                status, body = connection.get("/call")
            except OSError as exc:
                status, body = 0, exc
            with self._changed:
                if status == 200:
                    self.served[body["upstream"]["pid"]] += 1
                else:
                    self.failures.append((status, body))
                self._changed.notify_all()

    def wait_for(self, more: int, *, timeout: float = 30.0) -> None:
        """Until ``more`` further GETs succeeded."""
        with self._changed:
            target = self.served.total() + more
            assert self._changed.wait_for(lambda: self.served.total() >= target, timeout)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def test_an_instance_killed_under_steady_load_fails_no_get(mesh: Mesh) -> None:
    upstreams = mesh.start(UPSTREAM, "upstream", instances=2)
    (caller,) = mesh.start(CALLER, "caller")
    victim, survivor = upstreams
    with Traffic([mesh.connect(caller, as_="tester") for _ in range(3)]) as traffic:
        traffic.wait_for(100)
        mesh.kill(victim)
        before = traffic.served[victim.process.pid]
        traffic.wait_for(200)
    assert traffic.failures == []
    assert before > 0 and traffic.served[survivor.process.pid] > 0
    # Dead: it answered at most the requests already on their way back.
    assert traffic.served[victim.process.pid] <= before + 3
    assert _retries(caller) > 0  # the kill did hit requests, and they were retried


@pytest.fixture
def pair(mesh: Mesh, request: pytest.FixtureRequest) -> tuple[ServiceProcess, ...]:
    """(faulty upstream, healthy upstream, caller); the faults are the test's parameter."""
    (faulty,) = mesh.start(UPSTREAM, "upstream", faults=request.param)
    (healthy,) = mesh.start(UPSTREAM, "upstream")
    (caller,) = mesh.start(CALLER, "caller")
    return faulty, healthy, caller


def _call_until_retried(mesh: Mesh, caller: ServiceProcess, healthy: ServiceProcess) -> None:
    """GETs through the caller until one was retried; each answered by ``healthy``.

    The balancer prefers instances that have not answered yet, so the faulty one is
    tried within the first few calls; 30 is far more than it takes.
    """
    connection = mesh.connect(caller)
    for _ in range(30):
        assert connection.get("/call") == (200, {"upstream": {"pid": healthy.process.pid}})
        if _retries(caller):
            return
    pytest.fail("no call was retried: the faulty instance was never tried")


@pytest.mark.parametrize("pair", ["delay=2"], indirect=True)
def test_a_delay_runs_out_a_deadline_and_a_retry_moves_on(
    mesh: Mesh, pair: tuple[ServiceProcess, ...]
) -> None:
    faulty, healthy, caller = pair
    direct = mesh.connect(faulty, as_="caller")
    status, body = direct.get("/work", headers={"x-meshkit-deadline-ms": "200"})
    assert (status, body["error"]) == (504, "deadline_exceeded")
    # The injected delay ran inside telemetry: the 504 is in the instance's metrics.
    assert _sample(
        faulty,
        "http_server_request_duration_seconds_count",
        http_response_status_code="504",
        source_service="caller",
    )
    # Through the mesh client: the slow attempt times out (1 s) and is retried elsewhere.
    _call_until_retried(mesh, caller, healthy)


@pytest.mark.parametrize("pair", ["abort=503"], indirect=True)
def test_an_aborting_instance_is_absorbed_by_retries(
    mesh: Mesh, pair: tuple[ServiceProcess, ...]
) -> None:
    faulty, healthy, caller = pair
    assert mesh.connect(faulty).get("/work") == (
        503,
        {"error": "fault_injected", "detail": "injected by MESHKIT_FAULTS (abort=503)"},
    )
    _call_until_retried(mesh, caller, healthy)
    assert _sample(
        faulty, "http_server_request_duration_seconds_count", http_response_status_code="503"
    )


def test_faults_only_on_a_path_prefix(mesh: Mesh) -> None:
    (upstream,) = mesh.start(UPSTREAM, "upstream", faults="abort=418,path=/nowhere")
    assert mesh.connect(upstream).get("/work")[0] == 200


def test_a_bad_fault_spec_fails_before_anything_starts(mesh: Mesh) -> None:
    with pytest.raises(ConfigError, match="abort must be an HTTP error status"):
        mesh.start(UPSTREAM, "upstream", faults="abort=200")
    assert mesh.processes == []


def test_connect_chooses_the_identity_and_kill_crashes_the_process(mesh: Mesh) -> None:
    (echo,) = mesh.start("tests.apps.echo:app", "echo", namespace="shop")
    assert mesh.connect(echo, as_="web").get("/whoami")[1]["caller"] == (
        "spiffe://meshkit.local/ns/shop/svc/web"
    )
    other = mesh.connect(echo, as_="web", namespace="default").get("/whoami")[1]
    assert other["caller"] == "spiffe://meshkit.local/ns/default/svc/web"
    anonymous = mesh.connect(echo, as_=None)
    with pytest.raises(OSError):  # strict mTLS: no certificate, no connection
        anonymous.get("/whoami")
    mesh.kill(echo)
    assert echo.process.returncode == -9
