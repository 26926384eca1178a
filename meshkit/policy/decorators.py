"""Handler policies: decorators that attach policy value objects to endpoints.

    @allow("web", "cart")                who may call: service names or SPIFFE ID globs
    @allow(anonymous=True)               callers without a certificate too (permissive TLS)
    @deny("legacy-*")                    who may not: a deny wins over every allow
    @timeout(2.0)                        504 when the handler runs longer
    @rate_limit("100/s", per="caller")   token bucket; 429 with Retry-After
    @concurrency(10, queue=20)           503 when every slot and queue place is taken
    @idempotent(ttl=3600, store=...)     one execution per (caller, Idempotency-Key)

The decorators only attach immutable values (``__meshkit_policies__``) and return the
endpoint unchanged, so they stack in any order: on endpoint functions, on HTTPEndpoint
classes and their methods, and on FastAPI path operations above or below ``@app.get``.
Enforcement lives in ``meshkit.middleware.authz``, which compiles each route's
policies once per app, when the app is built; a route without limits pays only for
the caller check.

Caller names: a bare name (``"web"``, ``"pay*"``) matches a caller's service name when
the caller is in this service's trust domain and namespace; a ``spiffe://`` pattern
matches the caller's whole SPIFFE ID (``"spiffe://meshkit.local/ns/*/svc/web"``).
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal, TypeVar

from starlette.routing import BaseRoute, Host, Mount, Route, WebSocketRoute

from meshkit.errors import ConfigError, IdentityError
from meshkit.identity import SpiffeId
from meshkit.policy.idempotency.base import IdempotencyStore
from meshkit.settings import DefaultPolicy, InFlight

POLICIES_ATTRIBUTE = "__meshkit_policies__"
RatePer = Literal["caller", "global"]
_GLOB = re.compile(r"[*?\[]")
_NAME_PATTERN = re.compile(r"[a-z0-9*?\[\]!-]+")
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour)\s*")
_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_PERIODS |= {"h": 3600.0, "hour": 3600.0}
_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "QUERY")

F = TypeVar("F")


@dataclass(frozen=True, slots=True)
class Allow:
    """Callers that may reach the endpoint; ``mesh``: any identity of our trust domain."""

    callers: tuple[str, ...] = ()
    anonymous: bool = False
    mesh: bool = False


@dataclass(frozen=True, slots=True)
class Deny:
    """Callers refused whatever else allows them."""

    callers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Timeout:
    """The handler runs in a cancel scope of ``seconds``; 504 when it expires."""

    seconds: float


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket of ``burst`` tokens refilled at ``rate`` per second."""

    rate: float
    burst: int
    per: RatePer = "caller"


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most ``limit`` requests run at once, ``queue`` more wait; the rest get 503."""

    limit: int
    queue: int = 0


@dataclass(frozen=True, slots=True)
class Idempotent:
    """Run a request once per (caller, Idempotency-Key); keep its response ``ttl`` seconds.

    ``store`` None: the service's configured store (``MESHKIT_IDEMPOTENCY_STORE``), else
    one in memory per route, of ``max_entries``. ``in_flight`` None: the service's
    ``MESHKIT_IDEMPOTENCY_IN_FLIGHT``. A waiting request gives up after ``wait_timeout``.
    """

    ttl: float = 24 * 3600.0
    max_entries: int = 10_000
    max_body_bytes: int = 1 << 20
    store: IdempotencyStore | None = None
    in_flight: InFlight | None = None
    wait_timeout: float = 30.0


Policy = Allow | Deny | Timeout | RateLimit | Concurrency | Idempotent


# -- decorators ------------------------------------------------------------------------


def allow(*callers: str, anonymous: bool = False, mesh: bool = False) -> Callable[[F], F]:
    """Let only these callers in (plus everyone ``mesh=True`` / ``anonymous=True`` adds)."""
    if not callers and not anonymous and not mesh:
        raise ConfigError("allow() needs at least one caller, mesh=True or anonymous=True")
    return _attaching(Allow(_checked_callers(callers), anonymous=anonymous, mesh=mesh))


def deny(*callers: str) -> Callable[[F], F]:
    """Refuse these callers; a deny wins over decorators, intentions and the default."""
    if not callers:
        raise ConfigError("deny() needs at least one caller")
    return _attaching(Deny(_checked_callers(callers)))


def timeout(seconds: float) -> Callable[[F], F]:
    if not seconds > 0:
        raise ConfigError(f"timeout() must be positive, got {seconds!r}")
    return _attaching(Timeout(float(seconds)))


def rate_limit(rate: str, *, per: RatePer = "caller", burst: int | None = None) -> Callable[[F], F]:
    """``rate`` is ``"<count>/<period>"``: ``"100/s"``, ``"30/m"``, ``"5/10s"``, ``"1000/h"``.

    The bucket holds ``burst`` tokens (default: the count), so a caller idle for a whole
    period may send ``count`` requests at once.
    """
    if per not in ("caller", "global"):
        raise ConfigError(f"rate_limit(per=) must be 'caller' or 'global', got {per!r}")
    count, period = parse_rate(rate)
    size = math.ceil(count) if burst is None else burst
    if size < 1:
        raise ConfigError(f"rate_limit(burst=) must be at least 1, got {size!r}")
    return _attaching(RateLimit(count / period, size, per))


def concurrency(limit: int, *, queue: int = 0) -> Callable[[F], F]:
    if limit < 1 or queue < 0:
        raise ConfigError(f"concurrency() needs limit >= 1 and queue >= 0, got {limit}, {queue}")
    return _attaching(Concurrency(limit, queue))


def idempotent(
    *,
    ttl: float = 24 * 3600.0,
    store: IdempotencyStore | None = None,
    in_flight: InFlight | None = None,
    wait_timeout: float = 30.0,
    max_entries: int = 10_000,
    max_body_bytes: int = 1 << 20,
) -> Callable[[F], F]:
    """Requests with an ``Idempotency-Key`` run once per (service, caller, key).

    A repeat gets the stored response; the key with another request (method, path or
    body) gets 422; while the key runs elsewhere a request waits for its result
    (``in_flight="wait"``, at most ``wait_timeout`` seconds) or gets 409 with
    Retry-After (``"reject"``). ``store`` decides where keys live: across instances only
    with a shared one (``SQLiteStore``, ``ConsulKVStore`` or your own).
    """
    if ttl <= 0 or max_entries < 1 or max_body_bytes < 0 or wait_timeout < 0:
        raise ConfigError(
            "idempotent() needs ttl > 0, max_entries >= 1, max_body_bytes >= 0, wait_timeout >= 0"
        )
    if in_flight not in (None, "wait", "reject"):
        raise ConfigError(f"idempotent(in_flight=) must be 'wait' or 'reject', got {in_flight!r}")
    policy = Idempotent(
        float(ttl), max_entries, max_body_bytes, store, in_flight, float(wait_timeout)
    )
    return _attaching(policy)


def parse_rate(rate: str) -> tuple[float, float]:
    """``"100/s"`` -> (100.0, 1.0); ``"5/10s"`` -> (5.0, 10.0)."""
    match = _RATE.fullmatch(rate)
    if match is None or float(match[1]) <= 0 or match[2] == "0":
        raise ConfigError(f"rate must look like '100/s', '30/m' or '5/10s', got {rate!r}")
    multiple = float(match[2]) if match[2] else 1.0
    return float(match[1]), multiple * _PERIODS[match[3]]


def _attaching(policy: Policy) -> Callable[[F], F]:
    def decorate(target: F) -> F:
        combined = (*policies_of(target), policy)
        RoutePolicies.merge(combined)  # fail at import time on conflicting stacks
        setattr(target, POLICIES_ATTRIBUTE, combined)
        return target

    return decorate


def _checked_callers(callers: Iterable[str]) -> tuple[str, ...]:
    checked = tuple(callers)
    for pattern in checked:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"caller patterns are non-empty strings, got {pattern!r}")
        if pattern.startswith("spiffe://"):
            if not _GLOB.search(pattern):
                try:
                    SpiffeId.parse(pattern)
                except IdentityError as exc:
                    raise ConfigError(f"caller {pattern!r}: {exc}") from exc
        elif not _NAME_PATTERN.fullmatch(pattern):
            raise ConfigError(
                f"caller {pattern!r} is neither a service name (glob) nor a spiffe:// pattern"
            )
    return checked


def policies_of(target: object) -> tuple[Policy, ...]:
    """The policies attached to an endpoint (unwrapping ``functools.partial``)."""
    while isinstance(target, functools.partial):
        target = target.func
    return tuple(getattr(target, POLICIES_ATTRIBUTE, ()))


# -- merged view -----------------------------------------------------------------------


@dataclass(frozen=True)
class RoutePolicies:
    """Every policy of one route (and method), merged from a stack of decorators.

    Allow and deny lists add up; ``timeout``, ``concurrency`` and ``idempotent`` may be
    given once (a method's own replaces its HTTPEndpoint class's); rate limits add up.
    """

    allow: tuple[str, ...] = ()
    allow_declared: bool = False
    anonymous: bool = False
    mesh: bool = False
    deny: tuple[str, ...] = ()
    timeout: Timeout | None = None
    rate_limits: tuple[RateLimit, ...] = ()
    concurrency: Concurrency | None = None
    idempotent: Idempotent | None = None

    @classmethod
    def merge(
        cls, policies: Iterable[Policy], *, base: RoutePolicies | None = None
    ) -> RoutePolicies:
        fields_: dict[str, Any] = {} if base is None else dict(base.__dict__)
        fields_.setdefault("allow", ())
        fields_.setdefault("deny", ())
        fields_.setdefault("rate_limits", ())
        seen: set[str] = set()
        for policy in policies:
            _merge_one(fields_, seen, policy)
        return cls(**fields_)

    @property
    def has_limits(self) -> bool:
        return bool(self.timeout or self.rate_limits or self.concurrency or self.idempotent)

    def describe(self, default_policy: DefaultPolicy) -> dict[str, Any]:
        """A JSON-ready account of what this route enforces, the mesh default included."""
        if self.allow_declared:
            mode = "allow-list"
        else:
            mode = "allow-mesh" if default_policy == "allow-mesh" else "intentions-only"
        described: dict[str, Any] = {
            "access": mode,
            "allow": sorted(self.allow),
            "allow_mesh": self.mesh,
            "anonymous": self.anonymous,
            "deny": sorted(self.deny),
            "timeout": self.timeout.seconds if self.timeout else None,
            "rate_limits": [
                {"rate_per_second": limit.rate, "burst": limit.burst, "per": limit.per}
                for limit in self.rate_limits
            ],
            "concurrency": None,
            "idempotent": None,
        }
        if self.concurrency:
            described["concurrency"] = {
                "limit": self.concurrency.limit,
                "queue": self.concurrency.queue,
            }
        if self.idempotent:
            described["idempotent"] = {
                "ttl": self.idempotent.ttl,
                "max_entries": self.idempotent.max_entries,
            }
        return described


def _merge_one(fields_: dict[str, Any], seen: set[str], policy: Policy) -> None:
    if isinstance(policy, Allow):
        fields_["allow"] = (*fields_["allow"], *policy.callers)
        fields_["allow_declared"] = True
        fields_["anonymous"] = fields_.get("anonymous", False) or policy.anonymous
        fields_["mesh"] = fields_.get("mesh", False) or policy.mesh
    elif isinstance(policy, Deny):
        fields_["deny"] = (*fields_["deny"], *policy.callers)
    elif isinstance(policy, RateLimit):
        fields_["rate_limits"] = (*fields_["rate_limits"], policy)
    else:
        name = {Timeout: "timeout", Concurrency: "concurrency", Idempotent: "idempotent"}[
            type(policy)
        ]
        if name in seen:
            raise ConfigError(f"@{name} is given twice on one endpoint")
        seen.add(name)
        fields_[name] = policy


# -- caller matching -------------------------------------------------------------------


@dataclass(frozen=True)
class CallerSet:
    """Caller patterns compiled for matching: exact names in sets, globs in lists."""

    names: frozenset[str] = frozenset()
    name_globs: tuple[str, ...] = ()
    ids: frozenset[str] = frozenset()
    id_globs: tuple[str, ...] = ()

    @classmethod
    def of(cls, patterns: Iterable[str]) -> CallerSet:
        names: set[str] = set()
        ids: set[str] = set()
        name_globs: list[str] = []
        id_globs: list[str] = []
        for pattern in patterns:
            spiffe = pattern.startswith("spiffe://")
            if _GLOB.search(pattern):
                (id_globs if spiffe else name_globs).append(pattern)
            else:
                (ids if spiffe else names).add(pattern)
        return cls(frozenset(names), tuple(name_globs), frozenset(ids), tuple(id_globs))

    def __bool__(self) -> bool:
        return bool(self.names or self.name_globs or self.ids or self.id_globs)

    def matches(self, caller: SpiffeId, local_name: str | None) -> bool:
        """``local_name``: the caller's service name if it shares our domain and namespace."""
        if local_name is not None and (
            local_name in self.names or any(fnmatchcase(local_name, g) for g in self.name_globs)
        ):
            return True
        # Both forms: a pattern in meshkit's form names the workload whatever form
        # (Consul's adds the datacenter) its certificate carries.
        return any(
            uri in self.ids or any(fnmatchcase(uri, g) for g in self.id_globs)
            for uri in (caller.uri, caller.workload_uri)
        )


