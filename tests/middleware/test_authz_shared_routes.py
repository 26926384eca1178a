"""Gates are wired when an app is built, for that app: two apps built from the same
Route objects each enforce their own policy, and the routes themselves stay untouched."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Host, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from meshkit.app import ServiceApp
from meshkit.ca.x509 import LocalAuthority
from meshkit.middleware.authz import Authorizer, AuthzMiddleware
from meshkit.policy import allow, policy_manifest, rate_limit
from meshkit.policy.intentions import Intention
from meshkit.settings import MeshSettings
from meshkit.tls import TLSMaterial
from tests import _mtls
from tests.middleware._asgi_call import Handler, call, caller

WEB, CART = caller("web"), caller("cart")


async def plain(request: Request) -> Response:
    return PlainTextResponse("plain")


@allow("web")
async def charge(request: Request) -> Response:
    return PlainTextResponse("charged")


@rate_limit("1/m", per="global")
async def limited(request: Request) -> Response:
    return PlainTextResponse("ok")


def shared_routes() -> list[BaseRoute]:
    return [
        Route("/plain", plain),
        Route("/limited", limited),
        Mount("/api", routes=[Route("/charge", charge, methods=["POST"])]),
    ]


# -- over real mTLS --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ids(authority: LocalAuthority) -> dict[str, TLSMaterial]:
    return {name: _mtls.material(authority, name) for name in ("payments", "web", "cart")}


@pytest.fixture
def two_apps(ids: dict[str, TLSMaterial]) -> Iterator[tuple[str, str, list[BaseRoute]]]:
    """``strict``: deny by default, an intention lets web in. ``open``: the mesh may
    call, an intention keeps web out. Both from the very same Route objects."""
    routes = shared_routes()
    strict = ServiceApp(
        settings=MeshSettings(service="payments", default_policy="deny"), routes=routes
    )
    strict.mesh.intentions.replace([Intention("web", "payments", "allow")])
    open_ = ServiceApp(settings=MeshSettings(service="payments"), routes=routes)
    open_.mesh.intentions.replace([Intention("web", "payments", "deny")])
    with (
        _mtls.serve(strict, ids["payments"]) as strict_url,
        _mtls.serve(open_, ids["payments"]) as open_url,
    ):
        yield strict_url, open_url, routes
    for app, denied in ((strict, "cart"), (open_, "web")):
        denials = app.mesh.metrics.registry.get_sample_value(
            "meshkit_policy_denials_total",
            {
                "source_service": denied,
                "source_namespace": "default",
                "http_route": "/plain",
                "reason": _reason(denied),
            },
        )
        assert denials == 1  # each app counts its own denials


def _reason(denied: str) -> str:
    return "default-deny" if denied == "cart" else "intention-deny"


def _status(ids: dict[str, TLSMaterial], url: str, who: str, path: str, method: str = "GET") -> int:
    with _mtls.client(url, ids[who]) as client:
        return client.request(method, path).status_code


def test_two_service_apps_sharing_routes_each_enforce_their_own_policy(
    ids: dict[str, TLSMaterial], two_apps: tuple[str, str, list[BaseRoute]]
) -> None:
    strict, open_, routes = two_apps
    assert _status(ids, strict, "web", "/plain") == 200
    assert _status(ids, strict, "cart", "/plain") == 403
    assert _status(ids, open_, "web", "/plain") == 403
    assert _status(ids, open_, "cart", "/plain") == 200
    # A mounted route: its @allow("web") in both, the open app's deny intention on top.
    assert _status(ids, strict, "web", "/api/charge", "POST") == 200
    assert _status(ids, open_, "web", "/api/charge", "POST") == 403
    assert _status(ids, strict, "cart", "/api/charge", "POST") == 403
    # Each app has its own limit stages: one global bucket per app, not one per route.
    assert _status(ids, strict, "web", "/limited") == 200
    assert _status(ids, strict, "web", "/limited") == 429
    assert _status(ids, open_, "cart", "/limited") == 200
    # The routes both apps were built from were never changed.
    assert all("handle" not in vars(route) for route in routes)
    mount = routes[2]
    assert isinstance(mount, Mount) and "handle" not in vars(mount.routes[0])


# -- in-process: how the gates are wired ----------------------------------------------


def _gated_app(routes: list[BaseRoute], default: str = "deny") -> Starlette:
    authorizer = Authorizer(service="payments", default_policy=default)  # type: ignore[arg-type]
    app = Starlette(routes=routes)
    app.add_middleware(AuthzMiddleware, routes=app.router.routes, authorizer=authorizer)
    return app


class PassThrough:
    """A middleware of the mounted app's own: it makes the mount one meshkit cannot rebuild."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@pytest.mark.anyio
