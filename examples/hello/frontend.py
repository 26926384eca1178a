"""frontend: calls greeter over mutual TLS with its own workload identity."""

from __future__ import annotations

import asyncio
import json
import os

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import PeerIdentityMismatch, ServiceApp, SpiffeId
from meshkit.identity import identity_from_peercert


async def call_greeter(app: ServiceApp) -> dict[str, str]:
    # Until discovery lands, greeter's port comes from the environment.
    port = int(os.environ["GREETER_PORT"])
    assert app.mesh.tls is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=app.mesh.tls.client)
    try:
        expected = SpiffeId.for_service(
            app.settings.trust_domain, app.settings.namespace, "greeter"
        )
        server = identity_from_peercert(writer.get_extra_info("peercert"))
        if server != expected:
            raise PeerIdentityMismatch(f"server is {server}", destination="greeter")
        writer.write(b"GET /hello HTTP/1.1\r\nhost: greeter\r\nconnection: close\r\n\r\n")
        response = await reader.read()
    finally:
        writer.close()
    return json.loads(response.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


async def index(request: Request) -> JSONResponse:
    greeting = await call_greeter(request.app)
    return JSONResponse({"frontend": "ok", "greeter said": greeting["message"]})


app = ServiceApp(service="frontend", routes=[Route("/", index)])
