"""Consul's config entries (``/v1/config``) in the dev registry: one store, one kind table.

As in Consul (agent/config_endpoint.go, agent/structs/config_entry.go): ``PUT /v1/config``
takes the entry as its body (``?cas=<ModifyIndex>``: write only over that version, 0:
only if absent) and answers ``true``/``false``; ``GET /v1/config/<kind>/<name>`` reads
one (404 ``Config entry not found for "<kind>" / "<name>"``), ``GET /v1/config/<kind>``
lists a kind (``[]`` when empty), both as blocking queries over the config-entries
table's index; ``DELETE /v1/config/<kind>/<name>`` answers ``{}`` (with ``?cas``: a
boolean). Bodies decode as Consul decodes them (``mapdecode``), then each kind's
``normalize`` validates and shapes the entry with Consul's texts.

Kinds are ``ConfigKind`` values, listed in ``config_kinds.KINDS``: another kind is one
more module and one more line there. A kind Consul knows but no module implements is
refused (the dev registry never stores what it cannot validate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshkit.registry.dev.decode import json_kind
from meshkit.registry.dev.errors import AgentError, DecodeError, bad_request, rpc_error
from meshkit.registry.dev.http import Request, Response, json_response, text_response
from meshkit.registry.dev.mapdecode import (
    Struct,
    decode_struct,
    mapstructure_errors,
    multierror,
)
from meshkit.registry.dev.query import parse_options, parse_uint
from meshkit.registry.dev.state import Store

if TYPE_CHECKING:  # for annotations only: api.py imports this module
    from meshkit.registry.dev.api import DevRegistryApp

#: Every kind Consul's MakeConfigEntry knows (agent/structs/config_entry.go).
CONSUL_KINDS = (
    "service-defaults",
    "proxy-defaults",
    "service-router",
    "service-splitter",
    "service-resolver",
    "ingress-gateway",
    "terminating-gateway",
    "service-intentions",
    "mesh",
    "exported-services",
    "api-gateway",
    "inline-certificate",
    "http-route",
    "tcp-route",
    "jwt-provider",
    "sameness-group",
)
TABLE = "config-entries"  # the topic whose index every config entry read answers with
DEFAULT_NAMESPACE = "default"
#: Consul's validateConfigEntryMeta limits.
META_MAX_PAIRS, META_KEY_MAX, META_VALUE_MAX = 64, 128, 512


class ConfigEntryInvalid(ValueError):
    """A config entry Consul's Normalize or Validate refuses; the text is Consul's."""


Normalize = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ConfigKind:
    """One kind: its struct (for decoding) and its ``normalize``, which takes the decoded
    fields (canonical names, only those present) and returns the entry as Consul shows it
    (``Kind`` and ``Name`` first, without the indexes), or raises ConfigEntryInvalid."""

    name: str
    struct: Struct
    normalize: Normalize
    namespaced: bool = False  # whether ?ns= and a Namespace field scope its entries
    # Consul's graph validation of a change against the other entries (the discovery
    # chain's protocol checks): (entries, kind, name, the new body or None for a delete);
    # raises ConfigEntryInvalid with Consul's text.
    check_graph: Callable[[ConfigEntries, str, str, dict[str, Any] | None], None] | None = None


@dataclass
class StoredEntry:
    kind: str
    namespace: str
    name: str
    body: dict[str, Any]
    create_index: int
    modify_index: int

    def to_json(self) -> dict[str, Any]:
        return {**self.body, "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}


def validate_meta(meta: Mapping[str, str]) -> None:
    """Consul's validateConfigEntryMeta."""
    if len(meta) > META_MAX_PAIRS:
        raise ConfigEntryInvalid(f"Meta exceeds maximum element count {META_MAX_PAIRS}")
    for key, value in meta.items():
        if len(key) > META_KEY_MAX:
            raise ConfigEntryInvalid(f'Meta key "{key}" exceeds maximum length {META_KEY_MAX}')
        if len(value) > META_VALUE_MAX:
            raise ConfigEntryInvalid(
                f'Meta value for key "{key}" exceeds maximum length {META_VALUE_MAX}'
            )