# -- routes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteInfo:
    """One routed endpoint: its path template, the Starlette route, policies per method.

    ``by_method`` maps a method to its policies when an HTTPEndpoint method has its
    own; ``policies`` serves every other method.
    """

    path: str
    route: BaseRoute
    methods: tuple[str, ...]
    policies: RoutePolicies
    by_method: Mapping[str, RoutePolicies] = field(default_factory=dict)


def iter_routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[RouteInfo]:
    """Every endpoint route under ``routes``, descending into Mounts, Hosts and FastAPI's
    included routers (which keep the original route objects and add a prefix)."""
    for route in routes:
        info = route_info(route, prefix)
        if info is not None:
            yield info
        elif (inner := sub_routes(route, prefix)) is not None:
            yield from iter_routes(*inner)


def route_info(route: BaseRoute, prefix: str = "") -> RouteInfo | None:
    """``route`` as one endpoint, or None when it holds other routes (or is unknown)."""
    if isinstance(route, Route | WebSocketRoute):
        return _route_info(route, prefix + route.path)
    if isinstance(route, Mount | Host) and not route.routes:
        # A mounted app without routes (static files, another framework) is one
        # endpoint: gated whole, with the policies attached to the app itself.
        path = prefix + (route.path if isinstance(route, Mount) else "") + "/{path:path}"
        return RouteInfo(path, route, ("*",), RoutePolicies.merge(policies_of(route.app)))
    return None


