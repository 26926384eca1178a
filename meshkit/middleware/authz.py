"""Authorization on every route: who may call, then the route's limits, then the handler.

The gates are wired when the app is built (``AuthzMiddleware`` is constructed with the
app's middleware stack), never on a live request: the app's route list gets this app's
own copies of its routes, each endpoint's handling behind a ``PolicyGate`` whose rules
and limit stages were compiled then. The Route objects the app was given are left as
they are, so two apps built from the same routes each enforce their own policy. A gate
runs after routing, so it knows its route without matching paths again; per request an
allowed call costs the peer-identity lookup plus one dict hit: decisions are cached
per caller and flushed whenever the intentions change.

Mounts and Hosts over a plain Router are rebuilt for the app around gated copies. A
container that cannot be rebuilt (a mounted app with its own middleware, a FastAPI
included router) keeps its own dispatch: a ``ContainerGate`` in front of it asks its
routes which one the request will reach, as its router will, and runs that one's gate.

Decision order (a deny anywhere wins):

1. no verified identity: allowed only by ``@allow(anonymous=True)``;
2. the caller matches the route's ``@deny``: denied;
3. a central intention denies caller -> this service: denied;
4. the route has ``@allow``: the caller must match it (intentions cannot widen it);
5. otherwise an intention allowing the caller, or the mesh default ``allow-mesh``
   (any identity of our trust domain), lets it in; ``deny`` refuses it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from starlette.routing import BaseRoute, Host, Match, Mount, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from meshkit.errors import ConfigError
from meshkit.identity import SpiffeId, peer_identity
from meshkit.middleware._asgi import send_json
from meshkit.middleware._starlette import direct_handle
from meshkit.middleware.idempotency import IdempotencyDefaults
from meshkit.middleware.limits import build_pipeline
from meshkit.policy.consul_intentions import ConsulIntentions
from meshkit.policy.decorators import (
    CallerSet,
    RouteInfo,
    RoutePolicies,
    route_info,
    sub_routes,
)
from meshkit.policy.intentions import Action, Intentions
from meshkit.settings import DefaultPolicy, MeshSettings

logger = logging.getLogger("meshkit.policy")

#: ``on_denial(caller, route, reason)``: e.g. to count ``meshkit_policy_denials_total``.
DenialHook = Callable[[SpiffeId | None, str, str], None]
_MAX_CACHED_CALLERS = 4096
#: On an app's copy of a route: the route it was made from.
_ORIGINAL_ATTRIBUTE = "__meshkit_route__"


class Authorizer:
    """Decides who may call this service's routes, and answers denials."""

    def __init__(
        self,
        *,
        service: str,
        namespace: str = "default",
        trust_domain: str = "meshkit.local",
        default_policy: DefaultPolicy = "allow-mesh",
        intentions: Intentions | None = None,
        consul_intentions: ConsulIntentions | None = None,
        on_denial: DenialHook | None = None,
    ) -> None:
        self.service = service
        self.namespace = namespace
        self.trust_domain = trust_domain
        self.default_policy = default_policy
        self.intentions = intentions if intentions is not None else Intentions()
        # Consul's intentions, when they are the source: decided per request (L7).
        self.consul_intentions = consul_intentions
        self.on_denial = on_denial

    @classmethod
    def from_settings(
        cls,
        settings: MeshSettings,
        *,
        intentions: Intentions | None = None,
        consul_intentions: ConsulIntentions | None = None,
        on_denial: DenialHook | None = None,
    ) -> Authorizer:
        return cls(
            service=settings.service,
            namespace=settings.namespace,
            trust_domain=settings.trust_domain,
            default_policy=settings.default_policy,
            intentions=intentions,
            consul_intentions=consul_intentions if settings.intentions == "consul" else None,
            on_denial=on_denial,
        )

    def local_name(self, caller: SpiffeId) -> str | None:
        """The caller's service name if bare names may match it (same domain, namespace)."""
        return caller.service_in(self.trust_domain, self.namespace)

    async def refuse(
        self, scope: Scope, send: Send, caller: SpiffeId | None, route: str, reason: str
    ) -> None:
        """Log, report and answer one denial (403 JSON, or a policy close for websockets)."""
        shown = None if caller is None else str(caller)
        logger.info("denied %s on %s: %s", shown or "anonymous caller", route, reason)
        if self.on_denial is not None:
            try:
                self.on_denial(caller, route, reason)
            except Exception:
                logger.exception("on_denial hook failed")
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        await send_json(send, 403, {"error": "denied", "caller": shown, "route": route})


