"""FastAPI path operations carry the same decorators, above or below the route decorator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import APIRouter, FastAPI

from meshkit.ca.x509 import LocalAuthority
from meshkit.middleware.authz import Authorizer, AuthzMiddleware
from meshkit.policy import allow, idempotent, policy_manifest
from meshkit.tls import TLSMaterial
from tests import _mtls

orders: list[int] = []


def build() -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/v1")

    @app.get("/items/{item_id}")
    @allow("web")
    async def item(item_id: int, verbose: bool = False) -> dict[str, object]:
        return {"item": item_id, "verbose": verbose}

    @allow("cart")
    @router.post("/orders")
    @idempotent(ttl=60)
    async def order(amount: int) -> dict[str, int]:
        orders.append(amount)
        return {"order": len(orders)}

    app.include_router(router)
    authorizer = Authorizer(service="payments", default_policy="deny")
    app.add_middleware(AuthzMiddleware, routes=app.router.routes, authorizer=authorizer)
    return app


@pytest.fixture(scope="module")
def ids(authority: LocalAuthority) -> dict[str, TLSMaterial]:
    return {name: _mtls.material(authority, name) for name in ("payments", "web", "cart")}


@pytest.fixture
def url(ids: dict[str, TLSMaterial]) -> Iterator[str]:
    with _mtls.serve(build(), ids["payments"]) as base_url:
        yield base_url


def test_fastapi_routes_are_gated(ids: dict[str, TLSMaterial], url: str) -> None:
    with _mtls.client(url, ids["web"]) as web:
        response = web.get("/items/7", params={"verbose": "true"})
        assert response.json() == {"item": 7, "verbose": True}
        assert web.post("/v1/orders", params={"amount": 3}).status_code == 403
        assert web.get("/docs").status_code == 403  # the deny default covers FastAPI's own
    headers = {"Idempotency-Key": "k1"}
    with _mtls.client(url, ids["cart"]) as cart:
        assert cart.get("/items/7").status_code == 403
        first = cart.post("/v1/orders", params={"amount": 3}, headers=headers)
        again = cart.post("/v1/orders", params={"amount": 3}, headers=headers)
    assert first.json() == again.json() == {"order": 1}
    assert orders == [3]


def test_fastapi_manifest() -> None:
    manifest = policy_manifest(build().routes, default_policy="deny")
    by_path = {(entry["path"], entry["method"]): entry for entry in manifest["routes"]}
    assert by_path[("/items/{item_id}", "GET")]["allow"] == ["web"]
    assert by_path[("/v1/orders", "POST")]["allow"] == ["cart"]
    assert by_path[("/v1/orders", "POST")]["idempotent"] is not None
    assert by_path[("/openapi.json", "GET")]["access"] == "intentions-only"
