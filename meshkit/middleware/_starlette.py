"""Starlette's request path with fewer layers, in a meshed app: the one module that
relies on how Starlette handles errors inside.

A Starlette app answers an HTTP request through ``ServerErrorMiddleware`` (500 for an
unhandled exception), the user middleware (here the mesh's), ``ExceptionMiddleware``
(the app's exception handlers) and, in every function route, ``request_response`` (the
handlers again, with the route's own request). Each of those layers is a coroutine,
and each wraps ``send`` in another coroutine to note whether the response started:
together ~38k instructions a request on a small endpoint, a quarter of what Starlette
costs. Their work matters only when something raises.

In a meshed app the response's status is already noted (by meshkit's server in its
request cycle, elsewhere by the telemetry's ``ObservedSend``) and the mesh's telemetry
middleware catches what the app raises, so ``fast_stack`` builds the same stack
without those layers: the telemetry answers 500 as ``ServerErrorMiddleware``
would, through Starlette's own ``ServerErrorMiddleware`` (made for it and used only
then), ``MeshExceptions`` stands for ``ExceptionMiddleware`` and ``direct_handle`` for
a function route's ``request_response``. What they do on an exception mirrors
``starlette._exception_handler.wrap_app_handling_exceptions``; tests/middleware/
test_fast_stack.py runs every error path through both stacks and compares the
answers (also against the newest Starlette, ``make test-latest``).

``MeshExceptions`` also keeps ``KnownRoutes``: the route the router chose for a path
and method it saw before, when those alone decide it, handed the next such request
without matching every route again (~10k instructions a request).

Only an app whose stack is Starlette's own (not FastAPI's, whose stack differs) with no
middleware but the mesh's gets it, and only while Starlette's shapes are as this module
knows them (``FAST_STACK``, checked at import); every other app keeps the stock stack.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router, WebSocketRoute, request_response
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from meshkit.middleware._asgi import observe

try:  # Starlette's own rules for which handler answers, and how it is called
    from starlette._exception_handler import _lookup_exception_handler
    from starlette._utils import is_async_callable
except ImportError:  # pragma: no cover - a Starlette this module does not know
    _lookup_exception_handler = is_async_callable = None  # type: ignore[assignment]

#: Where ``ExceptionMiddleware`` leaves the app's handlers for the routes below it.
HANDLERS_KEY = "starlette.exception_handlers"
#: ``on_error(scope, receive, send, exc, started)``: the telemetry's 500 for ``exc``.
ErrorAnswer = Callable[[Scope, Receive, Send, Exception, bool], Awaitable[None]]


async def _probe(request: Request) -> Response:
    raise NotImplementedError  # never called: request_response's code object is compared


# A function route's ``app`` is made by request_response: recognised by its code.
_REQUEST_RESPONSE_CODE = getattr(request_response(_probe), "__code__", None)


def _shapes_known() -> bool:
    """Starlette's inner names as this module uses them (else every app goes stock)."""
    handlers = ExceptionMiddleware(_probe_app)
    return (
        _REQUEST_RESPONSE_CODE is not None
        and _lookup_exception_handler is not None
        and is_async_callable is not None
        and isinstance(getattr(handlers, "_exception_handlers", None), dict)
        and isinstance(getattr(handlers, "_status_handlers", None), dict)
        and callable(getattr(Starlette, "build_middleware_stack", None))
    )


async def _probe_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise NotImplementedError  # never called: only ExceptionMiddleware's fields are read


FAST_STACK = _shapes_known()
if not FAST_STACK:  # pragma: no cover - a Starlette this module does not know
    warnings.warn(
        "meshkit: this Starlette's error handling is not as meshkit knows it; meshed apps "
        "keep Starlette's stock middleware stack (correct, more CPU per request)",
        RuntimeWarning,
        stacklevel=2,
    )


