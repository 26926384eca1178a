"""MeshClient (an httpx.AsyncClient bound to one destination) and the factory owning them.

httpx's own request path costs ~75 µs of CPU per call before any I/O (URL parsing
and merging, cookie jar, auth and redirect machinery, response decoding), more than
aiohttp spends on a whole request. ``MeshClient.request`` keeps the httpx API but
takes a short path for the common call (a relative URL, no params, cookies, auth,
redirects or event hooks): merged URLs are cached per path, bodiless requests are
copied from a cached one, and the request goes straight to the transport stack.
Anything else takes httpx's full path, through the same transports.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Coroutine, Mapping
from typing import Any

from meshkit._httpx import (
    URL,
    USE_CLIENT_DEFAULT,
    AsyncBaseTransport,
    AsyncClient,
    Headers,
    Request,
    Response,
    Timeout,
    client_headers,
    copy_request,
    header_fields,
    plain_client,
)
from meshkit.client._balancer import Balancer
from meshkit.client._breaker import CircuitBreaker
from meshkit.client._budget import RetryBudget
from meshkit.client._hedging import HedgeTransport
from meshkit.client._hooks import BreakerChanged, BreakerState, ClientHooks, recorder_for
from meshkit.client._mirror import MirrorTransport
from meshkit.client._policy import ClientPolicy
from meshkit.client._routing import RoutingTransport, SubsetSource
from meshkit.client._transports import (
    TIMEOUT_EXTENSION,
    BalancerTransport,
    BreakerTransport,
    LimitTransport,
    MeshTransport,
    PassthroughTransport,
    PoolSender,
    RetryTransport,
)
from meshkit.errors import ConfigError
from meshkit.identity import SpiffeId
from meshkit.registry.base import EndpointSource
from meshkit.registry.routing import Decision, Target
from meshkit.registry.routing_watch import RoutingSource
from meshkit.settings import _NAME as _DNS_LABEL
from meshkit.settings import MeshSettings
from meshkit.tls import TLSContexts

_URL_CACHE_SIZE = 1024
_USER_AGENT = "meshkit"


class MeshClient(AsyncClient):
    """An ``httpx.AsyncClient`` whose relative URLs go to one mesh destination.

    ``await client.get("/items")`` calls ``http://<destination>/items`` through
    discovery, balancing, retries and mTLS; absolute URLs of other hosts pass through.
    Responses are read whole (mesh calls are RPCs). Cookies are not kept between
    calls on the short path: service-to-service calls carry no session.
    """

    def __init__(self, destination: str, transport: AsyncBaseTransport) -> None:
        super().__init__(
            base_url=f"http://{destination}",
            transport=transport,
            trust_env=False,
            headers={"user-agent": _USER_AGENT},
        )
        # Compression costs CPU on both sides of a datacenter hop; ask for none. Accept
        # and Connection say what HTTP/1.1 means without them (any type, keep-alive),
        # and each header is parsed again by the callee on every call.
        for default in ("accept-encoding", "accept", "connection"):
            del self.headers[default]
        self.destination = destination
        self._mesh_transport = transport  # what the short path calls, past httpx's send()
        self._urls: dict[str, URL] = {}
        self._templates: dict[
            tuple[str, str], tuple[list[tuple[bytes, bytes, bytes]], Request]
        ] = {}

    def request(
        self,
        method: str,
        url: URL | str,
        *,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        auth: Any = USE_CLIENT_DEFAULT,
        follow_redirects: Any = USE_CLIENT_DEFAULT,
        timeout: Any = USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        # Not a coroutine itself: the short path hands the caller the transport stack's
        # coroutine, so a call awaits no frame of this method's. What it raises while
        # building the request is raised when the call is awaited, as from httpx's.
        try:
            extensions = {} if extensions is None else dict(extensions)
            if timeout is not USE_CLIENT_DEFAULT:
                seconds = timeout_seconds(timeout)
                if seconds is not None:
                    extensions[TIMEOUT_EXTENSION] = seconds
            short = (
                type(url) is str
                and params is None
                and data is None
                and files is None
                and cookies is None
                and auth is USE_CLIENT_DEFAULT
                and follow_redirects is USE_CLIENT_DEFAULT
                and plain_client(self)
            )
            if short:
                assert isinstance(url, str)
                if content is None and json is None and headers is None:
                    request = self._bodiless(method, url, extensions)
                else:
                    request = self._with_body(method, url, content, json, headers, extensions)
        except Exception as exc:
            return _raise(exc)
        if short:
            # run_call gives a MeshCallError this request, as httpx's send() does.
            return self._mesh_transport.handle_async_request(request)
        return super().request(
            method,
            url,
            content=content,
            data=data,
            files=files,
            json=json,
            params=params,
            headers=headers,
            cookies=cookies,
            auth=auth,
            follow_redirects=follow_redirects,
            timeout=timeout,
            extensions=extensions,
        )

    def get(
        self,
        url: URL | str,
        *,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        auth: Any = USE_CLIENT_DEFAULT,
        follow_redirects: Any = USE_CLIENT_DEFAULT,
        timeout: Any = USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """httpx's ``get``, handing on ``request``'s coroutine (one frame fewer a call)."""
        return self.request(
            "GET",
            url,
            params=params,
            headers=headers,
            cookies=cookies,
            auth=auth,
            follow_redirects=follow_redirects,
            timeout=timeout,
            extensions=extensions,
        )

    def head(
        self,
        url: URL | str,
        *,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        auth: Any = USE_CLIENT_DEFAULT,
        follow_redirects: Any = USE_CLIENT_DEFAULT,
        timeout: Any = USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """httpx's ``head`` (see ``get``)."""
        return self.request(
            "HEAD",
            url,
            params=params,
            headers=headers,
            cookies=cookies,
            auth=auth,
            follow_redirects=follow_redirects,
            timeout=timeout,
            extensions=extensions,
        )

    def options(
        self,
        url: URL | str,
        *,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        auth: Any = USE_CLIENT_DEFAULT,
        follow_redirects: Any = USE_CLIENT_DEFAULT,
        timeout: Any = USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """httpx's ``options`` (see ``get``)."""
        return self.request(
            "OPTIONS",
            url,
            params=params,
            headers=headers,
            cookies=cookies,
            auth=auth,
            follow_redirects=follow_redirects,
            timeout=timeout,
            extensions=extensions,
        )

    def delete(
        self,
        url: URL | str,
        *,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        auth: Any = USE_CLIENT_DEFAULT,
        follow_redirects: Any = USE_CLIENT_DEFAULT,
        timeout: Any = USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """httpx's ``delete`` (see ``get``)."""
        return self.request(
            "DELETE",
            url,
            params=params,
            headers=headers,
            cookies=cookies,
            auth=auth,
            follow_redirects=follow_redirects,
            timeout=timeout,
            extensions=extensions,
        )

    def post(
        self,
        url: URL | str,
        *,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        auth: Any = USE_CLIENT_DEFAULT,
        follow_redirects: Any = USE_CLIENT_DEFAULT,
        timeout: Any = USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """httpx's ``post`` (see ``get``)."""
        return self.request(
            "POST",
            url,
            content=content,
            data=data,
            files=files,
            json=json,
            params=params,
            headers=headers,
            cookies=cookies,
            auth=auth,
            follow_redirects=follow_redirects,
            timeout=timeout,
            extensions=extensions,
        )

    def put(
        self,
        url: URL | str,
        *,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        auth: Any = USE_CLIENT_DEFAULT,
        follow_redirects: Any = USE_CLIENT_DEFAULT,
        timeout: Any = USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """httpx's ``put`` (see ``get``)."""
        return self.request(
            "PUT",
            url,
            content=content,
            data=data,
            files=files,
            json=json,
            params=params,
            headers=headers,
            cookies=cookies,
            auth=auth,
            follow_redirects=follow_redirects,
            timeout=timeout,
            extensions=extensions,
        )

    def patch(
        self,
        url: URL | str,
        *,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        auth: Any = USE_CLIENT_DEFAULT,
        follow_redirects: Any = USE_CLIENT_DEFAULT,
        timeout: Any = USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """httpx's ``patch`` (see ``get``)."""
        return self.request(
            "PATCH",
            url,
            content=content,
            data=data,
            files=files,
            json=json,
            params=params,
            headers=headers,
            cookies=cookies,
            auth=auth,
            follow_redirects=follow_redirects,
            timeout=timeout,
            extensions=extensions,
        )

    def _with_body(
        self,
        method: str,
        url: str,
        content: Any,
        json: Any,
        headers: Any,
        extensions: dict[str, Any],
    ) -> Request:
        """A request with a body or headers of its own, built by httpx's ``Request()``."""
        target = self._urls.get(url) or self._remember(url)
        merged = self.headers
        if headers is not None:
            merged = Headers(merged)
            merged.update(headers)
        return Request(
            method, target, headers=merged, content=content, json=json, extensions=extensions
        )

    def _bodiless(self, method: str, url: str, extensions: dict[str, Any]) -> Request:
        """A request with no body and the client's headers: a copy of one built before.

        httpx's ``Request()`` derives the same headers, Host and empty body again on every
        call, a sizeable share of a mesh call's CPU; copied from the template it derives
        nothing. It gets its own headers and extensions, so the transports may add to them.
        """
        key = (method, url)
        client_fields = header_fields(client_headers(self))
        cached = self._templates.get(key)
        if cached is None or cached[0] != client_fields:  # the client's headers changed
            target = self._urls.get(url) or self._remember(url)
            cached = (list(client_fields), Request(method, target, headers=self.headers))
            if len(self._templates) < _URL_CACHE_SIZE:
                self._templates[key] = cached
        return copy_request(cached[1], extensions)  # its own headers: transports add to them

    def _remember(self, url: str) -> URL:
        merged = merge_url(self.base_url, url)
        if len(self._urls) < _URL_CACHE_SIZE:
            self._urls[url] = merged
        return merged


async def _raise(error: Exception) -> Response:
    raise error


def merge_url(base_url: URL, url: str) -> URL:
    """``url`` against the client's base URL, as ``AsyncClient.build_request`` merges it:
    a relative URL's path is appended to the base path (which ends in ``/``); an
    absolute URL stays itself."""
    target = URL(url)
    if not target.is_relative_url:
        return target
    return base_url.copy_with(raw_path=base_url.raw_path + target.raw_path.lstrip(b"/"))


def timeout_seconds(timeout: object) -> float | None:
    """A per-call ``timeout=`` argument as seconds: a number, or an httpx.Timeout's
    longest phase (the call timeout bounds the whole call, not one phase)."""
    if isinstance(timeout, int | float):
        return float(timeout)
    if isinstance(timeout, Timeout):
        phases = [t for t in (timeout.connect, timeout.read, timeout.write, timeout.pool) if t]
        return max(phases) if phases else None
    return None


def expected_identity(destination: str, settings: MeshSettings) -> tuple[str, SpiffeId]:
    """The registry name of ``destination`` and the SPIFFE ID its servers must hold.

    ``name`` is a service of the caller's namespace, ``name.namespace`` one of another,
    each a DNS label as settings require of them; the trust domain is always the
    caller's. Only this decides whom a call trusts: what the registry says of an
    instance never widens it.
    """
    name, dot, namespace = destination.partition(".")
    namespace = namespace if dot else settings.namespace
    if not (_DNS_LABEL.fullmatch(name) and _DNS_LABEL.fullmatch(namespace)):
        raise ConfigError(
            f"destination {destination!r}: expected a service name or service.namespace "
            "(DNS labels: a-z, 0-9, '-')"
        )
    return name, SpiffeId.for_service(settings.trust_domain, namespace, name)


class MeshClientFactory:
    """Creates one ``MeshClient`` per destination and owns everything under them.

    ``source`` finds endpoints, ``tls`` gives the client SSLContext at connect time
    (so rotation applies to new connections), ``settings`` give the trust domain and
    namespace of the SPIFFE IDs expected from servers. ``policies`` override
    ``policy`` for some destinations. ``routing`` (Consul's discovery-chain entries,
    watched) routes, splits and resolves calls to subsets and other services.
    """

    def __init__(
        self,
        source: EndpointSource,
        tls: TLSContexts,
        settings: MeshSettings,
        *,
        policy: ClientPolicy | None = None,
        policies: Mapping[str, ClientPolicy] | None = None,
        hooks: ClientHooks | None = None,
        routing: RoutingSource | None = None,
    ) -> None:
        self._source = source
        self._routing = routing
        self._targets: dict[tuple[Target, ClientPolicy], AsyncBaseTransport] = {}
        self._tls = tls
        self._settings = settings
        self._policy = policy or ClientPolicy()
        self._policies = dict(policies or {})
        self._hooks = hooks
        self._clients: dict[str, MeshClient] = {}
        self._balancers: list[Balancer] = []
        self._mirrors: list[MirrorTransport] = []
        self._hedgers: list[HedgeTransport] = []
        self._recorder = recorder_for(hooks)  # one per factory: every stack reports through it
        self._passthrough = PassthroughTransport(policy=self._policy, recorder=self._recorder)

    def client(self, service: str) -> MeshClient:
        """The client bound to ``service`` (created on first use, then shared)."""
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = MeshClient(service, self._stack(service))
        return client

    def _client_context(self) -> ssl.SSLContext:
        return self._tls.client

    def _stack(self, service: str) -> AsyncBaseTransport:
        """The destination's transports: mirroring, the discovery chain when there is
        a routing source, then its own stack."""
        policy = self._policies.get(service, self._policy)
        name, _ = expected_identity(service, self._settings)
        stack = self._attempts(service, policy, self._source)
        if self._routing is not None:
            stack = RoutingTransport(
                name,
                stack,
                source=self._source,
                routing=self._routing,
                target_stack=self._target_stack,
                host_of=functools.partial(_destination_of, service),
            )
        mirror = policy.mirror_to
        if mirror is None or policy.mirror_fraction <= 0:
            return stack
        if mirror == service and policy.mirror_subset is None:
            return stack  # the mirror's own client, under a shared policy, copies nothing
        return self._mirrored(service, stack, policy, mirror)

    def _target_stack(
        self, destination: str, target: Target, decision: Decision
    ) -> AsyncBaseTransport:
        """The stack of one routed target (a subset, another service; ``destination``
        names its service as the client does), made on first use for each distinct
        policy the chain gives it, then kept."""
        assert self._routing is not None
        policy = _routed_policy(self._policies.get(destination, self._policy), decision)
        key = (target, policy)
        stack = self._targets.get(key)
        if stack is None:
            source = SubsetSource(self._source, self._routing, target)
            stack = self._targets[key] = self._attempts(
                destination, policy, source, subset=target.subset
            )
        return stack

    def _attempts(
        self, service: str, policy: ClientPolicy, source: EndpointSource, *, subset: str = ""
    ) -> AsyncBaseTransport:
        """Deadline, limits, breaker, retries, hedging, balancing and the pool for the
        calls to ``service``'s endpoints that ``source`` lists (``subset`` names them
        to the hooks)."""
        hooks = self._hooks
        name, expected = expected_identity(service, self._settings)
        balancer = Balancer(
            service,
            source,
            service=name,
            policy=policy,
            ssl_context=self._client_context,
            expected_identity=expected,
            hooks=hooks,
        )
        self._balancers.append(balancer)
        budget = RetryBudget(
            ratio=policy.budget_ratio,
            min_per_second=policy.budget_min_per_second,
            ttl=policy.budget_ttl,
        )
        breaker = CircuitBreaker(
            window=policy.breaker_window,
            min_calls=policy.breaker_min_calls,
            failure_ratio=policy.breaker_failure_ratio,
            open_for=policy.breaker_open_for,
            on_change=_breaker_reporter(service, hooks),
        )
        sender = PoolSender(policy.per_try_timeout)
        attempt: AsyncBaseTransport = BalancerTransport(sender, balancer, self._recorder)
        if policy.hedging:
            hedged = HedgeTransport(
                service, attempt, balancer=balancer, budget=budget, policy=policy, hooks=hooks
            )
            self._hedgers.append(hedged)
            attempt = hedged
        retried = RetryTransport(
            service, attempt, balancer=balancer, budget=budget, policy=policy, hooks=hooks
        )
        broken = BreakerTransport(service, retried, breaker)
        limited = LimitTransport(service, broken, policy)
        return MeshTransport(
            service,
            limited,
            passthrough=self._passthrough,
            policy=policy,
            recorder=self._recorder,
            subset=subset,
        )

    def _mirrored(
        self, service: str, inner: AsyncBaseTransport, policy: ClientPolicy, mirror: str
    ) -> MirrorTransport:
        name, _ = expected_identity(mirror, self._settings)  # a bad name fails now
        subset = policy.mirror_subset
        if subset is not None and self._routing is None:
            raise ConfigError(f"{service}: mirror_subset needs routing (the resolver's subsets)")

        def mirror_transport() -> AsyncBaseTransport:
            # Built on first copy, after this client exists: no recursion between two
            # destinations that mirror to each other. A subset's stack copies nothing.
            if subset is None:
                return self.client(mirror)._mesh_transport
            target = Target(name, subset)
            return self._target_stack(mirror, target, Decision(target))

        mirrored = MirrorTransport(
            service,
            inner,
            mirror=mirror,
            mirror_transport=mirror_transport,
            fraction=policy.mirror_fraction,
            max_in_flight=policy.mirror_max_in_flight,
            hooks=self._hooks,
        )
        self._mirrors.append(mirrored)
        return mirrored

    async def aclose(self) -> None:
        """Close every connection of every client; the clients are unusable after."""
        for mirror in self._mirrors:
            mirror.close()
        for hedger in self._hedgers:
            hedger.close()
        for balancer in self._balancers:
            balancer.close()
        self._passthrough.close()
        self._clients.clear()
        self._targets.clear()
        self._balancers.clear()
        self._mirrors.clear()
        self._hedgers.clear()


def _destination_of(destination: str, service: str) -> str:
    """How the client names ``service`` of the namespace ``destination`` is in (a bare
    service name is in the caller's namespace, which a bare name keeps)."""
    _, dot, namespace = destination.partition(".")
    return f"{service}.{namespace}" if dot else service


def _routed_policy(policy: ClientPolicy, decision: Decision) -> ClientPolicy:
    """The destination's policy with what the chain sets: the resolver's connect timeout
    and the route's retries (NumRetries, the status codes to retry on)."""
    changes: dict[str, Any] = {}
    if decision.connect_timeout is not None:
        changes["connect_timeout"] = decision.connect_timeout
    retries = decision.retries
    if retries is not None:
        if retries.num_retries:
            changes["max_attempts"] = retries.num_retries + 1
        if retries.on_status:
            changes["retry_status"] = retries.on_status
    return policy.replace(**changes) if changes else policy


def _breaker_reporter(service: str, hooks: ClientHooks | None) -> Any:
    if hooks is None:
        return None

    def report(old: BreakerState, new: BreakerState) -> None:
        hooks.on_breaker_changed(BreakerChanged(service, old, new))

    return report
