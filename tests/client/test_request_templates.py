"""MeshClient builds bodiless requests from a cached template: each still its own."""

from __future__ import annotations

import pytest

from meshkit._httpx import AsyncBaseTransport, Request, Response
from meshkit.client._client import MeshClient


class Recorder(AsyncBaseTransport):
    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def handle_async_request(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(200, request=request)


@pytest.mark.anyio
@pytest.mark.usefixtures("httpx_path")
async def test_bodiless_requests_are_independent_and_follow_client_headers() -> None:
    recorder = Recorder()
    client = MeshClient("callee", recorder)
    await client.get("/hello")
    recorder.requests[0].headers["x-added-by-a-layer"] = "1"
    recorder.requests[0].extensions["mark"] = True
    client.headers["x-tenant"] = "blue"
    await client.get("/hello")
    await client.delete("/hello")
    first, second, third = recorder.requests
    assert "x-added-by-a-layer" not in second.headers
    assert "mark" not in second.extensions
    assert first.headers.get("x-tenant") is None
    assert second.headers["x-tenant"] == "blue"
    assert second.headers["host"] == "callee"
    assert str(second.url) == "http://callee/hello"
    assert (second.method, third.method) == ("GET", "DELETE")
    assert second.content == b""
    assert second.headers.raw[-1] == (b"x-tenant", b"blue")
