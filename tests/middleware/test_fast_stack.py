"""A meshed Starlette app's own stack (middleware/_starlette.py) answers every error path
as Starlette's stock stack does: the same routes served both ways over mTLS, compared."""

from __future__ import annotations

import http.client
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Host, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from meshkit import MeshSettings, ServiceApp
from meshkit.ca.x509 import IssuedIdentity, LocalAuthority
from meshkit.middleware._starlette import (
    _MAX_KNOWN,
    FAST_STACK,
    EndpointHandle,
    KnownRoutes,
    MeshExceptions,
)
from meshkit.middleware.telemetry import TelemetryMiddleware
from tests.middleware.servers import connect, running


class Handled(Exception):
    pass


class HandledSync(Exception):
    pass


class Unhandled(Exception):
    pass


async def ok(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def scope_seen(request: Request) -> JSONResponse:
    """What routing left in the scope for the endpoint."""
    scope = request.scope
    return JSONResponse(
        {
            "keys": sorted(key for key in scope if not key.startswith("meshkit.")),
            "route": getattr(scope.get("route"), "path", None),
            "endpoint": getattr(scope.get("endpoint"), "__name__", None),
            "path_params": scope.get("path_params"),
            "router_is_the_apps": scope.get("router") is request.app.router,
        }
    )


async def item(request: Request) -> JSONResponse:
    return JSONResponse({"item": request.path_params["item_id"]})


async def teapot(request: Request) -> Response:
    raise HTTPException(418, "short and stout", headers={"X-Teapot": "yes"})


async def payment(request: Request) -> Response:
    raise HTTPException(402)


async def handled(request: Request) -> Response:
    raise Handled("by an async handler")


async def handled_sync(request: Request) -> Response:
    raise HandledSync("by a sync handler")


async def boom(request: Request) -> Response:
    raise Unhandled("nobody handles this")


async def body_then_handled(request: Request) -> Response:
    await request.body()
    raise Handled("the handler reads the body the endpoint read")


def sync_endpoint(request: Request) -> Response:
    raise Handled("from a thread")


async def _chunks(failure: Exception) -> AsyncIterator[bytes]:
    yield b"first chunk\n"
    raise failure


async def broken_stream(request: Request) -> Response:
    return StreamingResponse(_chunks(Unhandled("mid-body")))


async def broken_stream_handled(request: Request) -> Response:
    return StreamingResponse(_chunks(Handled("mid-body, with a handler")))


async def failing_background(request: Request) -> Response:
    return PlainTextResponse("sent", background=BackgroundTask(_fail))


async def _fail() -> None:
    raise Unhandled("in a background task")


class AsgiEndpoint:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise HTTPException(409, "from an ASGI endpoint")


async def on_handled(request: Request, exc: Exception) -> Response:
    body = (await request.body()).decode()
    return JSONResponse({"handled": str(exc), "body": body}, status_code=409)


def on_handled_sync(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(f"sync: {exc}", status_code=422)


async def on_payment(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("pay first", status_code=402)


async def on_server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": type(exc).__name__}, status_code=500)


def routes() -> list[Route | Mount]:
    return [
        Route("/ok", ok),
        Route("/scope", scope_seen, methods=["GET", "POST"]),
        Route("/items/{item_id:int}", item),
        Route("/teapot", teapot),
        Route("/payment", payment),
        Route("/handled", handled),
        Route("/handled-sync", handled_sync),
        Route("/boom", boom),
        Route("/body", body_then_handled, methods=["POST"]),
        Route("/sync", sync_endpoint),
        Route("/stream", broken_stream),
        Route("/stream-handled", broken_stream_handled),
        Route("/background", failing_background),
        Route("/asgi", AsgiEndpoint()),
        Mount("/inner", app=Router([Route("/teapot", teapot), Route("/ok", ok)])),
        Host("elsewhere.example", app=Router([Route("/after-host", teapot)])),
        Route("/after-host", ok),  # past a Host: matched by the router every time
    ]


REQUESTS: list[tuple[str, str] | tuple[str, str, dict[str, str]]] = [
    ("GET", "/ok"),
    ("GET", "/scope"),
    ("POST", "/scope"),
    ("PUT", "/scope"),
    ("GET", "/items/7"),
    ("GET", "/items/x"),
    ("GET", "/after-host"),
    ("GET", "/after-host", {"Host": "elsewhere.example"}),  # the Host route's
    ("HEAD", "/ok"),
    ("POST", "/ok"),  # 405 with Allow
    ("GET", "/missing"),  # the router's 404
    ("GET", "/teapot"),
    ("GET", "/payment"),
    ("GET", "/handled"),
    ("GET", "/handled-sync"),
    ("GET", "/boom"),
    ("POST", "/body"),
    ("GET", "/sync"),
    ("GET", "/stream"),
    ("GET", "/stream-handled"),
    ("GET", "/background"),
    ("GET", "/asgi"),
    ("GET", "/inner/teapot"),
    ("GET", "/inner/ok"),
    ("GET", "/inner/missing"),
]
#: What may differ between two answers: the date, and the traceback page's own frames.
_COMPARED_HEADERS = ("content-type", "content-length", "allow", "x-teapot", "transfer-encoding")


class PassThrough:
    """A user middleware: with it the app keeps Starlette's stock stack."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def build(*, stock: bool, debug: bool, server_handler: bool) -> ServiceApp:
    handlers: dict[object, object] = {
        Handled: on_handled,
        HandledSync: on_handled_sync,
        402: on_payment,
    }
    if server_handler:
        handlers[500] = on_server_error
    return ServiceApp(
        settings=MeshSettings(service="orders", default_policy="allow-mesh"),
        routes=routes(),
        middleware=[Middleware(PassThrough)] if stock else None,
        exception_handlers=handlers,
        debug=debug,
    )


def ask(
    port: int, identity: IssuedIdentity, method: str, path: str, headers: dict[str, str]
) -> tuple[object, ...]:
    """One request on a connection of its own: status, the compared headers and body,
    or how the connection broke."""
    connection = connect(port, identity)
    try:
        body = b"the body" if method == "POST" else None
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        headers = tuple((name, response.getheader(name)) for name in _COMPARED_HEADERS)
        try:
            body: object = response.read()
        except http.client.IncompleteRead as broken:
            body = ("broken after", broken.partial)
        return response.status, headers, body
    finally:
        connection.close()


@pytest.fixture(scope="module")
def caller(authority: LocalAuthority) -> IssuedIdentity:
    return authority.issue("checkout")


@pytest.mark.skipif(not FAST_STACK, reason="a Starlette whose shapes meshkit does not know")
@pytest.mark.parametrize(
    ("debug", "server_handler"), [(False, False), (False, True), (True, False)]
)
def test_every_error_path_answers_as_starlettes_stock_stack(
    authority: LocalAuthority,
    caller: IssuedIdentity,
    tmp_path: Path,
    debug: bool,
    server_handler: bool,
) -> None:
    fast = build(stock=False, debug=debug, server_handler=server_handler)
    stock = build(stock=True, debug=debug, server_handler=server_handler)
    with ExitStack() as stack:
        ports = [
            stack.enter_context(
                running(app, identity=authority.issue("orders"), directory=tmp_path / name)
            )
            for name, app in (("fast", fast), ("stock", stock))
        ]
        # Twice: the second time the meshed stack knows the routes it matched the first.
        for method, path, *headers in REQUESTS + REQUESTS:
            fast_answer, stock_answer = (
                ask(port, caller, method, path, *headers or [{}]) for port in ports
            )
            if debug and path == "/boom":  # the traceback page lists each stack's own frames
                assert fast_answer[0] == stock_answer[0] == 500
                assert fast_answer[1][0] == stock_answer[1][0]  # type: ignore[index]
                assert b"nobody handles this" in fast_answer[2]  # type: ignore[operator]
                continue
            assert fast_answer == stock_answer, (method, path)
    assert type(fast.middleware_stack) is TelemetryMiddleware
    assert type(stock.middleware_stack) is ServerErrorMiddleware
    known = next(layer for layer in _layers(fast.middleware_stack) if type(layer) is MeshExceptions)
    # Only parameterless routes the router reached past plain routes and mounts, whose
    # request did not fail (a failed one is matched again next time).
    assert sorted(known._known._answer) == [  # type: ignore[union-attr]
        ("/body", "POST"),
        ("/handled", "GET"),
        ("/handled-sync", "GET"),
        ("/ok", "GET"),
        ("/ok", "HEAD"),
        ("/payment", "GET"),
        ("/scope", "GET"),
        ("/scope", "POST"),
        ("/sync", "GET"),
        ("/teapot", "GET"),
    ]


def test_the_meshed_stack_has_no_starlette_error_layers() -> None:
    app = build(stock=False, debug=False, server_handler=False)
    layers = list(_layers(app.build_middleware_stack()))  # as the first request builds it
    names = [type(layer).__name__ for layer in layers]
    assert "ServerErrorMiddleware" not in names and "ExceptionMiddleware" not in names
    assert any(isinstance(layer, MeshExceptions) for layer in layers)
    gate = next(route for route in app.router.routes if getattr(route, "path", "") == "/ok")
    assert isinstance(gate.handle.app, EndpointHandle)  # type: ignore[attr-defined]


def _layers(app: object) -> Iterator[object]:
    while app is not None:
        yield app
        app = getattr(app, "app", None)


def test_the_known_routes_stop_learning_at_their_bound() -> None:
    # A route whose endpoint is an ASGI class takes any method: made-up ones must not
    # grow the table without end (httptools refuses unknown methods; other servers may not).
    route = Route("/any", AsgiEndpoint())
    known = KnownRoutes(Router([route]))
    for number in range(3 * _MAX_KNOWN):
        known.learn({"type": "http", "path": "/any", "method": f"M{number}", "route": route})
    assert len(known._answer) == _MAX_KNOWN
    handling = known.handle({"type": "http", "path": "/any", "method": "M1"}, _never, _never)
    assert handling is not None
    handling.close()  # type: ignore[attr-defined]  # a coroutine, not run here
    assert (
        known.handle(
            {"type": "http", "path": "/any", "method": f"M{2 * _MAX_KNOWN}"}, _never, _never
        )
        is None
    )


async def _never(*args: object) -> None:
    raise AssertionError("not called")
