from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest

from meshkit.errors import ConfigError, RegistryError, RegistryUnavailable
from meshkit.registry.consul import ConsulRegistry, check_ids, parse_address
from meshkit.settings import MeshSettings
from tests.registry.conftest import HealthzServer, ThreadedRegistry, instance

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("127.0.0.1:8500", ("http", "127.0.0.1", 8500)),
        ("consul.service:9000", ("http", "consul.service", 9000)),
        ("https://consul.example:8501", ("https", "consul.example", 8501)),
        ("http://10.0.0.1", ("http", "10.0.0.1", 8500)),
        ("localhost", ("http", "localhost", 8500)),
    ],
)
def test_parse_address_accepts_consul_http_addr_forms(
    address: str, parsed: tuple[str, str, int]
) -> None:
    assert parse_address(address) == parsed


def test_parse_address_refuses_other_schemes() -> None:
    with pytest.raises(ConfigError, match="CONSUL_HTTP_ADDR"):
        parse_address("unix:///var/run/consul.sock")


def test_from_settings_reads_consul_variables() -> None:
    settings = MeshSettings.from_env(
        {"CONSUL_HTTP_ADDR": "https://consul.example:8501", "CONSUL_HTTP_TOKEN": "secret"}
    )
    registry = ConsulRegistry.from_settings(settings)
    assert registry.address == "https://consul.example:8501"
    assert "secret" not in repr(registry)


async def test_register_publishes_meta_tags_and_checks(
    registry: ThreadedRegistry, client: Any, healthz: HealthzServer
) -> None:
    consul_registry = ConsulRegistry(address=registry.address)
    await consul_registry.register(instance(admin_port=healthz.port, tags=("blue",)))
    service = client.agent.services()["payments-1"]
    assert service["Meta"] == {
        "spiffe_id": "spiffe://meshkit.local/ns/default/svc/payments",
        "admin_port": str(healthz.port),
        "version": "1.2.0",
    }
    assert service["Tags"] == ["blue", "version=1.2.0"]
    ttl_id, http_id = check_ids("payments-1")
    checks = client.agent.checks()
    assert checks[ttl_id]["Type"] == "ttl" and checks[http_id]["Type"] == "http"
    assert checks[http_id]["Definition"]["HTTP"] == f"http://127.0.0.1:{healthz.port}/healthz"
    assert checks[ttl_id]["Definition"]["DeregisterCriticalServiceAfter"] == "1m0s"
    index, endpoints = await consul_registry.healthy_endpoints("payments")
    assert index > 0
    [endpoint] = endpoints
    assert (endpoint.instance_id, endpoint.address, endpoint.port) == (
        "payments-1",
        "127.0.0.1",
        8001,
    )
    assert endpoint.spiffe_id == "spiffe://meshkit.local/ns/default/svc/payments"
    assert endpoint.version == "1.2.0"


async def test_heartbeat_and_deregister(registry: ThreadedRegistry) -> None:
    consul_registry = ConsulRegistry(address=registry.address)
    await consul_registry.register(instance())
    assert await consul_registry.heartbeat("payments-1") is True
    await consul_registry.deregister("payments-1")
    await consul_registry.deregister("payments-1")  # idempotent
    assert await consul_registry.heartbeat("payments-1") is False
    assert (await consul_registry.healthy_endpoints("payments"))[1] == []


async def test_blocking_healthy_endpoints_wakes_on_change(registry: ThreadedRegistry) -> None:
    consul_registry = ConsulRegistry(address=registry.address)
    await consul_registry.register(instance(number=1))
    index, first = await consul_registry.healthy_endpoints("payments")
    assert len(first) == 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(consul_registry.register, instance(number=2))
        new_index, second = await consul_registry.healthy_endpoints(
            "payments", index=index, wait=10
        )
    assert new_index > index
    assert sorted(e.instance_id for e in second) == ["payments-1", "payments-2"]


async def test_services_and_instances_for_operators(registry: ThreadedRegistry) -> None:
    consul_registry = ConsulRegistry(address=registry.address)
    await consul_registry.register(instance(number=1))
    await consul_registry.register(instance(number=2))
    registry.client().agent.check.ttl_fail(check_ids("payments-2")[0])
    summaries = {s.name: (s.healthy, s.total) for s in await consul_registry.services()}
    assert summaries == {"consul": (1, 1), "payments": (1, 2)}
    instances = {i.instance_id: i for i in await consul_registry.instances("payments")}
    assert instances["payments-2"].status == "critical"
    assert instances["payments-1"].version == "1.2.0"


async def test_unreachable_registry_is_registry_unavailable() -> None:
    consul_registry = ConsulRegistry(address="127.0.0.1:9", timeout=2)
    with pytest.raises(RegistryUnavailable, match="unreachable"):
        await consul_registry.healthy_endpoints("payments")
    with pytest.raises(RegistryUnavailable):
        await consul_registry.healthy_endpoints("payments", index=5, wait=1)


async def test_refusals_are_registry_errors(registry: ThreadedRegistry) -> None:
    consul_registry = ConsulRegistry(address=registry.address)
    with pytest.raises(RegistryError, match="Invalid Service Meta") as caught:
        await consul_registry.register(instance(meta={"bad key": "x"}))
    assert not isinstance(caught.value, RegistryUnavailable)


class _TokenRecorder:
    def __init__(self) -> None:
        self.tokens: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                owner.tokens.append(self.headers.get("X-Consul-Token"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()


@pytest.fixture
def recorder() -> Iterator[_TokenRecorder]:
    server = _TokenRecorder()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def test_token_is_sent_and_wins_over_the_environment(
    recorder: _TokenRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-environment")
    port = recorder.server.server_address[1]
    await ConsulRegistry(address=f"127.0.0.1:{port}", token="from-settings").heartbeat("x")
    assert recorder.tokens == ["from-settings"]
