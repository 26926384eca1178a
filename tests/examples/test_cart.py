from __future__ import annotations

from typing import Any

import pytest

from tests.examples.conftest import Shop

pytestmark = pytest.mark.anyio


async def _cart_with(shop: Shop, *items: tuple[str, int]) -> dict[str, Any]:
    carts = shop.client("web", "cart")
    cart = (await carts.post("/carts")).json()
    for sku, quantity in items:
        response = await carts.post(
            f"/carts/{cart['id']}/items", json={"sku": sku, "quantity": quantity}
        )
        assert response.status_code == 200, response.text
        cart = response.json()
    return cart


async def _stock(shop: Shop, sku: str) -> int:
    return int((await shop.client("cart", "inventory").get(f"/products/{sku}")).json()["stock"])


async def _checkout(shop: Shop, cart_id: str, method: str = "tok_visa", key: str = "key-1") -> Any:
    return await shop.client("web", "cart").post(
        f"/carts/{cart_id}/checkout",
        json={"payment_method": method},
        headers={"Idempotency-Key": key},
    )


async def test_items_take_name_and_price_from_inventory(shop: Shop) -> None:
    cart = await _cart_with(shop, ("tea-sencha", 2), ("mug-stoneware", 1), ("tea-sencha", 1))
    assert cart["status"] == "open"
    assert [(i["sku"], i["quantity"], i["unit_price_cents"]) for i in cart["items"]] == [
        ("tea-sencha", 3, 1250),
        ("mug-stoneware", 1, 1800),
    ]
    assert cart["total_cents"] == 3 * 1250 + 1800


async def test_unknown_products_and_carts_are_404(shop: Shop) -> None:
    cart = await _cart_with(shop)
    carts = shop.client("web", "cart")
    assert (await carts.post(f"/carts/{cart['id']}/items", json={"sku": "nope"})).status_code == 404
    assert (await carts.get("/carts/nope")).status_code == 404


async def test_remove_item(shop: Shop) -> None:
    cart = await _cart_with(shop, ("tea-sencha", 1), ("tea-assam", 1))
    response = await shop.client("web", "cart").delete(f"/carts/{cart['id']}/items/tea-sencha")
    assert [i["sku"] for i in response.json()["items"]] == ["tea-assam"]


async def test_checkout_reserves_charges_and_orders(shop: Shop) -> None:
    before = await _stock(shop, "kettle-gooseneck")
    cart = await _cart_with(shop, ("kettle-gooseneck", 2))
    response = await _checkout(shop, cart["id"])
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "ordered"
    assert order["total_cents"] == 9800
    assert await _stock(shop, "kettle-gooseneck") == before - 2
    charge = await shop.client("cart", "payments").get(f"/charges/{order['charge_id']}")
    assert charge.json()["amount_cents"] == 9800
    assert charge.json()["reference"] == cart["id"]
    # An ordered cart cannot change.
    late = await shop.client("web", "cart").post(
        f"/carts/{cart['id']}/items", json={"sku": "tea-assam"}
    )
    assert late.status_code == 409


async def test_a_repeated_checkout_charges_and_reserves_once(shop: Shop) -> None:
    before = await _stock(shop, "grinder-hand")
    cart = await _cart_with(shop, ("grinder-hand", 1))
    first, second = await _checkout(shop, cart["id"]), await _checkout(shop, cart["id"])
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["charge_id"] == second.json()["charge_id"]
    assert await _stock(shop, "grinder-hand") == before - 1
    keys = await shop.db("payments").read(
        lambda c: [row[0] for row in c.execute("SELECT idempotency_key FROM charges")]
    )
    assert keys == ["checkout-key-1-charge"]


async def test_a_declined_payment_gives_the_stock_back(shop: Shop) -> None:
    before = await _stock(shop, "filter-paper")
    cart = await _cart_with(shop, ("filter-paper", 4))
    declined = await _checkout(shop, cart["id"], "tok_declined", key="attempt-1")
    assert declined.status_code == 402
    assert await _stock(shop, "filter-paper") == before
    assert (await shop.client("web", "cart").get(f"/carts/{cart['id']}")).json()["status"] == "open"
    # The user tries again with another card (a new attempt, so a new key).
    paid = await _checkout(shop, cart["id"], "tok_visa", key="attempt-2")
    assert paid.status_code == 201
    assert await _stock(shop, "filter-paper") == before - 4


async def test_checkout_needs_a_key_items_and_stock(shop: Shop) -> None:
    carts = shop.client("web", "cart")
    empty = await _cart_with(shop)
    no_key = await carts.post(f"/carts/{empty['id']}/checkout", json={"payment_method": "tok_visa"})
    assert no_key.status_code == 400
    assert (await _checkout(shop, empty["id"])).status_code == 400
    greedy = await _cart_with(shop, ("tea-assam", 1))
    await shop.db("inventory").write(
        lambda c: c.execute("UPDATE products SET stock = 0 WHERE sku = 'tea-assam'")
    )
    sold_out = await _checkout(shop, greedy["id"])
    assert sold_out.status_code == 409
    assert sold_out.json()["sku"] == "tea-assam"


async def test_only_web_calls_cart(shop: Shop) -> None:
    assert (await shop.client("inventory", "cart").post("/carts")).status_code == 403
    assert (await shop.client("payments", "cart").get("/carts/x")).status_code == 403


async def test_creating_and_adding_happen_once_per_key(shop: Shop) -> None:
    carts = shop.client("web", "cart")
    first = await carts.post("/carts", headers={"Idempotency-Key": "new-1"})
    again = await carts.post("/carts", headers={"Idempotency-Key": "new-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    url, item = f"/carts/{first.json()['id']}/items", {"sku": "tea-assam", "quantity": 2}
    for _ in range(2):
        added = await carts.post(url, json=item, headers={"Idempotency-Key": "add-1"})
    assert added.json()["items"][0]["quantity"] == 2
    added = await carts.post(url, json=item, headers={"Idempotency-Key": "add-2"})
    assert added.json()["items"][0]["quantity"] == 4
