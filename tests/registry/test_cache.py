from __future__ import annotations

import anyio
import pytest

from meshkit.errors import RegistryUnavailable
from meshkit.registry.base import EndpointSource
from meshkit.registry.cache import WatchedCache
from meshkit.registry.consul import ConsulRegistry, check_ids
from tests.registry.conftest import ThreadedRegistry, eventually, instance

pytestmark = pytest.mark.anyio


def _ids(cache: WatchedCache, service: str = "payments") -> list[str]:
    return sorted(e.instance_id for e in cache.endpoints(service) or ())


async def test_is_an_endpoint_source(registry: ThreadedRegistry) -> None:
    cache: EndpointSource = WatchedCache(ConsulRegistry(address=registry.address))
    assert cache.endpoints("payments") is None


async def test_prime_then_changes_arrive_without_io(registry: ThreadedRegistry) -> None:
    consul_registry = ConsulRegistry(address=registry.address)
    await consul_registry.register(instance(number=1))
    async with WatchedCache(consul_registry, wait=5) as cache:
        assert cache.endpoints("payments") is None  # not watched yet
        primed = await cache.prime("payments")
        assert [e.instance_id for e in primed] == ["payments-1"]
        generation = cache.generation
        await consul_registry.register(instance(number=2))
        await eventually(lambda: _ids(cache) == ["payments-1", "payments-2"])
        assert cache.generation > generation
        assert cache.stale_seconds("payments") == 0.0


async def test_only_passing_instances_are_endpoints(registry: ThreadedRegistry) -> None:
    consul_registry = ConsulRegistry(address=registry.address)
    await consul_registry.register(instance(number=1))
    await consul_registry.register(instance(number=2))
    async with WatchedCache(consul_registry, wait=5) as cache:
        await cache.prime("payments")
        registry.client().agent.check.ttl_fail(check_ids("payments-2")[0])
        await eventually(lambda: _ids(cache) == ["payments-1"])


async def test_registry_down_keeps_the_last_list_and_resumes(
    own_registry: ThreadedRegistry,
) -> None:
    registry = own_registry
    consul_registry = ConsulRegistry(address=registry.address, timeout=2)
    await consul_registry.register(instance(number=1))
    async with WatchedCache(consul_registry, wait=5, retry_max=0.5) as cache:
        await cache.prime("payments")
        await anyio.to_thread.run_sync(registry.stop)
        await eventually(lambda: cache.stale_seconds("payments") > 0)
        assert _ids(cache) == ["payments-1"]  # callers keep resolving the known list
        await anyio.sleep(0.3)
        assert _ids(cache) == ["payments-1"]
        await anyio.to_thread.run_sync(registry.start)  # restarted empty
        await consul_registry.register(instance(number=3))
        await eventually(lambda: _ids(cache) == ["payments-3"])
        assert cache.stale_seconds("payments") == 0.0


async def test_prime_fails_clearly_when_the_registry_is_down() -> None:
    consul_registry = ConsulRegistry(address="127.0.0.1:9", timeout=1)
    async with WatchedCache(consul_registry, prime_timeout=0.3) as cache:
        with pytest.raises(RegistryUnavailable, match="payments"):
            await cache.prime("payments")


async def test_prime_needs_a_running_cache(registry: ThreadedRegistry) -> None:
    cache = WatchedCache(ConsulRegistry(address=registry.address))
    with pytest.raises(RuntimeError, match="async with"):
        await cache.prime("payments")
