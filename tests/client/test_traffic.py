"""Hedging, busy endpoints and mirroring over real mTLS servers."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from meshkit.ca.x509 import LocalAuthority
from meshkit.client import (
    ClientPolicy,
    EndpointBusy,
    EndpointEjected,
    HedgeStarted,
    MeshClientFactory,
    MirrorEnded,
)
from meshkit.client._hedging import LatencyWindow
from meshkit.errors import ConfigError
from meshkit.registry.base import Endpoint
from meshkit.registry.routing import RoutingTable
from meshkit.telemetry.client import ClientTelemetry
from meshkit.telemetry.metrics import MeshMetrics
from tests.client.helpers import Recorder, StaticSource, contexts, endpoint, factory, serve

pytestmark = pytest.mark.anyio
NO_BREAKER: dict[str, Any] = {"breaker_min_calls": 10**6}


@dataclass
class Behaviour:
    """What one instance does: how many of its first requests hang (until the caller
    goes away), and the status and headers it answers with."""

    hang_first: int = 0
    hang_first_overall: bool = False  # hang if it is the first request of all instances
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    status_first: int = 0  # answer ``status`` only to this many requests, then 200


@dataclass
class Seen:
    hits: Counter[str] = field(default_factory=Counter)
    abandoned: Counter[str] = field(default_factory=Counter)  # the caller went away
    bodies: list[bytes] = field(default_factory=list)


def behaving_app(name: str, behaviour: Behaviour, seen: Seen) -> Starlette:
    async def handle(request: Request) -> Response:
        seen.hits[name] += 1
        seen.bodies.append(await request.body())
        count = seen.hits[name]
        first_overall = behaviour.hang_first_overall and sum(seen.hits.values()) == 1
        if count <= behaviour.hang_first or first_overall:
            with anyio.move_on_after(10):
                while not await request.is_disconnected():  # noqa: ASYNC110 (Starlette polls)
                    await anyio.sleep(0.01)
                seen.abandoned[name] += 1
        if behaviour.status_first and count > behaviour.status_first:
            return PlainTextResponse(name)
        return PlainTextResponse(name, behaviour.status, headers=behaviour.headers)

    return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])


@asynccontextmanager
async def services(
    authority: LocalAuthority, seen: Seen, specs: dict[str, dict[str, Behaviour]]
) -> AsyncIterator[StaticSource]:
    """One mTLS server per instance, registered under its service's name."""
    async with AsyncExitStack() as stack:
        catalog: dict[str, list[Endpoint]] = {}
        for service, instances in specs.items():
            tls = contexts(authority, service)
            for name, behaviour in instances.items():
                app = behaving_app(name, behaviour, seen)
                port = await stack.enter_async_context(serve(app, tls))
                catalog.setdefault(service, []).append(endpoint(service, port, name))
        yield StaticSource(catalog)


