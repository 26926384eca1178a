from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit.ca.x509 import LocalAuthority
from tests.client.helpers import StaticSource, contexts, endpoint, factory, serve

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("httpx_path")]


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "body": body.decode(),
            "query": str(request.query_params),
            "deadline": request.headers.get("x-meshkit-deadline-ms"),
            "tenant": request.headers.get("x-tenant"),
        }
    )


APP = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "HEAD"])])


async def test_get_post_through_mtls(authority: LocalAuthority) -> None:
    async with serve(APP, contexts(authority, "payments")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(authority, source)
        client = mesh.client("payments")
        try:
            response = await client.get("/items")
            assert response.status_code == 200
            assert response.json()["path"] == "/items"
            assert int(response.json()["deadline"]) > 0
            response = await client.post("/charge", json={"amount": 3})
            assert response.json()["body"] == '{"amount":3}'
            response = await client.get("/q", params={"a": "1"})
            assert response.json()["query"] == "a=1"
            assert (await client.head("/items")).status_code == 200
            assert (await client.get("/again")).status_code == 200
        finally:
            await mesh.aclose()


async def test_each_call_sends_its_own_headers(authority: LocalAuthority) -> None:
    # Request heads are serialized once and looked up after: by their every header value.
    async with serve(APP, contexts(authority, "payments")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(authority, source)
        client = mesh.client("payments")
        try:
            tenants = []
            for tenant in ("blue", "green", "blue"):
                response = await client.get("/items", headers={"x-tenant": tenant})
                tenants.append(response.json()["tenant"])
            client.headers["x-tenant"] = "red"
            tenants.append((await client.get("/items")).json()["tenant"])
            assert tenants == ["blue", "green", "blue", "red"]
        finally:
            await mesh.aclose()


async def headers(request: Request) -> JSONResponse:
    return JSONResponse([name.decode() for name, _ in request.scope["headers"]])


async def test_a_call_sends_no_header_http_1_1_implies(authority: LocalAuthority) -> None:
    """No ``Accept: */*`` or ``Connection: keep-alive`` (what their absence means), nor
    ``Accept-Encoding``; a caller's own are sent."""
    app = Starlette(routes=[Route("/headers", headers)])
    async with serve(app, contexts(authority, "payments")) as port:
        source = StaticSource({"payments": [endpoint("payments", port)]})
        mesh = factory(authority, source)
        client = mesh.client("payments")
        try:
            sent = (await client.get("/headers")).json()
            assert sent == ["host", "user-agent", "x-meshkit-deadline-ms", "x-meshkit-sent-ms"]
            own = {"accept": "application/json", "connection": "keep-alive"}
            sent = (await client.get("/headers", headers=own)).json()
            assert {"accept", "connection"} <= set(sent)
            client.headers["accept"] = "text/plain"
            assert "accept" in (await client.get("/headers")).json()
        finally:
            await mesh.aclose()
