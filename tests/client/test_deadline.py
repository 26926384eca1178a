"""Deadlines: propagated across three real mTLS hops, enforced by the server middleware."""

from __future__ import annotations

import http.client
import json
import time
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
from meshkit.client import DeadlineExceeded, MeshClientFactory
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


def deadline_headers_seen() -> Any:
    """An app answering with the deadline headers it got and when its request arrived."""

    async def handle(request: Request) -> JSONResponse:
        headers = request.headers
        return JSONResponse(
            {
                "budget": int(headers["x-meshkit-deadline-ms"]),
                "sent": int(headers["x-meshkit-sent-ms"]) / 1000,
                "start": int(headers.get("x-meshkit-start-ms", -1)),
                "arrived_ago": deadline.now() - request.scope[deadline.ARRIVED_KEY],
                "wall": deadline.wall(),
            }
        )

    return Starlette(routes=[Route("/seen", handle, methods=["POST"])])


async def test_attempts_carry_their_sent_time_and_a_keyed_one_its_start_budget(
    authority: LocalAuthority,
) -> None:
    source = StaticSource()
    mesh = factory(authority, source, per_try_timeout=0.5)
    async with serve(deadline_headers_seen(), contexts(authority, "seen")) as port:
        source.set("seen", [endpoint("seen", port)])
        plain = (await mesh.client("seen").post("/seen", timeout=5.0)).json()
        keyed = await mesh.client("seen").post(
            "/seen", timeout=5.0, headers={"Idempotency-Key": "k1"}
        )
        await mesh.aclose()
    # Unkeyed: the work's budget is the attempt's; nothing more to say.
    assert 400 < plain["budget"] <= 500 and plain["start"] == -1
    assert 0 <= plain["wall"] - plain["sent"] < 1.0
    # Keyed: the work may take the call's budget, but may not start after the attempt's.
    seen = keyed.json()
    assert 4000 < seen["budget"] <= 5000 and 400 < seen["start"] <= 500
    # meshkit's serving protocol noted when the head arrived, on the deadlines' clock.
    assert 0 <= seen["arrived_ago"] < 1.0


def post_over_mtls(port: int, authority: LocalAuthority, headers: dict[str, str]) -> Any:
    """A blocking POST over mTLS with exactly ``headers``: status and JSON body."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, context=contexts(authority, "caller").client, timeout=10
    )
    try:
        connection.request("POST", "/work", body=b"{}", headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


async def test_a_request_sent_before_its_deadline_ran_out_elsewhere_never_runs(
    authority: LocalAuthority,
) -> None:
    runs: list[str] = []

    async def work(request: Request) -> JSONResponse:
        runs.append(request.headers["x-meshkit-sent-ms"])
        return JSONResponse({"ran": True})

    app = DeadlineMiddleware(Starlette(routes=[Route("/work", work, methods=["POST"])]))
    fresh = {"x-meshkit-deadline-ms": "1000", "x-meshkit-sent-ms": str(int(time.time() * 1000))}
    # Sent 5 s ago with 1 s to live: it waited unread somewhere; its caller gave up.
    stale = {**fresh, "x-meshkit-sent-ms": str(int((time.time() - 5) * 1000))}
    async with serve(app, contexts(authority, "work")) as port:
        refused = await anyio.to_thread.run_sync(post_over_mtls, port, authority, stale)
        served = await anyio.to_thread.run_sync(post_over_mtls, port, authority, fresh)
    assert refused[0] == 504 and refused[1]["error"] == "deadline_exceeded"
    assert served == (200, {"ran": True})
    assert runs == [fresh["x-meshkit-sent-ms"]]
