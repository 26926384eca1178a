from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from meshkit.errors import RegistryUnavailable
from meshkit.registry.base import (
    Endpoint,
    EndpointSource,
    InstanceHealth,
    InstanceRegistration,
    ServiceSummary,
)
from meshkit.registry.cache import DEFAULT_RESTART_GRACE, WatchedCache
from meshkit.registry.consul import ConsulRegistry, check_ids
from meshkit.registry.lifecycle import REREGISTER_WITHIN
from tests.registry.conftest import ThreadedRegistry, eventually, instance

pytestmark = pytest.mark.anyio

KEPT = "the registry came back with no instances"


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
    own_registry: ThreadedRegistry, caplog: pytest.LogCaptureFixture
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
        await anyio.to_thread.run_sync(registry.start)  # restarted empty, on the same port
        await eventually(lambda: KEPT in caplog.text)  # read empty before anyone registered
        assert _ids(cache) == ["payments-1"]
        assert cache.stale_seconds("payments") > 0.3
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


# -- restarts, over a scripted registry -------------------------------------------------


def _endpoints(*ids: str) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(i, "payments", "127.0.0.1", 8000 + n) for n, i in enumerate(ids))


class FakeRegistry:
    """A ``Registry`` whose health answers the test scripts, blocking as Consul's do: while
    its index is at most the one asked for, up to ``wait``. ``stop``/``start`` take it away
    and bring it back restarted (index from 1 again); ``reset`` restarts it between two
    queries, so the watch never sees an error, only an index that went backwards."""

    def __init__(self, *ids: str) -> None:
        self.index = 10
        self.found = _endpoints(*ids)
        self.up = True
        self.answers: list[tuple[int, tuple[str, ...]]] = []  # (index, ids) answered so far
        self.waits: list[float] = []  # the wait of every query
        self.failed = 0  # queries that found it down
        self._changed = anyio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def set(self, *ids: str) -> None:
        self.found = _endpoints(*ids)
        self.index += 1
        self._wake()

    def stop(self) -> None:
        self.up = False
        self._wake()

    def start(self, *ids: str) -> None:
        self.up = True
        self.reset(*ids)

    def reset(self, *ids: str) -> None:
        self.index, self.found = 1, _endpoints(*ids)

    def answered(self, *ids: str) -> int:
        """How many answers listed exactly ``ids``."""
        return sum(answer == ids for _, answer in self.answers)

    async def healthy_endpoints(
        self, service: str, *, index: int = 0, wait: float = 30.0
    ) -> tuple[int, Sequence[Endpoint]]:
        self.waits.append(wait)
        with anyio.move_on_after(wait):
            while self.up and index and self.index <= index:
                await self._changed.wait()
        if not self.up:
            self.failed += 1
            raise RegistryUnavailable("the fake registry is down")
        self.answers.append((self.index, tuple(e.instance_id for e in self.found)))
        return self.index, self.found

    async def register(self, instance: InstanceRegistration) -> None:
        raise NotImplementedError

    async def heartbeat(self, instance_id: str) -> bool:
        raise NotImplementedError

    async def deregister(self, instance_id: str) -> None:
        raise NotImplementedError

    async def services(self) -> Sequence[ServiceSummary]:
        raise NotImplementedError

    async def instances(self, service: str) -> Sequence[InstanceHealth]:
        raise NotImplementedError


def _cache(fake: FakeRegistry, *, grace: float = 60.0, wait: float = 30.0) -> WatchedCache:
    return WatchedCache(fake, wait=wait, retry_first=0.01, retry_max=0.05, restart_grace=grace)


async def _outage(fake: FakeRegistry, cache: WatchedCache, *ids: str) -> None:
    """Take the registry away until the watch noticed, then bring it back with ``ids``
    and wait until the watch has read that."""
    failed, answered = fake.failed, fake.answered(*ids)
    fake.stop()
    await eventually(lambda: fake.failed > failed)
    fake.start(*ids)
    await eventually(lambda: fake.answered(*ids) > answered)


def test_the_grace_outlasts_two_re_registrations() -> None:
    assert DEFAULT_RESTART_GRACE >= 2 * REREGISTER_WITHIN


async def test_an_empty_answer_after_an_outage_keeps_the_list_as_stale() -> None:
    fake = FakeRegistry("a", "b")
    async with _cache(fake) as cache:
        await cache.prime("payments")
        generation = cache.generation
        await _outage(fake, cache)
        assert _ids(cache) == ["a", "b"]
        assert cache.generation == generation  # nothing changed for the balancers
        await anyio.sleep(0.1)
        assert cache.stale_seconds("payments") > 0.1  # what the staleness gauge exports


async def test_a_non_empty_answer_replaces_the_kept_list_at_once() -> None:
    fake = FakeRegistry("a", "b")
    async with _cache(fake) as cache:
        await cache.prime("payments")
        await _outage(fake, cache)
        fake.set("b")  # the first instance re-registers
        await eventually(lambda: _ids(cache) == ["b"])
        assert cache.stale_seconds("payments") == 0.0


async def test_a_shrunk_list_after_an_outage_applies_at_once() -> None:
    fake = FakeRegistry("a", "b")
    async with _cache(fake) as cache:
        await cache.prime("payments")
        await _outage(fake, cache, "a")
        assert _ids(cache) == ["a"]
        assert cache.stale_seconds("payments") == 0.0


async def test_an_empty_list_in_a_healthy_session_applies_at_once() -> None:
    fake = FakeRegistry("a", "b")
    async with _cache(fake) as cache:
        await cache.prime("payments")
        fake.set()  # every instance deregistered: a normal scale to zero
        await eventually(lambda: cache.endpoints("payments") == ())
        assert cache.stale_seconds("payments") == 0.0


async def test_an_empty_list_confirmed_past_the_grace_is_dropped() -> None:
    fake = FakeRegistry("a", "b")
    async with _cache(fake, grace=0.5) as cache:  # a blocking wait of 30 s: bounded by grace
        await cache.prime("payments")
        await _outage(fake, cache)
        assert _ids(cache) == ["a", "b"]
        await eventually(lambda: cache.endpoints("payments") == (), within=2)
        assert cache.stale_seconds("payments") == 0.0
        assert fake.waits[-1] == 30.0  # back to ordinary blocking queries


async def test_an_outage_during_the_grace_starts_it_again() -> None:
    fake = FakeRegistry("a", "b")
    async with _cache(fake, grace=1.0) as cache:
        await cache.prime("payments")
        await _outage(fake, cache)
        await anyio.sleep(0.6)
        await _outage(fake, cache)  # "empty" for 0.6 s, but not over one healthy session
        await anyio.sleep(0.6)
        assert _ids(cache) == ["a", "b"]


async def test_an_index_that_went_backwards_counts_as_a_restart() -> None:
    fake = FakeRegistry("a", "b")
    async with _cache(fake, wait=0.1) as cache:
        await cache.prime("payments")
        fake.reset()  # restarted between two queries: no error, the index went back to 1
        await eventually(lambda: fake.answered() > 0)
        assert _ids(cache) == ["a", "b"]
        assert cache.stale_seconds("payments") > 0
        fake.set("c")
        await eventually(lambda: _ids(cache) == ["c"])
        assert cache.stale_seconds("payments") == 0.0
