from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from examples.shop import inventory
from examples.shop.common import HTTPProblem
from examples.shop.db import Database
from meshkit import MeshSettings
from tests.examples.conftest import Shop

pytestmark = pytest.mark.anyio


async def _stock(shop: Shop, sku: str) -> int:
    response = await shop.client("web", "inventory").get(f"/products/{sku}")
    return int(response.json()["stock"])


async def test_catalog_is_seeded(shop: Shop) -> None:
    response = await shop.client("web", "inventory").get("/products")
    assert response.status_code == 200
    skus = {product["sku"] for product in response.json()["products"]}
    assert skus == {sku for sku, *_ in inventory.PRODUCTS}


async def test_unknown_product_is_404(shop: Shop) -> None:
    response = await shop.client("cart", "inventory").get("/products/nope")
    assert response.status_code == 404
    assert "nope" in response.json()["error"]


async def test_reserve_takes_stock_once_per_reservation_id(shop: Shop) -> None:
    before = await _stock(shop, "tea-sencha")
    body = {"id": "r1", "items": [{"sku": "tea-sencha", "quantity": 3}]}
    first = await shop.client("cart", "inventory").post("/reservations", json=body)
    again = await shop.client("cart", "inventory").post("/reservations", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["status"] == "held"
    assert await _stock(shop, "tea-sencha") == before - 3


async def test_insufficient_stock_holds_nothing(shop: Shop) -> None:
    sencha, assam = await _stock(shop, "tea-sencha"), await _stock(shop, "tea-assam")
    body = {
        "id": "r2",
        "items": [
            {"sku": "tea-sencha", "quantity": 1},
            {"sku": "tea-assam", "quantity": assam + 1},
        ],
    }
    response = await shop.client("cart", "inventory").post("/reservations", json=body)
    assert response.status_code == 409
    assert response.json()["sku"] == "tea-assam"
    assert await _stock(shop, "tea-sencha") == sencha


async def test_release_returns_stock_and_commit_is_final(shop: Shop) -> None:
    inv = shop.client("cart", "inventory")
    before = await _stock(shop, "mug-stoneware")
    await inv.post(
        "/reservations", json={"id": "r3", "items": [{"sku": "mug-stoneware", "quantity": 2}]}
    )
    released = await inv.post("/reservations/r3/release")
    assert released.json()["status"] == "released"
    assert await _stock(shop, "mug-stoneware") == before
    # A released reservation can be held again, then committed; committed stays committed.
    await inv.post(
        "/reservations", json={"id": "r3", "items": [{"sku": "mug-stoneware", "quantity": 1}]}
    )
    assert (await inv.post("/reservations/r3/commit")).json()["status"] == "committed"
    assert (await inv.post("/reservations/r3/release")).status_code == 409
    assert await _stock(shop, "mug-stoneware") == before - 1


async def test_bad_reservation_is_400(shop: Shop) -> None:
    inv = shop.client("cart", "inventory")
    assert (await inv.post("/reservations", json={"id": "r4", "items": []})).status_code == 400
    assert (await inv.post("/reservations", content=b"not json")).status_code == 400
    bad_quantity = {"id": "r4", "items": [{"sku": "tea-assam", "quantity": 0}]}
    assert (await inv.post("/reservations", json=bad_quantity)).status_code == 400


async def test_only_cart_reserves_and_only_web_and_cart_browse(shop: Shop) -> None:
    body = {"id": "r5", "items": [{"sku": "tea-assam", "quantity": 1}]}
    assert (
        await shop.client("web", "inventory").post("/reservations", json=body)
    ).status_code == 403
    assert (await shop.client("payments", "inventory").get("/products")).status_code == 403


async def test_two_instances_sharing_one_file_never_oversell(tmp_path: Path) -> None:
    """Two Database objects on one WAL file, 20 concurrent reserves of the last 10 items."""
    path = MeshSettings(service="inventory", data_dir=tmp_path).state_dir / "inventory.db"
    instances = [Database(path, schema=inventory.SCHEMA, seed=inventory.seed) for _ in range(2)]
    for database in instances:
        await database.setup()
    await instances[0].write(
        lambda c: c.execute("UPDATE products SET stock = 10 WHERE sku = 'tea-assam'")
    )
    outcomes: list[int] = []

    async def reserve(n: int) -> None:
        database = instances[n % 2]
        items = {"tea-assam": 1}
        try:
            status, _ = await database.write(lambda c: inventory.reserve(c, f"r{n}", items))
        except HTTPProblem as exc:
            status = exc.status
        outcomes.append(status)

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(reserve, n)
    assert sorted(outcomes) == [201] * 10 + [409] * 10
    stock = await instances[1].read(lambda c: inventory.get_product(c, "tea-assam")["stock"])
    assert stock == 0
