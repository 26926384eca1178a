"""Calls ``upstream`` by name through the mesh client: ``GET /call`` answers what it got."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import ClientPolicy, ServiceApp


async def call(request: Request) -> JSONResponse:
    response = await request.app.client("upstream").get("/work")
    return JSONResponse({"upstream": response.json()}, status_code=response.status_code)


app = ServiceApp(
    service="caller",
    routes=[Route("/call", call)],
    # A slow upstream attempt gives up after 1 s (not 3) and the call retries elsewhere.
    client_policy=ClientPolicy(per_try_timeout=1.0),
)
