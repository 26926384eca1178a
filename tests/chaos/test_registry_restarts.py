"""Registry restarts under load, over real processes: a dev registry killed and brought
back on the same port again and again while a caller calls two upstream instances.

Each restart brings the registry back empty until the instances re-register (at their
next heartbeat, up to 2 s later); a caller whose watched cache read that empty list in
between used to answer ``503 no_healthy_instances``. No call may fail.
"""

from __future__ import annotations

import json
import random
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshkit.testing import Mesh, RegistryProcess, ServiceProcess, admin_get
from tests.test_testing import Traffic

pytestmark = pytest.mark.timeout(240)

UPSTREAM = "tests.apps.upstream:app"
CALLER = "tests.apps.caller:app"
CYCLES = 20
# The cache reads the restarted registry before the instances re-register in about one
# cycle of ten here; past CYCLES, go on (up to MAX_CYCLES) until one did, so the test
# always covers the window it is about.
MAX_CYCLES = 60
KEPT = "the registry came back with no instances"  # the caller's log when its cache kept a list


def restart_on_same_port(registry: RegistryProcess) -> None:
    """Start ``registry`` again where it was: callers and instances know only that address."""
    port = registry.address.rpartition(":")[2]
    registry.args = ["registry", "serve", "--port", port]
    registry.start()


def passing_ports(registry: RegistryProcess, service: str) -> set[int]:
    port = int(registry.address.rpartition(":")[2])
    status, body = admin_get(port, f"/v1/health/service/{service}?passing")
    assert status == 200
    return {entry["Service"]["Port"] for entry in json.loads(body)}


def staleness(caller: ServiceProcess, service: str) -> float:
    """The caller's ``meshkit_registry_cache_staleness_seconds`` for ``service``."""
    status, body = admin_get(caller.admin_port, "/metrics")
    assert status == 200
    (value,) = (
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "meshkit_registry_cache_staleness_seconds"
        and sample.labels.get("destination_service") == service
    )
    return value


def restart_and_recover(
    registry: RegistryProcess, upstreams: list[ServiceProcess], caller: ServiceProcess
) -> None:
    """Kill the registry, restart it after 0.1-1 s, and wait until every upstream is
    registered again and the caller's cache has confirmed them, so each cycle starts from
    a mesh that fully came back."""
    registry.kill()
    time.sleep(random.uniform(0.1, 1.0))
    restart_on_same_port(registry)
    ports = {u.port for u in upstreams}
    registry.child.wait_until(lambda: passing_ports(registry, "upstream") == ports, timeout=20)
    registry.child.wait_until(lambda: staleness(caller, "upstream") == 0.0, timeout=20)


def kept(caller: ServiceProcess) -> int:
    """How many restarts the caller's cache read empty and kept its list through."""
    return sum(KEPT in line for line in caller.lines)


@pytest.mark.slow  # 45-85 s here: 20 restarts of ~2 s each, the instances' re-registration
def test_registry_restarts_under_load_fail_no_call(mesh: Mesh) -> None:
    upstreams = mesh.start(UPSTREAM, "upstream", instances=2)
    (caller,) = mesh.start(CALLER, "caller")
    cycles = 0
    with Traffic([mesh.connect(caller, as_="tester") for _ in range(2)]) as traffic:
        traffic.wait_for(50)
        while cycles < CYCLES or (
            not kept(caller) and cycles < MAX_CYCLES and not traffic.failures
        ):
            restart_and_recover(mesh.registry, upstreams, caller)
            cycles += 1
        traffic.wait_for(50)
    calls = traffic.served.total() + len(traffic.failures)
    print(f"{cycles} restarts ({kept(caller)} read empty), {calls} calls,", end=" ")
    print(f"{len(traffic.failures)} failed")
    assert traffic.failures == [], traffic.failures[:5]
    assert kept(caller) > 0, "no restart was read empty: the test missed its window"