class ConfigEntries:
    """The entries, by kind then (namespace, name); writes commit through the Store so
    they take the next index and wake exactly the readers of that kind and entry."""

    def __init__(self, store: Store, kinds: Mapping[str, ConfigKind]) -> None:
        self.store = store
        self.kinds = dict(kinds)
        self._entries: dict[str, dict[tuple[str, str], StoredEntry]] = {}

    def kind(self, name: str) -> ConfigKind:
        """MakeConfigEntry: an unknown kind is Consul's error; a known one meshkit does not
        implement is refused in the same words, marked as the dev registry's."""
        found = self.kinds.get(name)
        if found is not None:
            return found
        if name in CONSUL_KINDS:
            raise bad_request(
                f"config entry kind {name!r} is not implemented by the meshkit dev registry"
            )
        raise bad_request(f"invalid config entry kind: {name}")

    def check_known(self, name: str) -> None:
        """MakeConfigEntry for reads and deletes: any kind Consul knows (an unimplemented
        one simply has no entries here)."""
        if name not in self.kinds and name not in CONSUL_KINDS:
            raise bad_request(f"invalid config entry kind: {name}")

    @property
    def index(self) -> int:
        return self.store.topic_index(TABLE)

    def get(self, kind: str, name: str, namespace: str = DEFAULT_NAMESPACE) -> StoredEntry | None:
        return self._entries.get(kind, {}).get((namespace, name))

    def of_kind(self, kind: str) -> list[StoredEntry]:
        kinds = [kind] if kind else sorted(self._entries)
        return [entry for name in kinds for _, entry in sorted(self._entries.get(name, {}).items())]

    def all_of(self, kind: str) -> Iterator[StoredEntry]:
        return iter(self._entries.get(kind, {}).values())

    def apply(self, body: dict[str, Any], cas: int | None = None) -> bool:
        """Store a normalized entry (``Kind``, ``Name`` and, if namespaced, ``Namespace``
        in it); with ``cas``, only over that ModifyIndex (0: only when absent)."""
        kind, name = body["Kind"], body["Name"]
        key = (body.get("Namespace", DEFAULT_NAMESPACE), name)
        existing = self._entries.get(kind, {}).get(key)
        if cas is not None and cas != (existing.modify_index if existing else 0):
            return False
        index = self.store.write_index
        create = existing.create_index if existing else index
        self._entries.setdefault(kind, {})[key] = StoredEntry(kind, *key, body, create, index)
        self._touch(kind, *key)
        self.store.commit()
        return True

    def delete(
        self, kind: str, name: str, namespace: str = DEFAULT_NAMESPACE, cas: int | None = None
    ) -> bool:
        entries = self._entries.get(kind, {})
        existing = entries.get((namespace, name))
        if cas is not None and (existing is None or existing.modify_index != cas):
            return False
        if existing is not None:
            del entries[(namespace, name)]
            self._touch(kind, namespace, name)
            self.store.commit()
        return True

    def dump(self) -> list[dict[str, Any]]:
        """Every entry as read back (indexes included), for a data directory to keep."""
        return [entry.to_json() for entry in self.of_kind("")]

    def restore(self, dumped: list[dict[str, Any]]) -> None:
        """Entries from ``dump``, with their indexes (the Store's index must be restored
        to at least their highest ModifyIndex by whoever restores it)."""
        for raw in dumped:
            body = {k: v for k, v in raw.items() if k not in ("CreateIndex", "ModifyIndex")}
            key = (body.get("Namespace", DEFAULT_NAMESPACE), body["Name"])
            stored = StoredEntry(body["Kind"], *key, body, raw["CreateIndex"], raw["ModifyIndex"])
            self._entries.setdefault(body["Kind"], {})[key] = stored

    def _touch(self, kind: str, namespace: str, name: str) -> None:
        self.store.touch(TABLE, topic(kind), topic(kind, namespace, name))


