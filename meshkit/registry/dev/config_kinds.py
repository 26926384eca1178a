"""The config entry kinds the dev registry implements, by name.

Each kind lives in its own module as a ``ConfigKind``; adding one is a module and a line
here. ``proxy-defaults`` and ``service-defaults`` are stored as given past Consul's few
checks on them (meshkit reads neither; they exist so tools that write them work).
"""

from __future__ import annotations

from typing import Any

from meshkit.registry.dev.config_entries import ConfigEntryInvalid, ConfigKind, validate_meta
from meshkit.registry.dev.discovery_chain import (
    SERVICE_RESOLVER,
    SERVICE_ROUTER,
    SERVICE_SPLITTER,
    check_chains,
)
from meshkit.registry.dev.mapdecode import ANY, STRING, MapOf, Struct
from meshkit.registry.dev.service_intentions import SERVICE_INTENTIONS

PROXY_GLOBAL = "global"
_PASSED_THROUGH = ("Mode", "TransparentProxy", "MeshGateway", "Expose")


def _proxy_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    """ProxyConfigEntry.Normalize and Validate: the one entry is named "global"."""
    name = fields.get("Name") or PROXY_GLOBAL
    if name != PROXY_GLOBAL:
        raise ConfigEntryInvalid(f'invalid name ("{name}"), only "{PROXY_GLOBAL}" is supported')
    entry = {"Kind": "proxy-defaults", "Name": name, "Config": fields.get("Config")}
    return _with_rest(entry, fields)


def _service_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    """ServiceConfigEntry.Normalize and Validate (the checks of what meshkit stores)."""
    name = fields.get("Name", "")
    if not name:
        raise ConfigEntryInvalid("Name is required")
    if name == "*":
        raise ConfigEntryInvalid(
            "service-defaults name must be the name of a service, and not a wildcard"
        )
    entry = {"Kind": "service-defaults", "Name": name, "Protocol": fields.get("Protocol", "")}
    entry["Protocol"] = entry["Protocol"].lower()
    return _with_rest(entry, fields)


def _with_rest(entry: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    validate_meta(fields.get("Meta") or {})
    entry |= {key: fields[key] for key in _PASSED_THROUGH if fields.get(key)}
    if fields.get("Meta"):
        entry["Meta"] = fields["Meta"]
    return entry


_COMMON = [*((key, ANY) for key in _PASSED_THROUGH), ("Meta", MapOf(STRING))]
# Their protocol decides whether a service's splitter and router are allowed.
PROXY_DEFAULTS = ConfigKind(
    "proxy-defaults",
    Struct([("Name", STRING), ("Config", ANY), *_COMMON]),
    _proxy_defaults,
    check_graph=check_chains,
)
SERVICE_DEFAULTS = ConfigKind(
    "service-defaults",
    Struct([("Name", STRING), ("Protocol", STRING), *_COMMON]),
    _service_defaults,
    check_graph=check_chains,
)

KINDS: dict[str, ConfigKind] = {
    kind.name: kind
    for kind in (
        *(SERVICE_INTENTIONS, PROXY_DEFAULTS, SERVICE_DEFAULTS),
        *(SERVICE_RESOLVER, SERVICE_SPLITTER, SERVICE_ROUTER),
    )
}
