"""A small upstream for the ``meshkit.testing`` tests: says which process answered."""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import ServiceApp


async def work(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


app = ServiceApp(service="upstream", routes=[Route("/work", work)])
