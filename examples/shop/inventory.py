"""inventory: the catalog, stock levels and stock reservations (SQLite).

A reservation is keyed by the id its caller chooses (cart uses the cart id), so a
retried reserve never holds stock twice. Stock is taken when reserved, returned when
released, and a committed reservation is final.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examples.shop._mesh import allow
from examples.shop.common import JSON_ERROR_HANDLERS, HTTPProblem, json_body, positive_int, text
from examples.shop.db import Database, database_lifespan
from meshkit import MeshSettings, ServiceApp

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents > 0),
    stock INTEGER NOT NULL CHECK (stock >= 0)
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('held', 'committed', 'released')),
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS reservation_items (
    reservation_id TEXT NOT NULL REFERENCES reservations (id),
    sku TEXT NOT NULL REFERENCES products (sku),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku)
)
"""

# Enough stock that a long demo run does not sell out.
PRODUCTS = [
    ("tea-sencha", "Sencha tea", "Grassy Japanese green tea, 100 g", 1250, 100_000),
    ("tea-assam", "Assam tea", "Malty black breakfast tea, 250 g", 990, 100_000),
    ("mug-stoneware", "Stoneware mug", "Hand-glazed, 350 ml", 1800, 100_000),
    ("kettle-gooseneck", "Gooseneck kettle", "Pour-over kettle, 1 l", 4900, 100_000),
    ("filter-paper", "Paper filters", "100 unbleached filters", 450, 100_000),
    ("grinder-hand", "Hand grinder", "Ceramic burr coffee grinder", 3900, 100_000),
]


def seed(connection: sqlite3.Connection) -> None:
    connection.executemany(
        "INSERT OR IGNORE INTO products (sku, name, description, price_cents, stock) "
        "VALUES (?, ?, ?, ?, ?)",
        PRODUCTS,
    )


def _product(row: sqlite3.Row) -> dict[str, Any]:
    return dict(row)


