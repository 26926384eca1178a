"""web: the shop's front door — server-rendered HTML pages and a JSON API.

It keeps no data of its own: the catalog comes from inventory, carts and orders from
cart. The browser's cart id lives in a cookie; API clients pass it in the path.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from examples.shop._mesh import ClientFactory, ServiceResponse, allow, client
from examples.shop.common import (
    HTTPProblem,
    UpstreamError,
    expect,
    json_body,
    positive_int,
    text,
)
from meshkit import MeshCallError, MeshSettings, ServiceApp

CART_COOKIE = "cart_id"
# Statuses of cart's answers that are the user's business (shown or forwarded as they are).
_USER_STATUSES = (400, 402, 404, 409)

# The front door: anyone in the mesh, and browsers without a certificate when web
# runs with MESHKIT_TLS_MODE=permissive.
FRONT_DOOR = allow(mesh=True, anonymous=True)

templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
templates.env.filters["money"] = lambda cents: f"${cents / 100:,.2f}"


def _answer(service: str, response: ServiceResponse, *ok: int) -> Any:
    """The body of a successful answer; the user's own mistakes pass through as they are."""
    if response.status_code in _USER_STATUSES:
        body = response.json()
        raise HTTPProblem(response.status_code, body.get("error", "refused"), upstream=body)
    return expect(service, response, *ok)


# -- calls to the other services ---------------------------------------------------------


async def fetch_products(request: Request) -> list[dict[str, Any]]:
    response = await client(request, "inventory").get("/products")
    return expect("inventory", response, 200)["products"]  # type: ignore[no-any-return]


def _once() -> dict[str, str]:
    # A new key per change made for the user: the mesh client may then retry the call
    # (on another cart instance too) without the change happening twice.
    return {"Idempotency-Key": uuid.uuid4().hex}


async def create_cart(request: Request) -> dict[str, Any]:
    response = await client(request, "cart").post("/carts", headers=_once())
    return _answer("cart", response, 201)  # type: ignore[no-any-return]


async def fetch_cart(request: Request, cart_id: str) -> dict[str, Any]:
    return _answer("cart", await client(request, "cart").get(f"/carts/{cart_id}"), 200)  # type: ignore[no-any-return]


async def add_item(request: Request, cart_id: str, sku: str, quantity: int) -> dict[str, Any]:
    response = await client(request, "cart").post(
        f"/carts/{cart_id}/items", json={"sku": sku, "quantity": quantity}, headers=_once()
    )
    return _answer("cart", response, 200)  # type: ignore[no-any-return]


async def remove_item(request: Request, cart_id: str, sku: str) -> dict[str, Any]:
    response = await client(request, "cart").delete(f"/carts/{cart_id}/items/{sku}")
    return _answer("cart", response, 200)  # type: ignore[no-any-return]


async def checkout(request: Request, cart_id: str, payment_method: str, key: str) -> dict[str, Any]:
    response = await client(request, "cart").post(
        f"/carts/{cart_id}/checkout",
        json={"payment_method": payment_method},
        headers={"Idempotency-Key": key},
    )
    return _answer("cart", response, 200, 201)  # type: ignore[no-any-return]


async def fetch_order(request: Request, order_id: str) -> dict[str, Any]:
    order = await fetch_cart(request, order_id)
    if order["status"] != "ordered":
        raise HTTPProblem(404, f"no order {order_id!r}")
    return order


# -- HTML pages ----------------------------------------------------------------------------


async def _form(request: Request) -> dict[str, str]:
    # Parsed by hand: Starlette's form parser needs python-multipart even for urlencoded.
    fields = parse_qs((await request.body()).decode(), keep_blank_values=True)
    return {name: values[-1] for name, values in fields.items()}


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("cart_count", None)
    context.setdefault("error", None)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _cart_count(cart: dict[str, Any] | None) -> int:
    return sum(item["quantity"] for item in cart["items"]) if cart else 0


async def _browser_cart(request: Request) -> dict[str, Any] | None:
    cart_id = request.cookies.get(CART_COOKIE)
    if not cart_id:
        return None
    try:
        cart = await fetch_cart(request, cart_id)
    except HTTPProblem as exc:
        if exc.status == 404:
            return None
        raise
    return cart if cart["status"] == "open" else None


@FRONT_DOOR
async def home(request: Request) -> Response:
    products = await fetch_products(request)
    cart = await _browser_cart(request)
    return _page(request, "products.html", products=products, cart_count=_cart_count(cart))


async def cart_page(request: Request, *, error: str | None = None, status: int = 200) -> Response:
    cart = await _browser_cart(request)
    return _page(
        request,
        "cart.html",
        status,
        cart=cart,
        cart_count=_cart_count(cart),
        error=error,
        # A new key per rendered form: pressing "Place order" twice charges once.
        idempotency_key=uuid.uuid4().hex,
    )


