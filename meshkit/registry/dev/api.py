"""The dev registry's HTTP API: a pure ASGI app answering Consul's paths, codes and texts.

Reads that Consul serves as blocking queries take ``?index=`` and ``?wait=`` (default five
minutes, at most ten, plus up to wait/16 of jitter as Consul adds) and answer with
``X-Consul-Index``, which is never 0. Refusals are plain text with Consul's wording.

Client input never gets a 5xx: bodies are read only as far as their endpoint allows
(a KV value 512 KiB, a JSON body 1 MiB) and decoded as Go decodes them (``decode``), query
strings are read as Go reads them (``query``), and anything a handler did not expect is
logged and answered with a bare 500, never a traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote_plus

import anyio

from meshkit.registry.dev.agent import CONSUL_VERSION, DevAgent
from meshkit.registry.dev.catalog import datacenter_of
from meshkit.registry.dev.config_entries import ConfigEndpoints, ConfigEntries
from meshkit.registry.dev.config_kinds import KINDS
from meshkit.registry.dev.decode import (
    STRING,
    Fields,
    decode_check,
    decode_service,
    decode_top,
)
from meshkit.registry.dev.errors import AgentError, DecodeError, bad_request, rpc_error
from meshkit.registry.dev.gojson import loads
from meshkit.registry.dev.http import (
    Disconnected,
    Request,
    Response,
    dump,
    json_response,
    query_headers,
    text_response,
)
from meshkit.registry.dev.intentions_api import DefaultPolicy, IntentionEndpoints
from meshkit.registry.dev.query import (
    first,
    go_quote,
    parse_options,
    parse_query,
    parse_uint,
    parse_wait,
)
from meshkit.registry.dev.state import PASSING, STATUSES, Check, Service

logger = logging.getLogger("meshkit.registry")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

LEADER = "127.0.0.1:8300"
#: Consul's kv_max_value_size default, and the text it refuses a larger value with.
MAX_KV_SIZE = 512 * 1024
KV_LIMIT_DOCS = "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size"
#: A JSON body (registrations, updates); the server's connection policy refuses larger
#: bodies before they reach the app (serve.REGISTRY_LIMITS).
MAX_BODY_BYTES = 1024 * 1024
#: JSON bodies larger than this decode in a worker thread, one at a time: a hostile 1 MiB
#: body then costs its own request time, not every other client's.
INLINE_JSON_BYTES = 64 * 1024
HEALTH_CACHE_MAX = 20_000  # serialized /v1/health/service answers, keyed by query, per index
#: Endpoints that go through Consul's ``parse`` (datacenter, consistency, blocking
#: options); the status endpoints read only ``?dc``.
_QUERY_OPTION_PATHS = ("/v1/catalog/service", "/v1/catalog/node", "/v1/health/", "/v1/kv/")
_DATACENTER_PATHS = (*_QUERY_OPTION_PATHS, "/v1/status/")
#: Consul's KV key rules (agent/kvs_endpoint.go): no path traversal, plain or encoded.
_KV_ENCODED_TRAVERSAL = r"%2e%2e(%2f|%5c|/)|\.\.%2f|\.\.%5c|%252e%252e%252f"
_KV_PATH_TRAVERSAL = re.compile(r"\.\.[\\/]|" + _KV_ENCODED_TRAVERSAL, re.IGNORECASE)
_KV_KEY_TRAVERSAL = re.compile(r"\.\.[\\/]|^\.\.|\.\.$")
_KV_KEY_ENCODED = re.compile(_KV_ENCODED_TRAVERSAL, re.IGNORECASE)
_CHECK_UPDATE = Fields([("Status", "Status", STRING), ("Output", "Output", STRING)])


Handler = Callable[[Request], Awaitable[Response]]
Selection = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]  # ?tag=..., ?node-meta=k:v


class DevRegistryApp:
    """ASGI entry point; ``agent`` holds the state, the app only speaks HTTP."""

    def __init__(self, agent: DevAgent, *, acl_default_policy: DefaultPolicy = "allow") -> None:
        self.agent = agent
        self.acl_default_policy = acl_default_policy
        self.store = agent.store
        self._health_cache: dict[tuple[str, bool, Selection], tuple[int, bytes]] = {}
        self._decode_slot: anyio.CapacityLimiter | None = None  # made in the event loop
        get, put = "GET", "PUT"
        self._exact: dict[str, dict[str, Handler]] = {
            "/v1/agent/services": {get: self.agent_services},
            "/v1/agent/checks": {get: self.agent_checks},
            "/v1/agent/self": {get: self.agent_self},
            "/v1/agent/members": {get: self.agent_members},
            "/v1/agent/service/register": {put: self.agent_service_register},
            "/v1/agent/check/register": {put: self.agent_check_register},
            "/v1/agent/maintenance": {put: self.agent_node_maintenance},
            "/v1/catalog/services": {get: self.catalog_services},
            "/v1/catalog/nodes": {get: self.catalog_nodes},
            "/v1/catalog/datacenters": {get: self.catalog_datacenters},
            "/v1/catalog/register": {put: self.catalog_register},
            "/v1/catalog/deregister": {put: self.catalog_deregister},
            "/v1/status/leader": {get: self.status_leader},
            "/v1/status/peers": {get: self.status_peers},
        }
        self._prefixes: list[tuple[str, dict[str, Handler]]] = [
            ("/v1/agent/service/deregister/", {put: self.agent_service_deregister}),
            ("/v1/agent/service/maintenance/", {put: self.agent_service_maintenance}),
            ("/v1/agent/service/", {get: self.agent_service}),
            ("/v1/agent/check/deregister/", {put: self.agent_check_deregister}),
            ("/v1/agent/check/pass/", {put: self.ttl_handler(PASSING)}),
            ("/v1/agent/check/warn/", {put: self.ttl_handler("warning")}),
            ("/v1/agent/check/fail/", {put: self.ttl_handler("critical")}),
            ("/v1/agent/check/update/", {put: self.agent_check_update}),
            ("/v1/health/service/", {get: self.health_service}),
            ("/v1/health/checks/", {get: self.health_checks}),
            ("/v1/health/node/", {get: self.health_node}),
            ("/v1/health/state/", {get: self.health_state}),
            ("/v1/catalog/service/", {get: self.catalog_service}),
            ("/v1/catalog/node/", {get: self.catalog_node}),
            ("/v1/kv/", {get: self.kv_get, put: self.kv_put, "DELETE": self.kv_delete}),
        ]
        self.config_entries = ConfigEntries(self.store, KINDS)
        self._include(ConfigEndpoints(self, self.config_entries).routes())
        self._include(IntentionEndpoints(self, self.config_entries).routes())

    def _include(self, routes: tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]) -> None:
        """Add the routes of an endpoint module (config entries, Connect) to the tables."""
        exact, prefixes = routes
        self._exact.update(exact)
        self._prefixes.extend(prefixes)

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            response = await self._handle(scope, receive)
        except Disconnected:
            return
        except Exception:
            # A bug, not the client's doing: logged in full here, a bare 500 for the client.
            logger.exception("dev registry: %s %r failed", scope.get("method"), scope.get("path"))
            response = text_response(500, "Internal Server Error")
        # Consul 1.9+ names its ACL default policy on every answer (also the intentions'
        # default when none matches), ACLs enabled or not.
        policy = (b"X-Consul-Default-Acl-Policy", self.acl_default_policy.encode())
        headers = [policy, *response.headers]
        if response.content_type:
            headers.append((b"Content-Type", response.content_type.encode()))
        headers.append((b"Content-Length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as task_group:
            await receive()  # lifespan.startup
            task_group.start_soon(self.agent.run)
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            task_group.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    async def _handle(self, scope: Scope, receive: Receive) -> Response:
        path: str = scope["path"]
        if not path.isprintable():
            return Response(400)  # Consul's cleanhttp.PrintablePathCheckHandler: no body
        routes, rest = self._route(path)
        if routes is None:
            return _not_found(path)
        method: str = scope["method"]
        allow = ",".join(["OPTIONS", *routes]).encode()
        if method == "OPTIONS":
            return Response(headers=[(b"Allow", allow)])
        handler = routes.get(method)
        if handler is None:
            response = text_response(405, f"method {method} not allowed")
            response.headers.append((b"Allow", allow))
            return response
        try:
            return await self._dispatch(handler, scope, rest, receive)
        except AgentError as exc:
            return text_response(exc.status, exc.reason)
        except DecodeError as exc:
            return text_response(400, f"Request decode failed: {exc}")

    async def _dispatch(
        self, handler: Handler, scope: Scope, rest: str, receive: Receive
    ) -> Response:
        path: str = scope["path"]
        query = parse_query(scope.get("query_string", b""))
        request = Request(scope["method"], path, rest, query, scope.get("headers", []), receive)
        if path.startswith(_QUERY_OPTION_PATHS):
            request.blocking = parse_options(query, request.header(b"cache-control"))
        if path.startswith(_DATACENTER_PATHS):
            self._check_datacenter(first(query, "dc"))
        if request.has("filter"):
            raise bad_request(
                "Failed to create boolean expression evaluator: "
                "?filter is not supported by the meshkit dev registry"
            )
        response = await handler(request)
        if request.has("pretty") and response.content_type == "application/json":
            response.body = json.dumps(json.loads(response.body), indent=4).encode() + b"\n"
        return response

    def _route(self, path: str) -> tuple[dict[str, Handler] | None, str]:
        exact = self._exact.get(path)
        if exact is not None:
            return exact, ""
        for prefix, routes in self._prefixes:
            if path.startswith(prefix):
                return routes, path[len(prefix) :]
        return None, ""

    def _check_datacenter(self, datacenter: str) -> None:
        """Consul forwards a request for another datacenter; this one knows no other."""
        if datacenter and datacenter != self.store.datacenter:
            raise rpc_error("No path to datacenter")

    async def _json(self, request: Request) -> Any:
        """The request's JSON body, read no further than MAX_BODY_BYTES. Large bodies decode
        in a worker thread, one at a time, and are read only once their turn comes."""
        length = request.content_length()
        if length is not None and length <= INLINE_JSON_BYTES:
            return loads(await _body(request, MAX_BODY_BYTES))
        if self._decode_slot is None:
            self._decode_slot = anyio.CapacityLimiter(1)
        async with self._decode_slot:
            body = await _body(request, MAX_BODY_BYTES)
            return await anyio.to_thread.run_sync(loads, body)

    # -- blocking queries ---------------------------------------------------------------

    async def _blocking(
        self,
        request: Request,
        topics: Iterable[str],
        compute: Callable[[], tuple[int, Response]],
        *,
        prefix: str | None = None,
    ) -> Response:
        min_index, wait = request.blocking.index, request.blocking.wait
        index, response = compute()
        if min_index > 0 and index <= min_index:
            # Consul spreads wake-ups of idle watchers with up to wait/16 of jitter.
            deadline = time.monotonic() + wait + random.uniform(0, wait / 16)
            topics = list(topics)
            while index <= min_index and time.monotonic() < deadline and not self.store.closing:
                await self.store.wait(topics, deadline, prefix=prefix)
                index, response = compute()
        response.headers = query_headers(index) + response.headers
        return response

    # -- agent ---------------------------------------------------------------------------

    def _local_checks(self) -> dict[str, Check]:
        own = self.store.checks.get(self.agent.node_name, {})
        return {cid: c for cid, c in own.items() if cid != "serfHealth"}

    async def agent_services(self, request: Request) -> Response:
        datacenter = self.store.datacenter
        services = self.agent.local_services()
        return json_response({sid: s.agent_json(datacenter) for sid, s in services.items()})

    async def agent_service(self, request: Request) -> Response:
        parse_wait(request.query)  # validated as Consul does; answers at once (no hash wait)
        service = self.agent.local_services().get(request.rest)
        if service is None:
            return text_response(404, f"unknown service ID: {request.rest}")
        return json_response(service.agent_json(self.store.datacenter))

    async def agent_checks(self, request: Request) -> Response:
        return json_response({cid: c.to_json() for cid, c in self._local_checks().items()})

    async def agent_self(self, request: Request) -> Response:
        return json_response(
            {
                "Config": {
                    "Datacenter": self.store.datacenter,
                    "PrimaryDatacenter": self.store.datacenter,
                    "NodeName": self.agent.node_name,
                    "NodeID": self.agent.node_id,
                    "Revision": "meshkit-dev",
                    "Server": True,
                    "Version": CONSUL_VERSION,
                },
                "Coord": None,
                "Member": self._member(),
                "Stats": {"consul": {"server": "true", "leader": "true", "bootstrap": "true"}},
                "Meta": {"consul-network-segment": "", "consul-version": CONSUL_VERSION},
            }
        )

    def _member(self) -> dict[str, Any]:
        return {
            "Name": self.agent.node_name,
            "Addr": "127.0.0.1",
            "Port": 8301,
            "Tags": {"dc": self.store.datacenter, "role": "consul", "build": CONSUL_VERSION},
            "Status": 1,
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        }

    async def agent_members(self, request: Request) -> Response:
        return json_response([self._member()])

    async def agent_service_register(self, request: Request) -> Response:
        definition = decode_service(await self._json(request))
        flag = "replace-existing-checks"
        replace = request.has(flag) and request.param(flag) in ("", "true")
        self.agent.register_service(definition, replace_checks=replace)
        return Response()

    async def agent_service_deregister(self, request: Request) -> Response:
        self.agent.deregister_service(request.rest)
        return Response()

    async def agent_service_maintenance(self, request: Request) -> Response:
        if not request.rest:
            raise bad_request("Missing service ID")
        enable = _enable_param(request)
        self.agent.service_maintenance(request.rest, enable=enable, reason=request.param("reason"))
        return Response()

    async def agent_node_maintenance(self, request: Request) -> Response:
        enable = _enable_param(request)
        self.agent.node_maintenance(enable=enable, reason=request.param("reason"))
        return Response()

    async def agent_check_register(self, request: Request) -> Response:
        self.agent.register_check(decode_check(await self._json(request)))
        return Response()

    async def agent_check_deregister(self, request: Request) -> Response:
        self.agent.deregister_check(request.rest)
        return Response()

    def ttl_handler(self, status: str) -> Handler:
        async def handler(request: Request) -> Response:
            self.agent.update_ttl(request.rest, status, request.param("note"))
            return Response()

        return handler

    async def agent_check_update(self, request: Request) -> Response:
        values = decode_top(
            await self._json(request), _CHECK_UPDATE, "agent.checkUpdate", struct="checkUpdate"
        )
        status = values.get("Status", "")
        if status not in STATUSES:
            raise bad_request(f"Invalid check status: '{status}'")
        self.agent.update_ttl(request.rest, status, values.get("Output", ""))
        return Response()

    # -- health --------------------------------------------------------------------------

    async def health_service(self, request: Request) -> Response:
        name = request.rest
        passing = _passing_param(request)
        selection = _selection(request)

        def compute() -> tuple[int, Response]:
            index = self.store.service_index(name)
            key = (name, passing, selection)
            cached = self._health_cache.get(key)
            if cached is None or cached[0] != index:
                if len(self._health_cache) > HEALTH_CACHE_MAX:
                    self._health_cache.clear()  # distinct queries are few; this only bounds abuse
                cached = (index, dump(self._health_entries(name, passing, selection)))
                self._health_cache[key] = cached
            return index, Response(200, cached[1], "application/json")

        return await self._blocking(request, [f"svc:{name}"], compute)

    def _health_entries(self, name: str, passing: bool, selection: Selection) -> list[Any]:
        return self.health_entries_of(
            self._selected(self.store.instances(name), selection), passing
        )

    def health_entries_of(self, services: list[Service], passing: bool) -> list[Any]:
        """/v1/health entries (node, service, checks) of ``services``."""
        entries = []
        for service in services:
            checks = sorted(
                [
                    *self.store.node_checks(service.node),
                    *self.store.checks_of_service(service.node, service.id),
                ],
                key=lambda c: c.check_id,
            )
            if passing and any(c.status != PASSING for c in checks):
                continue
            entries.append(
                {
                    "Node": self.store.nodes[service.node].to_json(),
                    "Service": service.node_service_json(),
                    "Checks": [c.to_json() for c in checks],
                }
            )
        return entries

    def _selected(self, services: list[Service], selection: Selection) -> list[Service]:
        """?tag (all of them, case-insensitively) and ?node-meta (all pairs) filters."""
        tags, node_meta = selection
        wanted = [t.lower() for t in tags]
        return [
            s
            for s in services
            if all(t in {x.lower() for x in s.tags} for t in wanted)
            and _has_meta(self.store.nodes[s.node].meta, node_meta)
        ]

    async def health_checks(self, request: Request) -> Response:
        name = request.rest

        def compute() -> tuple[int, Response]:
            checks = [
                c.to_json()
                for s in self.store.instances(name)
                for c in self.store.checks_of_service(s.node, s.id)
            ]
            return self.store.service_index(name), json_response(checks)

        return await self._blocking(request, [f"svc:{name}"], compute)

    async def health_node(self, request: Request) -> Response:
        node = request.rest

        def compute() -> tuple[int, Response]:
            checks = sorted(self.store.checks.get(node, {}).values(), key=lambda c: c.check_id)
            return self.store.topic_index("checks"), json_response([c.to_json() for c in checks])

        return await self._blocking(request, ["checks"], compute)

    async def health_state(self, request: Request) -> Response:
        state = request.rest
        if state not in (*STATUSES, "any"):
            raise bad_request("Invalid check state")

        def compute() -> tuple[int, Response]:
            checks = [
                c.to_json() for c in self.store.all_checks() if state == "any" or c.status == state
            ]
            return self.store.topic_index("checks"), json_response(checks)

        return await self._blocking(request, ["checks"], compute)

    # -- catalog -------------------------------------------------------------------------

    async def catalog_services(self, request: Request) -> Response:
        def compute() -> tuple[int, Response]:
            listing: dict[str, list[str]] = {}
            for name in sorted(self.store.by_name):
                tags: dict[str, None] = {}
                for service in self.store.instances(name):
                    tags.update(dict.fromkeys(service.tags))
                listing[name] = list(tags)
            return self.store.topic_index("services"), json_response(listing)

        return await self._blocking(request, ["services"], compute)

    async def catalog_service(self, request: Request) -> Response:
        name = request.rest
        selection = _selection(request)

        def compute() -> tuple[int, Response]:
            entries = [
                s.catalog_json(self.store.nodes[s.node])
                for s in self._selected(self.store.instances(name), selection)
            ]
            return self.store.service_index(name), json_response(entries)

        return await self._blocking(request, [f"svc:{name}"], compute)

    async def catalog_nodes(self, request: Request) -> Response:
        _, node_meta = _selection(request)

        def compute() -> tuple[int, Response]:
            nodes = [
                n.to_json()
                for _, n in sorted(self.store.nodes.items())
                if _has_meta(n.meta, node_meta)
            ]
            return self.store.topic_index("nodes"), json_response(nodes)

        return await self._blocking(request, ["nodes"], compute)

    async def catalog_node(self, request: Request) -> Response:
        name = request.rest

        def compute() -> tuple[int, Response]:
            index = self.store.topic_index("nodes", "services")
            node = self.store.nodes.get(name)
            if node is None:
                return index, json_response(None)
            services = self.store.services.get(name, {})
            body = {
                "Node": node.to_json(),
                "Services": {sid: s.node_service_json() for sid, s in services.items()},
            }
            return index, json_response(body)

        return await self._blocking(request, ["nodes", "services"], compute)

    async def catalog_datacenters(self, request: Request) -> Response:
        return json_response([self.store.datacenter])

    async def catalog_register(self, request: Request) -> Response:
        raw = await self._json(request)
        self._check_datacenter(datacenter_of(raw))
        self.agent.catalog_register(raw)
        return json_response(True)

    async def catalog_deregister(self, request: Request) -> Response:
        raw = await self._json(request)
        self._check_datacenter(datacenter_of(raw))
        self.agent.catalog_deregister(raw)
        return json_response(True)

    async def status_leader(self, request: Request) -> Response:
        return json_response(LEADER)

    async def status_peers(self, request: Request) -> Response:
        return json_response([LEADER])

    # -- KV ------------------------------------------------------------------------------

    async def kv_get(self, request: Request) -> Response:
        key = _kv_key(request)
        keys, recurse = request.has("keys"), request.has("recurse")
        if not key and not (keys or recurse):
            raise bad_request("Missing key name")
        if keys:
            separator = request.param("separator") or request.param("seperator")
            return await self._blocking(
                request, [], lambda: self._kv_keys(key, separator), prefix=key
            )
        if recurse:
            return await self._blocking(
                request, [], lambda: self._kv_entries(key, request), prefix=key
            )
        return await self._blocking(
            request, [f"kv:{key}"], lambda: self._kv_entries(key, request, exact=True)
        )

    def _kv_keys(self, prefix: str, separator: str) -> tuple[int, Response]:
        found: dict[str, None] = {}
        for key in sorted(k for k in self.store.kv if k.startswith(prefix)):
            if separator:
                cut = key.find(separator, len(prefix))
                if cut >= 0:
                    key = key[: cut + len(separator)]
            found[key] = None
        index = self.store.topic_index("kvs")
        if not found and prefix:  # Consul: the root lists as [], a missing prefix is a 404
            return index, Response(404)
        return index, json_response(list(found))

    def _kv_entries(
        self, key: str, request: Request, *, exact: bool = False
    ) -> tuple[int, Response]:
        index = self.store.topic_index("kvs")
        if exact:
            entry = self.store.kv.get(key)
            entries = [entry] if entry is not None else []
            if entry is not None:
                # Consul (KVS.Get): one key's index is its ModifyIndex, so a blocking read
                # made with it waits for that key, whatever else was written meanwhile.
                index = entry.modify_index
        else:
            entries = [self.store.kv[k] for k in sorted(self.store.kv) if k.startswith(key)]
        if not entries:
            return index, Response(404)
        if request.has("raw") and exact:
            # Consul's headers for raw values: a stored value is never sniffed or run.
            sandbox = [
                (b"X-Content-Type-Options", b"nosniff"),
                (b"Content-Security-Policy", b"sandbox"),
            ]
            return index, Response(200, entries[0].value or b"", "text/plain", sandbox)
        body = [
            {
                "LockIndex": 0,
                "Key": e.key,
                "Flags": e.flags,
                "Value": base64.b64encode(e.value).decode() if e.value is not None else None,
                "CreateIndex": e.create_index,
                "ModifyIndex": e.modify_index,
            }
            for e in entries
        ]
        return index, json_response(body)

    async def kv_put(self, request: Request) -> Response:
        """Consul's KVSPut, in its order: key, flags, options, size, then the value."""
        key = _kv_key(request)
        if not key:
            raise bad_request("Missing key name")
        _refuse_conflicting(request, "cas", "acquire", "release")
        flags = _uint_param(request, "flags") or 0
        cas = _uint_param(request, "cas")
        length = request.content_length()
        if length is not None and length > MAX_KV_SIZE:
            raise AgentError(
                413,
                f"Request body({length} bytes) too large, max size: {MAX_KV_SIZE} bytes. "
                f"See {KV_LIMIT_DOCS}.",
            )
        body = await request.read(MAX_KV_SIZE)
        if body is None:  # no Content-Length, and more than the limit streamed
            raise AgentError(
                413, f"Request body too large, max size: {MAX_KV_SIZE} bytes. See {KV_LIMIT_DOCS}."
            )
        session = request.param("acquire") or request.param("release")
        if request.has("acquire") or request.has("release"):
            raise rpc_error(f"Invalid session {go_quote(session)}")  # the registry has none
        written = self.store.kv_put(key, body or None, flags, cas)
        self.store.commit()
        return json_response(written)

    async def kv_delete(self, request: Request) -> Response:
        key = _kv_key(request)
        _refuse_conflicting(request, "recurse", "cas")
        recurse = request.has("recurse")
        if not key and not recurse:
            raise bad_request("Missing key name")
        deleted = self.store.kv_delete(key, recurse=recurse, cas=_uint_param(request, "cas"))
        self.store.commit()
        return json_response(deleted)


