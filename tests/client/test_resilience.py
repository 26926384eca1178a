"""Balancing, ejection, retry safety, budget and identity over real mTLS servers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from meshkit.ca.x509 import LocalAuthority
from meshkit.client import (
    EndpointEjected,
    EndpointReadmitted,
    PeerIdentityMismatch,
    RetryBudgetExhausted,
    RetryBudgetSpent,
    UpstreamFailed,
)
from meshkit.identity import SpiffeId
from meshkit.registry.base import Endpoint
from meshkit.tls import TLSContexts
from tests.client.helpers import Recorder, StaticSource, contexts, endpoint, factory, serve

pytestmark = pytest.mark.anyio
NO_BREAKER = {"breaker_min_calls": 10**6}


def counting_app(
    hits: Counter[str], name: str, delays: dict[str, float] | None = None, *, status: int = 200
) -> Starlette:
    """Answers after ``delays[name]`` seconds, read per request: a test may change it."""

    async def handle(request: Request) -> Response:
        hits[name] += 1
        await request.body()
        if delays and delays.get(name):
            await anyio.sleep(delays[name])
        return PlainTextResponse(name, status_code=status)

    return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])


@asynccontextmanager
async def instances(
    authority: LocalAuthority,
    hits: Counter[str],
    specs: dict[str, dict[str, float]],
    delays: dict[str, float] | None = None,
) -> AsyncIterator[StaticSource]:
    """One server per spec, all registered as 'payments'; ``delays`` (filled from the
    specs) stays live, so a test can turn an instance slow or fast."""
    tls = contexts(authority, "payments")
    delays = {} if delays is None else delays
    async with AsyncExitStack() as stack:
        endpoints = []
        for name, spec in specs.items():
            delays[name] = spec.get("delay", 0.0)
            app = counting_app(hits, name, delays, status=int(spec.get("status", 200)))
            port = await stack.enter_async_context(serve(app, tls))
            endpoints.append(endpoint("payments", port, name))
        yield StaticSource({"payments": endpoints})


async def test_p2c_moves_load_away_from_a_slow_instance(authority: LocalAuthority) -> None:
    hits: Counter[str] = Counter()
    specs = {"fast-1": {}, "fast-2": {}, "slow": {"delay": 0.05}}
    async with instances(authority, hits, specs) as source:
        mesh = factory(authority, source)
        client = mesh.client("payments")

        async def worker() -> None:
            for _ in range(40):
                assert (await client.get("/work")).status_code == 200

        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(worker)
        await mesh.aclose()
    total = sum(hits.values())
    assert hits["slow"] < total / 3 / 2, hits  # well under half its fair share


async def test_an_instance_that_recovers_gets_its_share_back(
    authority: LocalAuthority,
) -> None:
    """Slow, it is shunned; fast again, it is measured again only because its cost
    decays: it wins a draw after about decay x ln(500 ms / a fast call's cost), ~2.5 s
    with the 0.5 s decay used here (~50 s with the default 10 s). Without the decay it
    would lose every draw for good."""
    hits: Counter[str] = Counter()
    delays: dict[str, float] = {}
    specs = {"fast-1": {}, "fast-2": {}, "recovering": {"delay": 0.5}}
    shares: list[float] = []  # its share of the calls, per quarter second once fast
    async with instances(authority, hits, specs, delays) as source:
        mesh = factory(authority, source, balancer_decay=0.5)
        client = mesh.client("payments")
        done = anyio.Event()

        async def worker() -> None:
            while not done.is_set():
                assert (await client.get("/x")).status_code == 200

        async def watch() -> None:
            while not hits["recovering"]:  # noqa: ASYNC110 (a counter, not an event)
                await anyio.sleep(0.01)
            await anyio.sleep(0.6)  # its first (slow) answers have taught the balancer
            shunned = hits.copy()
            await anyio.sleep(0.3)
            shunned = hits - shunned
            assert shunned["recovering"] <= 0.05 * shunned.total(), shunned
            delays["recovering"] = 0.0
            before = hits.copy()
            while len(shares) < 32 and (len(shares) < 4 or max(shares[-4:]) < 0.2):
                await anyio.sleep(0.25)
                window, before = hits - before, hits.copy()
                shares.append(window["recovering"] / max(window.total(), 1))
            done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            for _ in range(4):
                group.start_soon(worker)
        await mesh.aclose()
    assert max(shares[-4:]) >= 0.2, shares  # back near its fair third within 8 s


async def test_failing_instance_is_ejected_then_readmitted(authority: LocalAuthority) -> None:
    hits: Counter[str] = Counter()
    hooks = Recorder()
    specs = {"good-1": {}, "good-2": {}, "bad": {"status": 503}}
    async with instances(authority, hits, specs) as source:
        mesh = factory(
            authority, source, hooks=hooks, ejection_base=0.3, backoff_base=0, **NO_BREAKER
        )
        client = mesh.client("payments")
        while not hooks.of(EndpointEjected):
            assert (await client.get("/x")).status_code == 200  # retried onto a good one
        assert hooks.of(EndpointEjected)[0].endpoint.instance_id == "bad"
        during = hits["bad"]
        for _ in range(30):
            assert (await client.get("/x")).status_code == 200
        assert hits["bad"] == during  # ejected: no traffic
        await anyio.sleep(0.35)
        for _ in range(60):
            await client.get("/x")
        await mesh.aclose()
    assert hits["bad"] > during  # re-admitted after its ejection time
    assert [event.endpoint.instance_id for event in hooks.of(EndpointReadmitted)] == ["bad"]


@asynccontextmanager
async def dropping_server(tls: TLSContexts, hits: Counter[str]) -> AsyncIterator[int]:
    """Reads a whole request, then closes the connection without answering."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        hits["dropped"] += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls.listening_context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_post_is_retried_after_sending_only_with_idempotency_key(
    authority: LocalAuthority,
) -> None:
    hits: Counter[str] = Counter()
    async with dropping_server(contexts(authority, "payments"), hits) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(authority, source, backoff_base=0, **NO_BREAKER)
        client = mesh.client("payments")
        with pytest.raises(UpstreamFailed):
            await client.post("/charge", json={"amount": 1})
        assert hits["dropped"] == 1
        with pytest.raises(UpstreamFailed):
            await client.post("/charge", json={"amount": 1}, headers={"Idempotency-Key": "k1"})
        assert hits["dropped"] == 1 + 3  # the same body replayed on every attempt
        await mesh.aclose()


