"""The dev registry's HTTP API: a pure ASGI app answering Consul's paths, codes and texts.

Reads that Consul serves as blocking queries take ``?index=`` and ``?wait=`` (default five
minutes, at most ten, plus up to wait/16 of jitter as Consul adds) and answer with
``X-Consul-Index``, which is never 0. Refusals are plain text with Consul's wording.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import anyio

from meshkit.registry.dev.agent import CONSUL_VERSION, DevAgent
from meshkit.registry.dev.decode import (
    DecodeError,
    decode_check,
    decode_service,
    load_json,
    object_field,
    parse_duration,
)
from meshkit.registry.dev.errors import AgentError, bad_request
from meshkit.registry.dev.state import PASSING, STATUSES, Check, Service

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
LEADER = "127.0.0.1:8300"
MAX_KV_SIZE = 512 * 1024
HEALTH_CACHE_MAX = 20_000  # serialized /v1/health/service answers, keyed by query, per index


@dataclass
class Request:
    method: str
    path: str
    rest: str  # the path after the route's prefix (an ID, a name, a key)
    query: dict[str, list[str]]
    body: bytes

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return name in self.query


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def json_response(value: Any, *, status: int = 200, index: int | None = None) -> Response:
    response = Response(status, _dump(value), "application/json")
    if index is not None:
        response.headers = _query_headers(index)
    return response


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _query_headers(index: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"X-Consul-Default-Acl-Policy", b"allow"),
        (b"X-Consul-Effective-Consistency", b"leader"),
        (b"X-Consul-Index", str(max(index, 1)).encode()),
        (b"X-Consul-Knownleader", b"true"),
        (b"X-Consul-Lastcontact", b"0"),
        (b"X-Consul-Query-Backend", b"blocking-query"),
    ]


def text_response(status: int, text: str) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


Handler = Callable[[Request], Awaitable[Response]]
Selection = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]  # ?tag=..., ?node-meta=k:v


class DevRegistryApp:
    """ASGI entry point; ``agent`` holds the state, the app only speaks HTTP."""

    def __init__(self, agent: DevAgent) -> None:
        self.agent = agent
        self.store = agent.store
        self._health_cache: dict[tuple[str, bool, Selection], tuple[int, bytes]] = {}
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
            ("/v1/agent/check/pass/", {put: self.ttl_handler(PASSING), get: self._gone}),
            ("/v1/agent/check/warn/", {put: self.ttl_handler("warning"), get: self._gone}),
            ("/v1/agent/check/fail/", {put: self.ttl_handler("critical"), get: self._gone}),
            ("/v1/agent/check/update/", {put: self.agent_check_update}),
            ("/v1/health/service/", {get: self.health_service}),
            ("/v1/health/checks/", {get: self.health_checks}),
            ("/v1/health/node/", {get: self.health_node}),
            ("/v1/health/state/", {get: self.health_state}),
            ("/v1/catalog/service/", {get: self.catalog_service}),
            ("/v1/catalog/node/", {get: self.catalog_node}),
            ("/v1/kv/", {get: self.kv_get, put: self.kv_put, "DELETE": self.kv_delete}),
        ]

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        response = await self._handle(scope, receive)
        headers = list(response.headers)
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
        routes, rest = self._route(path)
        if routes is None:
            return text_response(404, "404 page not found\n")
        method: str = scope["method"]
        handler = routes.get(method)
        if handler is None:
            allow = ", ".join(["OPTIONS", *routes])
            response = text_response(405, f"method {method} not allowed")
            response.headers.append((b"Allow", allow.encode()))
            return response
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        request = Request(method, path, rest, query, await _read_body(receive))
        try:
            self._check_datacenter(request)
            response = await handler(request)
        except AgentError as exc:
            return text_response(exc.status, exc.reason)
        except DecodeError as exc:
            return text_response(400, f"Request decode failed: {exc}")
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

    def _check_datacenter(self, request: Request) -> None:
        datacenter = request.param("dc")
        if datacenter and datacenter != self.store.datacenter:
            raise AgentError(500, "No path to datacenter")
        if request.has("filter"):
            raise bad_request(
                "Failed to create boolean expression evaluator: "
                "?filter is not supported by the meshkit dev registry"
            )

    async def _gone(self, request: Request) -> Response:
        return text_response(405, f"method {request.method} not allowed")

    # -- blocking queries ---------------------------------------------------------------

    async def _blocking(
        self,
        request: Request,
        topics: Iterable[str],
        compute: Callable[[], tuple[int, Response]],
        *,
        prefix: str | None = None,
    ) -> Response:
        min_index, wait = _blocking_params(request)
        index, response = compute()
        if min_index > 0 and index <= min_index:
            # Consul spreads wake-ups of idle watchers with up to wait/16 of jitter.
            deadline = time.monotonic() + wait + random.uniform(0, wait / 16)
            topics = list(topics)
            while index <= min_index and time.monotonic() < deadline and not self.store.closing:
                await self.store.wait(topics, deadline, prefix=prefix)
                index, response = compute()
        response.headers = _query_headers(index) + response.headers
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
        definition = decode_service(_decode(request.body))
        replace = request.param("replace-existing-checks")
        self.agent.register_service(definition, replace_checks=replace in ("", "true"))
        return Response()

    async def agent_service_deregister(self, request: Request) -> Response:
        self.agent.deregister_service(request.rest)
        return Response()

    async def agent_service_maintenance(self, request: Request) -> Response:
        if not request.rest:
            raise bad_request("Missing service ID")
        enable = _enable_param(request)
        self.agent.service_maintenance(
            request.rest, enable=enable, reason=request.param("reason") or ""
        )
        return Response()

    async def agent_node_maintenance(self, request: Request) -> Response:
        enable = _enable_param(request)
        self.agent.node_maintenance(enable=enable, reason=request.param("reason") or "")
        return Response()

    async def agent_check_register(self, request: Request) -> Response:
        self.agent.register_check(decode_check(_decode(request.body)))
        return Response()

    async def agent_check_deregister(self, request: Request) -> Response:
        self.agent.deregister_check(request.rest)
        return Response()

    def ttl_handler(self, status: str) -> Handler:
        async def handler(request: Request) -> Response:
            self.agent.update_ttl(request.rest, status, request.param("note") or "")
            return Response()

        return handler

    async def agent_check_update(self, request: Request) -> Response:
        raw = _decode(request.body)
        if not isinstance(raw, dict):
            raise bad_request("Request decode failed: json: cannot unmarshal into checkUpdate")
        status = object_field(raw, "Status") or ""
        output = object_field(raw, "Output") or ""
        if status not in STATUSES:
            raise bad_request(f"Invalid check status: '{status}'")
        self.agent.update_ttl(request.rest, status, str(output))
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
                cached = (index, _dump(self._health_entries(name, passing, selection)))
                self._health_cache[key] = cached
            return index, Response(200, cached[1], "application/json")

        return await self._blocking(request, [f"svc:{name}"], compute)

    def _health_entries(self, name: str, passing: bool, selection: Selection) -> list[Any]:
        entries = []
        for service in self._selected(self.store.instances(name), selection):
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
        raw = _decode(request.body)
        if not isinstance(raw, dict):
            raise bad_request("Request decode failed: json: cannot unmarshal into RegisterRequest")
        self.agent.catalog_register(raw)
        return json_response(True)

    async def catalog_deregister(self, request: Request) -> Response:
        raw = _decode(request.body)
        if not isinstance(raw, dict):
            raise bad_request(
                "Request decode failed: json: cannot unmarshal into DeregisterRequest"
            )
        self.agent.catalog_deregister(raw)
        return json_response(True)

    async def status_leader(self, request: Request) -> Response:
        return json_response(LEADER)

    async def status_peers(self, request: Request) -> Response:
        return json_response([LEADER])

    # -- KV ------------------------------------------------------------------------------

    async def kv_get(self, request: Request) -> Response:
        key = request.rest
        keys, recurse = request.has("keys"), request.has("recurse")
        if not key and not (keys or recurse):
            raise bad_request("Missing key name")
        if keys:
            separator = request.param("separator") or ""
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
        if not found:
            return index, Response(404)
        return index, json_response(list(found))

    def _kv_entries(
        self, key: str, request: Request, *, exact: bool = False
    ) -> tuple[int, Response]:
        index = self.store.topic_index("kvs")
        if exact:
            entry = self.store.kv.get(key)
            entries = [entry] if entry is not None else []
        else:
            entries = [self.store.kv[k] for k in sorted(self.store.kv) if k.startswith(key)]
        if not entries:
            return index, Response(404)
        if request.has("raw") and exact:
            return index, Response(200, entries[0].value or b"", "text/plain")
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
        key = request.rest
        if not key:
            raise bad_request("Missing key name")
        if request.has("acquire") or request.has("release"):
            raise AgentError(500, "invalid session: sessions are not supported by the dev registry")
        if len(request.body) > MAX_KV_SIZE:
            raise AgentError(
                413,
                f"Request body({len(request.body)} bytes) too large, "
                f"max size: {MAX_KV_SIZE} bytes. See "
                "https://developer.hashicorp.com/consul/docs/agent/config/config-files#kv_max_value_size.",
            )
        flags = _uint_param(request, "flags") or 0
        cas = _uint_param(request, "cas")
        value = request.body if request.body else None
        written = self.store.kv_put(key, value, flags, cas)
        self.store.commit()
        return json_response(written)

    async def kv_delete(self, request: Request) -> Response:
        key = request.rest
        recurse = request.has("recurse")
        if not key and not recurse:
            raise bad_request("Missing key name")
        deleted = self.store.kv_delete(key, recurse=recurse, cas=_uint_param(request, "cas"))
        self.store.commit()
        return json_response(deleted)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _decode(body: bytes) -> Any:
    try:
        return load_json(body)
    except DecodeError as exc:
        raise bad_request(f"Request decode failed: {exc}") from None


def _blocking_params(request: Request) -> tuple[int, float]:
    index = 0
    raw_index = request.param("index")
    if raw_index is not None:
        if not raw_index.isdigit():
            raise bad_request("Invalid index")
        index = int(raw_index)
    wait = DEFAULT_WAIT
    raw_wait = request.param("wait")
    if raw_wait is not None:
        try:
            wait = parse_duration(raw_wait)
        except DecodeError:
            raise bad_request("Invalid wait time") from None
    if wait <= 0 or wait > MAX_WAIT:
        wait = min(MAX_WAIT, wait) if wait > 0 else DEFAULT_WAIT
    return index, wait


def _selection(request: Request) -> Selection:
    tags = tuple(request.query.get("tag", ()))
    pairs = (raw.partition(":") for raw in request.query.get("node-meta", ()))
    return tags, tuple((key, value) for key, _, value in pairs)


def _has_meta(meta: dict[str, str], wanted: tuple[tuple[str, str], ...]) -> bool:
    return all(meta.get(key) == value for key, value in wanted)


def _enable_param(request: Request) -> bool:
    if not request.has("enable"):
        raise bad_request("Missing value for enable")
    raw = request.param("enable") or ""
    parsed = _go_bool(raw)
    if parsed is None:
        raise bad_request(f'Invalid value for enable: "{raw}"')
    return parsed


def _passing_param(request: Request) -> bool:
    if not request.has("passing"):
        return False
    raw = request.param("passing") or ""
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
    raw = request.param(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise AgentError(500, f'strconv.ParseUint: parsing "{raw}": invalid syntax')
    return int(raw)
