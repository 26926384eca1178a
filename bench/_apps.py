"""The one endpoint every path serves, as a bare Starlette app and as meshkit ServiceApps.

``/hello`` answers about 100 bytes of JSON. Paths A, B and C serve ``app`` with bare
uvicorn; M1 serves ``callee`` with ``meshkit run``; M adds ``caller``, which answers
the load generator by calling ``callee`` through the mesh client (one mesh hop).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshkit import ServiceApp
from meshkit.policy import allow

PAYLOAD = {
    "service": "callee",
    "message": "hello from the benchmark endpoint",
    "items": [1, 2, 3, 4, 5],
    "ok": True,
}


async def hello(request: Request) -> JSONResponse:
    return JSONResponse(PAYLOAD)


@allow("caller", "loadgen")
async def guarded_hello(request: Request) -> JSONResponse:
    return JSONResponse(PAYLOAD)


@allow("loadgen")
async def relay(request: Request) -> Response:
    # One mesh hop: discovery, balancing, retries, mTLS, telemetry in the client.
    response = await request.app.client("callee").get("/hello")
    return Response(response.content, response.status_code, media_type="application/json")


app = Starlette(routes=[Route("/hello", hello)])
callee = ServiceApp(service="callee", routes=[Route("/hello", guarded_hello)])
caller = ServiceApp(service="caller", routes=[Route("/hello", relay)])