class RouteAccess:
    """The access rules of one route (and method), with decisions cached per caller."""

    def __init__(self, authorizer: Authorizer, policies: RoutePolicies) -> None:
        self._authorizer = authorizer
        self._intentions = authorizer.intentions
        self._allow = CallerSet.of(policies.allow)
        self._deny = CallerSet.of(policies.deny)
        self._allow_declared = policies.allow_declared
        self._anonymous = policies.anonymous
        self._mesh = policies.mesh
        # Keyed by id(): the server makes one SpiffeId per connection, and hashing the
        # dataclass costs more than the rest of the check. The entry keeps the object, and
        # ``is`` confirms it, so a recycled id() can never return another caller's answer.
        self._cache: dict[int, tuple[SpiffeId | None, str | None]] = {}
        self._version = -1

    def check(self, caller: SpiffeId | None, scope: Scope | None = None) -> str | None:
        """None when ``caller`` may call, else the reason it may not. With Consul's
        intentions the answer may depend on the request (L7): decided per request."""
        if (
            caller is not None
            and scope is not None
            and self._authorizer.consul_intentions is not None
        ):
            return self._decide(caller, scope)
        if self._version != self._intentions.version:
            self._cache.clear()
            self._version = self._intentions.version
        cached = self._cache.get(id(caller))
        if cached is not None and cached[0] is caller:
            return cached[1]
        if len(self._cache) >= _MAX_CACHED_CALLERS:
            self._cache.clear()
        reason = self._decide(caller)
        self._cache[id(caller)] = (caller, reason)
        return reason

    def _decide(self, caller: SpiffeId | None, scope: Scope | None = None) -> str | None:
        if caller is None:
            return None if self._anonymous else "unauthenticated"
        authorizer = self._authorizer
        local = authorizer.local_name(caller)
        if self._deny.matches(caller, local):
            return "route-deny"
        in_domain = caller.trust_domain == authorizer.trust_domain
        intention, default_allows = self._intention(caller, local, in_domain, scope)
        if intention == "deny":
            return "intention-deny"
        if self._allow_declared:
            if self._allow.matches(caller, local) or (self._mesh and in_domain):
                return None
            return "not-allowed"
        if intention == "allow" or default_allows:
            return None
        return "default-deny"

    def _intention(
        self, caller: SpiffeId, local: str | None, in_domain: bool, scope: Scope | None
    ) -> tuple[Action | None, bool]:
        """The intentions' action for this caller (None: none applies) and whether the
        default lets it in: the mesh default, and with Consul also its ACL default."""
        authorizer = self._authorizer
        mesh_default = authorizer.default_policy == "allow-mesh" and in_domain
        consul = authorizer.consul_intentions
        if consul is not None and scope is not None:
            verdict = consul.verdict(caller, scope)
            return verdict.action, verdict.default_allow and mesh_default
        action = self._intentions.action(local, authorizer.service) if in_domain else None
        return action, mesh_default


class PolicyGate:
    """Stands in front of one route's handling: checks the caller, then runs its stages."""

    def __init__(
        self,
        app: ASGIApp,
        info: RouteInfo,
        authorizer: Authorizer,
        idempotency: IdempotencyDefaults | None = None,
    ) -> None:
        self.app = app  # the route's own handle
        self.route = info.path
        self._authorizer = authorizer
        self._access = RouteAccess(authorizer, info.policies)
        self._pipeline = build_pipeline(
            app, info.policies, route=info.path, idempotency=idempotency
        )
        self._by_method: Mapping[str, tuple[RouteAccess, ASGIApp]] = {
            method: (
                RouteAccess(authorizer, policies),
                build_pipeline(app, policies, route=info.path, idempotency=idempotency),
            )
            for method, policies in info.by_method.items()
        }

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain call handing back the next app's awaitable: no coroutine of its own.
        access, app = self._access, self._pipeline
        if self._by_method and scope["type"] == "http":
            access, app = self._by_method.get(scope["method"], (access, app))
        caller = peer_identity(scope)
        reason = access.check(caller, scope)
        if reason is not None:
            return self._authorizer.refuse(scope, send, caller, self.route, reason)
        if scope["type"] == "websocket":
            return self.app(scope, receive, send)  # limits are for HTTP requests
        return app(scope, receive, send)


