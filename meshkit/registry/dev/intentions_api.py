"""Consul's intentions API in the dev registry, derived from ``service-intentions`` entries.

In Consul 1.9+ intentions are the sources of ``service-intentions`` config entries; the
intentions endpoints read and edit the same data (agent/intentions_endpoint.go,
agent/connect_auth.go):

- ``GET /v1/connect/intentions``: every intention, in precedence order;
- ``GET|PUT|DELETE /v1/connect/intentions/exact?source=&destination=``: one source of one
  destination's entry (a PUT creates the entry, a DELETE of its last source removes it);
- ``GET /v1/connect/intentions/match?by=source|destination&name=...``: per name, the
  intentions that apply, in evaluation order (a blocking query);
- ``GET /v1/connect/intentions/check?source=&destination=``: ``{"Allowed": bool}``;
- ``POST /v1/agent/connect/authorize``: ``{"Authorized", "Reason"}`` for a client
  certificate's SPIFFE ID calling ``Target``;
- the deprecated API by ID (``POST /v1/connect/intentions``, ``GET|PUT|DELETE
  /v1/connect/intentions/<id>``): sources that keep a LegacyID, meta and times.

An L7 intention (with Permissions) answers "not allowed" to ``check`` and ``authorize``,
as in Consul: they see no request. No intention matching means the ACL default policy:
``allow`` unless the registry was started with ``deny`` (Consul with ACLs enabled and
``default_policy = "deny"``). Names are ``name``, ``ns/name`` or ``ap/ns/name``.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from meshkit.registry.connect_intentions import (
    Intention,
    first_for_source,
    matching,
    sort_key,
)
from meshkit.registry.dev.config_entries import (
    DEFAULT_NAMESPACE,
    ConfigEntries,
    ConfigEntryInvalid,
    StoredEntry,
    topic,
)
from meshkit.registry.dev.errors import bad_request, rpc_error
from meshkit.registry.dev.http import Request, Response, json_response, text_response
from meshkit.registry.dev.mapdecode import STRING as MAP_STRING
from meshkit.registry.dev.mapdecode import MapOf, Struct, decode_struct
from meshkit.registry.dev.query import parse_options
from meshkit.registry.dev.service_intentions import (
    KIND,
    PERMISSIONS,
    SERVICE_INTENTIONS,
    normalize_legacy,
)

if TYPE_CHECKING:  # for annotations only: api.py imports this module
    from meshkit.registry.dev.api import DevRegistryApp

DefaultPolicy = Literal["allow", "deny"]
NOT_FOUND = "Intention not found"
#: Consul's connect.ParseCertURI: the service forms of its SPIFFE IDs.
_SERVICE_URI = re.compile(
    r"spiffe://(?P<td>[^/]+)(?:/ap/(?P<ap>[^/]+))?/ns/(?P<ns>[^/]+)/dc/(?P<dc>[^/]+)"
    r"/svc/(?P<svc>[^/]+)"
)
#: The body of ``PUT /intentions/exact`` (structs.Intention, the fields a write keeps).
_EXACT_BODY = Struct(
    [
        ("Description", MAP_STRING),
        ("SourceType", MAP_STRING),
        ("Action", MAP_STRING),
        ("Permissions", PERMISSIONS),
        ("Meta", MapOf(MAP_STRING)),
    ]
)
#: The legacy API's body names both sides too.
_LEGACY_BODY = Struct(
    [
        ("ID", MAP_STRING),
        ("SourceNS", MAP_STRING),
        ("SourceName", MAP_STRING),
        ("DestinationNS", MAP_STRING),
        ("DestinationName", MAP_STRING),
        *_EXACT_BODY.fields,
    ]
)


def intention_json(entry: StoredEntry, source: dict[str, Any]) -> dict[str, Any]:
    """One source of an entry as the intentions API shows it (structs.Intention); one
    written by the legacy API also has its ID, its own Meta and its times."""
    legacy = bool(source.get("LegacyID"))
    body: dict[str, Any] = {"ID": source["LegacyID"]} if legacy else {}
    body |= {
        "Description": source.get("Description", ""),
        "SourceNS": source["Namespace"],
        "SourceName": source["Name"],
        "DestinationNS": entry.namespace,
        "DestinationName": entry.name,
        "SourceType": source["Type"],
    }
    if source.get("Action"):
        body["Action"] = source["Action"]
    if source.get("Permissions"):
        body["Permissions"] = source["Permissions"]
    body |= {
        "Meta": source.get("LegacyMeta", {}) if legacy else entry.body.get("Meta", {}),
        "Precedence": source["Precedence"],
    }
    if legacy:
        body |= {"CreatedAt": source["LegacyCreateTime"], "UpdatedAt": source["LegacyUpdateTime"]}
    return body | {"CreateIndex": entry.create_index, "ModifyIndex": entry.modify_index}


def _legacy_sides(fields: dict[str, Any]) -> tuple[tuple[str, str], tuple[str, str]]:
    source = (fields.get("SourceNS") or DEFAULT_NAMESPACE, fields.get("SourceName", ""))
    destination = (
        fields.get("DestinationNS") or DEFAULT_NAMESPACE,
        fields.get("DestinationName", ""),
    )
    if not destination[1]:
        raise rpc_error("Name is required")
    return source, destination


def _legacy_source(
    fields: dict[str, Any], legacy_id: str, created: str, updated: str
) -> dict[str, Any]:
    return {
        "Name": fields.get("SourceName", ""),
        "Namespace": fields.get("SourceNS") or DEFAULT_NAMESPACE,
        "Action": fields.get("Action", ""),
        "Description": fields.get("Description", ""),
        "Type": fields.get("SourceType", ""),
        "LegacyID": legacy_id,
        "LegacyMeta": fields.get("Meta") or {},
        "LegacyCreateTime": created,
        "LegacyUpdateTime": updated,
    }


def _now() -> str:
    """RFC 3339 in UTC with nanoseconds, as Go's time.Time marshals."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond * 1000:09d}Z"


