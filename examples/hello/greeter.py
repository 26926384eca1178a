"""greeter: answers whoever calls, by their verified mesh identity."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import ServiceApp, peer_identity


async def hello(request: Request) -> JSONResponse:
    caller = peer_identity(request)
    name = caller.service if caller else "stranger"
    return JSONResponse({"message": f"hello, {name}", "caller": str(caller)})


app = ServiceApp(service="greeter", routes=[Route("/hello", hello)])