class ContainerGate:
    """Stands in front of a container this app cannot rebuild: finds the endpoint the
    request will reach under it and runs that endpoint's gate (the default rules when
    none matches, e.g. a 404 on its way)."""

    def __init__(self, resolver: _Resolver, fallback: PolicyGate) -> None:
        self._resolver = resolver
        self._fallback = fallback

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        gate = self._resolver.resolve(scope) or self._fallback
        return gate(scope, receive, send)


class _Matcher(Protocol):
    def matches(self, scope: Scope) -> tuple[Match, Scope]: ...


class _Resolver:
    """The routes under a container, asked in order as its router asks them: the first
    full match wins, else the first partial one (a 405 on its way)."""

    def __init__(self, entries: Sequence[tuple[_Matcher, _Target]]) -> None:
        self._entries = entries

    def resolve(self, scope: Scope) -> PolicyGate | None:
        partial: tuple[_Target, Scope] | None = None
        for matcher, target in self._entries:
            match, child_scope = matcher.matches(scope)
            if match is Match.FULL:
                return _descend(target, child_scope, scope)
            if match is Match.PARTIAL and partial is None:
                partial = (target, child_scope)
        return None if partial is None else _descend(*partial, scope)


_Target = PolicyGate | _Resolver


def _descend(target: _Target, child_scope: Scope, scope: Scope) -> PolicyGate | None:
    if isinstance(target, PolicyGate):
        return target
    return target.resolve({**scope, **child_scope})  # a copy: the router updates the real one


# -- wiring, when the app is built ----------------------------------------------------


def gate_routes(
    routes: Sequence[BaseRoute],
    authorizer: Authorizer,
    prefix: str = "",
    idempotency: IdempotencyDefaults | None = None,
) -> list[BaseRoute]:
    """This app's own copies of ``routes``, every endpoint behind its PolicyGate.

    A copy matches, names and builds URLs as its route does; only its ``handle`` (the
    call every router, Starlette's and FastAPI's, makes after matching) goes through the
    gate. The routes given are not changed (another app may share them); copies made
    for another app are traced back to the route they came from.
    """
    return [_gated(_original(route), authorizer, prefix, idempotency) for route in routes]


def _gated(
    route: BaseRoute,
    authorizer: Authorizer,
    prefix: str,
    idempotency: IdempotencyDefaults | None,
) -> BaseRoute:
    info = _endpoint_info(route, prefix)
    if info is not None:
        return _with_gate(
            route,
            lambda gated, handle: PolicyGate(
                direct_handle(gated, handle), info, authorizer, idempotency
            ),
        )
    routes, inner_prefix = _held(route, prefix)
    if isinstance(route, Mount | Host) and _is_plain_router(route.app):
        return _rebuilt(route, gate_routes(routes, authorizer, inner_prefix, idempotency))
    unmatched = RouteInfo(inner_prefix + "/{path:path}", route, ("*",), RoutePolicies())

    def container_gate(gated: BaseRoute, handle: ASGIApp) -> ASGIApp:
        gates = _Gates(handle, authorizer, idempotency)
        return ContainerGate(_resolver(gated, prefix, gates), gates.gate(unmatched))

    return _with_gate(route, container_gate)


def _endpoint_info(route: BaseRoute, prefix: str) -> RouteInfo | None:
    """``route`` as one endpoint, or None when it holds others. A route type meshkit
    does not know is one endpoint under the default rules: gated, never skipped."""
    info = route_info(route, prefix)
    if info is None and sub_routes(route, prefix) is None:
        info = RouteInfo(prefix + getattr(route, "path", ""), route, ("*",), RoutePolicies())
    return info


def _held(container: BaseRoute, prefix: str) -> tuple[Sequence[BaseRoute], str]:
    inner = sub_routes(container, prefix)
    assert inner is not None, "only containers hold routes"
    return inner


def _with_gate(route: BaseRoute, gate: Callable[[BaseRoute, ASGIApp], ASGIApp]) -> BaseRoute:
    """A shallow copy of ``route`` whose ``handle`` is ``gate(copy, the copy's handle)``."""
    gated = copy.copy(route)
    gated.handle = gate(gated, gated.handle)  # type: ignore[method-assign,assignment]
    setattr(gated, _ORIGINAL_ATTRIBUTE, route)
    return gated


