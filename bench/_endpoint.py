"""The one endpoint every path ends in: ``/hello``, about 100 bytes of JSON.

Starlette only, so the bare processes (bench/_plain.py) and meshkit's
(bench/_apps.py) share it without loading each other's libraries.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

PAYLOAD = {
    "service": "callee",
    "message": "hello from the benchmark endpoint",
    "items": [1, 2, 3, 4, 5],
    "ok": True,
}


async def hello(request: Request) -> JSONResponse:
    return JSONResponse(PAYLOAD)