def list_products(connection: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = connection.execute("SELECT * FROM products ORDER BY name").fetchall()
    return [_product(row) for row in rows]


def get_product(connection: sqlite3.Connection, sku: str) -> dict[str, Any]:
    row = connection.execute("SELECT * FROM products WHERE sku = ?", (sku,)).fetchone()
    if row is None:
        raise HTTPProblem(404, f"no product {sku!r}")
    return _product(row)


def get_reservation(connection: sqlite3.Connection, reservation_id: str) -> dict[str, Any]:
    row = connection.execute(
        "SELECT id, status FROM reservations WHERE id = ?", (reservation_id,)
    ).fetchone()
    if row is None:
        raise HTTPProblem(404, f"no reservation {reservation_id!r}")
    items = connection.execute(
        "SELECT sku, quantity FROM reservation_items WHERE reservation_id = ? ORDER BY sku",
        (reservation_id,),
    ).fetchall()
    return {**dict(row), "items": [dict(item) for item in items]}


def _take_stock(connection: sqlite3.Connection, items: dict[str, int]) -> None:
    for sku, quantity in items.items():
        stock = get_product(connection, sku)["stock"]
        if stock < quantity:
            raise HTTPProblem(409, f"only {stock} of {sku!r} left", sku=sku, available=stock)
        connection.execute("UPDATE products SET stock = stock - ? WHERE sku = ?", (quantity, sku))


def _return_stock(connection: sqlite3.Connection, reservation_id: str) -> None:
    connection.execute(
        "UPDATE products SET stock = stock + (SELECT quantity FROM reservation_items "
        "WHERE reservation_id = ? AND sku = products.sku) "
        "WHERE sku IN (SELECT sku FROM reservation_items WHERE reservation_id = ?)",
        (reservation_id, reservation_id),
    )


def reserve(
    connection: sqlite3.Connection, reservation_id: str, items: dict[str, int]
) -> tuple[int, dict[str, Any]]:
    """Hold stock for ``items``: 201 when new, 200 when already held or committed."""
    row = connection.execute(
        "SELECT status FROM reservations WHERE id = ?", (reservation_id,)
    ).fetchone()
    if row is not None and row["status"] != "released":
        return 200, get_reservation(connection, reservation_id)
    _take_stock(connection, items)
    # A released reservation is held again, for the items asked now.
    connection.execute("DELETE FROM reservation_items WHERE reservation_id = ?", (reservation_id,))
    connection.execute(
        "INSERT INTO reservations (id, status) VALUES (?, 'held') "
        "ON CONFLICT (id) DO UPDATE SET status = 'held'",
        (reservation_id,),
    )
    connection.executemany(
        "INSERT INTO reservation_items (reservation_id, sku, quantity) VALUES (?, ?, ?)",
        [(reservation_id, sku, quantity) for sku, quantity in items.items()],
    )
    return 201, get_reservation(connection, reservation_id)


def commit(connection: sqlite3.Connection, reservation_id: str) -> dict[str, Any]:
    status = get_reservation(connection, reservation_id)["status"]
    if status == "released":
        raise HTTPProblem(409, f"reservation {reservation_id!r} was released")
    connection.execute(
        "UPDATE reservations SET status = 'committed' WHERE id = ?", (reservation_id,)
    )
    return get_reservation(connection, reservation_id)


def release(connection: sqlite3.Connection, reservation_id: str) -> dict[str, Any]:
    status = get_reservation(connection, reservation_id)["status"]
    if status == "committed":
        raise HTTPProblem(409, f"reservation {reservation_id!r} is committed")
    if status == "held":
        _return_stock(connection, reservation_id)
        connection.execute(
            "UPDATE reservations SET status = 'released' WHERE id = ?", (reservation_id,)
        )
    return get_reservation(connection, reservation_id)


def _items(body: dict[str, Any]) -> dict[str, int]:
    raw = body.get("items")
    if not isinstance(raw, list) or not raw:
        raise HTTPProblem(400, "items must be a non-empty list")
    items: dict[str, int] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise HTTPProblem(400, "each item is an object with sku and quantity")
        sku = text(item, "sku")
        items[sku] = items.get(sku, 0) + positive_int(item, "quantity")
    return items


def _db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


@allow("web", "cart")
async def products(request: Request) -> JSONResponse:
    return JSONResponse({"products": await _db(request).read(list_products)})


@allow("web", "cart")
async def product(request: Request) -> JSONResponse:
    sku = request.path_params["sku"]
    return JSONResponse(await _db(request).read(lambda c: get_product(c, sku)))


@allow("cart")
async def create_reservation(request: Request) -> JSONResponse:
    body = await json_body(request)
    reservation_id, items = text(body, "id"), _items(body)
    status, reservation = await _db(request).write(lambda c: reserve(c, reservation_id, items))
    return JSONResponse(reservation, status_code=status)


@allow("cart")
async def commit_reservation(request: Request) -> JSONResponse:
    reservation_id = request.path_params["id"]
    return JSONResponse(await _db(request).write(lambda c: commit(c, reservation_id)))


@allow("cart")
async def release_reservation(request: Request) -> JSONResponse:
    reservation_id = request.path_params["id"]
    return JSONResponse(await _db(request).write(lambda c: release(c, reservation_id)))


ROUTES = [
    Route("/products", products),
    Route("/products/{sku}", product),
    Route("/reservations", create_reservation, methods=["POST"]),
    Route("/reservations/{id}/commit", commit_reservation, methods=["POST"]),
    Route("/reservations/{id}/release", release_reservation, methods=["POST"]),
]


def create_app(*, settings: MeshSettings | None = None, database: Path | None = None) -> ServiceApp:
    return ServiceApp(
        service="inventory",
        settings=settings,
        routes=ROUTES,
        exception_handlers=JSON_ERROR_HANDLERS,
        lifespan=database_lifespan("inventory", schema=SCHEMA, seed=seed, path=database),
    )


app = create_app()
