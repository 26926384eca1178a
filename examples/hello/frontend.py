"""frontend: calls greeter by name through the mesh client, over mutual TLS."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import ServiceApp


async def index(request: Request) -> JSONResponse:
    greeter = request.app.client("greeter")
    response = await greeter.get("/hello")
    return JSONResponse({"frontend": "ok", "greeter said": response.json()["message"]})


app = ServiceApp(service="frontend", routes=[Route("/", index)])
