"""PUT /v1/catalog/register and /v1/catalog/deregister: direct catalog writes.

The body is Consul's ``structs.RegisterRequest`` / ``DeregisterRequest``, decoded with Go's
types (``decode``); Consul validates it in its Catalog RPC endpoint (nodePreApply,
servicePreApply) and its state store, whose texts ("Must provide node") are kept. Consul
answers those refusals with a 500; here they are 400s (``errors.rpc_error``). A request
is checked whole before anything is written, as Consul applies it in one transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from meshkit.registry.dev import decode as go
from meshkit.registry.dev.durations import format_duration
from meshkit.registry.dev.errors import DecodeError, is_any_address, rpc_error
from meshkit.registry.dev.state import CRITICAL, STATUSES, Check, Node, Service, Store

_DEFINITION_FIELDS = go.Fields(go.owned(*go.DURATIONS, decode=go.ANY)) | go.Fields(
    [
        *go.owned(
            "HTTP", "TLSServerName", "Method", "Body", "TCP", "UDP", "GRPC", decode=go.STRING
        ),
        *go.owned("H2PING", "OSService", "DockerContainerID", "Shell", decode=go.STRING),
        *go.owned("AliasNode", "AliasService", decode=go.STRING),
        *go.owned(
            "TLSSkipVerify", "DisableRedirects", "GRPCUseTLS", "H2PingUseTLS", decode=go.BOOL
        ),
        ("Header", "Header", go.HEADER),
        ("ScriptArgs", "ScriptArgs", go.STRINGS),
    ],
    embedded="Alias",
)


def _definition(value: Any, at: go.At, outer: go.Decoding) -> dict[str, Any]:
    """structs.HealthCheckDefinition (its own UnmarshalJSON), as Consul shows it back:
    set fields only, durations as Go strings."""
    values = go.decode_wrapped(value, at, _DEFINITION_FIELDS, "structs.HealthCheckDefinition")
    shown: dict[str, Any] = {}
    for name, item in (values or {}).items():
        if name in go.DURATIONS:
            try:
                item = go.duration(item)
            except DecodeError as exc:
                outer.save(str(exc))
                continue
            item = format_duration(item) if item else ""
        if item not in ("", False, [], {}, None):
            shown[name] = item
    return shown


_SERVICE = go.struct_of(
    go.Fields(
        [
            ("Kind", "Kind", go.string_of("structs.ServiceKind")),
            *go.owned("ID", "Service", "Address", "SocketPath", decode=go.STRING),
            ("Tags", "Tags", go.STRINGS),
            ("TaggedAddresses", "TaggedAddresses", go.TAGGED_ADDRESSES),
            ("Meta", "Meta", go.STRING_MAP),
            ("Port", "Port", go.INT),
            ("Weights", "Weights", go.WEIGHTS),
            ("EnableTagOverride", "EnableTagOverride", go.BOOL),
        ]
    ),
    "structs.NodeService",
)
_CHECK = go.struct_of(
    go.Fields(
        [
            ("CheckID", "CheckID", go.string_of("types.CheckID")),
            *go.owned(
                "Node",
                "Name",
                "Status",
                "Notes",
                "Output",
                "ServiceID",
                "ServiceName",
                decode=go.STRING,
            ),
            *go.owned("Type", "Interval", "Timeout", decode=go.STRING),
            ("ServiceTags", "ServiceTags", go.STRINGS),
            ("ExposedPort", "ExposedPort", go.INT),
            ("Definition", "Definition", _definition),
        ]
    ),
    "structs.HealthCheck",
)
_REGISTER = go.Fields(
    [
        ("ID", "ID", go.string_of("types.NodeID")),
        *go.owned("Datacenter", "Node", "Address", "PeerName", decode=go.STRING),
        ("TaggedAddresses", "TaggedAddresses", go.STRING_MAP),
        ("NodeMeta", "NodeMeta", go.STRING_MAP),
        ("Service", "Service", _SERVICE),
        ("Check", "Check", _CHECK),
        ("Checks", "Checks", go.list_of(_CHECK, "structs.HealthChecks")),
        ("SkipNodeUpdate", "SkipNodeUpdate", go.BOOL),
    ]
)
_DEREGISTER = go.Fields(
    [
        *go.owned("Datacenter", "Node", "ServiceID", "PeerName", decode=go.STRING),
        ("CheckID", "CheckID", go.string_of("types.CheckID")),
    ]
)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _decoded(raw: Any, fields: go.Fields, go_type: str) -> dict[str, Any]:
    return go.decode_top(raw, fields, go_type, struct=go_type.rpartition(".")[2])


def datacenter_of(raw: Any) -> str:
    """The body's Datacenter (Consul forwards the write there; "" means the agent's)."""
    value = raw.get("Datacenter") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else ""


@dataclass
class Registration:
    """A register request, checked whole and ready to apply."""

    node: Node | None
    service: Service | None
    checks: list[Check] = field(default_factory=list)


def prepare_register(store: Store, raw: Any) -> Registration:
    """Decode and validate a register request; raise before anything is written."""
    body = _decoded(raw, _REGISTER, "structs.RegisterRequest")
    node_name = body.get("Node", "")
    _node_pre_apply(node_name, body.get("ID", ""))
    address = body.get("Address", "")
    skip_node_update = body.get("SkipNodeUpdate", False)
    if not address and not skip_node_update:
        raise rpc_error("Must provide address if SkipNodeUpdate is not set")
    node = _node(store, body, node_name, skip_node_update=skip_node_update)
    service = _service(body.get("Service"), node_name)
    raw_checks = [body["Check"]] if body.get("Check") is not None else []
    raw_checks += [c for c in body.get("Checks", []) if c is not None]
    checks = [_check(store, c, node_name, service) for c in raw_checks]
    return Registration(node, service, checks)


def apply_register(store: Store, registration: Registration) -> None:
    if registration.node is not None:
        store.upsert_node(registration.node)
    if registration.service is not None:
        store.upsert_service(registration.service)
    for check in registration.checks:
        store.upsert_check(check)


def _node_pre_apply(node_name: str, node_id: str) -> None:
    """Consul's nodePreApply: a node name, and an ID (if any) that go-uuid can parse."""
    if not node_name:
        raise rpc_error("Must provide node")
    if node_id and len(node_id) != 36:
        raise rpc_error("Bad node ID: uuid string is wrong length")
    if node_id and not _UUID.fullmatch(node_id):
        raise rpc_error("Bad node ID: uuid is improperly formatted")


