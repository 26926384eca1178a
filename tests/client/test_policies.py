"""Breaker, limits, hooks, Retry-After, discovery errors and pass-through, over real servers."""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshkit.ca.x509 import LocalAuthority
from meshkit.client import (
    AttemptEnded,
    AttemptStarted,
    BaseClientHooks,
    BreakerChanged,
    CallEnded,
    CallStarted,
    CircuitOpen,
    MeshClientFactory,
    NoHealthyInstances,
    Overloaded,
    UpstreamFailed,
)
from meshkit.settings import MeshSettings
from meshkit.tls import TLSContexts, TLSMaterial
from tests.client.helpers import Recorder, StaticSource, contexts, endpoint, factory, serve

pytestmark = pytest.mark.anyio


class Switch:
    """A server whose answer the test changes."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.retry_after: str | None = None
        self.hits = 0
        self.headers: list[dict[str, str]] = []

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            self.hits += 1
            self.headers.append(dict(request.headers))
            if self.delay:
                await anyio.sleep(self.delay)
            headers = {"retry-after": self.retry_after} if self.retry_after else {}
            query = dict(request.query_params)
            return JSONResponse({"query": query}, status_code=self.status, headers=headers)

        return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])


async def test_breaker_opens_fails_fast_then_probes_closed(authority: LocalAuthority) -> None:
    switch = Switch()
    hooks = Recorder()
    async with serve(switch.app(), contexts(authority, "payments")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(
            authority,
            source,
            hooks=hooks,
            breaker_min_calls=5,
            breaker_open_for=0.2,
            max_attempts=1,
            ejection_failures=10**6,
        )
        client = mesh.client("payments")
        switch.status = 500
        for _ in range(5):
            assert (await client.get("/x")).status_code == 500
        hits = switch.hits
        with pytest.raises(CircuitOpen, match="payments"):
            await client.get("/x")
        assert switch.hits == hits  # failed fast, nothing sent
        switch.status = 200
        await anyio.sleep(0.25)
        assert (await client.get("/x")).status_code == 200  # the half-open probe
        assert (await client.get("/x")).status_code == 200
        await mesh.aclose()
    states = [(e.old, e.new) for e in hooks.of(BreakerChanged)]
    assert states == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


async def test_overflow_fails_fast_with_overloaded(authority: LocalAuthority) -> None:
    switch = Switch()
    switch.delay = 0.3
    async with serve(switch.app(), contexts(authority, "payments")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(authority, source, max_concurrent=1, max_pending=1)
        client = mesh.client("payments")
        outcomes: Counter[str] = Counter()

        async def call() -> None:
            try:
                outcomes[str((await client.get("/slow")).status_code)] += 1
            except Overloaded:
                outcomes["overloaded"] += 1

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(call)
        await mesh.aclose()
    assert outcomes == {"200": 2, "overloaded": 1}


async def test_a_waiting_call_refused_by_the_breaker_passes_its_slot_on(
    authority: LocalAuthority,
) -> None:
    # The limit and the breaker admit a call together: one that waited for the slot
    # and then found the breaker open must not keep the slot, or the destination is
    # stuck at its limit once the breaker closes again.
    switch = Switch()
    switch.status, switch.delay = 500, 0.3
    async with serve(switch.app(), contexts(authority, "payments")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(
            authority,
            source,
            max_concurrent=1,
            max_pending=4,
            breaker_min_calls=1,
            breaker_open_for=0.3,
            max_attempts=1,
            ejection_failures=10**6,
        )
        client = mesh.client("payments")
        outcomes: Counter[str] = Counter()

        async def call() -> None:
            try:
                outcomes[str((await client.get("/x")).status_code)] += 1
            except CircuitOpen:
                outcomes["open"] += 1

        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(call)
        assert outcomes == {"500": 1, "open": 3}, outcomes
        assert switch.hits == 1
        switch.status, switch.delay = 200, 0.0
        await anyio.sleep(0.35)
        with anyio.fail_after(5):  # the slot is free: neither Overloaded nor a wait
            assert (await client.get("/x")).status_code == 200  # the half-open probe
            statuses = [(await client.get("/x")).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        await mesh.aclose()


class AttemptStartedBy(Recorder):
    """A Recorder whose ``on_attempt_start`` is ``start``; it keeps the other events."""

    def __init__(self, start: Callable[[AttemptStarted], object]) -> None:
        super().__init__()
        self.start = start

    def __getattribute__(self, name: str) -> Any:
        if name == "on_attempt_start":
            return object.__getattribute__(self, "start")
        return super().__getattribute__(name)


async def test_a_hook_raising_at_an_attempts_start_fails_only_that_call(
    authority: LocalAuthority,
) -> None:
    """The call ends with the hook's error, sending nothing, reported to the call's end
    hook; the next calls go through."""
    switch = Switch()
    failing = [True]

    def start(event: AttemptStarted) -> object:
        if failing[0]:
            raise LookupError("hook broke")
        return None

    hooks = AttemptStartedBy(start)
    async with serve(switch.app(), contexts(authority, "payments")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(authority, source, hooks=hooks)
        client = mesh.client("payments")
        with pytest.raises(LookupError, match="hook broke"):
            await client.get("/items")
        failing[0] = False
        for _ in range(3):
            assert (await client.get("/items")).status_code == 200
        await mesh.aclose()
    (first, *_) = hooks.of(CallEnded)
    assert isinstance(first.error, LookupError) and first.status is None
    assert switch.hits == 3  # the failed call sent nothing


async def test_hooks_see_calls_and_attempts_and_add_headers(authority: LocalAuthority) -> None:
    switch = Switch()

    def start(event: AttemptStarted) -> object:
        event.headers.append(("traceparent", f"00-{event.attempt:032x}-{1:016x}-01"))
        hooks.events.append(event)
        return "span"

    hooks = AttemptStartedBy(start)
    async with serve(switch.app(), contexts(authority, "payments")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(authority, source, hooks=hooks)
        response = await mesh.client("payments").get("/items")
        await mesh.aclose()
    assert response.status_code == 200
    assert switch.headers[0]["traceparent"].startswith("00-")
    assert [type(e) for e in hooks.events] == [CallStarted, AttemptStarted, AttemptEnded, CallEnded]
    ended = hooks.of(CallEnded)[0]
    assert (ended.destination, ended.status, ended.attempts) == ("payments", 200, 1)
    attempt = hooks.of(AttemptEnded)[0]
    assert attempt.state == "span" and attempt.endpoint is not None


async def test_retry_after_is_honoured_or_too_long_to_wait(authority: LocalAuthority) -> None:
    switch = Switch()
    switch.status = 503
    async with serve(switch.app(), contexts(authority, "payments")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(authority, source, max_retry_after=1.0, breaker_min_calls=10**6)
        client = mesh.client("payments")
        switch.retry_after = "0"
        assert (await client.get("/x")).status_code == 503
        assert switch.hits == 3
        switch.retry_after = "60"  # longer than we would wait: answer at once
        assert (await client.get("/x")).status_code == 503
        assert switch.hits == 4
        await mesh.aclose()


async def test_no_instances_is_a_clear_error(authority: LocalAuthority) -> None:
    mesh = factory(authority, StaticSource({"payments": []}))
    with pytest.raises(NoHealthyInstances, match="payments"):
        await mesh.client("payments").get("/x")
    with pytest.raises(NoHealthyInstances, match="unknown"):
        await mesh.client("unknown").get("/x")
    await mesh.aclose()


async def test_httpx_full_path_still_works(authority: LocalAuthority) -> None:
    switch = Switch()
    seen: list[str] = []

    async def on_request(request: Any) -> None:
        seen.append(str(request.url))

    async with serve(switch.app(), contexts(authority, "payments")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(authority, source)
        client = mesh.client("payments")
        response = await client.get("/q", params={"a": "b"})
        assert response.json()["query"] == {"a": "b"}
        client.event_hooks["request"].append(on_request)
        assert (await client.get("/hooked")).status_code == 200
        async with client.stream("GET", "/streamed") as streamed:
            assert b"query" in await streamed.aread()
        await mesh.aclose()
    assert seen == ["http://payments/hooked", "http://payments/streamed"]


async def test_absolute_urls_outside_the_mesh_pass_through(authority: LocalAuthority) -> None:
    switch = Switch()
    config = uvicorn.Config(
        switch.app(), host="127.0.0.1", port=0, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with serve(Switch().app(), contexts(authority, "payments")) as tls_port:
            mesh = factory(authority, StaticSource({"payments": []}))
            client = mesh.client("payments")
            response = await client.get(f"http://127.0.0.1:{port}/plain")
            assert response.status_code == 200
            assert "x-meshkit-deadline-ms" not in switch.headers[0]
            # Normal verification: our private mesh CA is not a public root.
            with pytest.raises(UpstreamFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(f"https://localhost:{tls_port}/")
            await mesh.aclose()
        server.should_exit = True


async def test_base_hooks_are_a_no_op() -> None:
    hooks = BaseClientHooks()
    assert hooks.on_call_start(CallStarted("a", "GET", "/")) is None


async def test_rotated_client_certificate_is_used_by_new_connections(
    authority: LocalAuthority,
) -> None:
    handed: list[object] = []

    class WatchedTLS(TLSContexts):
        @property
        def client(self) -> ssl.SSLContext:
            context = super().client
            handed.append(context)
            return context

    issued = authority.issue("caller")
    tls = WatchedTLS(TLSMaterial(issued.chain_pem, issued.key_pem, issued.bundle_pem))
    switch = Switch()
    switch.delay = 0.1
    async with serve(switch.app(), contexts(authority, "payments")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        settings = MeshSettings(service="caller", trust_domain=authority.trust_domain)
        mesh = MeshClientFactory(source, tls, settings)
        client = mesh.client("payments")
        assert (await client.get("/one")).status_code == 200
        renewed = authority.issue("caller")
        tls.update(TLSMaterial(renewed.chain_pem, renewed.key_pem, renewed.bundle_pem))
        async with anyio.create_task_group() as group:  # two at once: one new connection
            group.start_soon(client.get, "/two")
            group.start_soon(client.get, "/three")
        await mesh.aclose()
    assert len(handed) == 2 and handed[1] is not handed[0]
