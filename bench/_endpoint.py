"""The one endpoint every path ends in: ``/hello``, about 100 bytes of JSON.

Starlette only, so the bare processes and meshkit's (bench/_apps.py) share it without
loading each other's libraries. ``app`` is the bare callee (paths A, B, C, and the
callee of N and S), served by the uvicorn CLI: its memory is uvicorn's and Starlette's.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PAYLOAD = {
    "service": "callee",
    "message": "hello from the benchmark endpoint",
    "items": [1, 2, 3, 4, 5],
    "ok": True,
}


async def hello(request: Request) -> JSONResponse:
    return JSONResponse(PAYLOAD)


app = Starlette(routes=[Route("/hello", hello)])
