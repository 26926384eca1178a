"""Mesh call errors are httpx errors where they mean the same, over real servers: code
written for httpx catches them, and no meshkit name shadows one of httpx's."""

from __future__ import annotations

import socket

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import meshkit
from meshkit.ca.x509 import LocalAuthority
from meshkit.client import DeadlineExceeded, MeshCallError, NoHealthyInstances, UpstreamFailed
from meshkit.deadline import deadline_after
from tests.client.helpers import StaticSource, contexts, endpoint, factory, serve

TRANSPORT_FAILURES = [
    getattr(meshkit, name)
    for name in (
        "NoHealthyInstances",
        "CircuitOpen",
        "RetryBudgetExhausted",
        "PeerIdentityMismatch",
        "Overloaded",
        "UpstreamFailed",
    )
]


def test_no_public_name_shadows_an_httpx_name() -> None:
    assert not set(meshkit.__all__) & set(httpx.__all__)
    assert not set(meshkit.client.__all__) & set(httpx.__all__)


@pytest.mark.parametrize("error", TRANSPORT_FAILURES)
def test_call_failures_are_httpx_transport_errors(error: type[MeshCallError]) -> None:
    assert issubclass(error, httpx.TransportError)
    assert issubclass(error, MeshCallError) and issubclass(error, meshkit.MeshError)
    failure = error("boom", destination="payments")
    assert str(failure) == "payments: boom" and failure.destination == "payments"


def test_deadline_exceeded_is_an_httpx_timeout() -> None:
    assert issubclass(DeadlineExceeded, httpx.TimeoutException)
    assert issubclass(MeshCallError, httpx.RequestError)
    assert not issubclass(MeshCallError, httpx.TransportError)  # only its kinds are


def _refused_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.anyio
async def test_httpx_style_handling_catches_mesh_failures(authority: LocalAuthority) -> None:
    async def slow(request: Request) -> JSONResponse:
        await anyio.sleep(2)
        return JSONResponse({})

    app = Starlette(routes=[Route("/slow", slow)])
    async with serve(app, contexts(authority, "slow")) as port:
        source = StaticSource(
            {
                "empty": [],
                "slow": [endpoint("slow", port)],
                "gone": [endpoint("gone", _refused_port())],
            }
        )
        mesh = factory(authority, source, max_attempts=1)
        # What an httpx user writes, on the short path and on httpx's full path.
        with pytest.raises(httpx.TransportError) as caught:
            await mesh.client("empty").get("/x")
        assert isinstance(caught.value, NoHealthyInstances)
        assert caught.value.request.url == httpx.URL("http://empty/x")
        with pytest.raises(httpx.TransportError) as caught:
            await mesh.client("empty").get("/x", params={"full": "path"})
        assert caught.value.request.url.params["full"] == "path"
        with pytest.raises(httpx.TimeoutException) as timed_out:
            await mesh.client("slow").get("/slow", timeout=0.3)
        assert isinstance(timed_out.value, DeadlineExceeded)
        with pytest.raises(httpx.TransportError) as refused:
            await mesh.client("gone").get("/x")
        assert isinstance(refused.value, UpstreamFailed)
        with pytest.raises(meshkit.MeshError):  # the mesh root catches them all too
            await mesh.client("gone").get("/x")
        await mesh.aclose()


@pytest.mark.anyio
async def test_errors_surface_when_the_call_is_awaited_and_carry_the_request(
    authority: LocalAuthority,
) -> None:
    """The short path builds the request before any await, yet, as with httpx, calling
    ``get`` only makes the coroutine: what building it raised comes out when awaited.
    A call refused before any attempt still names the request it refused."""

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/ok", ok)])
    async with serve(app, contexts(authority, "ok")) as port:
        mesh = factory(authority, StaticSource({"ok": [endpoint("ok", port)]}))
        client = mesh.client("ok")
        unbuildable = client.post("/ok", json={"not": {"json"}})  # a set: no JSON for it
        with pytest.raises(TypeError):
            await unbuildable
        bad_url = client.get("http://ok:port/")
        with pytest.raises(httpx.InvalidURL):
            await bad_url
        with deadline_after(0.0), pytest.raises(DeadlineExceeded) as late:
            await client.get("/ok")
        assert late.value.request.url == httpx.URL("http://ok/ok")
        assert (await client.get("/ok")).json() == {"ok": True}
        await mesh.aclose()