def _not_found(path: str) -> Response:
    """What Consul's index handler answers for a path no endpoint serves."""
    if path == "/":
        return text_response(
            200,
            "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent "
            "configuration and restart.",
        )
    if "/v1/" in path:
        return text_response(404, "Invalid URL path: not a recognized HTTP API endpoint\n")
    return text_response(
        404,
        "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n",
    )


async def _body(request: Request, limit: int) -> bytes:
    body = await request.read(limit)
    if body is None:
        raise AgentError(413, f"Request body too large, max size: {limit} bytes")
    return body


def _kv_key(request: Request) -> str:
    """The key, refused as Consul refuses path traversal in it (plain or URL-encoded) and,
    as its later releases do, blanks around it."""
    if _KV_PATH_TRAVERSAL.search(request.path):
        raise bad_request("URL path contains invalid or encoded traversal sequence")
    key = request.rest
    if key.startswith("/"):
        raise bad_request("key must not begin with a '/'")
    if _KV_KEY_TRAVERSAL.search(key):
        raise bad_request("key contains path traversal sequence")
    if _KV_KEY_ENCODED.search(key):
        raise bad_request("key contains encoded path traversal sequence")
    if key != key.strip():
        raise bad_request("key must not begin or end with whitespace")
    return key


def _refuse_conflicting(request: Request, *flags: str) -> None:
    """Consul's conflictingFlags: at most one of ``flags``; the whole query is echoed."""
    if sum(flag in request.query for flag in flags) > 1:
        pairs = sorted((k, v) for k, values in request.query.items() for v in values)
        encoded = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs)
        raise bad_request(f"Conflicting flags: {encoded}\n")


