"""A plain Starlette app meshed with ``Mesh(app)`` that relays a GET to a URL outside
the mesh through ``mesh.outside``: ``GET /relay?url=...`` answers what it got."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import Mesh, allow


@allow(anonymous=True, mesh=True)
async def relay(request: Request) -> JSONResponse:
    response = await mesh.outside.get(request.query_params["url"])
    return JSONResponse({"status": response.status_code, "body": response.text})


app = Starlette(routes=[Route("/relay", relay)])
mesh = Mesh(app, service="relay")
