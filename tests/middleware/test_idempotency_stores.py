"""The semantics every idempotency store promises, checked on each one shipped.

The Consul KV store talks to a real ``meshkit registry serve`` process through
py-consul. Clocks are the tests' own, so leases and ttls lapse without waiting.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import consul
import pytest

from meshkit.policy.idempotency import (
    Claimed,
    ConsulKVStore,
    IdempotencyKey,
    IdempotencyStore,
    IdempotencyStoreError,
    MemoryStore,
    Mismatch,
    Replay,
    Running,
    SQLiteStore,
    StoredResponse,
)
from meshkit.registry import ConsulRegistry
from meshkit.testing import RegistryProcess

pytestmark = pytest.mark.anyio

KEY = IdempotencyKey("payments", "spiffe://meshkit.local/ns/default/svc/web", "order-1")
OTHER_CALLER = IdempotencyKey("payments", "spiffe://meshkit.local/ns/default/svc/cart", "order-1")
RESPONSE = StoredResponse(201, ((b"content-type", b"application/json"),), b'{"id":1}')
LEASE = 10.0
TTL = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def registry_process() -> Iterator[RegistryProcess]:
    with RegistryProcess() as registry:
        yield registry


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", "consul"])
def store(request: pytest.FixtureRequest, clock: Clock, tmp_path: Path) -> IdempotencyStore:
    return make_store(request.param, clock, tmp_path, request)


def make_store(
    kind: str, clock: Clock, tmp_path: Path, request: pytest.FixtureRequest
) -> IdempotencyStore:
    if kind == "memory":
        return MemoryStore(clock=clock)
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "keys.db", lease=LEASE, clock=clock)
    registry: RegistryProcess = request.getfixturevalue("registry_process")
    prefix = f"test/{request.node.name.replace('[', '-').rstrip(']')}-{time.monotonic_ns()}"
    return ConsulKVStore(ConsulRegistry(address=registry.address), prefix=prefix, clock=clock)


@pytest.fixture(params=["sqlite", "consul"])
def leased_store(request: pytest.FixtureRequest, clock: Clock, tmp_path: Path) -> IdempotencyStore:
    """The stores whose claims lapse unless renewed (memory's never do)."""
    return make_store(request.param, clock, tmp_path, request)


def lapse(clock: Clock) -> None:
    """Move the clock past the end of a lease not renewed (and any skew allowance)."""
    clock.now += LEASE + 2.5


async def test_the_first_claim_wins_and_others_see_it_running(store: IdempotencyStore) -> None:
    first = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(first, Claimed)
    assert isinstance(await store.claim(KEY, "fp", ttl=TTL), Running)
    assert isinstance(await store.claim(KEY, "another request", ttl=TTL), Mismatch)
    # The caller is part of the key: another caller's "order-1" is another key.
    assert isinstance(await store.claim(OTHER_CALLER, "fp", ttl=TTL), Claimed)


async def test_concurrent_claims_have_one_winner(store: IdempotencyStore) -> None:
    outcomes: list[object] = []

    async def claim() -> None:
        outcomes.append(await store.claim(KEY, "fp", ttl=TTL))

    async with anyio.create_task_group() as tasks:
        for _ in range(8):
            tasks.start_soon(claim)
    assert sum(isinstance(o, Claimed) for o in outcomes) == 1
    assert sum(isinstance(o, Running) for o in outcomes) == 7


async def test_a_completed_key_replays_its_response(store: IdempotencyStore) -> None:
    claimed = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(claimed, Claimed)
    assert await store.complete(claimed, RESPONSE, ttl=TTL)
    assert await store.claim(KEY, "fp", ttl=TTL) == Replay(RESPONSE)
    assert isinstance(await store.claim(KEY, "another request", ttl=TTL), Mismatch)
    assert not await store.complete(claimed, RESPONSE, ttl=TTL)  # no longer running


async def test_a_released_key_runs_again(store: IdempotencyStore) -> None:
    claimed = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(claimed, Claimed)
    await store.release(claimed)
    again = await store.claim(KEY, "another request", ttl=TTL)
    assert isinstance(again, Claimed)
    await store.release(claimed)  # a stale owner releases nothing
    assert isinstance(await store.claim(KEY, "another request", ttl=TTL), Running)


async def test_a_finished_key_expires_after_its_ttl(store: IdempotencyStore, clock: Clock) -> None:
    claimed = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(claimed, Claimed)
    await store.complete(claimed, RESPONSE, ttl=TTL)
    clock.now += TTL - 5
    assert isinstance(await store.claim(KEY, "fp", ttl=TTL), Replay)
    clock.now += 10  # past the ttl, and any allowance for clock skew
    assert isinstance(await store.claim(KEY, "other", ttl=TTL), Claimed)


async def test_the_claim_of_a_crashed_instance_lapses(
    leased_store: IdempotencyStore, clock: Clock
) -> None:
    store = leased_store
    crashed = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(crashed, Claimed)
    clock.now += LEASE - 1
    assert isinstance(await store.claim(KEY, "fp", ttl=TTL), Running)
    lapse(clock)
    retry = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(retry, Claimed)
    # Back from the dead, the first owner can neither renew, finish nor release.
    assert not await store.renew(crashed)
    assert not await store.complete(crashed, RESPONSE, ttl=TTL)
    await store.release(crashed)
    assert await store.complete(retry, RESPONSE, ttl=TTL)
    assert await store.claim(KEY, "fp", ttl=TTL) == Replay(RESPONSE)


async def test_renewal_keeps_a_long_claim(leased_store: IdempotencyStore, clock: Clock) -> None:
    store = leased_store
    claimed = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(claimed, Claimed)
    for _ in range(3):
        clock.now += LEASE * 2 / 3
        assert await store.renew(claimed)
    clock.now += LEASE * 2 / 3
    assert isinstance(await store.claim(KEY, "fp", ttl=TTL), Running)


async def test_wait_returns_once_the_key_is_finished(store: IdempotencyStore) -> None:
    claimed = await store.claim(KEY, "fp", ttl=TTL)
    running = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(claimed, Claimed) and isinstance(running, Running)

    async def finish() -> None:
        await anyio.sleep(0.2)
        await store.complete(claimed, RESPONSE, ttl=TTL)

    started = time.monotonic()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(finish)
        with anyio.fail_after(5):
            while not isinstance(await store.claim(KEY, "fp", ttl=TTL), Replay):
                await store.wait(running, within=30)
    assert time.monotonic() - started < 3


async def test_sweeping_forgets_expired_keys(store: IdempotencyStore, clock: Clock) -> None:
    claimed = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(claimed, Claimed)
    await store.complete(claimed, RESPONSE, ttl=TTL)
    await store.sweep()
    assert isinstance(await store.claim(KEY, "fp", ttl=TTL), Replay)  # not yet expired
    clock.now += TTL + 120
    await store.sweep()
    assert isinstance(await store.claim(KEY, "another request", ttl=TTL), Claimed)


async def test_wait_gives_up_after_its_time(store: IdempotencyStore) -> None:
    await store.claim(KEY, "fp", ttl=TTL)
    running = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(running, Running)
    started = time.monotonic()
    await store.wait(running, within=0.3)
    assert time.monotonic() - started < 2.5


# -- SQLite: one file, many processes ------------------------------------------------------


async def test_sqlite_instances_sharing_a_file_claim_once(tmp_path: Path) -> None:
    """Separate connections (as separate processes have), claiming from threads at once."""
    stores = [SQLiteStore(tmp_path / "shared.db") for _ in range(4)]
    outcomes: list[object] = []

    async def claim(store: SQLiteStore) -> None:
        outcomes.append(await store.claim(KEY, "fp", ttl=TTL))

    async with anyio.create_task_group() as tasks:
        for store in stores * 3:
            tasks.start_soon(claim, store)
    assert sum(isinstance(o, Claimed) for o in outcomes) == 1
    assert len(outcomes) == 12


async def test_sqlite_store_is_bounded(tmp_path: Path, clock: Clock) -> None:
    store = SQLiteStore(tmp_path / "keys.db", max_entries=3, sweep_interval=0, clock=clock)
    for number in range(6):
        claimed = await store.claim(IdempotencyKey("s", "c", f"k{number}"), "fp", ttl=TTL)
        assert isinstance(claimed, Claimed)
        await store.complete(claimed, RESPONSE, ttl=TTL)
        clock.now += 1
    await store.claim(IdempotencyKey("s", "c", "running"), "fp", ttl=TTL)
    await store.sweep()
    assert _rows(store) == 3  # max_entries: the running one and the newest finished
    clock.now += TTL + 1
    await store.claim(IdempotencyKey("s", "c", "running too"), "fp", ttl=TTL)
    await store.sweep()
    assert _rows(store) == 1
    await store.aclose()


def _rows(store: SQLiteStore) -> int:
    with sqlite3.connect(store.path) as db:
        count: int = db.execute("SELECT count(*) FROM meshkit_idempotency").fetchone()[0]
    return count


async def test_sqlite_store_errors_are_translated(tmp_path: Path) -> None:
    (tmp_path / "not-a-db").write_bytes(b"garbage" * 1000)
    store = SQLiteStore(tmp_path / "not-a-db")
    with pytest.raises(IdempotencyStoreError, match="not-a-db"):
        await store.claim(KEY, "fp", ttl=TTL)


# -- Consul KV --------------------------------------------------------------------------


def _consul(registry: RegistryProcess) -> consul.Consul:
    host, _, port = registry.address.rpartition(":")
    return consul.Consul(host=host, port=int(port))


async def test_consul_records_live_under_the_prefix(
    registry_process: RegistryProcess, clock: Clock
) -> None:
    store = ConsulKVStore(
        ConsulRegistry(address=registry_process.address), prefix="test/layout", clock=clock
    )
    claimed = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(claimed, Claimed)
    await store.complete(claimed, RESPONSE, ttl=TTL)
    _, keys = _consul(registry_process).kv.get("test/layout/", keys=True)
    assert f"test/layout/payments/keys/{KEY.digest}" in keys
    assert any(key.startswith("test/layout/payments/expiry/") for key in keys)


async def test_consul_store_sweeps_expired_records(
    registry_process: RegistryProcess, clock: Clock
) -> None:
    store = ConsulKVStore(
        ConsulRegistry(address=registry_process.address),
        prefix="test/sweep",
        sweep_interval=10,
        clock=clock,
    )
    for number in range(3):
        claimed = await store.claim(IdempotencyKey("s", "c", f"k{number}"), "fp", ttl=TTL)
        assert isinstance(claimed, Claimed)
        await store.complete(claimed, RESPONSE, ttl=TTL)
    abandoned = await store.claim(IdempotencyKey("s", "c", "crashed"), "fp", ttl=TTL)
    assert isinstance(abandoned, Claimed)
    clock.now += TTL + 30  # every record and its period are past
    for number in range(3):  # each sweep (after each response) visits a few markers
        claimed = await store.claim(IdempotencyKey("s", "c", f"new{number}"), "fp", ttl=TTL)
        assert isinstance(claimed, Claimed)
        await store.complete(claimed, RESPONSE, ttl=TTL)
        await store.sweep()
    _, keys = _consul(registry_process).kv.get("test/sweep/s/keys/", keys=True)
    new = {IdempotencyKey("s", "c", f"new{n}").digest for n in range(3)}
    assert {key.rpartition("/")[2] for key in keys} == new


async def test_consul_store_keeps_a_large_response_without_its_body(
    registry_process: RegistryProcess,
) -> None:
    store = ConsulKVStore(
        ConsulRegistry(address=registry_process.address),
        prefix="test/large",
        max_value_bytes=1024,
    )
    claimed = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(claimed, Claimed)
    large = StoredResponse(200, (), b"x" * 2048)
    assert await store.complete(claimed, large, ttl=TTL)
    replay = await store.claim(KEY, "fp", ttl=TTL)
    assert replay == Replay(StoredResponse(200, (), b"", body_kept=False))


async def test_consul_wait_blocks_on_its_key_alone(
    registry_process: RegistryProcess, clock: Clock
) -> None:
    """Other keys written meanwhile (other requests, markers) do not end the wait: it
    blocks on the record's own index, not the KV store's."""
    store = ConsulKVStore(
        ConsulRegistry(address=registry_process.address), prefix="test/wait", clock=clock
    )
    await store.claim(KEY, "fp", ttl=TTL)
    running = await store.claim(KEY, "fp", ttl=TTL)
    assert isinstance(running, Running)
    await store.claim(OTHER_CALLER, "fp", ttl=TTL)
    started = time.monotonic()
    await store.wait(running, within=0.5)
    assert time.monotonic() - started >= 0.45


async def test_consul_store_unreachable_is_a_store_error() -> None:
    store = ConsulKVStore(ConsulRegistry(address="127.0.0.1:9", timeout=1))
    with pytest.raises(IdempotencyStoreError, match="unreachable"):
        await store.claim(KEY, "fp", ttl=TTL)


async def test_consul_store_refuses_what_is_not_a_record(
    registry_process: RegistryProcess,
) -> None:
    store = ConsulKVStore(ConsulRegistry(address=registry_process.address), prefix="test/junk")
    _consul(registry_process).kv.put(f"test/junk/payments/keys/{KEY.digest}", b"not json")
    with pytest.raises(IdempotencyStoreError, match="does not hold an idempotency record"):
        await store.claim(KEY, "fp", ttl=TTL)
