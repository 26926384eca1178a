from __future__ import annotations

from typing import Any

import anyio
import pytest

from meshkit.registry.cache import WatchedCache
from meshkit.registry.consul import ConsulRegistry
from meshkit.registry.lifecycle import ServiceRegistration
from tests.registry.conftest import HealthzServer, ThreadedRegistry, eventually, instance

pytestmark = pytest.mark.anyio


def _passing_ids(client: Any, service: str = "payments") -> list[str]:
    return [e["Service"]["ID"] for e in client.health.service(service, passing=True)[1]]


async def test_registers_healthy_and_heartbeats_past_the_ttl(
    registry: ThreadedRegistry, healthz: HealthzServer
) -> None:
    client = registry.client()
    registration = ServiceRegistration(
        ConsulRegistry(address=registry.address), instance(admin_port=healthz.port, ttl=1.0)
    )
    async with anyio.create_task_group() as tg:
        await tg.start(registration.run)
        assert _passing_ids(client) == ["payments-1"]  # healthy as soon as started
        await anyio.sleep(1.5)  # longer than the TTL: heartbeats keep it passing
        assert await anyio.to_thread.run_sync(_passing_ids, client) == ["payments-1"]
        tg.cancel_scope.cancel()
    await registration.deregister()
    await registration.deregister()  # idempotent
    assert _passing_ids(client) == []


async def test_reregisters_after_the_registry_restarts(
    own_registry: ThreadedRegistry, healthz: HealthzServer
) -> None:
    registry = own_registry
    registration = ServiceRegistration(
        ConsulRegistry(address=registry.address, timeout=2), instance(admin_port=healthz.port)
    )
    async with anyio.create_task_group() as tg:
        await tg.start(registration.run)
        await anyio.to_thread.run_sync(registry.stop)
        await anyio.sleep(0.5)  # heartbeats fail meanwhile: backoff, no crash
        await anyio.to_thread.run_sync(registry.start)  # same port, empty state
        client = registry.client()
        await eventually(lambda: _passing_ids(client) == ["payments-1"], in_thread=True)
        tg.cancel_scope.cancel()


async def test_waits_for_a_registry_that_is_not_up_yet(healthz: HealthzServer) -> None:
    late = ThreadedRegistry()
    late.start()
    late.stop()  # keep its port, nobody listening
    registration = ServiceRegistration(
        ConsulRegistry(address=late.address, timeout=2), instance(admin_port=healthz.port)
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(registration.run)
            await anyio.sleep(0.3)
            assert not registration.registered
            await anyio.to_thread.run_sync(late.start)
            client = late.client()
            await eventually(lambda: _passing_ids(client) == ["payments-1"], in_thread=True)
            tg.cancel_scope.cancel()
    finally:
        await anyio.to_thread.run_sync(late.stop)


async def test_deregister_stops_run_and_watchers_drop_the_instance(
    registry: ThreadedRegistry, healthz: HealthzServer
) -> None:
    consul_registry = ConsulRegistry(address=registry.address)
    registration = ServiceRegistration(consul_registry, instance(admin_port=healthz.port))
    async with WatchedCache(consul_registry, wait=10) as cache, anyio.create_task_group() as tg:
        await tg.start(registration.run)
        assert [e.instance_id for e in await cache.prime("payments")] == ["payments-1"]
        await registration.deregister()  # run() is still in the task group: it must stop
        await eventually(lambda: cache.endpoints("payments") == ())
        await anyio.sleep(registration.heartbeat_interval + 0.2)
        assert cache.endpoints("payments") == ()  # not registered again
    assert _passing_ids(registry.client()) == []


async def test_deregister_with_the_registry_down_does_not_raise() -> None:
    registration = ServiceRegistration(
        ConsulRegistry(address="127.0.0.1:9", timeout=1), instance(), deregister_timeout=2
    )
    await registration.deregister()
    assert not registration.registered
