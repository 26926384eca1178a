"""The meshkit applications of paths M1 and M (ServiceApps around bench/_endpoint.py).

M1 serves ``callee`` with ``meshkit run``; M adds ``caller``, which answers the load
generator by calling ``callee`` through the mesh client (one mesh hop). The bare
applications of the other paths are in bench/_plain.py.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench._endpoint import PAYLOAD
from meshkit import ServiceApp
from meshkit.policy import allow


@allow("caller", "loadgen")
async def guarded_hello(request: Request) -> JSONResponse:
    return JSONResponse(PAYLOAD)


@allow("loadgen")
async def relay(request: Request) -> Response:
    # One mesh hop: discovery, balancing, retries, mTLS, telemetry in the client.
    response = await request.app.client("callee").get("/hello")
    return Response(response.content, response.status_code, media_type="application/json")


callee = ServiceApp(service="callee", routes=[Route("/hello", guarded_hello)])
caller = ServiceApp(service="caller", routes=[Route("/hello", relay)])