@FRONT_DOOR
async def show_cart_page(request: Request) -> Response:
    return await cart_page(request)


@FRONT_DOOR
async def add_to_cart_form(request: Request) -> Response:
    form = await _form(request)
    quantity = int(form["quantity"]) if form.get("quantity", "").isdigit() else 1
    cart = await _browser_cart(request) or await create_cart(request)
    await add_item(request, cart["id"], form.get("sku", ""), max(quantity, 1))
    response = RedirectResponse("/cart", status_code=303)
    response.set_cookie(CART_COOKIE, cart["id"], httponly=True, samesite="lax")
    return response


@FRONT_DOOR
async def remove_from_cart_form(request: Request) -> Response:
    cart = await _browser_cart(request)
    if cart is not None:
        await remove_item(request, cart["id"], request.path_params["sku"])
    return RedirectResponse("/cart", status_code=303)


@FRONT_DOOR
async def checkout_form(request: Request) -> Response:
    form = await _form(request)
    cart = await _browser_cart(request)
    if cart is None:
        return RedirectResponse("/cart", status_code=303)
    key = form.get("idempotency_key") or uuid.uuid4().hex
    try:
        order = await checkout(request, cart["id"], form.get("payment_method", "tok_visa"), key)
    except HTTPProblem as exc:
        if exc.status not in _USER_STATUSES:
            raise
        return await cart_page(request, error=f"Checkout failed: {exc}", status=exc.status)
    response = RedirectResponse(f"/orders/{order['id']}", status_code=303)
    response.delete_cookie(CART_COOKIE)
    return response


@FRONT_DOOR
async def order_page(request: Request) -> Response:
    order = await fetch_order(request, request.path_params["id"])
    return _page(request, "order.html", order=order)


# -- JSON API --------------------------------------------------------------------------------


@FRONT_DOOR
async def api_products(request: Request) -> JSONResponse:
    return JSONResponse({"products": await fetch_products(request)})


@FRONT_DOOR
async def api_create_cart(request: Request) -> JSONResponse:
    return JSONResponse(await create_cart(request), status_code=201)


@FRONT_DOOR
async def api_cart(request: Request) -> JSONResponse:
    return JSONResponse(await fetch_cart(request, request.path_params["id"]))


@FRONT_DOOR
async def api_add_item(request: Request) -> JSONResponse:
    body = await json_body(request)
    sku, quantity = text(body, "sku"), positive_int(body, "quantity", default=1)
    return JSONResponse(await add_item(request, request.path_params["id"], sku, quantity))


@FRONT_DOOR
async def api_remove_item(request: Request) -> JSONResponse:
    params = request.path_params
    return JSONResponse(await remove_item(request, params["id"], params["sku"]))


@FRONT_DOOR
async def api_checkout(request: Request) -> JSONResponse:
    body = await json_body(request)
    key = request.headers.get("idempotency-key") or uuid.uuid4().hex
    order = await checkout(request, request.path_params["id"], text(body, "payment_method"), key)
    return JSONResponse(order, status_code=201)


@FRONT_DOOR
async def api_order(request: Request) -> JSONResponse:
    return JSONResponse(await fetch_order(request, request.path_params["id"]))


# -- errors: JSON for the API, a page for people -------------------------------------------


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPProblem)
    if _wants_json(request):
        return JSONResponse(exc.details, status_code=exc.status)
    message = (
        "The shop is having trouble; please try again."
        if isinstance(exc, UpstreamError)
        else str(exc)
    )
    return _page(request, "error.html", exc.status, error=message)


async def mesh_failure(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": str(exc)}, status_code=503)
    return _page(request, "error.html", 503, error="The shop is having trouble; please try again.")


ROUTES = [
    Route("/", home),
    Route("/cart", show_cart_page),
    Route("/cart/items", add_to_cart_form, methods=["POST"]),
    Route("/cart/items/{sku}/delete", remove_from_cart_form, methods=["POST"]),
    Route("/checkout", checkout_form, methods=["POST"]),
    Route("/orders/{id}", order_page),
    Route("/api/products", api_products),
    Route("/api/carts", api_create_cart, methods=["POST"]),
    Route("/api/carts/{id}", api_cart),
    Route("/api/carts/{id}/items", api_add_item, methods=["POST"]),
    Route("/api/carts/{id}/items/{sku}", api_remove_item, methods=["DELETE"]),
    Route("/api/carts/{id}/checkout", api_checkout, methods=["POST"]),
    Route("/api/orders/{id}", api_order),
]


def create_app(
    *, settings: MeshSettings | None = None, clients: ClientFactory | None = None
) -> ServiceApp:
    """``clients``: a function from a service name to its client (tests); default: the mesh."""
    app = ServiceApp(
        service="web",
        settings=settings,
        routes=ROUTES,
        exception_handlers={HTTPProblem: problem, MeshCallError: mesh_failure},
    )
    app.state.clients = clients
    return app


app = create_app()