async def test_post_is_retried_when_nothing_was_sent(authority: LocalAuthority) -> None:
    hits: Counter[str] = Counter()
    async with instances(authority, hits, {"good": {}}) as source:
        refused = endpoint("payments", _closed_port(), "refused")
        source.set("payments", [refused, *(source.endpoints("payments") or [])])
        mesh = factory(authority, source, backoff_base=0, **NO_BREAKER)
        client = mesh.client("payments")
        for _ in range(10):
            assert (await client.post("/charge", content=b"x")).status_code == 200
        await mesh.aclose()
    assert hits["good"] == 10


async def test_503_retried_for_get_but_not_for_post(authority: LocalAuthority) -> None:
    hits: Counter[str] = Counter()
    async with instances(authority, hits, {"busy": {"status": 503}}) as source:
        mesh = factory(authority, source, backoff_base=0, **NO_BREAKER)
        client = mesh.client("payments")
        assert (await client.post("/charge")).status_code == 503
        assert hits["busy"] == 1
        assert (await client.get("/charge")).status_code == 503
        assert hits["busy"] == 1 + 3
        await mesh.aclose()


async def test_budget_stops_retries_when_everything_fails(authority: LocalAuthority) -> None:
    hits: Counter[str] = Counter()
    hooks = Recorder()
    async with instances(authority, hits, {"a": {"status": 503}, "b": {"status": 503}}) as source:
        mesh = factory(
            authority,
            source,
            hooks=hooks,
            backoff_base=0,
            budget_min_per_second=0,
            ejection_failures=10**6,
            **NO_BREAKER,
        )
        client = mesh.client("payments")
        for _ in range(50):
            assert (await client.get("/x")).status_code == 503
        await mesh.aclose()
    # 50 calls may add at most 20% retries (no reserve here), not 2 more attempts each.
    assert sum(hits.values()) <= 50 + 10
    assert hooks.of(RetryBudgetSpent)


async def test_budget_exhausted_raises_for_connection_failures(authority: LocalAuthority) -> None:
    source = StaticSource({"payments": [endpoint("payments", _closed_port())]})
    mesh = factory(
        authority,
        source,
        backoff_base=0,
        budget_min_per_second=0,
        ejection_failures=10**6,
        **NO_BREAKER,
    )
    client = mesh.client("payments")
    errors: Counter[str] = Counter()
    for _ in range(30):
        try:
            await client.get("/x")
        except (UpstreamFailed, RetryBudgetExhausted) as exc:
            errors[type(exc).__name__] += 1
    await mesh.aclose()
    assert errors["RetryBudgetExhausted"] > 0


async def test_server_with_another_identity_is_refused_before_sending(
    authority: LocalAuthority,
) -> None:
    hits: Counter[str] = Counter()
    impostor = counting_app(hits, "impostor")
    async with serve(impostor, contexts(authority, "inventory")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(authority, source, **NO_BREAKER)
        with pytest.raises(PeerIdentityMismatch, match="svc/inventory"):
            await mesh.client("payments").get("/secret")
        await mesh.aclose()
    assert hits["impostor"] == 0


async def test_server_in_consuls_form_of_the_expected_identity_is_accepted(
    authority: LocalAuthority,
) -> None:
    """Consul's leaf for payments (with its datacenter) is payments; another service in
    Consul's form, or payments of another admin partition, is not."""
    hits: Counter[str] = Counter()
    td = authority.trust_domain
    for spiffe_id, accepted in (
        (SpiffeId.for_consul_service(td, "default", "dc1", "payments"), True),
        (SpiffeId.for_consul_service(td, "default", "dc1", "inventory"), False),
        (SpiffeId.for_consul_service(td, "default", "dc1", "payments", partition="ap2"), False),
    ):
        tls = contexts(authority, "payments", spiffe_id=spiffe_id)
        async with serve(counting_app(hits, str(spiffe_id)), tls) as port:
            source = StaticSource({"payments": [endpoint("payments", port)]})
            mesh = factory(authority, source, **NO_BREAKER)
            if accepted:
                assert (await mesh.client("payments").get("/x")).status_code == 200
            else:
                with pytest.raises(PeerIdentityMismatch):
                    await mesh.client("payments").get("/x")
            await mesh.aclose()
    assert sum(hits.values()) == 1


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_registry_cannot_vouch_for_another_service(authority: LocalAuthority) -> None:
    """An entry claiming the impostor's own SPIFFE ID for 'payments' is refused too."""
    hits: Counter[str] = Counter()
    tls = contexts(authority, "inventory")
    async with serve(counting_app(hits, "impostor"), tls) as port:
        forged = Endpoint("x", "payments", "127.0.0.1", port, spiffe_id=str(tls.material.spiffe_id))
        mesh = factory(authority, StaticSource({"payments": [forged]}), **NO_BREAKER)
        with pytest.raises(PeerIdentityMismatch):
            await mesh.client("payments").get("/secret")
        await mesh.aclose()
    assert hits["impostor"] == 0