def _selection(request: Request) -> Selection:
    tags = tuple(request.query.get("tag", ()))
    pairs = (raw.partition(":") for raw in request.query.get("node-meta", ()))
    return tags, tuple((key, value) for key, _, value in pairs)


def _has_meta(meta: dict[str, str], wanted: tuple[tuple[str, str], ...]) -> bool:
    return all(meta.get(key) == value for key, value in wanted)


def _enable_param(request: Request) -> bool:
    if not request.has("enable"):
        raise bad_request("Missing value for enable")
    raw = request.param("enable")
    parsed = _go_bool(raw)
    if parsed is None:
        raise bad_request(f'Invalid value for enable: "{raw}"')
    return parsed


def _passing_param(request: Request) -> bool:
    if not request.has("passing"):
        return False
    raw = request.param("passing")
    if raw == "":
        return True
    parsed = _go_bool(raw)
    if parsed is None:
        raise bad_request("Invalid value for ?passing")
    return parsed


def _go_bool(raw: str) -> bool | None:
    """strconv.ParseBool."""
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def _uint_param(request: Request, name: str) -> int | None:
    """A uint64 parameter (``?cas``, ``?flags``); Go's own error text when it is not one."""
    if not request.has(name):
        return None
    try:
        return parse_uint(request.param(name))
    except DecodeError as exc:
        raise rpc_error(str(exc)) from None  # Consul returns the bare error (as a 500)
