"""A stand-in for {{ cookiecutter.upstream_service }} in tests: answers ``GET /hello``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import ServiceApp, peer_identity


async def hello(request: Request) -> JSONResponse:
    caller = peer_identity(request)
    return JSONResponse({"stub": True, "caller": caller.service if caller else None})


app = ServiceApp(service="{{ cookiecutter.upstream_service }}", routes=[Route("/hello", hello)])
