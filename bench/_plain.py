"""The bare caller of paths N and S: Starlette and aiohttp, no meshkit.

``caller`` is the application a sidecar mesh (S) or no mesh (N) runs where meshkit's
path M runs its caller ServiceApp: its ``/hello`` calls the callee's ``/hello``
(bench/_endpoint.py's ``app``) through one aiohttp session and relays the answer.
The upstream comes from the environment (the bench sets it):

    BENCH_UPSTREAM_URL      the callee's /hello (N: the callee itself; S: the client Envoy)
    BENCH_UPSTREAM_CERT, BENCH_UPSTREAM_KEY, BENCH_UPSTREAM_CA
                            N only: the caller's certificate for mTLS to the callee

This module imports nothing of meshkit, so these processes' memory is the bare stack's.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# The mesh client's default call timeout, so both callers arm the same kind of bound.
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=10)


def upstream_tls() -> ssl.SSLContext | bool:
    """mTLS to the callee (N): the caller's certificate, the trust bundle, no name check
    (bare mTLS knows no workload identity); plaintext (False) when none is given."""
    cert = os.environ.get("BENCH_UPSTREAM_CERT")
    if not cert:
        return False
    context = ssl.create_default_context(cafile=os.environ["BENCH_UPSTREAM_CA"])
    context.check_hostname = False
    context.load_cert_chain(cert, os.environ["BENCH_UPSTREAM_KEY"])
    return context


@contextlib.asynccontextmanager
async def upstream_session(app: Starlette) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=0, ssl=upstream_tls())
    async with aiohttp.ClientSession(connector=connector, timeout=UPSTREAM_TIMEOUT) as session:
        app.state.session = session
        app.state.upstream = os.environ["BENCH_UPSTREAM_URL"]
        yield


async def relay(request: Request) -> Response:
    state = request.app.state
    async with state.session.get(state.upstream) as upstream:
        body = await upstream.read()
        return Response(body, upstream.status, media_type="application/json")


caller = Starlette(routes=[Route("/hello", relay)], lifespan=upstream_session)
