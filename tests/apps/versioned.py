"""A ServiceApp that says which version answered and what it received, for the routing
tests: ``meshkit run tests.apps.versioned:app`` with ``MESHKIT_VERSION`` set."""

from __future__ import annotations

import os
from collections import Counter

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import ServiceApp

SEEN: Counter[str] = Counter()  # requests per path, for mirroring tests


async def seen(request: Request) -> JSONResponse:
    return JSONResponse({"count": SEEN[request.query_params.get("path", "")]})


async def answer(request: Request) -> JSONResponse:
    SEEN[request.url.path] += 1
    return JSONResponse(
        {
            "version": os.environ.get("MESHKIT_VERSION", ""),
            "path": request.url.path,
            "canary": request.headers.get("x-canary"),
        }
    )


app = ServiceApp(
    service="inventory",
    routes=[Route("/__seen", seen), Route("/{path:path}", answer, methods=["GET", "POST"])],
)
