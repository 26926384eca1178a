"""The shop's only contact points with mesh features built on other branches.

``client(request, service)`` is the mesh client (``request.app.client(name)``: an
httpx.AsyncClient bound to the destination) unless the app was built with a client
factory (unit tests: in-process transports). ``allow`` is ``meshkit.policy.decorators.allow``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from meshkit.policy import allow

__all__ = ["ClientFactory", "ServiceClient", "allow", "client"]

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