def _rebuilt(route: Mount | Host, routes: list[BaseRoute]) -> Mount | Host:
    """``route`` made again over a Router of ``routes``, its router's options kept."""
    router = route.app
    assert isinstance(router, Router)
    app = Router(routes, redirect_slashes=router.redirect_slashes, default=router.default)
    rebuilt: Mount | Host
    if isinstance(route, Mount):
        rebuilt = Mount(route.path, app=app, name=route.name)
    else:
        rebuilt = Host(route.host, app=app, name=route.name)
    setattr(rebuilt, _ORIGINAL_ATTRIBUTE, route)
    return rebuilt


def _is_plain_router(app: ASGIApp) -> bool:
    """A Starlette Router (not a subclass, which may dispatch its own way) without
    middleware of its own: one that can be made again."""
    if not isinstance(app, Router) or type(app) is not Router:
        return False
    return bool(getattr(app, "middleware_stack", app.app) == app.app)


def _original(route: BaseRoute) -> BaseRoute:
    original: BaseRoute = getattr(route, _ORIGINAL_ATTRIBUTE, route)
    return original


class _Gates:
    """Makes the gates of the endpoints under one container, all in front of its handle."""

    def __init__(
        self, handle: ASGIApp, authorizer: Authorizer, idempotency: IdempotencyDefaults | None
    ) -> None:
        self._handle = handle
        self._authorizer = authorizer
        self._idempotency = idempotency

    def gate(self, info: RouteInfo) -> PolicyGate:
        return PolicyGate(self._handle, info, self._authorizer, self._idempotency)


def _resolver(container: BaseRoute, prefix: str, gates: _Gates) -> _Resolver:
    """What the container's own router would match, with the gate of each endpoint."""
    routes, inner_prefix = _held(container, prefix)
    contexts = getattr(container, "effective_route_contexts", None)
    if contexts is None:  # Starlette: its routes match as its router asks them
        return _Resolver([(route, _target(route, inner_prefix, gates)) for route in routes])
    # A FastAPI included router matches its routes through contexts that add its prefix
    # (built once per version of its routes); each names the route it stands for.
    targets = _included_targets(routes, inner_prefix, gates)
    entries: list[tuple[_Matcher, _Target]] = []
    for context in contexts():
        target = targets.get(id(context.original_route))
        if target is None:  # a FastAPI this code does not know: refuse to start
            raise ConfigError(f"cannot authorize {context.original_route!r} under {container!r}")
        entries.append((context, target))
    return _Resolver(entries)


def _included_targets(
    routes: Sequence[BaseRoute], prefix: str, gates: _Gates
) -> dict[int, _Target]:
    """The targets of a FastAPI router's routes and of the routers it includes, by id."""
    targets: dict[int, _Target] = {}
    for route in routes:
        if hasattr(route, "original_router"):
            targets.update(_included_targets(*_held(route, prefix), gates))
        else:
            targets[id(route)] = _target(route, prefix, gates)
    return targets


def _target(route: BaseRoute, prefix: str, gates: _Gates) -> _Target:
    info = _endpoint_info(route, prefix)
    return gates.gate(info) if info is not None else _resolver(route, prefix, gates)


class AuthzMiddleware:
    """Pure ASGI: wires the gates into ``routes`` (the app's own ``app.router.routes``)
    when constructed, that is when the app builds its middleware stack.

    ``app`` is the next ASGI app; the gates run inside it, after routing. A route added
    to the app after that could not be gated: requests then fail (500) rather than
    reach an ungated endpoint. ``idempotency`` is asked then for the service's
    ``@idempotent`` defaults, so settings changed before serving still count.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: list[BaseRoute],
        authorizer: Authorizer,
        idempotency: Callable[[], IdempotencyDefaults] | None = None,
    ) -> None:
        self.app = app
        self.authorizer = authorizer
        defaults = None if idempotency is None else idempotency()
        routes[:] = gate_routes(routes, authorizer, idempotency=defaults)
        self._routes = routes
        self._gated_count = len(routes)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if len(self._routes) != self._gated_count and scope["type"] != "lifespan":
            raise RuntimeError(
                "a route was added after the app was built; meshkit authorizes the routes "
                "an app has when it starts: add every route before it serves"
            )
        return self.app(scope, receive, send)
