"""Consul's discovery chain, as meshkit applies it to each call: router, splitter, resolver.

For a call to ``inventory`` the chain decides, as Consul compiles it for its proxies:

1. ``service-router/inventory``: the first route whose HTTP match (path exact, prefix or
   regex; methods; headers; query parameters) fits the request gives a destination
   (service, subset, prefix rewrite, request timeout, retries, request and response
   header changes); none fitting means ``inventory`` itself.
2. ``service-splitter/<service>``, unless the route named a subset: one split, drawn by
   weight, gives the service and subset (and header changes). A split to another
   service that has a splitter of its own is replaced by that splitter's splits when
   the table is built, weights multiplied, as Consul's compiler flattens them.
3. ``service-resolver/<service>``: an empty subset becomes its ``DefaultSubset``; a
   ``Redirect`` replaces the target; ``Failover`` (for the subset, else ``*``) lists
   where calls go when the target has no healthy instance; its timeouts apply.

Subsets select instances with their resolver's bexpr ``Filter`` (``Service.Meta.version
== v2``: the ``MESHKIT_VERSION`` an instance publishes is its ``version`` meta and tag).
A ``RoutingTable`` is immutable; a watcher replaces it whole when an entry changes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshkit.registry.base import Endpoint
from meshkit.registry.bexpr import FilterError, Match, compile_filter
from meshkit.registry.connect_intentions import HTTPMatch, permission_from_json, warn_once

KINDS = ("service-router", "service-splitter", "service-resolver")
_NANOSECONDS = 1e9
_MAX_HOPS = 8  # resolver redirect chains longer than this stop there
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(duration: Any) -> float | None:
    """A Go duration as Consul shows it ("1.5s", "1m30s") or nanoseconds, in seconds."""
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        return duration / _NANOSECONDS if duration else None
    if not isinstance(duration, str) or not duration:
        return None
    parts = _DURATION_PART.findall(duration)
    total = sum(float(number) * _UNIT[unit] for number, unit in parts)
    return total or None


@dataclass(frozen=True, slots=True)
class Target:
    """Where a call goes: a service (by registry name) and one of its subsets ("": all)."""

    service: str
    subset: str = ""


@dataclass(frozen=True, slots=True)
class HeaderChanges:
    """``RequestHeaders`` of a route or split: headers added, set, removed."""

    add: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> HeaderChanges:
        raw = raw or {}
        return cls(
            add=tuple((str(k), str(v)) for k, v in (raw.get("Add") or {}).items()),
            set=tuple((str(k), str(v)) for k, v in (raw.get("Set") or {}).items()),
            remove=tuple(str(name) for name in raw.get("Remove") or ()),
        )

    def then(self, other: HeaderChanges) -> HeaderChanges:
        return HeaderChanges(self.add + other.add, self.set + other.set, self.remove + other.remove)

    def __bool__(self) -> bool:
        return bool(self.add or self.set or self.remove)


@dataclass(frozen=True, slots=True)
class Retries:
    """A route's retry rule (``NumRetries``, ``RetryOnConnectFailure``, status codes)."""

    num_retries: int = 0
    on_connect_failure: bool = False
    on_status: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    """What the chain decided for one call."""

    target: Target
    failover: tuple[Target, ...] = ()
    timeout: float | None = None  # the route's RequestTimeout, else the resolver's
    connect_timeout: float | None = None
    retries: Retries | None = None
    rewrite: tuple[str, str] | None = None  # (matched path prefix, replacement)
    headers: HeaderChanges = field(default_factory=HeaderChanges)
    response_headers: HeaderChanges = field(default_factory=HeaderChanges)


@dataclass(frozen=True)
class _QueryMatch:
    name: str
    present: bool
    exact: str
    regex: re.Pattern[str] | None

    def matches(self, query: Mapping[str, str]) -> bool:
        value = query.get(self.name)
        if value is None:
            return False
        if self.present:
            return True
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        return value == self.exact


