"""Who may call an endpoint.

TODO(meshkit>=0.2): use ``from meshkit.policy import allow`` directly once your
meshkit has it, and delete this module.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from meshkit import peer_identity

Endpoint = Callable[[Request], Awaitable[Response]]

try:
    from meshkit.policy import allow
except ImportError:

    def allow(*services: str) -> Callable[[Endpoint], Endpoint]:  # type: ignore[no-redef]
        """Only callers whose verified SPIFFE ID names one of ``services``; 403 otherwise."""

        def decorate(endpoint: Endpoint) -> Endpoint:
            @functools.wraps(endpoint)
            async def checked(request: Request) -> Response:
                caller = peer_identity(request)
                if caller is None or caller.service not in services:
                    return JSONResponse({"error": f"{caller} may not call this"}, status_code=403)
                return await endpoint(request)

            return checked

        return decorate


__all__ = ["allow"]
