"""What the authorization gate adds per allowed request, measured in-process.

The same Starlette app is called through ASGI directly (no sockets, so only the code
under test differs), with and without AuthzMiddleware, in alternating rounds; the
best round of each is compared. Prints a table, then one JSON line of the figures.

    .venv/bin/python -m bench.bench_authz
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from meshkit.identity import PEER_IDENTITY_KEY, SpiffeId
from meshkit.middleware.authz import Authorizer, AuthzMiddleware
from meshkit.policy import allow
from meshkit.policy.intentions import Intention, Intentions

CALLER = SpiffeId.for_service("meshkit.local", "default", "web")
REQUESTS = 20_000
ROUNDS = 7


async def undecorated(request: Request) -> Response:
    return PlainTextResponse("ok")


@allow("web", "cart-*")
async def decorated(request: Request) -> Response:
    return PlainTextResponse("ok")


def build(gated: bool, intentions: Intentions) -> ASGIApp:
    app = Starlette(routes=[Route("/plain", undecorated), Route("/allowed", decorated)])
    if gated:
        authorizer = Authorizer(service="payments", intentions=intentions)
        app.add_middleware(AuthzMiddleware, routes=app.router.routes, authorizer=authorizer)
    return app


async def run(app: ASGIApp, path: str, count: int) -> float:
    """Seconds per request for ``count`` sequential requests."""
    tls = {PEER_IDENTITY_KEY: CALLER}
    base: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"payments")],
        "server": ("127.0.0.1", 8443),
        "client": ("127.0.0.1", 50000),
        "extensions": {"tls": tls},
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    began = time.perf_counter()
    for _ in range(count):
        await app(dict(base), receive, send)
    return (time.perf_counter() - began) / count


async def measure() -> dict[str, float]:
    intentions = Intentions([Intention("web", "inventory", "deny")])
    apps: dict[str, tuple[ASGIApp, str]] = {
        "baseline_plain": (build(False, intentions), "/plain"),
        "gated_mesh_default": (build(True, intentions), "/plain"),
        "baseline_allowed": (build(False, intentions), "/allowed"),
        "gated_allow_list": (build(True, intentions), "/allowed"),
    }
    for app, path in apps.values():
        await run(app, path, 2000)  # warm up: routes gated, caches filled
    best = dict.fromkeys(apps, float("inf"))
    for _ in range(ROUNDS):
        for name, (app, path) in apps.items():
            best[name] = min(best[name], await run(app, path, REQUESTS))
    return best


def main() -> None:
    best = anyio.run(measure)
    plain, allowed = best["baseline_plain"], best["baseline_allowed"]
    figures = {
        "baseline_us": round(plain * 1e6, 2),
        "mesh_default_added_us": round((best["gated_mesh_default"] - plain) * 1e6, 2),
        "allow_list_added_us": round((best["gated_allow_list"] - allowed) * 1e6, 2),
        "mesh_default_ratio": round(best["gated_mesh_default"] / plain, 3),
        "allow_list_ratio": round(best["gated_allow_list"] / allowed, 3),
    }
    print(f"{'case':<22}{'us/request':>12}")
    for name, seconds in best.items():
        print(f"{name:<22}{seconds * 1e6:>12.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
