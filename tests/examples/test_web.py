from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from examples.shop import web
from meshkit import MeshSettings, NoHealthyInstances
from tests.examples.conftest import AsCaller, Shop

pytestmark = pytest.mark.anyio


def _browser(shop: Shop) -> httpx.AsyncClient:
    """A person's browser: keeps cookies, follows no redirects by itself."""
    transport = httpx.ASGITransport(AsCaller(shop.apps["web"], "demo-user"))
    return httpx.AsyncClient(transport=transport, base_url="https://web")


async def test_the_product_page_lists_the_catalog(shop: Shop) -> None:
    async with _browser(shop) as browser:
        page = await browser.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Gooseneck kettle" in page.text
    assert "$49.00" in page.text
    assert 'action="/cart/items"' in page.text


async def test_a_purchase_through_the_pages(shop: Shop) -> None:
    async with _browser(shop) as browser:
        added = await browser.post("/cart/items", data={"sku": "tea-sencha", "quantity": "2"})
        assert (added.status_code, added.headers["location"]) == (303, "/cart")
        assert browser.cookies.get(web.CART_COOKIE)
        cart = await browser.get("/cart")
        assert "Sencha tea" in cart.text
        assert "$25.00" in cart.text
        assert "Cart (2)" in cart.text
        key = re.search(r'name="idempotency_key" value="(\w+)"', cart.text)
        assert key is not None
        form = {"payment_method": "tok_visa", "idempotency_key": key[1]}
        placed = await browser.post("/checkout", data=form)
        assert placed.status_code == 303
        assert placed.headers["location"].startswith("/orders/")
        confirmation = await browser.get(placed.headers["location"])
        # The cookie is gone: the next visit starts a new cart.
        assert not browser.cookies.get(web.CART_COOKIE)
        empty = await browser.get("/cart")
    assert confirmation.status_code == 200
    assert "Your order is confirmed" in confirmation.text
    assert "$25.00" in confirmation.text
    assert "Your cart is empty" in empty.text


async def test_a_declined_card_shows_the_cart_with_an_error(shop: Shop) -> None:
    async with _browser(shop) as browser:
        await browser.post("/cart/items", data={"sku": "tea-assam"})
        declined = await browser.post(
            "/checkout", data={"payment_method": "tok_declined", "idempotency_key": "a1"}
        )
        removed = await browser.post("/cart/items/tea-assam/delete")
        after = await browser.get("/cart")
    assert declined.status_code == 402
    assert "payment declined" in declined.text
    assert "Assam tea" in declined.text
    assert removed.status_code == 303
    assert "Your cart is empty" in after.text


async def test_an_unknown_order_is_a_404_page(shop: Shop) -> None:
    async with _browser(shop) as browser:
        page = await browser.get("/orders/nope")
    assert page.status_code == 404
    assert "<!doctype html>" in page.text
    assert "Back to the products" in page.text


async def test_a_purchase_through_the_json_api(shop: Shop) -> None:
    async with _browser(shop) as api:
        products = (await api.get("/api/products")).json()["products"]
        cart = (await api.post("/api/carts")).json()
        cart_url = f"/api/carts/{cart['id']}"
        for product in products[:2]:
            response = await api.post(
                f"{cart_url}/items", json={"sku": product["sku"], "quantity": 1}
            )
            assert response.status_code == 200
        removed = await api.delete(f"{cart_url}/items/{products[1]['sku']}")
        assert len(removed.json()["items"]) == 1
        headers = {"Idempotency-Key": "api-1"}
        body = {"payment_method": "tok_visa"}
        order = await api.post(f"{cart_url}/checkout", json=body, headers=headers)
        repeat = await api.post(f"{cart_url}/checkout", json=body, headers=headers)
        shown = await api.get(f"/api/orders/{cart['id']}")
    assert order.status_code == 201
    assert repeat.json()["charge_id"] == order.json()["charge_id"]
    assert shown.json()["total_cents"] == products[0]["price_cents"]


async def test_api_errors_are_json_with_the_users_status(shop: Shop) -> None:
    async with _browser(shop) as api:
        missing = await api.get("/api/carts/nope")
        bad = await api.post("/api/carts/nope/items", json={"quantity": 1})
        unordered = (await api.post("/api/carts")).json()
        not_an_order = await api.get(f"/api/orders/{unordered['id']}")
    assert (missing.status_code, bad.status_code, not_an_order.status_code) == (404, 400, 404)
    assert "error" in missing.json()


async def test_an_unreachable_service_is_503(tmp_path: Path) -> None:
    def unreachable(service: str) -> httpx.AsyncClient:
        raise NoHealthyInstances("no healthy instance", destination=service)

    app = web.create_app(
        settings=MeshSettings(service="web", data_dir=tmp_path), clients=unreachable
    )
    transport = httpx.ASGITransport(AsCaller(app, "demo-user"))
    async with httpx.AsyncClient(transport=transport, base_url="https://web") as client:
        api = await client.get("/api/products")
        page = await client.get("/")
    assert api.status_code == 503
    assert api.json()["error"] == "inventory: no healthy instance"
    assert page.status_code == 503
    assert "having trouble" in page.text


async def test_web_is_the_front_door_for_browsers_without_a_certificate(shop: Shop) -> None:
    # No client certificate at all: what a browser is when web runs in permissive TLS.
    transport = httpx.ASGITransport(shop.apps["web"])
    async with httpx.AsyncClient(transport=transport, base_url="https://web") as browser:
        page = await browser.get("/")
        api = await browser.get("/api/products")
    assert page.status_code == 200
    assert api.status_code == 200
    # The services behind it are not front doors.
    transport = httpx.ASGITransport(shop.apps["cart"])
    async with httpx.AsyncClient(transport=transport, base_url="https://cart") as stranger:
        assert (await stranger.post("/carts")).status_code == 403