class MeshExceptions:
    """``ExceptionMiddleware`` for HTTP without its per-request request object, closures
    and send wrapper: the app's handlers are looked up only when something raises."""

    def __init__(self, stock: ExceptionMiddleware) -> None:
        router = stock.app
        self.app = router
        self._known: KnownRoutes | None = None
        if isinstance(router, Router) and type(router) is Router:
            # Router.__call__ only calls its middleware_stack: called here directly.
            self.app = router.middleware_stack
            if router.middleware_stack == router.app:  # no router middleware
                self._known = KnownRoutes(router)
        self._stock = stock  # websockets, whose errors close the socket its way
        self._handlers = (stock._exception_handlers, stock._status_handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._stock(scope, receive, send)
            return
        scope[HANDLERS_KEY] = self._handlers
        # meshkit's server, or the mesh's telemetry outside, notes the status: no wrapper.
        observed, send = observe(scope, send)
        known = self._known
        try:
            if known is None:
                await self.app(scope, receive, send)
            elif (handling := known.handle(scope, receive, send)) is not None:
                await handling
            else:
                await self.app(scope, receive, send)
                known.learn(scope)
        except Exception as exc:
            conn = Request(scope, receive, send)
            await answer_handled(conn, exc, bool(observed.status), scope, receive, send)


_MAX_KNOWN = 1024


class KnownRoutes:
    """The route a plain Router chose for a (path, method) it saw before, when the path
    and method alone decide it: matching again finds the same one.

    That holds for a route without path parameters that the router reaches past plain
    routes and mounts only (a Host before it matches by the Host header; another kind of
    route may match by anything), with no root path. Those are the app's routes times
    their methods; a route that takes any method could be asked in endless made-up ones,
    so the table stops learning at ``_MAX_KNOWN``. The router's own answer (a
    ``Router.app`` that found the route) is replayed on the scope as it leaves it.
    """

    __slots__ = ("_answer", "_eligible", "_router")

    def __init__(self, router: Router) -> None:
        self._router = router
        self._answer: dict[tuple[str, str], Route] = {}
        self._eligible: dict[int, Route] | None = None  # by id: made on the first request

    def handle(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None] | None:
        """The known route's handling of ``scope``, or None when it is not known."""
        route = self._answer.get((scope["path"], scope["method"]))
        if route is None or scope.get("root_path") or "path_params" in scope:
            return None
        if "router" not in scope:
            scope["router"] = self._router
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        return route.handle(scope, receive, send)

    def learn(self, scope: Scope) -> None:
        """Note the route the router chose for ``scope``, if its choice can be reused."""
        route = scope.get("route")
        if route is None or scope.get("root_path") or scope.get("path_params"):
            return
        if self._eligible is None:
            self._eligible = _eligible(self._router.routes)
        method = scope["method"]
        eligible = self._eligible.get(id(route))
        if eligible is not route or len(self._answer) >= _MAX_KNOWN:
            return
        if eligible.methods is None or method in eligible.methods:
            self._answer[scope["path"], method] = eligible


def _eligible(routes: list[BaseRoute]) -> dict[int, Route]:
    """The routes whose match depends on the path and method alone, and on no route
    before them: parameterless plain routes, up to the first route of another kind."""
    eligible: dict[int, Route] = {}
    for route in routes:
        if type(route) is Route and not route.param_convertors:
            eligible[id(route)] = route
        elif type(route) not in (Route, Mount, WebSocketRoute):
            break
    return eligible


class EndpointHandle:
    """A function route's handling (``Route.handle`` over ``request_response``) in one
    coroutine: the method check, the endpoint, its response; the app's handlers on error
    with the route's own request, as ``request_response`` does."""

    def __init__(self, route: Route, handle: ASGIApp) -> None:
        self._handle = handle  # the route's own, for what is not a call of its endpoint
        self._endpoint = route.endpoint
        self._methods = route.methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._methods and scope["method"] not in self._methods:
            await self._handle(scope, receive, send)  # Starlette's 405
            return
        observed, send = observe(scope, send)
        request = Request(scope, receive, send)
        try:
            response = await self._endpoint(request)
            await response(scope, receive, send)
        except Exception as exc:
            await answer_handled(request, exc, bool(observed.status), scope, receive, send)


def direct_handle(route: Any, handle: ASGIApp) -> ASGIApp:
    """``route``'s handling in one coroutine when it is a plain ``Route`` whose app is
    ``request_response`` of a coroutine function (no route middleware); else ``handle``,
    the route's own."""
    if not FAST_STACK or type(route) is not Route:
        return handle
    app_code = getattr(route.app, "__code__", None)
    if app_code is not _REQUEST_RESPONSE_CODE or not is_async_callable(route.endpoint):
        return handle
    return EndpointHandle(route, handle)


async def answer_handled(
    conn: Request, exc: Exception, started: bool, scope: Scope, receive: Receive, send: Send
) -> None:
    """What ``wrap_app_handling_exceptions`` does with ``exc``: the app's handler
    answers, or ``exc`` goes on up."""
    handlers: tuple[dict[Any, ExceptionHandler], dict[int, ExceptionHandler]] = scope.get(
        HANDLERS_KEY, ({}, {})
    )
    exception_handlers, status_handlers = handlers
    handler = None
    if isinstance(exc, HTTPException):
        handler = status_handlers.get(exc.status_code)
    if handler is None:
        handler = _lookup_exception_handler(exception_handlers, exc)
    if handler is None:
        raise exc
    if started:
        raise RuntimeError("Caught handled exception, but response already started.") from exc
    # An HTTP request's handler (the type also admits websocket ones, as Starlette's).
    if is_async_callable(handler):
        response = await handler(conn, exc)  # type: ignore[arg-type]
    else:
        response = await run_in_threadpool(handler, conn, exc)
    if response is not None:
        await response(scope, receive, send)
    # Reused exception instances accumulate tracebacks across requests.
    exc.__traceback__ = None


def server_error_answer(handler: ExceptionHandler | None, debug: bool) -> ErrorAnswer:
    """The telemetry's ``on_error``: Starlette's own ``ServerErrorMiddleware`` answers
    ``exc`` (its 500 page, debug traceback or the app's 500 handler), then re-raises."""

    async def answer(
        scope: Scope, receive: Receive, send: Send, exc: Exception, started: bool
    ) -> None:
        async def reraise(scope: Scope, receive: Receive, send: Send) -> None:
            raise exc

        middleware = ServerErrorMiddleware(reraise, handler=handler, debug=debug)
        await middleware(scope, receive, _discard if started else send)

    return answer


def fits(app: Starlette) -> bool:
    """Whether ``app`` builds Starlette's own stack (FastAPI builds its own)."""
    return FAST_STACK and type(app).build_middleware_stack is Starlette.build_middleware_stack


def fast_stack(
    app: Starlette, mesh: object, wrap: Callable[[ASGIApp, ErrorAnswer], ASGIApp]
) -> ASGIApp:
    """``app``'s stack: ``wrap`` (the mesh's middleware) over ``MeshExceptions`` over the
    router, when the mesh's entry ``mesh`` is the app's only middleware; else Starlette's."""
    plain = len(app.user_middleware) == 1 and app.user_middleware[0] is mesh
    if not plain or getattr(app, "max_body_size", None) is not None:
        return Starlette.build_middleware_stack(app)
    error_handler, handlers = split_handlers(app.exception_handlers)
    exceptions = ExceptionMiddleware(app.router, handlers=handlers, debug=app.debug)
    return wrap(MeshExceptions(exceptions), server_error_answer(error_handler, app.debug))


def split_handlers(
    handlers: Mapping[Any, ExceptionHandler],
) -> tuple[ExceptionHandler | None, dict[Any, ExceptionHandler]]:
    """(the 500 handler, the others), as ``Starlette.build_middleware_stack`` splits them."""
    error_handler = None
    others: dict[Any, ExceptionHandler] = {}
    for key, value in handlers.items():
        if key in (500, Exception):
            error_handler = value
        else:
            others[key] = value
    return error_handler, others


async def _discard(message: Message) -> None:
    """The response had started: ``ServerErrorMiddleware`` would not send its 500."""


__all__ = [
    "FAST_STACK",
    "EndpointHandle",
    "MeshExceptions",
    "answer_handled",
    "direct_handle",
    "fast_stack",
    "fits",
    "server_error_answer",
    "split_handlers",
]