async def test_gates_are_wired_when_the_app_is_built_not_on_a_request() -> None:
    routes = shared_routes()
    app = _gated_app(routes)
    assert app.router.routes[0] is routes[0]  # not yet built
    app.middleware_stack = app.build_middleware_stack()
    own = app.router.routes
    assert [type(route) for route in own] == [Route, Route, Mount]
    assert all(mine is not theirs for mine, theirs in zip(own, routes, strict=True))
    assert "handle" in vars(own[0]) and "handle" not in vars(routes[0])
    # Copies match, name and build URLs as the routes do; the manifest is the same.
    assert app.url_path_for("charge") == "/api/charge"
    manifest = policy_manifest(own, default_policy="deny")
    assert manifest == policy_manifest(routes, default_policy="deny")
    assert (await call(app, identity=CART, method="POST", path="/api/charge")).status == 403
    assert (await call(app, identity=WEB, method="POST", path="/api/charge")).status == 200


@pytest.mark.anyio
async def test_building_twice_gates_the_routes_once() -> None:
    """A second build (e.g. introspection) regates the original routes, not the copies."""
    app = _gated_app(shared_routes(), default="allow-mesh")
    app.build_middleware_stack()
    app.middleware_stack = app.build_middleware_stack()
    assert (await call(app, identity=WEB, path="/limited")).status == 200
    assert (await call(app, identity=WEB, path="/limited")).status == 429


@pytest.mark.anyio
async def test_a_route_added_after_the_app_started_fails_closed() -> None:
    app = _gated_app([Route("/plain", plain)], default="allow-mesh")
    assert (await call(app, identity=WEB, path="/plain")).status == 200
    app.add_route("/late", plain)
    for path in ("/late", "/plain"):  # a 500 (Starlette's error middleware re-raises)
        with pytest.raises(RuntimeError, match="added after the app was built"):
            await call(app, identity=WEB, path=path)


@pytest.mark.anyio
async def test_mounted_apps_with_their_own_stack_gate_each_of_their_routes() -> None:
    """A mounted app (or a router with middleware) cannot be rebuilt for the app: the
    gate in front of it finds the endpoint its routes will match."""
    inner = Starlette(routes=[Route("/charge", charge, methods=["POST"]), Route("/plain", plain)])
    wrapped = [Route("/charge", charge, methods=["POST"])]
    files = Handler()
    app = _gated_app(
        [
            Mount("/v2", app=inner),
            Host("payments.internal", app=inner),
            Mount("/static", app=files),
            Mount("/router", app=Router([Mount("/deep", app=inner)], max_body_size=1 << 20)),
            Mount("/wrapped", routes=wrapped, middleware=[Middleware(PassThrough)]),
        ],
        default="allow-mesh",
    )
    for prefix in ("/v2", "/router/deep"):
        assert (await call(app, identity=WEB, method="POST", path=f"{prefix}/charge")).status == 200
        assert (
            await call(app, identity=CART, method="POST", path=f"{prefix}/charge")
        ).status == 403
        assert (await call(app, identity=CART, path=f"{prefix}/plain")).status == 200
        # A GET to the POST-only route: its own gate first, then the 405.
        assert (await call(app, identity=CART, path=f"{prefix}/charge")).status == 403
        assert (await call(app, identity=WEB, path=f"{prefix}/charge")).status == 405
        assert (await call(app, identity=CART, path=f"{prefix}/nowhere")).status == 404
    host = {"host": "payments.internal"}
    answer = await call(app, identity=CART, method="POST", path="/charge", headers=host)
    assert answer.status == 403
    assert (
        await call(app, identity=WEB, method="POST", path="/charge", headers=host)
    ).status == 200
    assert (await call(app, identity=CART, path="/static/a.css")).status == 200
    assert (await call(app, identity=CART, method="POST", path="/wrapped/charge")).status == 403


def _fastapi(router: APIRouter, authorizer: Authorizer) -> FastAPI:
    app = FastAPI()
    app.include_router(router, prefix="/v1")
    app.add_middleware(AuthzMiddleware, routes=app.router.routes, authorizer=authorizer)
    return app


@pytest.mark.anyio
async def test_fastapi_apps_including_one_router_each_enforce_their_own_policy() -> None:
    router = APIRouter()

    @router.get("/orders")
    async def orders() -> dict[str, str]:
        return {"orders": "[]"}

    @router.post("/refunds")
    @allow("web")
    async def refunds() -> dict[str, str]:
        return {"refund": "ok"}

    strict = _fastapi(router, Authorizer(service="payments", default_policy="deny"))
    open_ = _fastapi(router, Authorizer(service="payments"))
    assert (await call(strict, identity=CART, path="/v1/orders")).status == 403
    assert (await call(open_, identity=CART, path="/v1/orders")).status == 200
    for app in (strict, open_):
        assert (await call(app, identity=WEB, method="POST", path="/v1/refunds")).status == 200
        assert (await call(app, identity=CART, method="POST", path="/v1/refunds")).status == 403
    assert all("handle" not in vars(route) for route in router.routes)
