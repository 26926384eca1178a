"""cart: shopping carts and their items (SQLite), and checkout.

Every change can be retried: creating a cart and adding items apply once per
Idempotency-Key (when the caller sends one), and checkout reserves stock under the cart
id and charges under the caller's key, so a retry — by the mesh client, on either
instance, or by a user pressing the button twice — reserves and charges once.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examples.shop._mesh import ClientFactory, allow, client
from examples.shop.common import (
    JSON_ERROR_HANDLERS,
    HTTPProblem,
    UpstreamError,
    expect,
    json_body,
    positive_int,
    text,
)
from examples.shop.db import Database, database_lifespan
from meshkit import MeshSettings, ServiceApp

SCHEMA = """
CREATE TABLE IF NOT EXISTS carts (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'ordered')),
    charge_id TEXT,
    total_cents INTEGER,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ordered_at TEXT
);
CREATE TABLE IF NOT EXISTS cart_items (
    cart_id TEXT NOT NULL REFERENCES carts (id),
    sku TEXT NOT NULL,
    name TEXT NOT NULL,
    unit_price_cents INTEGER NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (cart_id, sku)
);
CREATE TABLE IF NOT EXISTS applied_requests (
    idempotency_key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
)
"""
CURRENCY = "USD"


def get_cart(connection: sqlite3.Connection, cart_id: str) -> dict[str, Any]:
    row = connection.execute("SELECT * FROM carts WHERE id = ?", (cart_id,)).fetchone()
    if row is None:
        raise HTTPProblem(404, f"no cart {cart_id!r}")
    items = [
        dict(item)
        for item in connection.execute(
            "SELECT sku, name, unit_price_cents, quantity FROM cart_items "
            "WHERE cart_id = ? ORDER BY name",
            (cart_id,),
        )
    ]
    cart = dict(row)
    cart["items"] = items
    # An order's total is the one charged; an open cart's is what it would cost now.
    if cart["total_cents"] is None:
        cart["total_cents"] = sum(i["unit_price_cents"] * i["quantity"] for i in items)
    return cart


def new_cart(connection: sqlite3.Connection) -> dict[str, Any]:
    cart_id = uuid.uuid4().hex
    connection.execute("INSERT INTO carts (id) VALUES (?)", (cart_id,))
    return get_cart(connection, cart_id)


def _open_cart(connection: sqlite3.Connection, cart_id: str) -> dict[str, Any]:
    cart = get_cart(connection, cart_id)
    if cart["status"] != "open":
        raise HTTPProblem(409, f"cart {cart_id!r} is already ordered")
    return cart


def add_item(
    connection: sqlite3.Connection, cart_id: str, product: dict[str, Any], quantity: int
) -> dict[str, Any]:
    _open_cart(connection, cart_id)
    connection.execute(
        "INSERT INTO cart_items (cart_id, sku, name, unit_price_cents, quantity) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (cart_id, sku) "
        "DO UPDATE SET quantity = quantity + excluded.quantity",
        (cart_id, product["sku"], product["name"], product["price_cents"], quantity),
    )
    return get_cart(connection, cart_id)


def remove_item(connection: sqlite3.Connection, cart_id: str, sku: str) -> dict[str, Any]:
    _open_cart(connection, cart_id)
    connection.execute("DELETE FROM cart_items WHERE cart_id = ? AND sku = ?", (cart_id, sku))
    return get_cart(connection, cart_id)


def mark_ordered(
    connection: sqlite3.Connection, cart_id: str, charge: dict[str, Any]
) -> dict[str, Any]:
    connection.execute(
        "UPDATE carts SET status = 'ordered', charge_id = ?, total_cents = ?, "
        "ordered_at = CURRENT_TIMESTAMP WHERE id = ? AND status = 'open'",
        (charge["id"], charge["amount_cents"], cart_id),
    )
    return get_cart(connection, cart_id)


def once(
    connection: sqlite3.Connection,
    key: str | None,
    change: Callable[[sqlite3.Connection], dict[str, Any]],
) -> tuple[dict[str, Any], bool]:
    """(answer, replayed): ``change`` applied at most once per Idempotency-Key.

    The key and the change commit in one transaction in the database both instances
    share, so a retry that lands on the other instance still sees it.
    """
    if key is None:
        return change(connection), False
    row = connection.execute(
        "SELECT response FROM applied_requests WHERE idempotency_key = ?", (key,)
    ).fetchone()
    if row is not None:
        return json.loads(row["response"]), True
    answer = change(connection)
    connection.execute(
        "INSERT INTO applied_requests (idempotency_key, response) VALUES (?, ?)",
        (key, json.dumps(answer)),
    )
    return answer, False


def _key(request: Request) -> str | None:
    return request.headers.get("idempotency-key", "").strip() or None


def _db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


@allow("web")
async def create_cart(request: Request) -> JSONResponse:
    key = _key(request)
    cart, replayed = await _db(request).write(lambda c: once(c, key, new_cart))
    return JSONResponse(cart, status_code=200 if replayed else 201)


@allow("web")
async def show_cart(request: Request) -> JSONResponse:
    cart_id = request.path_params["id"]
    return JSONResponse(await _db(request).read(lambda c: get_cart(c, cart_id)))


@allow("web")
async def add_to_cart(request: Request) -> JSONResponse:
    cart_id = request.path_params["id"]
    body = await json_body(request)
    sku, quantity = text(body, "sku"), positive_int(body, "quantity", default=1)
    response = await client(request, "inventory").get(f"/products/{sku}")
    if response.status_code == 404:
        raise HTTPProblem(404, f"no product {sku!r}")
    product = expect("inventory", response, 200)
    key = _key(request)
    cart, _ = await _db(request).write(
        lambda c: once(c, key, lambda c: add_item(c, cart_id, product, quantity))
    )
    return JSONResponse(cart)


@allow("web")
async def remove_from_cart(request: Request) -> JSONResponse:
    cart_id, sku = request.path_params["id"], request.path_params["sku"]
    return JSONResponse(await _db(request).write(lambda c: remove_item(c, cart_id, sku)))


@allow("web")
async def checkout(request: Request) -> JSONResponse:
    """Reserve stock, charge, then confirm: 201 with the order, or 402/409 and nothing held."""
    cart_id = request.path_params["id"]
    key = _key(request)
    if key is None:
        raise HTTPProblem(400, "the Idempotency-Key header is required")
    payment_method = text(await json_body(request), "payment_method")
    db = _db(request)
    cart = await db.read(lambda c: get_cart(c, cart_id))
    if cart["status"] == "ordered":
        return JSONResponse(cart)
    if not cart["items"]:
        raise HTTPProblem(400, "the cart is empty")
    await _reserve(request, cart, key)
    charge = await _charge(request, cart, key, payment_method)
    await _finish_reservation(request, cart["id"], "commit", key)
    order = await db.write(lambda c: mark_ordered(c, cart_id, charge))
    return JSONResponse(order, status_code=201)


def _attempt_key(key: str, step: str) -> dict[str, str]:
    # One key per step of one checkout attempt: the mesh client may retry each step,
    # and a new attempt (a new key) is never mistaken for a repeat of an old one.
    return {"Idempotency-Key": f"checkout-{key}-{step}"}


async def _finish_reservation(request: Request, cart_id: str, action: str, key: str) -> None:
    response = await client(request, "inventory").post(
        f"/reservations/{cart_id}/{action}", headers=_attempt_key(key, action)
    )
    expect("inventory", response, 200)


async def _reserve(request: Request, cart: dict[str, Any], key: str) -> None:
    items = [{"sku": i["sku"], "quantity": i["quantity"]} for i in cart["items"]]
    response = await client(request, "inventory").post(
        "/reservations",
        json={"id": cart["id"], "items": items},
        headers=_attempt_key(key, "reserve"),
    )
    if response.status_code == 409:
        raise HTTPProblem(409, response.json()["error"], **response.json())
    expect("inventory", response, 200, 201)


async def _charge(
    request: Request, cart: dict[str, Any], key: str, payment_method: str
) -> dict[str, Any]:
    response = await client(request, "payments").post(
        "/charges",
        json={
            "amount_cents": cart["total_cents"],
            "currency": CURRENCY,
            "payment_method": payment_method,
            "reference": cart["id"],
        },
        headers=_attempt_key(key, "charge"),
    )
    if response.status_code in (200, 201):
        return response.json()  # type: ignore[no-any-return]
    # Declined or refused: give the stock back so the cart can try again.
    await _finish_reservation(request, cart["id"], "release", key)
    if response.status_code == 402:
        raise HTTPProblem(402, "payment declined", charge=response.json())
    raise UpstreamError("payments", response)


ROUTES = [
    Route("/carts", create_cart, methods=["POST"]),
    Route("/carts/{id}", show_cart),
    Route("/carts/{id}/items", add_to_cart, methods=["POST"]),
    Route("/carts/{id}/items/{sku}", remove_from_cart, methods=["DELETE"]),
    Route("/carts/{id}/checkout", checkout, methods=["POST"]),
]


def create_app(
    *,
    settings: MeshSettings | None = None,
    database: Path | None = None,
    clients: ClientFactory | None = None,
) -> ServiceApp:
    """``clients``: a function from a service name to its client (tests); default: the mesh."""
    app = ServiceApp(
        service="cart",
        settings=settings,
        routes=ROUTES,
        exception_handlers=JSON_ERROR_HANDLERS,
        lifespan=database_lifespan("cart", schema=SCHEMA, path=database),
    )
    app.state.clients = clients
    return app


app = create_app()
