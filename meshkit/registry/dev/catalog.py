"""PUT /v1/catalog/register and /v1/catalog/deregister: direct catalog writes.

Consul validates these in its Catalog RPC endpoint, so its refusals reach HTTP clients as
500s with the RPC's text ("Must provide node"); the dev registry answers the same.
"""

from __future__ import annotations

from typing import Any

from meshkit.registry.dev.decode import object_field
from meshkit.registry.dev.errors import is_any_address, rpc_error
from meshkit.registry.dev.state import CRITICAL, STATUSES, Check, Node, Service, Store


def _text(raw: dict[str, Any], name: str) -> str:
    value = object_field(raw, name)
    return value if isinstance(value, str) else ""


def _mapping(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = object_field(raw, name)
    return dict(value) if isinstance(value, dict) else {}


def apply_register(store: Store, body: dict[str, Any]) -> None:
    node_name = _text(body, "Node")
    if not node_name:
        raise rpc_error("Must provide node")
    address = _text(body, "Address")
    skip_node_update = object_field(body, "SkipNodeUpdate") is True
    if not address and not skip_node_update:
        raise rpc_error("Must provide address if SkipNodeUpdate is not set")
    service = _service(body, node_name)
    checks = _checks(body, node_name)
    existing = store.nodes.get(node_name)
    if existing is None or not skip_node_update:
        store.upsert_node(
            Node(
                name=node_name,
                address=address or (existing.address if existing else ""),
                id=_text(body, "ID"),
                datacenter=store.datacenter,
                tagged_addresses=_mapping(body, "TaggedAddresses"),
                meta=_mapping(body, "NodeMeta"),
            )
        )
    if service is not None:
        store.upsert_service(service)
    for check in checks:
        owner = store.services[node_name].get(check.service_id) if check.service_id else None
        if check.service_id and owner is None:
            raise rpc_error(f'Missing service registration for service "{check.service_id}"')
        if owner is not None:
            check.service_name, check.service_tags = owner.name, list(owner.tags)
        store.upsert_check(check)


def _service(body: dict[str, Any], node_name: str) -> Service | None:
    raw = object_field(body, "Service")
    if not isinstance(raw, dict):
        return None
    name, service_id = _text(raw, "Service"), _text(raw, "ID")
    if service_id and not name:
        raise rpc_error("Must provide service name with ID")
    if not name:
        return None
    if is_any_address(_text(raw, "Address")):
        raise rpc_error("Invalid service address")
    port = object_field(raw, "Port")
    tags = object_field(raw, "Tags")
    return Service(
        node=node_name,
        id=service_id or name,
        name=name,
        tags=list(tags) if isinstance(tags, list) else [],
        address=_text(raw, "Address"),
        port=port if isinstance(port, int) else 0,
        meta=_mapping(raw, "Meta"),
    )


def _checks(body: dict[str, Any], node_name: str) -> list[Check]:
    raw_checks = []
    single = object_field(body, "Check")
    if isinstance(single, dict):
        raw_checks.append(single)
    many = object_field(body, "Checks")
    if isinstance(many, list):
        raw_checks.extend(c for c in many if isinstance(c, dict))
    checks = []
    for raw in raw_checks:
        name = _text(raw, "Name")
        check_id = _text(raw, "CheckID") or name
        status = _text(raw, "Status") or CRITICAL
        if status not in STATUSES:
            raise rpc_error(f"Invalid check status {status!r}")
        checks.append(
            Check(
                node=_text(raw, "Node") or node_name,
                check_id=check_id,
                name=name,
                status=status,
                notes=_text(raw, "Notes"),
                output=_text(raw, "Output"),
                service_id=_text(raw, "ServiceID"),
                definition=_mapping(raw, "Definition"),
            )
        )
    return checks


def apply_deregister(store: Store, body: dict[str, Any]) -> None:
    node_name = _text(body, "Node")
    if not node_name:
        raise rpc_error("Must provide node")
    service_id, check_id = _text(body, "ServiceID"), _text(body, "CheckID")
    if service_id:
        store.remove_service(node_name, service_id)
    elif check_id:
        store.remove_check(node_name, check_id)
    else:
        store.remove_node(node_name)