@dataclass(frozen=True)
class _Route:
    http: HTTPMatch
    query: tuple[_QueryMatch, ...]
    destination: Mapping[str, Any]

    def matches(
        self, method: str, path: str, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> bool:
        return self.http.matches(method, path, headers) and all(
            match.matches(query) for match in self.query
        )

    @property
    def matched_prefix(self) -> str:
        return self.http.path_prefix or self.http.path_exact


@dataclass(frozen=True)
class _Split:
    weight: int  # in 0.01 % units, as Consul scales them
    target: Target
    headers: HeaderChanges
    response_headers: HeaderChanges


@dataclass(frozen=True)
class _Resolver:
    subsets: Mapping[str, Match]
    default_subset: str
    redirect: Target | None
    failover: Mapping[str, tuple[Target, ...]]
    connect_timeout: float | None
    request_timeout: float | None


class RoutingTable:
    """The discovery-chain entries in force, compiled once for per-call decisions."""

    def __init__(self, entries: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> None:
        entries = entries or {}
        self._routers = {e["Name"]: _routes(e) for e in entries.get("service-router", ())}
        splitters = {e["Name"]: _splits(e) for e in entries.get("service-splitter", ())}
        self._splitters = {name: _flattened(name, splitters, ()) for name in splitters}
        self._resolvers = {e["Name"]: _resolver(e) for e in entries.get("service-resolver", ())}
        self.services = frozenset(self._routers) | set(self._splitters) | set(self._resolvers)

    def decide(
        self,
        service: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
    ) -> Decision:
        """The chain's decision for one call to ``service`` (headers by lower-case name)."""
        destination: Mapping[str, Any] = {}
        rewrite = None
        for route in self._routers.get(service, ()):
            if route.matches(method, path, headers, query):
                destination = route.destination
                if destination.get("PrefixRewrite"):
                    rewrite = (route.matched_prefix, str(destination["PrefixRewrite"]))
                break
        target = Target(destination.get("Service") or service, destination.get("ServiceSubset", ""))
        changes = HeaderChanges.from_json(destination.get("RequestHeaders"))
        answer_changes = HeaderChanges.from_json(destination.get("ResponseHeaders"))
        if not target.subset:
            target, split = self._split(target)
            if split is not None:
                changes = changes.then(split.headers)
                answer_changes = split.response_headers.then(answer_changes)  # the route's last
        target, resolver = self._resolve(target)
        route_timeout = seconds(destination.get("RequestTimeout"))
        return Decision(
            target=target,
            failover=resolver.failover.get(target.subset) or resolver.failover.get("*", ()),
            timeout=route_timeout or resolver.request_timeout,
            connect_timeout=resolver.connect_timeout,
            retries=_retries(destination),
            rewrite=rewrite,
            headers=changes,
            response_headers=answer_changes,
        )

    def _split(self, target: Target) -> tuple[Target, _Split | None]:
        """The split drawn for ``target`` from its service's flattened splitter."""
        splits = self._splitters.get(target.service)
        if not splits:
            return target, None
        split = _draw(splits)
        return split.target, split

    def splits(self, service: str) -> list[tuple[float, Target]]:
        """``service``'s splitter as flattened: (percent, target) per split."""
        return [(split.weight / 100, split.target) for split in self._splitters.get(service, ())]

    def _resolve(self, target: Target) -> tuple[Target, _Resolver]:
        resolver = self._resolvers.get(target.service, _NO_RESOLVER)
        for _ in range(_MAX_HOPS):
            if resolver.redirect is None or resolver.redirect == target:
                break
            target = resolver.redirect
            resolver = self._resolvers.get(target.service, _NO_RESOLVER)
        if not target.subset and resolver.default_subset:
            target = Target(target.service, resolver.default_subset)
        return target, resolver

    def subset_filter(self, target: Target) -> Match | None:
        """Which instances of ``target.service`` make the subset (None: all of them; a
        subset the resolver does not define selects none)."""
        if not target.subset:
            return None
        resolver = self._resolvers.get(target.service, _NO_RESOLVER)
        return resolver.subsets.get(target.subset, _NONE)

    def select(self, target: Target, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        match = self.subset_filter(target)
        return list(endpoints) if match is None else [e for e in endpoints if match(e)]


def _none(endpoint: Endpoint) -> bool:
    return False


def _all(endpoint: Endpoint) -> bool:
    return True


_NONE: Match = _none
_NO_RESOLVER = _Resolver({}, "", None, {}, None, None)


def _flattened(
    service: str, splitters: Mapping[str, tuple[_Split, ...]], seen: tuple[str, ...]
) -> tuple[_Split, ...]:
    """``service``'s splits, each that names another service with a splitter (and no
    subset) replaced by that splitter's flattened splits: Consul's compiler does this
    (``flattenAdjacentSplitterNodes``), weights multiplied and rounded to 0.01 %, the
    outer split's request header changes applied before the inner's and its response
    changes after (``ServiceSplit.MergeParent``). Consul refuses a loop of splitters;
    one that got here anyway stops where it would repeat."""
    flat: list[_Split] = []
    for split in splitters[service]:
        inner = split.target.service
        if split.target.subset or inner == service or inner not in splitters or inner in seen:
            flat.append(split)
            continue
        for child in _flattened(inner, splitters, (*seen, service)):
            weight = (split.weight * child.weight + 5000) // 10000  # Go's math.Round, >= 0
            headers = split.headers.then(child.headers)
            response_headers = child.response_headers.then(split.response_headers)
            flat.append(_Split(weight, child.target, headers, response_headers))
    return tuple(flat)


def _draw(splits: Sequence[_Split]) -> _Split:
    point = random.random() * sum(split.weight for split in splits)
    for split in splits:
        point -= split.weight
        if point < 0:
            return split
    return splits[-1]


def _routes(entry: Mapping[str, Any]) -> tuple[_Route, ...]:
    routes = []
    for index, raw in enumerate(entry.get("Routes") or ()):
        http = (raw.get("Match") or {}).get("HTTP") or {}
        invalid = _invalid_regex(http)
        if invalid is not None:
            _warn_once(entry["Name"], index, invalid)
            continue
        match = permission_from_json({"Action": "allow", "HTTP": http}).http
        query = tuple(_query_match(q) for q in http.get("QueryParam") or ())
        routes.append(_Route(match, query, raw.get("Destination") or {}))
    return tuple(routes)


def _invalid_regex(http: Mapping[str, Any]) -> str | None:
    """The first of a match's patterns (PathRegex, a Header's or QueryParam's Regex) that
    does not compile. Consul stores routers without compiling them (its Validate only
    counts PathRegex among the path forms), so one may arrive here; Envoy would then
    refuse the router's whole route table. meshkit skips the one route instead: calls
    it would have taken go on down the list, as when it does not match."""
    patterns = [http.get("PathRegex")]
    patterns += [header.get("Regex") for header in http.get("Header") or ()]
    patterns += [param.get("Regex") for param in http.get("QueryParam") or ()]
    for pattern in patterns:
        if pattern:
            try:
                re.compile(pattern)
            except re.error:
                return str(pattern)
    return None


def _warn_once(router: str, index: int, pattern: str) -> None:
    """Tables are rebuilt on every change of any entry: say it once per bad route."""
    warn_once(
        (router, index, pattern),
        "service-router %s: Route[%d] skipped: its regex %r does not compile",
        router,
        index,
        pattern,
    )


def _query_match(raw: Mapping[str, Any]) -> _QueryMatch:
    regex = re.compile(raw["Regex"]) if raw.get("Regex") else None  # checked in _routes
    return _QueryMatch(raw["Name"], bool(raw.get("Present")), raw.get("Exact") or "", regex)


def _splits(entry: Mapping[str, Any]) -> tuple[_Split, ...]:
    name = entry["Name"]
    return tuple(
        _Split(
            round(float(raw.get("Weight") or 0) * 100),
            Target(raw.get("Service") or name, raw.get("ServiceSubset") or ""),
            HeaderChanges.from_json(raw.get("RequestHeaders")),
            HeaderChanges.from_json(raw.get("ResponseHeaders")),
        )
        for raw in entry.get("Splits") or ()
    )


def _resolver(entry: Mapping[str, Any]) -> _Resolver:
    name = entry["Name"]
    subsets: dict[str, Match] = {}
    for subset, raw in (entry.get("Subsets") or {}).items():
        try:
            subsets[subset] = compile_filter(raw["Filter"]) if raw.get("Filter") else _all
        except FilterError:
            subsets[subset] = _none  # written past validation: select nothing, never all
    redirect = entry.get("Redirect")
    failover = {
        subset: _failover_targets(name, subset, raw)
        for subset, raw in (entry.get("Failover") or {}).items()
    }
    return _Resolver(
        subsets=subsets,
        default_subset=entry.get("DefaultSubset") or "",
        redirect=Target(redirect.get("Service") or name, redirect.get("ServiceSubset") or "")
        if redirect
        else None,
        failover=failover,
        connect_timeout=seconds(entry.get("ConnectTimeout")),
        request_timeout=seconds(entry.get("RequestTimeout")),
    )


def _failover_targets(name: str, subset: str, raw: Mapping[str, Any]) -> tuple[Target, ...]:
    """Failover destinations in order; datacenters and peers are not meshkit's to reach."""
    own = "" if subset == "*" else subset
    if raw.get("Targets"):
        return tuple(
            Target(t.get("Service") or name, t.get("ServiceSubset") or "")
            for t in raw["Targets"]
            if not (t.get("Datacenter") or t.get("Peer"))
        )
    if raw.get("Service") or raw.get("ServiceSubset"):
        service = raw.get("Service") or name
        return (Target(service, raw.get("ServiceSubset") or ("" if service != name else own)),)
    return ()


#: The HTTP statuses Envoy's ``retry_on`` conditions cover (the rest are about streams
#: and gRPC, or transport failures meshkit always retries when nothing was sent).
_RETRY_ON_STATUS = {
    "5xx": frozenset(range(500, 600)),
    "gateway-error": frozenset({502, 503, 504}),
    "retriable-4xx": frozenset({409}),
}


def _retries(destination: Mapping[str, Any]) -> Retries | None:
    codes = frozenset(int(code) for code in destination.get("RetryOnStatusCodes") or ())
    for condition in destination.get("RetryOn") or ():
        codes |= _RETRY_ON_STATUS.get(str(condition), frozenset())
    retries = Retries(
        int(destination.get("NumRetries") or 0),
        bool(destination.get("RetryOnConnectFailure")),
        codes,
    )
    return retries if retries != Retries() else None