def sub_routes(route: BaseRoute, prefix: str = "") -> tuple[Sequence[BaseRoute], str] | None:
    """The routes a Mount, Host or FastAPI included router holds, with their path
    prefix; None for an endpoint or a route type meshkit does not know."""
    if isinstance(route, Mount):
        return route.routes, prefix + route.path
    if isinstance(route, Host):
        return route.routes, prefix
    included = getattr(route, "original_router", None)
    if included is None:
        return None
    included_prefix = getattr(getattr(route, "include_context", None), "prefix", "")
    return included.routes, prefix + included_prefix


def _route_info(route: Route | WebSocketRoute, path: str) -> RouteInfo:
    endpoint = route.endpoint
    base = RoutePolicies.merge(policies_of(endpoint))
    if isinstance(route, WebSocketRoute):
        return RouteInfo(path, route, ("WEBSOCKET",), base)
    methods = tuple(sorted(route.methods or ()))
    by_method: dict[str, RoutePolicies] = {}
    if inspect.isclass(endpoint):
        methods = methods or _endpoint_methods(endpoint)
        for method in methods:
            handler = getattr(endpoint, "get" if method == "HEAD" else method.lower(), None)
            own = policies_of(handler) if handler is not None else ()
            if own:
                by_method[method] = RoutePolicies.merge(own, base=base)
    return RouteInfo(path, route, methods, base, by_method)


def _endpoint_methods(endpoint: type) -> tuple[str, ...]:
    found = [m for m in _HTTP_METHODS if getattr(endpoint, m.lower(), None) is not None]
    if "GET" in found and "HEAD" not in found:
        found.append("HEAD")
    return tuple(sorted(found))


def policy_manifest(
    routes: Sequence[BaseRoute], *, default_policy: DefaultPolicy, service: str | None = None
) -> dict[str, Any]:
    """Every route with its effective policies, in a stable order (for CI diffs)."""
    entries = []
    for info in iter_routes(routes):
        for method in info.methods or ("*",):
            policies = info.by_method.get(method, info.policies)
            entries.append(
                {
                    "path": info.path,
                    "method": method,
                    "name": getattr(info.route, "name", None),
                    **policies.describe(default_policy),
                }
            )
    entries.sort(key=lambda entry: (entry["path"], entry["method"]))
    return {"service": service, "default_policy": default_policy, "routes": entries}
