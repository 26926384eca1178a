"""The shop's four services in one event loop, calling each other in-process.

Each call carries the caller's SPIFFE ID in the ASGI TLS extension, as meshkit's
server puts it there, so the policies see who is calling. No sockets, no mesh: this
is for the business logic; the mesh itself is tested over real mTLS elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from examples.shop import cart, inventory, payments, web
from meshkit import MeshSettings, ServiceApp, SpiffeId
from meshkit.identity import PEER_IDENTITY_KEY


class AsCaller:
    """Present every request to ``app`` as coming from ``service`` over mTLS."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.identity = SpiffeId.for_service("meshkit.local", "default", service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            tls = {"client_cert_chain": [], PEER_IDENTITY_KEY: self.identity}
            scope = {**scope, "extensions": {**scope.get("extensions", {}), "tls": tls}}
        await self.app(scope, receive, send)


@dataclass
class Shop:
    apps: dict[str, ServiceApp]
    stack: contextlib.AsyncExitStack
    clients: dict[tuple[str, str], httpx.AsyncClient] = field(default_factory=dict)

    def client(self, caller: str, service: str) -> httpx.AsyncClient:
        """A client for ``service`` that presents ``caller``'s identity."""
        key = (caller, service)
        if key not in self.clients:
            transport = httpx.ASGITransport(AsCaller(self.apps[service], caller))
            self.clients[key] = httpx.AsyncClient(
                transport=transport, base_url=f"https://{service}"
            )
        return self.clients[key]

    def factory(self, caller: str) -> Callable[[str], httpx.AsyncClient]:
        return lambda service: self.client(caller, service)

    def db(self, service: str) -> Any:
        return self.apps[service].state.db


def _settings(service: str, data_dir: Path) -> MeshSettings:
    return MeshSettings(service=service, data_dir=data_dir / service)


@pytest.fixture
async def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Shop]:
    monkeypatch.delenv("SHOP_DATA_DIR", raising=False)
    apps: dict[str, ServiceApp] = {}
    async with contextlib.AsyncExitStack() as stack:
        shop = Shop(apps, stack)
        apps["inventory"] = inventory.create_app(settings=_settings("inventory", tmp_path))
        apps["payments"] = payments.create_app(settings=_settings("payments", tmp_path))
        apps["cart"] = cart.create_app(
            settings=_settings("cart", tmp_path), clients=shop.factory("cart")
        )
        apps["web"] = web.create_app(
            settings=_settings("web", tmp_path), clients=shop.factory("web")
        )
        for app in apps.values():
            # httpx.ASGITransport does not run lifespans: run them here.
            await stack.enter_async_context(app.router.lifespan_context(app))
        yield shop
        for client in shop.clients.values():
            await client.aclose()
