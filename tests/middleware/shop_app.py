"""A payments service with one route per policy, shared by the policy tests."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from meshkit.identity import peer_identity
from meshkit.middleware.authz import Authorizer, AuthzMiddleware
from meshkit.policy import allow, concurrency, deny, idempotent, rate_limit, timeout
from meshkit.policy.intentions import Intentions, IntentionStore, IntentionWatcher


class Gate:
    """Holds a handler until the test lets it go (entered: a thread-safe signal)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._release: anyio.Event | None = None

    async def hold(self) -> None:
        self._release = self._release or anyio.Event()
        self.entered.set()
        await self._release.wait()

    def release(self) -> None:
        if self._release is not None:
            self._release.set()


gate = Gate()
charges: list[str] = []


async def plain(request: Request) -> Response:
    caller = peer_identity(request)
    return PlainTextResponse(str(caller))


@allow("web")
async def charge(request: Request) -> Response:
    return PlainTextResponse("charged")


@allow(anonymous=True, mesh=True)
async def public(request: Request) -> Response:
    return PlainTextResponse("public")


@deny("cart")
async def no_cart(request: Request) -> Response:
    return PlainTextResponse("not for cart")


@allow("spiffe://meshkit.local/ns/*/svc/web")
async def any_namespace_web(request: Request) -> Response:
    return PlainTextResponse("web from anywhere")


@allow("admin-ui")
class Refunds(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return PlainTextResponse("refund list")

    @allow("web")
    async def post(self, request: Request) -> Response:
        return PlainTextResponse("refunded")


@rate_limit("2/m")
async def limited(request: Request) -> Response:
    return PlainTextResponse("ok")


@rate_limit("1/m", per="global")
async def limited_global(request: Request) -> Response:
    return PlainTextResponse("ok")


@concurrency(1)
async def slow(request: Request) -> Response:
    await gate.hold()
    return PlainTextResponse("done")


async def release(request: Request) -> Response:
    gate.release()
    return PlainTextResponse("released")


@timeout(0.2)
async def too_slow(request: Request) -> Response:
    await anyio.sleep(30)
    return PlainTextResponse("never")


@idempotent(ttl=60)
async def pay(request: Request) -> Response:
    body = await request.body()
    if request.headers.get("x-hold"):
        await gate.hold()
    charges.append(body.decode())
    return JSONResponse({"charge": len(charges)}, status_code=201)


def routes() -> list[BaseRoute]:
    return [
        Route("/plain", plain),
        Route("/charge", charge, methods=["POST"]),
        Route("/public", public),
        Route("/no-cart", no_cart),
        Route("/any-namespace-web", any_namespace_web),
        Route("/refunds", Refunds),
        Route("/limited", limited),
        Route("/limited-global", limited_global),
        Route("/slow", slow),
        Route("/release", release),
        Route("/too-slow", too_slow),
        Route("/pay", pay, methods=["POST"]),
    ]


def build(authorizer: Authorizer, *, store: IntentionStore | None = None) -> Starlette:
    """The app; with ``store``, its lifespan watches intentions like ServiceApp would."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tasks:
            if store is not None:
                await tasks.start(IntentionWatcher(store, authorizer.intentions, wait=5).run)
            yield
            tasks.cancel_scope.cancel()

    app = Starlette(routes=routes(), lifespan=lifespan)
    app.add_middleware(AuthzMiddleware, routes=app.router.routes, authorizer=authorizer)
    return app


app = build(Authorizer(service="payments", default_policy="deny", intentions=Intentions()))
