"""Authorization on every route: who may call, then the route's limits, then the handler.

``AuthzMiddleware`` is a pure ASGI pass-through that, before the first request (and
again if the route list grows), puts a ``PolicyGate`` in front of each route's
handling. The gate runs after Starlette's routing, so it knows its route without matching
paths again; its rules and limit stages were compiled once, at installation. Per
request an allowed call costs the peer-identity lookup plus one dict hit: decisions
are cached per caller and flushed whenever the intentions change.

Decision order (a deny anywhere wins):

1. no verified identity: allowed only by ``@allow(anonymous=True)``;
2. the caller matches the route's ``@deny``: denied;
3. a central intention denies caller -> this service: denied;
4. the route has ``@allow``: the caller must match it (intentions cannot widen it);
5. otherwise an intention allowing the caller, or the mesh default ``allow-mesh``
   (any identity of our trust domain), lets it in; ``deny`` refuses it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from meshkit.identity import SpiffeId, peer_identity
from meshkit.middleware._asgi import send_json
from meshkit.middleware.limits import build_pipeline
from meshkit.policy.decorators import CallerSet, RouteInfo, RoutePolicies, iter_routes
from meshkit.policy.intentions import Intentions
from meshkit.settings import DefaultPolicy, MeshSettings

logger = logging.getLogger("meshkit.policy")

#: ``on_denial(caller, route, reason)``: e.g. to count ``meshkit_policy_denials_total``.
DenialHook = Callable[[SpiffeId | None, str, str], None]
_MAX_CACHED_CALLERS = 4096


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
        on_denial: DenialHook | None = None,
    ) -> None:
        self.service = service
        self.namespace = namespace
        self.trust_domain = trust_domain
        self.default_policy = default_policy
        self.intentions = intentions if intentions is not None else Intentions()
        self.on_denial = on_denial

    @classmethod
    def from_settings(
        cls,
        settings: MeshSettings,
        *,
        intentions: Intentions | None = None,
        on_denial: DenialHook | None = None,
    ) -> Authorizer:
        return cls(
            service=settings.service,
            namespace=settings.namespace,
            trust_domain=settings.trust_domain,
            default_policy=settings.default_policy,
            intentions=intentions,
            on_denial=on_denial,
        )

    def local_name(self, caller: SpiffeId) -> str | None:
        """The caller's service name if bare names may match it (same domain, namespace)."""
        if caller.trust_domain != self.trust_domain or caller.namespace != self.namespace:
            return None
        return caller.service

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

    def check(self, caller: SpiffeId | None) -> str | None:
        """None when ``caller`` may call, else the reason it may not."""
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

    def _decide(self, caller: SpiffeId | None) -> str | None:
        if caller is None:
            return None if self._anonymous else "unauthenticated"
        authorizer = self._authorizer
        local = authorizer.local_name(caller)
        if self._deny.matches(caller, local):
            return "route-deny"
        in_domain = caller.trust_domain == authorizer.trust_domain
        intention = self._intentions.action(local, authorizer.service) if in_domain else None
        if intention == "deny":
            return "intention-deny"
        if self._allow_declared:
            if self._allow.matches(caller, local) or (self._mesh and in_domain):
                return None
            return "not-allowed"
        if intention == "allow" or (authorizer.default_policy == "allow-mesh" and in_domain):
            return None
        return "default-deny"


class PolicyGate:
    """Stands in front of one route's handling: checks the caller, then runs its stages."""

    def __init__(self, app: ASGIApp, info: RouteInfo, authorizer: Authorizer) -> None:
        self.app = app  # the route's own handle
        self.route = info.path
        self._authorizer = authorizer
        self._access = RouteAccess(authorizer, info.policies)
        self._pipeline = build_pipeline(app, info.policies, route=info.path)
        self._by_method: Mapping[str, tuple[RouteAccess, ASGIApp]] = {
            method: (
                RouteAccess(authorizer, policies),
                build_pipeline(app, policies, route=info.path),
            )
            for method, policies in info.by_method.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access, app = self._access, self._pipeline
        if self._by_method and scope["type"] == "http":
            access, app = self._by_method.get(scope["method"], (access, app))
        caller = peer_identity(scope)
        reason = access.check(caller)
        if reason is not None:
            await self._authorizer.refuse(scope, send, caller, self.route, reason)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)  # limits are for HTTP requests
            return
        await app(scope, receive, send)


def install_gates(routes: Sequence[BaseRoute], authorizer: Authorizer) -> int:
    """Put a PolicyGate in front of every route not yet gated; returns how many were added.

    The gate replaces the route object's ``handle``: the one call every router (Starlette's,
    and FastAPI's for directly added and included routes alike) makes after matching.
    """
    added = 0
    for info in iter_routes(routes):
        route = info.route
        if isinstance(vars(route).get("handle"), PolicyGate):
            continue
        route.handle = PolicyGate(route.handle, info, authorizer)  # type: ignore[method-assign]
        added += 1
    return added


class AuthzMiddleware:
    """Pure ASGI: gates the routes of ``routes`` (e.g. ``app.router.routes``) lazily.

    ``app`` is the next ASGI app; the gates run inside it, after routing.
    """

    def __init__(
        self, app: ASGIApp, *, routes: Sequence[BaseRoute], authorizer: Authorizer
    ) -> None:
        self.app = app
        self.authorizer = authorizer
        self._routes = routes
        self._gated_count = -1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Re-check when the route list grew, so a route added late is never ungated.
        if self._gated_count != len(self._routes) and scope["type"] != "lifespan":
            install_gates(self._routes, self.authorizer)
            self._gated_count = len(self._routes)
        await self.app(scope, receive, send)
