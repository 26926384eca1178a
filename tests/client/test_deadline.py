"""Deadlines: propagated across three real mTLS hops, enforced by the server middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import deadline
from meshkit.ca.x509 import LocalAuthority
from meshkit.client import MeshClientFactory
from meshkit.errors import DeadlineExceeded
from meshkit.middleware.deadline import DeadlineMiddleware
from tests.client.helpers import StaticSource, contexts, endpoint, factory, serve

pytestmark = pytest.mark.anyio


def hop(mesh: MeshClientFactory, next_service: str | None, *, stall: bool = False) -> Any:
    """A service whose handler reports the budget it got and calls the next one."""

    async def handle(request: Request) -> JSONResponse:
        seen = [int(request.headers["x-meshkit-deadline-ms"])]
        if stall:
            await anyio.sleep(30)
        if next_service is not None:
            response = await mesh.client(next_service).get("/hop")
            if response.status_code != 200:
                return JSONResponse({"upstream": response.status_code}, status_code=502)
            seen += response.json()["seen"]
        return JSONResponse({"seen": seen})

    return DeadlineMiddleware(Starlette(routes=[Route("/hop", handle)]))


@asynccontextmanager
async def chain(authority: LocalAuthority, *, stall_last: bool) -> AsyncIterator[MeshClientFactory]:
    """Services a -> b -> c; yields the client factory a test (the first caller) uses."""
    source = StaticSource()
    mesh = factory(authority, source)
    apps = {
        "a": hop(mesh, "b"),
        "b": hop(mesh, "c"),
        "c": hop(mesh, None, stall=stall_last),
    }
    async with AsyncExitStack() as stack:
        for name, app in apps.items():
            port = await stack.enter_async_context(serve(app, contexts(authority, name)))
            source.set(name, [endpoint(name, port)])
        try:
            yield mesh
        finally:
            await mesh.aclose()


async def test_deadline_shrinks_across_three_hops(authority: LocalAuthority) -> None:
    async with chain(authority, stall_last=False) as mesh:
        response = await mesh.client("a").get("/hop", timeout=5.0)
    a, b, c = response.json()["seen"]
    assert 5000 >= a >= b >= c > 0
    assert c < a


async def test_exhausted_deadline_fails_fast_not_hangs(authority: LocalAuthority) -> None:
    async with chain(authority, stall_last=True) as mesh:
        with anyio.fail_after(10):  # a hang guard, not a timing assertion
            try:
                response = await mesh.client("a").get("/hop", timeout=0.5)
            except DeadlineExceeded:
                pass
            else:
                assert response.status_code in (502, 504)


async def test_incoming_deadline_bounds_outgoing_calls(authority: LocalAuthority) -> None:
    async with chain(authority, stall_last=False) as mesh:
        with deadline.deadline_after(2.0):
            response = await mesh.client("c").get("/hop", timeout=60.0)
        assert response.json()["seen"][0] <= 2000
        with deadline.use_deadline(deadline.now() - 1), pytest.raises(DeadlineExceeded):
            await mesh.client("c").get("/hop")


async def run_middleware(headers: list[tuple[bytes, bytes]], handler_sleep: float) -> list[Any]:
    sent: list[Any] = []
    seen: list[float | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(deadline.remaining())
        await anyio.sleep(handler_sleep)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": headers}
    await DeadlineMiddleware(app)(scope, receive, send)
    return [sent, seen]


async def test_middleware_answers_504_when_no_time_is_left() -> None:
    sent, seen = await run_middleware([(b"x-meshkit-deadline-ms", b"0")], 0)
    assert sent[0]["status"] == 504 and seen == []
    assert b"deadline_exceeded" in sent[1]["body"]


async def test_middleware_cancels_the_handler_at_the_deadline() -> None:
    sent, seen = await run_middleware([(b"x-meshkit-deadline-ms", b"50")], 30)
    assert sent[0]["status"] == 504
    assert seen[0] is not None and 0 < seen[0] <= 0.05


async def test_middleware_turns_a_downstream_deadline_error_into_504() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise DeadlineExceeded("no time left", destination="payments")

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"x-meshkit-deadline-ms", b"1000")]}
    await DeadlineMiddleware(app)(scope, None, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 504


async def test_middleware_without_header_sets_no_deadline() -> None:
    sent, seen = await run_middleware([], 0)
    assert sent[0]["status"] == 200 and seen == [None]
