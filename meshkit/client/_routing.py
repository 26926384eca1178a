"""The discovery chain in the client: each call routed, split and resolved before its stack.

``RoutingTransport`` sits above a destination's own stack. A destination no router,
splitter or resolver names costs one set lookup per call. Otherwise the chain's
``Decision`` picks the target (service and subset), and the call goes through that
target's own stack (balancer over the subset's instances, retries, breaker), built once
per target and rule and kept; the route's prefix rewrite, header changes and request
timeout are applied to the request first, response header changes to its answer. A
target with no healthy instance hands the call to the resolver's failover targets in
turn; it is skipped before its stack is entered, since each target's stack reports the
calls it runs and the call is one call, reported by the target that served it.

A changed chain takes effect with the next call: tables are swapped whole, stacks of
targets still in use are kept, so no call in flight is dropped by a change.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import parse_qsl

from meshkit._httpx import AsyncBaseTransport, Headers, Request, Response
from meshkit.client._errors import NoHealthyInstances
from meshkit.client._transports import TIMEOUT_EXTENSION
from meshkit.registry.base import Endpoint, EndpointSource
from meshkit.registry.routing import Decision, HeaderChanges, RoutingTable, Target
from meshkit.registry.routing_watch import RoutingSource

TargetStack = Callable[[str, Target, Decision], AsyncBaseTransport]
_MAX_TARGETS = 256  # targets whose emptiness is remembered (they come from the entries)


class SubsetSource:
    """An ``EndpointSource`` narrowed to one subset of a service by the resolver's filter,
    following both the endpoint source and the routing table."""

    def __init__(self, source: EndpointSource, routing: RoutingSource, target: Target) -> None:
        self._source = source
        self._routing = routing
        self._target = target

    @property
    def generation(self) -> int:
        return chain_generation(self._source, self._routing)

    def endpoints(self, service: str) -> Sequence[Endpoint] | None:
        found = self._source.endpoints(service)
        return None if found is None else self._routing.table.select(self._target, found)

    async def prime(self, service: str) -> Sequence[Endpoint]:
        return await subset_endpoints(self._source, self._routing, self._target)


def chain_generation(source: EndpointSource, routing: RoutingSource) -> int:
    # Either changing may change a subset; users only compare it for equality.
    return (source.generation << 24) + routing.generation


async def subset_endpoints(
    source: EndpointSource, routing: RoutingSource, target: Target
) -> list[Endpoint]:
    """The healthy instances of ``target`` (primed from the registry on first use)."""
    found = source.endpoints(target.service)
    if found is None:
        found = await source.prime(target.service)
    return routing.table.select(target, found)


class RoutingTransport(AsyncBaseTransport):
    """Route calls to ``service`` (the destination's registry name) by the chain."""

    def __init__(
        self,
        service: str,
        inner: AsyncBaseTransport,
        *,
        source: EndpointSource,
        routing: RoutingSource,
        target_stack: TargetStack,
        host_of: Callable[[str], str],
    ) -> None:
        self._service = service
        self._inner = inner
        self._source = source
        self._routing = routing
        self._empty: dict[Target, tuple[int, bool]] = {}  # target -> (generation, empty)
        self._target_stack = target_stack
        self._host_of = host_of
        self._host = host_of(service)  # the destination's own calls; other hosts pass through

    def handle_async_request(self, request: Request) -> Coroutine[Any, Any, Response]:
        # Not a coroutine itself: a call the chain leaves alone goes on to the
        # destination's stack without a frame of this layer's.
        table = self._routing.table
        if self._service not in table.services or request.url.host != self._host:
            return self._inner.handle_async_request(request)
        return self._routed(request, table)

    async def _routed(self, request: Request, table: RoutingTable) -> Response:
        url = request.url
        headers = {name.lower(): value for name, value in request.headers.items()}
        query = dict(parse_qsl(url.query.decode("ascii", "replace"), keep_blank_values=True))
        decision = table.decide(self._service, request.method, url.path, headers, query)
        _rewrite(request, decision)
        targets = (decision.target, *decision.failover)
        last = len(targets) - 1
        for number, target in enumerate(targets):
            if number < last and await self._is_empty(target):
                continue  # failing over here keeps the call out of the empty target's metrics
            destination = self._host_of(target.service)
            request.url = request.url.copy_with(host=destination)
            request.headers["host"] = destination
            stack = self._target_stack(destination, target, decision)
            try:
                response = await stack.handle_async_request(request)
            except NoHealthyInstances:  # emptied since the check above
                if number == last:
                    raise
                continue
            if decision.response_headers:
                _change_headers(response.headers, decision.response_headers)
            return response
        raise AssertionError("unreachable: the loop returns or raises")

    async def _is_empty(self, target: Target) -> bool:
        """Whether ``target`` has no instance; the subset's filter runs again only when
        the endpoints or the chain changed, not on every call."""
        generation = chain_generation(self._source, self._routing)
        known = self._empty.get(target)
        if known is not None and known[0] == generation:
            return known[1]
        empty = not await subset_endpoints(self._source, self._routing, target)
        if len(self._empty) >= _MAX_TARGETS:
            self._empty.clear()
        self._empty[target] = (generation, empty)
        return empty


def _rewrite(request: Request, decision: Decision) -> None:
    """The route's prefix rewrite, header changes and request timeout, on the request."""
    if decision.rewrite is not None:
        prefix, replacement = decision.rewrite
        path = request.url.raw_path
        if path.startswith(prefix.encode()):
            request.url = request.url.copy_with(
                raw_path=replacement.encode() + path[len(prefix.encode()) :]
            )
    if decision.headers:
        _change_headers(request.headers, decision.headers)
    if decision.timeout is not None and TIMEOUT_EXTENSION not in request.extensions:
        request.extensions[TIMEOUT_EXTENSION] = decision.timeout


def _change_headers(headers: Headers, changes: HeaderChanges) -> None:
    """A route's or split's ``RequestHeaders``/``ResponseHeaders``: remove, set, add."""
    for name in changes.remove:
        if name in headers:
            del headers[name]
    for name, value in changes.set:
        headers[name] = value
    for name, value in changes.add:
        existing = headers.get(name)
        headers[name] = value if existing is None else f"{existing},{value}"