def _node(store: Store, body: dict[str, Any], name: str, *, skip_node_update: bool) -> Node | None:
    existing = store.nodes.get(name)
    if existing is not None and skip_node_update:
        return None
    meta = body.get("NodeMeta", {})
    problem = go.validate_meta(meta, allow_consul_prefix=True)
    if problem:
        raise rpc_error(f"Invalid NodeMeta: {problem}")
    return Node(
        name=name,
        address=body.get("Address") or (existing.address if existing else ""),
        id=body.get("ID", ""),
        datacenter=store.datacenter,
        tagged_addresses=body.get("TaggedAddresses", {}),
        meta=meta,
    )


def _service(raw: dict[str, Any] | None, node_name: str) -> Service | None:
    """Consul's servicePreApply, then the service as the catalog holds it."""
    if raw is None:
        return None
    name, service_id = raw.get("Service", ""), raw.get("ID", "")
    if service_id and not name:
        raise rpc_error("Must provide service name (Service.Service) with ID (Service.ID)")
    if not name:
        return None
    if is_any_address(raw.get("Address", "")):
        raise rpc_error("Invalid service address")
    problem = _service_problem(raw)
    if problem:
        raise rpc_error(problem)
    return Service(
        node=node_name,
        id=service_id or name,
        name=name,
        tags=raw.get("Tags", []),
        address=raw.get("Address", ""),
        port=raw.get("Port", 0),
        meta=raw.get("Meta", {}),
        weights=_weights(raw.get("Weights")),
        enable_tag_override=raw.get("EnableTagOverride", False),
        tagged_addresses=raw.get("TaggedAddresses", {}),
        kind=raw.get("Kind", ""),
    )


def _weights(weights: dict[str, int] | None) -> dict[str, int]:
    """Consul's ToServiceNode: the given weights if ValidateWeights accepts them, else 1/1."""
    if weights is None or go.weights_problem(weights):
        return {"Passing": 1, "Warning": 1}
    return {"Passing": 0, "Warning": 0} | weights  # an absent Warning is Go's zero


def _service_problem(raw: dict[str, Any]) -> str | None:
    """What the registry refuses in a service beyond Consul's own checks (see
    ``decode.port_problem``); its Meta within Consul's metadata limits."""
    problem = go.ports_problem(raw.get("Port", 0), raw.get("TaggedAddresses", {}))
    if problem:
        return problem
    meta_problem = go.validate_meta(raw.get("Meta", {}), allow_consul_prefix=True)
    return f"Invalid Service Meta: {meta_problem}" if meta_problem else None


def _check(store: Store, raw: dict[str, Any], node_name: str, service: Service | None) -> Check:
    status = raw.get("Status") or CRITICAL
    if status not in STATUSES:
        raise rpc_error(f"Invalid check status {status!r}")
    check_node = raw.get("Node") or node_name
    if check_node != node_name and check_node not in store.nodes:
        raise rpc_error("Missing node registration")
    service_id = raw.get("ServiceID", "")
    owner = service if service is not None and service.id == service_id else None
    owner = owner or store.services.get(check_node, {}).get(service_id)
    if service_id and owner is None:
        raise rpc_error(f'Missing service registration for service "{service_id}"')
    return Check(
        node=check_node,
        check_id=raw.get("CheckID") or raw.get("Name", ""),
        name=raw.get("Name", ""),
        status=status,
        notes=raw.get("Notes", ""),
        output=raw.get("Output", ""),
        service_id=service_id,
        service_name=owner.name if owner is not None else "",
        service_tags=list(owner.tags) if owner is not None else [],
        definition=raw.get("Definition", {}),
    )


def apply_deregister(store: Store, raw: Any) -> None:
    body = _decoded(raw, _DEREGISTER, "structs.DeregisterRequest")
    node_name = body.get("Node", "")
    if not node_name:
        raise rpc_error("Must provide node")
    service_id, check_id = body.get("ServiceID", ""), body.get("CheckID", "")
    if service_id:
        store.remove_service(node_name, service_id)
    elif check_id:
        store.remove_check(node_name, check_id)
    else:
        store.remove_node(node_name)