def topic(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    """The Store topic of a kind's list, or of one entry."""
    return f"config:{kind}" if name is None else f"config:{kind}/{namespace}/{name}"


def decode_entry(raw: Any, entries: ConfigEntries, namespace: str = "") -> dict[str, Any]:
    """structs.DecodeConfigEntry, then the kind's Normalize and Validate; ``namespace``
    (``?ns=``) scopes a namespaced kind's entry whose body names none."""
    if not isinstance(raw, dict):
        raise bad_request(
            "Request decoding failed: json: cannot unmarshal "
            f"{json_kind(raw)} into Go value of type map[string]interface {{}}"
        )
    kind_value = raw["Kind"] if "Kind" in raw else raw.get("kind")
    if "Kind" not in raw and "kind" not in raw:
        raise bad_request(
            "Request decoding failed: Payload does not contain a kind/Kind key at the top level"
        )
    if not isinstance(kind_value, str):
        raise bad_request("Request decoding failed: Kind value in payload is not a string")
    if kind_value not in entries.kinds and kind_value not in CONSUL_KINDS:
        raise bad_request(f"Request decoding failed: invalid config entry kind: {kind_value}")
    kind = entries.kind(kind_value)
    fields, errors, unused = decode_struct(raw, kind.struct)
    if errors:
        raise bad_request(f"Request decoding failed: {mapstructure_errors(errors)}")
    refused = [f'invalid config key "{key}"' for key in unused if not _ignored_key(key)]
    if refused:
        raise bad_request(f"Request decoding failed: {multierror(refused)}")
    try:
        if namespace and kind.namespaced and not fields.get("Namespace"):
            fields["Namespace"] = namespace
        return kind.normalize(fields)
    except ConfigEntryInvalid as exc:
        raise rpc_error(str(exc)) from None


def _ignored_key(key: str) -> bool:
    """validateUnusedKeys: the kind and the indexes may be sent back as they were read."""
    return key in ("Kind", "kind", "CreateIndex", "ModifyIndex")


def _check_graph(
    entries: ConfigEntries, kind: ConfigKind, name: str, body: dict[str, Any] | None
) -> None:
    """The kind's graph validation of a write (``body``) or delete (None), if it has one."""
    if kind.check_graph is None:
        return
    try:
        kind.check_graph(entries, kind.name, name, body)
    except ConfigEntryInvalid as exc:
        raise rpc_error(str(exc)) from None


def _cas(request: Request) -> int | None:
    raw = request.param("cas")
    if not raw:
        return None
    try:
        return parse_uint(raw)
    except DecodeError as exc:
        raise rpc_error(str(exc)) from None  # Consul returns the bare error (as a 500)


class ConfigEndpoints:
    """``/v1/config`` over a DevRegistryApp's blocking queries and body reading."""

    def __init__(self, app: DevRegistryApp, entries: ConfigEntries) -> None:
        self.app = app
        self.entries = entries

    def routes(self) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        """The exact paths and the prefixes this module answers, for the app's tables."""
        exact = {"/v1/config": {"PUT": self.apply}}
        prefixes = [("/v1/config/", {"GET": self.read, "DELETE": self.delete})]
        return exact, prefixes

    async def apply(self, request: Request) -> Response:
        self.app._check_datacenter(request.param("dc"))
        body = decode_entry(await self.app._json(request), self.entries, request.param("ns"))
        kind = self.entries.kinds[body["Kind"]]
        _check_graph(self.entries, kind, body["Name"], body)
        return json_response(self.entries.apply(body, _cas(request)))

    async def read(self, request: Request) -> Response:
        request.blocking = parse_options(request.query, request.header(b"cache-control"))
        self.app._check_datacenter(request.param("dc"))
        kind_name, has_name, name = request.rest.partition("/")
        if not has_name:
            if kind_name:
                self.entries.check_known(kind_name)
            return await self._list(request, kind_name)
        self.entries.check_known(kind_name)
        namespace = request.param("ns") or DEFAULT_NAMESPACE
        return await self._get(request, kind_name, namespace, name)

    async def _list(self, request: Request, kind: str) -> Response:
        def compute() -> tuple[int, Response]:
            listed = [entry.to_json() for entry in self.entries.of_kind(kind)]
            return self.entries.index, json_response(listed)

        return await self.app._blocking(request, [topic(kind)] if kind else [TABLE], compute)

    async def _get(self, request: Request, kind: str, namespace: str, name: str) -> Response:
        def compute() -> tuple[int, Response]:
            entry = self.entries.get(kind, name, namespace)
            if entry is None:
                reason = f'Config entry not found for "{kind}" / "{name}"'
                return self.entries.index, text_response(404, reason)
            return self.entries.index, json_response(entry.to_json())

        return await self.app._blocking(request, [topic(kind, namespace, name)], compute)

    async def delete(self, request: Request) -> Response:
        self.app._check_datacenter(request.param("dc"))
        kind, has_name, name = request.rest.partition("/")
        if not has_name:
            raise AgentError(404, "Must provide both a kind and name to delete")
        self.entries.check_known(kind)
        namespace = request.param("ns") or DEFAULT_NAMESPACE
        cas = _cas(request)
        known = self.entries.kinds.get(kind)
        if known is not None and self.entries.get(kind, name, namespace) is not None:
            _check_graph(self.entries, known, name, None)
        deleted = self.entries.delete(kind, name, namespace, cas)
        # Consul: the boolean only for a CAS delete, ``{}`` otherwise (older callers).
        return json_response(deleted if cas is not None else {})
