"""The decision table of RouteAccess, and gate behaviour that needs no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, WebSocketRoute

from meshkit.identity import PEER_IDENTITY_KEY, SpiffeId
from meshkit.middleware.authz import (
    Authorizer,
    AuthzMiddleware,
    PolicyGate,
    RouteAccess,
    gate_routes,
)
from meshkit.policy.decorators import Allow, Deny, RoutePolicies, allow
from meshkit.policy.intentions import Intention, Intentions
from tests.middleware._asgi_call import Handler, call

WEB = SpiffeId.for_service("meshkit.local", "default", "web")
CART = SpiffeId.for_service("meshkit.local", "default", "cart")
STAGING_WEB = SpiffeId.for_service("meshkit.local", "staging", "web")
FOREIGN_WEB = SpiffeId.for_service("partner.org", "default", "web")


def access(default: str = "allow-mesh", *policies: Any, rules: Any = ()) -> RouteAccess:
    authorizer = Authorizer(
        service="payments",
        default_policy=default,  # type: ignore[arg-type]
        intentions=Intentions(rules),
    )
    return RouteAccess(authorizer, RoutePolicies.merge(policies))


@pytest.mark.parametrize(
    ("route", "caller", "reason"),
    [
        (access(), WEB, None),
        (access(), STAGING_WEB, None),  # allow-mesh: any namespace of our trust domain
        (access(), FOREIGN_WEB, "default-deny"),  # ...but not another trust domain
        (access(), None, "unauthenticated"),
        (access("deny"), WEB, "default-deny"),
        (access("deny", rules=[Intention("web", "payments", "allow")]), WEB, None),
        (
            access("deny", rules=[Intention("web", "payments", "allow")]),
            STAGING_WEB,
            "default-deny",
        ),
        (access("deny", rules=[Intention("*", "payments", "allow")]), CART, None),
        (access(rules=[Intention("web", "*", "deny")]), WEB, "intention-deny"),
        (access("allow-mesh", Allow(("web",))), CART, "not-allowed"),
        (
            access("allow-mesh", Allow(("web",)), rules=[Intention("cart", "payments", "allow")]),
            CART,
            "not-allowed",
        ),
        (access("deny", Allow((), mesh=True)), STAGING_WEB, None),
        (access("deny", Allow((), mesh=True)), FOREIGN_WEB, "not-allowed"),
        (access("deny", Allow(("spiffe://partner.org/*",))), FOREIGN_WEB, None),
        (access("deny", Allow(("web",)), Deny(("web",))), WEB, "route-deny"),
        (access("deny", Allow((), anonymous=True)), None, None),
        (
            access("allow-mesh", Allow(("web",)), rules=[Intention("web", "payments", "deny")]),
            WEB,
            "intention-deny",
        ),
    ],
)
def test_decisions(route: RouteAccess, caller: SpiffeId | None, reason: str | None) -> None:
    assert route.check(caller) == reason
    assert route.check(caller) == reason  # cached


def test_a_changed_intention_flushes_cached_decisions() -> None:
    route = access("allow-mesh")
    assert route.check(WEB) is None
    route._intentions.replace([Intention("web", "payments", "deny")])
    assert route.check(WEB) == "intention-deny"


@pytest.mark.anyio
async def test_websocket_denial_closes_with_policy_violation() -> None:
    async def endpoint(websocket: Any) -> None:
        raise AssertionError("must not run")

    def broken_hook(*args: object) -> None:
        raise RuntimeError("a failing hook must not break the answer")

    route = WebSocketRoute("/ws", endpoint)
    authorizer = Authorizer(service="payments", default_policy="deny", on_denial=broken_hook)
    (gated,) = gate_routes([route], authorizer)
    (again,) = gate_routes([gated], authorizer)  # gated from the route, not the copy
    gate = vars(again)["handle"]
    assert isinstance(gate, PolicyGate) and gate.app.__self__ is again  # type: ignore[attr-defined]
    assert "handle" not in vars(route)  # the route itself is left as it was
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "extensions": {"tls": {PEER_IDENTITY_KEY: WEB}}}
    await gate(scope, None, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


@pytest.mark.anyio
async def test_mounted_apps_without_routes_are_gated_whole() -> None:
    open_files, partner_files = Handler(), Handler()
    app = Starlette(
        routes=[
            Mount("/static", app=open_files),
            Mount("/partner", app=allow("cart")(partner_files)),
        ]
    )
    authorizer = Authorizer(service="payments", default_policy="deny")
    app.add_middleware(AuthzMiddleware, routes=app.router.routes, authorizer=authorizer)
    assert (await call(app, identity=WEB, path="/static/a.css")).status == 403
    assert (await call(app, identity=WEB, path="/partner/x")).status == 403
    assert (await call(app, identity=CART, path="/partner/x")).status == 200
    assert (open_files.calls, partner_files.calls) == (0, 1)
