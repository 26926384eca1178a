"""A ServiceApp whose routes mix decorators with intentions, for the tests of
authorization from Consul's intentions (``MESHKIT_INTENTIONS=consul``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import ServiceApp, peer_identity
from meshkit.policy import allow, deny


async def items(request: Request) -> JSONResponse:
    caller = peer_identity(request)
    return JSONResponse({"caller": caller.service if caller else None})


@deny("web")
async def admin(request: Request) -> JSONResponse:
    return await items(request)


@allow("ops")
async def internal(request: Request) -> JSONResponse:
    return await items(request)


app = ServiceApp(
    routes=[
        Route("/items", items, methods=["GET", "POST"]),
        Route("/items/{item}", items, methods=["GET", "DELETE"]),
        Route("/admin", admin),
        Route("/internal", internal),
    ]
)
