"""The dev registry's in-memory state: nodes, services, checks and KV entries with Consul's
raft-like indexes, and the topics blocking queries wait on.

Every write that changes something takes the next index once (as one raft apply would) and
wakes only the topics it touched: ``svc:<name>`` for one service's instances and checks,
``services``, ``nodes``, ``checks``, ``kvs`` for whole tables, ``kv:<key>`` for one key.
A blocked reader parks one ``anyio.Event`` on the topics its answer depends on, so a change
wakes exactly the readers it concerns, in microseconds, whatever the number of services.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
STATUSES = (PASSING, WARNING, CRITICAL)
_SEVERITY = {PASSING: 0, WARNING: 1, CRITICAL: 2}


@dataclass
class Node:
    name: str
    address: str
    id: str = ""
    datacenter: str = "dc1"
    tagged_addresses: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Node": self.name,
            "Address": self.address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": self.tagged_addresses,
            "Meta": self.meta,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Service:
    node: str
    id: str
    name: str
    tags: list[str] = field(default_factory=list)
    address: str = ""
    port: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    enable_tag_override: bool = False
    tagged_addresses: dict[str, Any] = field(default_factory=dict)
    kind: str = ""
    connect: dict[str, Any] = field(default_factory=dict)
    proxy: dict[str, Any] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0

    @property
    def connect_native(self) -> bool:
        return bool(self.connect.get("Native"))

    def same_definition(self, other: Service) -> bool:
        return (
            self.name,
            self.tags,
            self.address,
            self.port,
            self.meta,
            self.weights,
            self.enable_tag_override,
            self.tagged_addresses,
            self.kind,
            self.connect,
            self.proxy,
        ) == (
            other.name,
            other.tags,
            other.address,
            other.port,
            other.meta,
            other.weights,
            other.enable_tag_override,
            other.tagged_addresses,
            other.kind,
            other.connect,
            other.proxy,
        )

    def agent_json(self, datacenter: str) -> dict[str, Any]:
        """As /v1/agent/services shows it (api.AgentService)."""
        body: dict[str, Any] = {"ID": self.id, "Service": self.name, "Tags": list(self.tags)}
        if self.kind:
            body["Kind"] = self.kind
        body |= {"Meta": self.meta, "Port": self.port, "Address": self.address}
        if self.tagged_addresses:
            body["TaggedAddresses"] = self.tagged_addresses
        body |= {"Weights": self.weights, "EnableTagOverride": self.enable_tag_override}
        if self.proxy:
            body["Proxy"] = self.proxy
        if self.connect:
            body["Connect"] = self.connect
        return body | {"Datacenter": datacenter}

    def node_service_json(self) -> dict[str, Any]:
        """As /v1/health/service shows it (structs.NodeService)."""
        body: dict[str, Any] = {"ID": self.id, "Service": self.name, "Tags": list(self.tags)}
        if self.kind:
            body["Kind"] = self.kind
        body |= {"Address": self.address}
        if self.tagged_addresses:
            body["TaggedAddresses"] = self.tagged_addresses
        return body | {
            "Meta": self.meta,
            "Port": self.port,
            "Weights": self.weights,
            "EnableTagOverride": self.enable_tag_override,
            "Proxy": self._proxy_json(),
            "Connect": self.connect,
            "PeerName": "",
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }

    def _proxy_json(self) -> dict[str, Any]:
        return {"Mode": "", "MeshGateway": {}, "Expose": {}} | self.proxy

    def catalog_json(self, node: Node) -> dict[str, Any]:
        """As /v1/catalog/service shows it (structs.ServiceNode)."""
        return {
            "ID": node.id,
            "Node": node.name,
            "Address": node.address,
            "Datacenter": node.datacenter,
            "TaggedAddresses": node.tagged_addresses,
            "NodeMeta": node.meta,
            "ServiceKind": self.kind,
            "ServiceID": self.id,
            "ServiceName": self.name,
            "ServiceTags": list(self.tags),
            "ServiceAddress": self.address,
            "ServiceWeights": self.weights,
            "ServiceMeta": self.meta,
            "ServicePort": self.port,
            **({"ServiceTaggedAddresses": self.tagged_addresses} if self.tagged_addresses else {}),
            "ServiceSocketPath": "",
            "ServiceEnableTagOverride": self.enable_tag_override,
            "ServiceProxy": self._proxy_json(),
            "ServiceConnect": self.connect,
            "ServicePeerName": "",
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


_CHECK_CONTENT = (
    "name",
    "status",
    "notes",
    "output",
    "service_id",
    "service_name",
    "service_tags",
    "type",
    "interval",
    "timeout",
    "definition",
)


@dataclass
class Check:
    node: str
    check_id: str
    name: str
    status: str = CRITICAL
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: list[str] = field(default_factory=list)
    type: str = ""
    interval: str = ""
    timeout: str = ""
    definition: dict[str, Any] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0
    critical_since: float | None = None  # monotonic; for DeregisterCriticalServiceAfter

    def same_as(self, other: Check) -> bool:
        return all(getattr(self, f) == getattr(other, f) for f in _CHECK_CONTENT)

    def to_json(self) -> dict[str, Any]:
        return {
            "Node": self.node,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(self.service_tags),
            "Type": self.type,
            "Interval": self.interval,
            "Timeout": self.timeout,
            "ExposedPort": 0,
            "Definition": self.definition,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class KVEntry:
    key: str
    value: bytes | None
    flags: int = 0
    create_index: int = 0
    modify_index: int = 0


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def worst_status(checks: Iterable[Check]) -> str:
    return max((c.status for c in checks), key=_SEVERITY.__getitem__, default=PASSING)


class Store:
    """All registry state; every method is synchronous (one event loop owns it)."""

    def __init__(self, *, datacenter: str = "dc1") -> None:
        self.datacenter = datacenter
        self.index = 0
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, dict[str, Service]] = {}  # node -> service id -> service
        self.checks: dict[str, dict[str, Check]] = {}  # node -> check id -> check
        self.by_name: dict[str, dict[tuple[str, str], Service]] = {}
        self.kv: dict[str, KVEntry] = {}
        self._topic_index: dict[str, int] = {}
        self._waiters: dict[str, set[anyio.Event]] = {}
        self._prefix_waiters: dict[str, set[anyio.Event]] = {}
        self._touched: set[str] = set()
        self._touched_keys: set[str] = set()
        self.closing = False
        #: Called after every commit that changed something (``--data-dir`` saves then).
        self.on_commit: Callable[[], None] | None = None

    # -- indexes and wake-ups ------------------------------------------------------------

    @property
    def write_index(self) -> int:
        """The index the current write will commit at."""
        return self.index + 1

    def touch(self, *topics: str) -> None:
        self._touched.update(topics)

    def commit(self) -> None:
        """Close a write: one new index for everything it touched, then wake the readers."""
        if not self._touched:
            return
        self.index += 1
        for topic in self._touched:
            self._topic_index[topic] = self.index
            for event in self._waiters.pop(topic, ()):
                event.set()
        for key in self._touched_keys:
            for prefix in [p for p in self._prefix_waiters if key.startswith(p)]:
                for event in self._prefix_waiters.pop(prefix):
                    event.set()
        self._touched.clear()
        self._touched_keys.clear()
        if self.on_commit is not None:
            self.on_commit()

    def snapshot(self) -> dict[str, Any]:
        """Every table and index as JSON-able data (``--data-dir``)."""
        return {
            "index": self.index,
            "topics": dict(self._topic_index),
            "nodes": [asdict(node) for node in self.nodes.values()],
            "services": [
                asdict(s) for services in self.services.values() for s in services.values()
            ],
            "checks": [
                {k: v for k, v in asdict(c).items() if k != "critical_since"}
                for c in self.all_checks()
            ],
            "kv": [asdict(entry) | {"value": _b64(entry.value)} for entry in self.kv.values()],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Replace every table with a ``snapshot``'s (before serving: wakes nobody)."""
        self.nodes, self.services, self.checks, self.by_name, self.kv = {}, {}, {}, {}, {}
        for raw in data["nodes"]:
            node = Node(**raw)
            self.nodes[node.name] = node
            self.services[node.name], self.checks[node.name] = {}, {}
        for raw in data["services"]:
            service = Service(**raw)
            self.services[service.node][service.id] = service
            self.by_name.setdefault(service.name, {})[(service.node, service.id)] = service
        for raw in data["checks"]:
            check = Check(**raw)
            # A check critical before the restart counts from now (a monotonic clock).
            check.critical_since = time.monotonic() if check.status == CRITICAL else None
            self.checks[check.node][check.check_id] = check
        for raw in data["kv"]:
            value = raw["value"]
            entry = KVEntry(**(raw | {"value": None if value is None else base64.b64decode(value)}))
            self.kv[entry.key] = entry
        self.index = int(data["index"])
        self._topic_index = {str(k): int(v) for k, v in data["topics"].items()}

    def topic_index(self, *topics: str) -> int:
        return max((self._topic_index.get(t, 0) for t in topics), default=0)

    def service_index(self, name: str) -> int:
        """Consul's per-service index; the services table's before the name ever existed."""
        return self._topic_index.get(f"svc:{name}") or self.topic_index("services")

    def release_all(self) -> None:
        """Answer every parked reader now and park no more (the server is stopping)."""
        self.closing = True
        for table in (self._waiters, self._prefix_waiters):
            for events in table.values():
                for event in events:
                    event.set()
            table.clear()

    async def wait(
        self, topics: Iterable[str], deadline: float, *, prefix: str | None = None
    ) -> None:
        """Park until one of ``topics`` (or a key under ``prefix``) changes, or the deadline."""
        if self.closing:
            return
        event = anyio.Event()
        topics = list(topics)
        for topic in topics:
            self._waiters.setdefault(topic, set()).add(event)
        if prefix is not None:
            self._prefix_waiters.setdefault(prefix, set()).add(event)
        try:
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                await event.wait()
        finally:
            for topic in topics:
                self._discard(self._waiters, topic, event)
            if prefix is not None:
                self._discard(self._prefix_waiters, prefix, event)

    @staticmethod
    def _discard(table: dict[str, set[anyio.Event]], key: str, event: anyio.Event) -> None:
        waiters = table.get(key)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del table[key]

    # -- catalog writes ------------------------------------------------------------------

    def upsert_node(self, node: Node) -> Node:
        existing = self.nodes.get(node.name)
        if existing is not None and (
            existing.address,
            existing.id,
            existing.meta,
            existing.tagged_addresses,
        ) == (node.address, node.id, node.meta, node.tagged_addresses):
            return existing
        node.create_index = existing.create_index if existing else self.write_index
        node.modify_index = self.write_index
        self.nodes[node.name] = node
        self.services.setdefault(node.name, {})
        self.checks.setdefault(node.name, {})
        self.touch("nodes", *self._service_topics_of_node(node.name))
        return node

    def remove_node(self, name: str) -> bool:
        if name not in self.nodes:
            return False
        for service_id in list(self.services.get(name, {})):
            self.remove_service(name, service_id)
        for check_id in list(self.checks.get(name, {})):
            self.remove_check(name, check_id)
        del self.nodes[name]
        self.services.pop(name, None)
        self.checks.pop(name, None)
        self.touch("nodes")
        return True

    def upsert_service(self, service: Service) -> Service:
        existing = self.services[service.node].get(service.id)
        if existing is not None and existing.same_definition(service):
            return existing
        if existing is not None and existing.name != service.name:
            self.remove_service(service.node, service.id)
            existing = None
        service.create_index = existing.create_index if existing else self.write_index
        service.modify_index = self.write_index
        self.services[service.node][service.id] = service
        self.by_name.setdefault(service.name, {})[(service.node, service.id)] = service
        for check in self.checks_of_service(service.node, service.id):
            check.service_tags = list(service.tags)
        self.touch("services", f"svc:{service.name}")
        return service

    def remove_service(self, node: str, service_id: str) -> Service | None:
        service = self.services.get(node, {}).pop(service_id, None)
        if service is None:
            return None
        instances = self.by_name.get(service.name, {})
        instances.pop((node, service_id), None)
        if not instances:
            self.by_name.pop(service.name, None)
        for check in list(self.checks_of_service(node, service_id)):
            self.remove_check(node, check.check_id)
        self.touch("services", f"svc:{service.name}")
        return service

    def upsert_check(self, check: Check) -> Check:
        existing = self.checks[check.node].get(check.check_id)
        if existing is not None and existing.same_as(check):
            return existing  # as Consul's state store: an identical write changes no index
        check.create_index = existing.create_index if existing else self.write_index
        check.modify_index = self.write_index
        if check.status == CRITICAL:
            since = existing.critical_since if existing is not None else None
            check.critical_since = since if since is not None else time.monotonic()
        self.checks[check.node][check.check_id] = check
        self._touch_check(check)
        return check

    def set_check_status(self, check: Check, status: str, output: str) -> bool:
        """Update a check in place; a no-op (same status and output) takes no index."""
        if check.status == status and check.output == output:
            return False
        if status == CRITICAL and check.status != CRITICAL:
            check.critical_since = time.monotonic()
        elif status != CRITICAL:
            check.critical_since = None
        check.status, check.output = status, output
        check.modify_index = self.write_index
        self._touch_check(check)
        return True

    def remove_check(self, node: str, check_id: str) -> Check | None:
        check = self.checks.get(node, {}).pop(check_id, None)
        if check is not None:
            self._touch_check(check)
        return check

    def _touch_check(self, check: Check) -> None:
        self.touch("checks")
        if check.service_id:
            self.touch(f"svc:{check.service_name}")
        else:  # a node check changes the health of every service on the node
            self.touch(*self._service_topics_of_node(check.node))

    def _service_topics_of_node(self, node: str) -> Iterator[str]:
        return (f"svc:{s.name}" for s in self.services.get(node, {}).values())

    # -- catalog reads ---------------------------------------------------------------

    def checks_of_service(self, node: str, service_id: str) -> Iterator[Check]:
        return (c for c in self.checks.get(node, {}).values() if c.service_id == service_id)

    def node_checks(self, node: str) -> Iterator[Check]:
        return (c for c in self.checks.get(node, {}).values() if not c.service_id)

    def instances(self, name: str) -> list[Service]:
        return sorted(self.by_name.get(name, {}).values(), key=lambda s: (s.node, s.id))

    def all_checks(self) -> Iterator[Check]:
        for checks in self.checks.values():
            yield from checks.values()

    # -- KV ------------------------------------------------------------------------------

    def kv_put(self, key: str, value: bytes | None, flags: int, cas: int | None) -> bool:
        existing = self.kv.get(key)
        if cas is not None:
            current = existing.modify_index if existing else 0
            if cas != current:
                return False
        create = existing.create_index if existing else self.write_index
        self.kv[key] = KVEntry(key, value, flags, create, self.write_index)
        self._touch_key(key)
        return True

    def kv_delete(self, key: str, *, recurse: bool, cas: int | None) -> bool:
        if recurse:
            for name in [k for k in self.kv if k.startswith(key)]:
                del self.kv[name]
                self._touch_key(name)
            return True
        existing = self.kv.get(key)
        if cas is not None and (existing is None or existing.modify_index != cas):
            return False
        if existing is not None:
            del self.kv[key]
            self._touch_key(key)
        return True

    def _touch_key(self, key: str) -> None:
        self.touch("kvs", f"kv:{key}")
        self._touched_keys.add(key)