async def gather_calls(mesh: MeshClientFactory, count: int, *, workers: int = 8) -> list[int]:
    client = mesh.client("payments")
    statuses: list[int] = []

    async def worker(share: int) -> None:
        for _ in range(share):
            statuses.append((await client.post("/x")).status_code)

    async with anyio.create_task_group() as group:
        for _ in range(workers):
            group.start_soon(worker, count // workers)
    return statuses


@asynccontextmanager
async def hedged_race(
    authority: LocalAuthority, seen: Seen, hooks: Recorder | None = None, **policy: Any
) -> AsyncIterator[tuple[MeshClientFactory, str]]:
    """Two instances; whichever gets the first attempt hangs on it (until the caller
    goes away, or 10 s), so one hedged call is answered by the other. Yields the client
    and the name of the instance that lost the race."""
    hangs = Behaviour(hang_first_overall=True)
    specs = {"payments": {"a": hangs, "b": hangs}}
    async with services(authority, seen, specs) as source:
        mesh = factory(authority, source, hooks=hooks, hedge_delay=0.05, **policy, **NO_BREAKER)
        response = await mesh.client("payments").get("/item")
        assert response.status_code == 200
        try:
            yield mesh, next(name for name in "ab" if name != response.text)
        finally:
            await mesh.aclose()


async def abandoned(seen: Seen, name: str) -> None:
    """Until ``name``'s server saw its caller go away (its connection closed)."""
    with anyio.fail_after(5):  # far less than the 10 s an abandoned request would hang
        while not seen.abandoned[name]:  # noqa: ASYNC110 (a server-side flag)
            await anyio.sleep(0.01)


@pytest.mark.parametrize("loser", ["finish", "abort"])
async def test_a_slow_first_attempt_is_hedged_and_the_fast_answer_wins(
    authority: LocalAuthority, loser: str
) -> None:
    seen, hooks = Seen(), Recorder()
    async with hedged_race(authority, seen, hooks, hedge_loser=loser) as (mesh, first):
        assert [e.delay for e in hooks.of(HedgeStarted)] == [0.05]
        assert seen.hits == {"a": 1, "b": 1}
        if loser == "finish":
            await anyio.sleep(0.2)
            assert not seen.abandoned[first]  # still running: its answer will be discarded
            await mesh.aclose()  # closing the client ends it
        await abandoned(seen, first)


async def test_a_losing_attempt_ends_by_the_calls_deadline(authority: LocalAuthority) -> None:
    """A loser left to finish on a server that does not answer is still bound by the
    call's deadline: with no per-try timeout, the call's 0.5 s deadline closes its
    connection while the client stays open."""
    seen = Seen()
    policy = {"hedge_loser": "finish", "timeout": 0.5, "per_try_timeout": None}
    async with hedged_race(authority, seen, **policy) as (_, first):
        await abandoned(seen, first)


def test_hedge_loser_is_finish_or_abort() -> None:
    with pytest.raises(ConfigError, match="hedge_loser"):
        ClientPolicy(hedge_loser="cancel")  # type: ignore[arg-type]


async def test_hedges_spend_the_retry_budget(authority: LocalAuthority) -> None:
    seen, hooks = Seen(), Recorder()
    specs = {"payments": {"a": Behaviour(hang_first=1), "b": Behaviour(hang_first=1)}}
    async with services(authority, seen, specs) as source:
        # No budget at all: the call waits for its first attempt (here: its per-try timeout).
        mesh = factory(
            authority,
            source,
            hooks=hooks,
            hedge_delay=0.01,
            budget_ratio=0,
            per_try_timeout=0.3,
            max_attempts=1,
            **NO_BREAKER,
        )
        with pytest.raises(Exception, match="no response"):
            await mesh.client("payments").get("/item")
        assert not hooks.of(HedgeStarted)
        assert sum(seen.hits.values()) == 1
        await mesh.aclose()


async def test_only_repeatable_calls_are_hedged(authority: LocalAuthority) -> None:
    seen, hooks = Seen(), Recorder()
    specs = {"payments": {"a": Behaviour(hang_first=1), "b": Behaviour(hang_first=1)}}
    async with services(authority, seen, specs) as source:
        mesh = factory(
            authority, source, hooks=hooks, hedge_delay=0.02, per_try_timeout=0.3, **NO_BREAKER
        )
        client = mesh.client("payments")
        with pytest.raises(Exception, match="no response"):
            await client.post("/charge", content=b"once")  # not idempotent: never twice
        assert not hooks.of(HedgeStarted)
        assert sum(seen.hits.values()) == 1
        first = next(iter(seen.hits))
        # The other instance hangs on its first request too; a keyed POST may be hedged
        # (to the instance that now answers at once), and the twin carries the same body.
        keyed = await client.post("/charge", content=b"keyed", headers={"Idempotency-Key": "k"})
        assert keyed.text == first
        assert len(hooks.of(HedgeStarted)) == 1
        assert seen.bodies.count(b"keyed") == 2
        await mesh.aclose()


async def test_an_endpoint_answering_429_gets_less_traffic_until_retry_after(
    authority: LocalAuthority,
) -> None:
    seen, hooks = Seen(), Recorder()
    busy = Behaviour(status=429, headers={"retry-after": "1"}, status_first=1)
    specs = {"payments": {"busy": busy, "free-1": Behaviour(), "free-2": Behaviour()}}
    async with services(authority, seen, specs) as source:
        mesh = factory(authority, source, hooks=hooks, ejection_failures=1, **NO_BREAKER)
        client = mesh.client("payments")
        while not hooks.of(EndpointBusy):
            await client.get("/x")
        before = seen.hits["busy"]
        await gather_calls(mesh, 240)
        during = seen.hits["busy"] - before
        assert during < 240 * 0.05, seen.hits  # its fair share is a third
        await anyio.sleep(1.1)  # its Retry-After has passed
        await gather_calls(mesh, 240)
        after = seen.hits["busy"] - before - during
        assert after > 240 * 0.15, seen.hits
        assert not hooks.of(EndpointEjected)
        await mesh.aclose()


async def test_503_with_retry_after_is_not_ejected(authority: LocalAuthority) -> None:
    seen, hooks = Seen(), Recorder()
    busy = Behaviour(status=503, headers={"retry-after": "30"})
    specs = {"payments": {"busy": busy, "free-1": Behaviour(), "free-2": Behaviour()}}
    async with services(authority, seen, specs) as source:
        mesh = factory(authority, source, hooks=hooks, ejection_failures=1, **NO_BREAKER)
        statuses = await gather_calls(mesh, 240)
        assert statuses.count(503) == seen.hits["busy"] < 240 * 0.05, seen.hits
        assert not hooks.of(EndpointEjected)
        assert {event.endpoint.instance_id for event in hooks.of(EndpointBusy)} == {"busy"}
        await mesh.aclose()


async def test_mirror_gets_a_copy_and_its_failures_stay_its_own(
    authority: LocalAuthority,
) -> None:
    seen = Seen()
    metrics = MeshMetrics()
    hooks = ClientTelemetry(metrics)
    specs = {
        "payments": {"primary": Behaviour()},
        "shadow": {"mirror-ok": Behaviour(status=500)},
    }
    async with services(authority, seen, specs) as source:
        mesh = factory(
            authority, source, hooks=hooks, mirror_to="shadow", mirror_fraction=1.0, **NO_BREAKER
        )
        client = mesh.client("payments")
        for index in range(20):
            response = await client.post("/charge", content=b"order-%d" % index)
            assert (response.status_code, response.text) == (200, "primary")
        with anyio.fail_after(5):
            while seen.hits["mirror-ok"] < 20:  # noqa: ASYNC110 (a server-side count)
                await anyio.sleep(0.01)
        assert sorted(seen.bodies).count(b"order-7") == 2  # the copy carries the body
        labels = {"destination_service": "payments", "mirror_service": "shadow"}
        sample = metrics.registry.get_sample_value
        with anyio.fail_after(5):
            errors = {**labels, "outcome": "error"}
            while sample("meshkit_mirrored_requests_total", errors) != 20:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        await mesh.aclose()


async def test_a_hanging_mirror_is_dropped_not_waited_for(authority: LocalAuthority) -> None:
    seen, hooks = Seen(), Recorder()
    specs = {"payments": {"primary": Behaviour()}, "shadow": {"stuck": Behaviour(hang_first=99)}}
    async with services(authority, seen, specs) as source:
        mesh = factory(
            authority,
            source,
            hooks=hooks,
            mirror_to="shadow",
            mirror_fraction=1.0,
            mirror_max_in_flight=2,
            **NO_BREAKER,
        )
        client = mesh.client("payments")
        for _ in range(10):
            assert (await client.get("/x")).text == "primary"
        ended: Sequence[MirrorEnded] = hooks.of(MirrorEnded)
        assert len(ended) == 8 and all(event.dropped for event in ended)
        assert seen.hits["primary"] == 10
        await mesh.aclose()


class FixedRouting:
    """A ``RoutingSource`` holding one table (the registry's watcher is tested apart)."""

    generation = 0

    def __init__(self, entries: dict[str, list[dict[str, Any]]]) -> None:
        self.table = RoutingTable(entries)


async def test_failover_follows_a_subset_that_gains_an_instance(
    authority: LocalAuthority,
) -> None:
    """The routing layer remembers that a subset is empty only until the endpoints
    change: once v1 has an instance, calls stop failing over to v2."""
    seen = Seen()
    specs = {"payments": {"v1": Behaviour(), "v2": Behaviour()}}
    resolver = {
        "Kind": "service-resolver",
        "Name": "payments",
        "DefaultSubset": "v1",
        "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"},
        },
        "Failover": {"v1": {"ServiceSubset": "v2"}},
    }
    routing = FixedRouting({"service-resolver": [resolver]})
    async with services(authority, seen, specs) as source:
        listed = source.endpoints("payments") or []
        v1, v2 = (replace(e, meta={"version": e.instance_id}) for e in listed)
        source.set("payments", [v2])
        mesh = factory(authority, source, routing=routing)
        client = mesh.client("payments")
        assert {(await client.get("/x")).text for _ in range(5)} == {"v2"}
        source.set("payments", [v1, v2])
        assert {(await client.get("/x")).text for _ in range(5)} == {"v1"}
        await mesh.aclose()


def test_latency_window_percentiles() -> None:
    window = LatencyWindow()
    for value in range(1, 32):
        window.add(value / 1000)
    assert window.percentile(95) is None  # too few samples to speak of a tail
    window.add(0.032)
    assert window.percentile(50) == 0.016
    assert window.percentile(95) == 0.031
    for _ in range(1000):
        window.add(0.5)  # the window forgets old samples
    assert window.percentile(5) == 0.5
