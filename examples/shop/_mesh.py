"""The shop's only contact points with mesh features built on other branches.

``client(request, service)`` is the mesh client (``request.app.client(name)``: an
httpx.AsyncClient bound to the destination) unless the app was built with a client
factory (unit tests: in-process transports). ``allow`` is ``meshkit.policy.allow``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from meshkit import SpiffeId, peer_identity

Endpoint = Callable[[Request], Awaitable[Response]]


class ServiceResponse(Protocol):
    @property
    def status_code(self) -> int: ...

    def json(self) -> Any: ...


class ServiceClient(Protocol):
    """The part of httpx.AsyncClient the shop uses."""

    async def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> Any: ...

    async def post(
        self, url: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> Any: ...

    async def delete(self, url: str, *, headers: Mapping[str, str] | None = None) -> Any: ...


ClientFactory = Callable[[str], ServiceClient]


def client(request: Request, service: str) -> ServiceClient:
    """The client for calls from this service to ``service``."""
    factory: ClientFactory | None = getattr(request.app.state, "clients", None)
    if factory is not None:
        return factory(service)
    return request.app.client(service)  # type: ignore[no-any-return]


try:
    from meshkit.policy import allow  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # TODO(merge): meshkit.policy comes from the policies branch; delete this.

    def allow(  # type: ignore[no-redef, unused-ignore]
        *callers: str, anonymous: bool = False, mesh: bool = False
    ) -> Callable[[Endpoint], Endpoint]:
        """Stand-in for meshkit.policy.allow (same signature), enforced right here."""

        def permitted(caller: SpiffeId | None) -> bool:
            if caller is None:
                return anonymous
            return mesh or any(fnmatchcase(caller.service or "", c) for c in callers)

        def decorate(endpoint: Endpoint) -> Endpoint:
            @functools.wraps(endpoint)
            async def checked(request: Request) -> Response:
                caller = peer_identity(request)
                if not permitted(caller):
                    message = f"{caller or 'anonymous'} may not call this endpoint"
                    return JSONResponse({"error": message}, status_code=403)
                return await endpoint(request)

            return checked

        return decorate
