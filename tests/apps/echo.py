"""A small ServiceApp the server tests run with ``meshkit run tests.apps.echo:app``."""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import ServiceApp, peer_identity
from meshkit.policy import allow


async def whoami(request: Request) -> JSONResponse:
    caller = peer_identity(request)
    tls = request.scope.get("extensions", {}).get("tls")
    if tls is None:
        return JSONResponse({"caller": None, "tls_version": None})
    return JSONResponse(
        {
            "caller": str(caller) if caller else None,
            "tls_version": tls["tls_version"],
            "cipher_suite": tls["cipher_suite"],
            "client_cert_chain": len(tls["client_cert_chain"]),
        }
    )


@allow(anonymous=True, mesh=True)
async def public(request: Request) -> JSONResponse:
    return await whoami(request)


async def slow(request: Request) -> JSONResponse:
    seconds = float(request.query_params.get("seconds", "1"))
    await anyio.sleep(seconds)
    return JSONResponse({"slept": seconds})


async def upload(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


app = ServiceApp(
    service="echo",
    routes=[
        Route("/whoami", whoami),
        Route("/public", public),
        Route("/slow", slow),
        Route("/upload", upload, methods=["POST"]),
    ],
)