def describe(intention: Intention) -> str:
    """structs.Intention.String, as Consul's authorize reasons quote it."""
    detail = (
        f"Permissions: {len(intention.permissions)}"
        if intention.permissions
        else f"Action: {(intention.action or '').upper()}"
    )
    return (
        f"{intention.source_namespace}/{intention.source} => "
        f"{intention.destination_namespace}/{intention.destination} "
        f"(Precedence: {intention.precedence}, {detail})"
    )


def parse_name(raw: str, what: str) -> tuple[str, str]:
    """Consul's parseIntentionStringComponent: ``name``, ``ns/name`` or ``ap/ns/name``."""
    parts = raw.split("/")
    if len(parts) > 3:
        raise bad_request(f"{what} \"{raw}\" is invalid: input can contain at most two '/'")
    if len(parts) == 1:
        return DEFAULT_NAMESPACE, parts[0]
    return parts[-2] or DEFAULT_NAMESPACE, parts[-1]


class IntentionEndpoints:
    """The intentions API over the config entry store."""

    def __init__(self, app: DevRegistryApp, entries: ConfigEntries) -> None:
        self.app = app
        self.entries = entries

    @property
    def default_policy(self) -> DefaultPolicy:
        return self.app.acl_default_policy

    def routes(self) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        exact = {
            "/v1/connect/intentions": {"GET": self.list_all, "POST": self.legacy_create},
            "/v1/connect/intentions/exact": {
                "GET": self.exact_get,
                "PUT": self.exact_put,
                "DELETE": self.exact_delete,
            },
            "/v1/connect/intentions/match": {"GET": self.match},
            "/v1/connect/intentions/check": {"GET": self.check},
            "/v1/agent/connect/authorize": {"POST": self.authorize},
        }
        by_id = {"GET": self.legacy_get, "PUT": self.legacy_update, "DELETE": self.legacy_delete}
        return exact, [("/v1/connect/intentions/", by_id)]

    # -- reading the store ----------------------------------------------------------------

    def _pairs(self) -> Iterator[tuple[StoredEntry, dict[str, Any]]]:
        for entry in self.entries.all_of(KIND):
            for source in entry.body["Sources"]:
                yield entry, source

    def _shown(self) -> list[dict[str, Any]]:
        return [intention_json(entry, source) for entry, source in self._pairs()]

    def intentions(self) -> list[Intention]:
        return [Intention.from_json(shown) for shown in self._shown()]

    def decide(
        self, source: tuple[str, str], destination: tuple[str, str]
    ) -> tuple[bool, Intention | None]:
        """Consul's L4 decision: the first applicable intention, an L7 one denying."""
        ordered = matching(self.intentions(), *destination)
        found = first_for_source(ordered, *source)
        if found is None:
            return self.default_policy == "allow", None
        return (not found.permissions and found.action == "allow"), found

    # -- endpoints ------------------------------------------------------------------------

    async def list_all(self, request: Request) -> Response:
        self._read_options(request)

        def compute() -> tuple[int, Response]:
            shown = sorted(self._shown(), key=lambda js: sort_key(Intention.from_json(js)))
            return self.entries.index, json_response(shown)

        return await self.app._blocking(request, [topic(KIND)], compute)

    async def exact_get(self, request: Request) -> Response:
        self._read_options(request)
        source, destination = self._pair(request)

        def compute() -> tuple[int, Response]:
            found = self._find(source, destination)
            if found is None:
                return self.entries.index, text_response(404, NOT_FOUND)
            return self.entries.index, json_response(intention_json(*found))

        return await self.app._blocking(request, [topic(KIND)], compute)

    def _find(
        self, source: tuple[str, str], destination: tuple[str, str]
    ) -> tuple[StoredEntry, dict[str, Any]] | None:
        entry = self.entries.get(KIND, destination[1], destination[0])
        if entry is None:
            return None
        for src in entry.body["Sources"]:
            if (src["Namespace"], src["Name"]) == source:
                return entry, src
        return None

    async def exact_put(self, request: Request) -> Response:
        self.app._check_datacenter(request.param("dc"))
        source, destination = self._pair(request)
        fields = await self._body(request, _EXACT_BODY)
        new_source = {
            "Name": source[1],
            "Namespace": source[0],
            "Action": fields.get("Action", ""),
            "Permissions": fields.get("Permissions", []),
            "Description": fields.get("Description", ""),
            "Type": fields.get("SourceType", ""),
        }
        existing = self.entries.get(KIND, destination[1], destination[0])
        sources = [
            s
            for s in (existing.body["Sources"] if existing else [])
            if (s["Namespace"], s["Name"]) != source
        ]
        meta = fields.get("Meta") or (existing.body.get("Meta", {}) if existing else {})
        self._write(destination, [*sources, new_source], meta)
        return json_response(True)

    async def exact_delete(self, request: Request) -> Response:
        self.app._check_datacenter(request.param("dc"))
        source, destination = self._pair(request)
        found = self._find(source, destination)
        if found is None:
            return json_response(True)  # Consul: deleting what is not there succeeds
        entry, removed = found
        sources = [s for s in entry.body["Sources"] if s is not removed]
        if sources:
            self._write(destination, sources, entry.body.get("Meta", {}))
        else:
            self.entries.delete(KIND, destination[1], destination[0])
        return json_response(True)

    def _write(
        self,
        destination: tuple[str, str],
        sources: list[dict[str, Any]],
        meta: dict[str, str],
        *,
        legacy: bool = False,
    ) -> None:
        fields = {
            "Name": destination[1],
            "Namespace": destination[0],
            "Sources": sources,
            "Meta": meta,
        }
        try:
            body = (normalize_legacy if legacy else SERVICE_INTENTIONS.normalize)(fields)
        except ConfigEntryInvalid as exc:
            raise rpc_error(str(exc)) from None
        self.entries.apply(body)

    # -- the legacy API (by ID) -----------------------------------------------------------

    async def legacy_create(self, request: Request) -> Response:
        self.app._check_datacenter(request.param("dc"))
        fields = await self._legacy_body(request)
        if fields.get("ID"):
            raise rpc_error("ID must be empty when creating a new intention")
        source, destination = _legacy_sides(fields)
        if self._find(source, destination) is not None:
            raise rpc_error(
                f"duplicate intention found: {source[0]}/{source[1]} => "
                f"{destination[0]}/{destination[1]}"
            )
        now = _now()
        created = _legacy_source(fields, str(uuid.uuid4()), now, now)
        self._legacy_put(destination, created, replacing=None)
        return json_response({"ID": created["LegacyID"]})

    async def legacy_get(self, request: Request) -> Response:
        self._read_options(request)

        def compute() -> tuple[int, Response]:
            found = self._by_id(request.rest)
            if found is None:
                return self.entries.index, text_response(404, NOT_FOUND)
            return self.entries.index, json_response(intention_json(*found))

        return await self.app._blocking(request, [topic(KIND)], compute)

    async def legacy_update(self, request: Request) -> Response:
        self.app._check_datacenter(request.param("dc"))
        fields = await self._legacy_body(request)
        found = self._by_id(request.rest)
        if found is None:
            raise rpc_error(f"Cannot modify non-existent intention: '{request.rest}'")
        entry, old = found
        _, destination = _legacy_sides(fields)
        updated = _legacy_source(fields, request.rest, old["LegacyCreateTime"], _now())
        replacing: dict[str, Any] | None = old
        if (entry.namespace, entry.name) != destination:
            self._legacy_remove(entry, old)  # moved to another destination
            replacing = None
        self._legacy_put(destination, updated, replacing=replacing)
        return Response()

    async def legacy_delete(self, request: Request) -> Response:
        self.app._check_datacenter(request.param("dc"))
        found = self._by_id(request.rest)
        if found is None:
            raise rpc_error(f"Cannot delete non-existent intention: '{request.rest}'")
        self._legacy_remove(*found)
        return Response()

    async def _body(self, request: Request, struct: Struct) -> dict[str, Any]:
        """An intention body: a JSON object, its known fields (others are ignored, as
        Go's decoder ignores them)."""
        raw = await self.app._json(request)
        if not isinstance(raw, dict):
            raise bad_request("Request decode failed: body must be a JSON object")
        fields, errors, _ = decode_struct(raw, struct)
        if errors:
            raise bad_request(f"Request decode failed: {errors[0]}")
        return dict(fields)

    async def _legacy_body(self, request: Request) -> dict[str, Any]:
        fields = await self._body(request, _LEGACY_BODY)
        if fields.get("Permissions"):
            raise rpc_error("Permissions cannot be set via the legacy intention API")
        return dict(fields)

    def _by_id(self, legacy_id: str) -> tuple[StoredEntry, dict[str, Any]] | None:
        return next(((e, s) for e, s in self._pairs() if s.get("LegacyID") == legacy_id), None)

    def _legacy_put(
        self,
        destination: tuple[str, str],
        source: dict[str, Any],
        *,
        replacing: dict[str, Any] | None,
    ) -> None:
        existing = self.entries.get(KIND, destination[1], destination[0])
        kept = [s for s in (existing.body["Sources"] if existing else []) if s is not replacing]
        self._write(destination, [*kept, source], {}, legacy=True)

    def _legacy_remove(self, entry: StoredEntry, source: dict[str, Any]) -> None:
        kept = [s for s in entry.body["Sources"] if s is not source]
        if kept:
            self._write((entry.namespace, entry.name), kept, {}, legacy=True)
        else:
            self.entries.delete(KIND, entry.name, entry.namespace)

    async def match(self, request: Request) -> Response:
        self._read_options(request)
        by = request.query.get("by", [])
        if len(by) != 1:
            raise bad_request("required query parameter 'by' not set")
        if by[0] not in ("source", "destination"):
            raise bad_request("'by' parameter must be one of 'source' or 'destination'")
        names = request.query.get("name", [])
        if not names:
            raise bad_request("required query parameter 'name' not set")
        parsed = [(name, parse_name(name, "name")) for name in names]

        def compute() -> tuple[int, Response]:
            # Keyed by the parsed intention: the answer shows the stored fields.
            shown = {Intention.from_json(js): js for js in self._shown()}
            answer = {
                name: [shown[i] for i in matching(shown, *ns_name, by=by[0])]
                for name, ns_name in parsed
            }
            return self.entries.index, json_response(answer)

        return await self.app._blocking(request, [topic(KIND)], compute)

    async def check(self, request: Request) -> Response:
        self._read_options(request)
        source, destination = self._pair(request)
        allowed, _ = self.decide(source, destination)
        return json_response({"Allowed": allowed})

    async def authorize(self, request: Request) -> Response:
        raw = await self.app._json(request)
        if not isinstance(raw, dict):
            raise bad_request("Request decode failed: body must be a JSON object")
        target = raw.get("Target")
        if not isinstance(target, str) or not target:
            raise bad_request("Target service must be specified")
        uri = raw.get("ClientCertURI")
        parsed = _SERVICE_URI.fullmatch(uri) if isinstance(uri, str) else None
        if parsed is None:
            raise bad_request("ClientCertURI not a valid Connect identifier")
        namespace = request.param("ns") or DEFAULT_NAMESPACE
        allowed, found = self.decide((parsed["ns"], parsed["svc"]), (namespace, target))
        return json_response({"Authorized": allowed, "Reason": self._reason(found)})

    def _reason(self, found: Intention | None) -> str:
        if found is None:
            if self.default_policy == "allow":
                return "ACLs disabled, access is allowed by default"
            return "Default behavior configured by ACLs"
        layer = "L7" if found.permissions else "L4"
        return f"Matched {layer} intention: {describe(found)}"

    # -- parameters -----------------------------------------------------------------------

    def _read_options(self, request: Request) -> None:
        request.blocking = parse_options(request.query, request.header(b"cache-control"))
        self.app._check_datacenter(request.param("dc"))

    def _pair(self, request: Request) -> tuple[tuple[str, str], tuple[str, str]]:
        sides = []
        for side in ("source", "destination"):
            values = request.query.get(side, [])
            if len(values) != 1:
                raise bad_request(f"required query parameter '{side}' not set")
            sides.append(parse_name(values[0], side))
        return sides[0], sides[1]
