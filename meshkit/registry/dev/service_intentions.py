"""The ``service-intentions`` config entry kind: Consul's Normalize and Validate.

An entry names a destination and lists its ``Sources``; each has an ``Action``
(allow/deny) or L7 ``Permissions`` (HTTP path exact/prefix/regex, methods, header
matches). Normalizing fills each source's ``Type`` (consul), namespace (the
destination's) and ``Precedence``, upper-cases methods and sorts the sources by
precedence; validation refuses what Consul refuses, with its texts
(agent/structs/config_entry_intentions.go). The dev registry scopes entries by
namespace as Consul Enterprise does (``Namespace`` on the entry and on each source):
meshkit's SPIFFE IDs carry one.
"""

from __future__ import annotations

from typing import Any

from meshkit.registry.connect_intentions import WILDCARD, precedence
from meshkit.registry.dev.config_entries import (
    DEFAULT_NAMESPACE,
    ConfigEntryInvalid,
    ConfigKind,
    validate_meta,
)
from meshkit.registry.dev.mapdecode import BOOL, INT, STRING, ListOf, MapOf, Struct

KIND = "service-intentions"
#: Consul's metaValueMaxLength, which also bounds a source's Description.
DESCRIPTION_MAX = 512
HTTP_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE")
)

HEADER_MATCH = Struct(
    [
        ("Name", STRING),
        ("Present", BOOL),
        ("Exact", STRING),
        ("Prefix", STRING),
        ("Suffix", STRING),
        ("Regex", STRING),
        ("Invert", BOOL),
    ]
)
_HTTP = Struct(
    [
        ("PathExact", STRING),
        ("PathPrefix", STRING),
        ("PathRegex", STRING),
        ("Header", ListOf(HEADER_MATCH)),
        ("Methods", ListOf(STRING)),
    ]
)
_PERMISSION = Struct([("Action", STRING), ("HTTP", _HTTP)])
PERMISSIONS = ListOf(_PERMISSION)
_SOURCE = Struct(
    [
        ("Name", STRING),
        ("Action", STRING),
        ("Permissions", PERMISSIONS),
        ("Precedence", INT),  # read-only: recomputed on every write
        ("LegacyID", STRING),
        ("Type", STRING),
        ("Description", STRING),
        ("LegacyMeta", MapOf(STRING)),
        ("LegacyCreateTime", STRING),
        ("LegacyUpdateTime", STRING),
        ("Partition", STRING),
        ("Namespace", STRING),
        ("Peer", STRING),
        ("SamenessGroup", STRING),
    ]
)
STRUCT = Struct(
    [
        ("Name", STRING),
        ("Sources", ListOf(_SOURCE)),
        ("Meta", MapOf(STRING)),
        ("Partition", STRING),
        ("Namespace", STRING),
    ]
)


def normalize(fields: dict[str, Any]) -> dict[str, Any]:
    """Normalize() then Validate(), as ConfigEntry.Apply runs them."""
    return _normalized(fields, legacy=False)


def normalize_legacy(fields: dict[str, Any]) -> dict[str, Any]:
    """LegacyNormalize() then LegacyValidate(): a write of the pre-1.9 intentions API,
    whose sources keep their ID, meta and times."""
    return _normalized(fields, legacy=True)


def _normalized(fields: dict[str, Any], *, legacy: bool) -> dict[str, Any]:
    namespace = fields.get("Namespace") or DEFAULT_NAMESPACE
    name = fields.get("Name", "")
    sources = [_normalize_source(src, namespace, name, legacy) for src in fields.get("Sources", [])]
    sources.sort(key=lambda src: -src["Precedence"])  # stable, as Go's SliceStable
    entry: dict[str, Any] = {"Kind": KIND, "Name": name, "Partition": "default"}
    entry["Namespace"] = namespace
    entry["Sources"] = sources
    if fields.get("Meta"):
        entry["Meta"] = fields["Meta"]
    if legacy and entry.get("Meta"):
        raise ConfigEntryInvalid("Meta must be omitted for legacy intention writes")
    _validate(entry, fields)
    return entry


def _normalize_source(
    src: dict[str, Any], namespace: str, destination: str, legacy: bool
) -> dict[str, Any]:
    src_namespace = src.get("Namespace") or (
        namespace if namespace != WILDCARD else DEFAULT_NAMESPACE
    )
    out: dict[str, Any] = {"Name": src.get("Name", "")}
    if src.get("Action"):
        out["Action"] = src["Action"]
    permissions = [_normalize_permission(p) for p in src.get("Permissions", [])]
    if permissions:
        out["Permissions"] = permissions
    out["Precedence"] = precedence(namespace, destination, src_namespace, out["Name"])
    if legacy:  # a plain write clears these (LegacyMeta stays, for Validate to refuse)
        out["LegacyID"] = src.get("LegacyID", "")
    out["Type"] = src.get("Type") or "consul"
    if src.get("Description"):
        out["Description"] = src["Description"]
    if legacy or src.get("LegacyMeta"):
        out["LegacyMeta"] = src.get("LegacyMeta") or {}
    if legacy:
        out |= {key: src[key] for key in ("LegacyCreateTime", "LegacyUpdateTime")}
    out |= {"Partition": "default", "Namespace": src_namespace}
    for key in ("Peer", "SamenessGroup"):
        if src.get(key):
            out[key] = src[key]  # kept only for Validate to refuse
    return out


def _normalize_permission(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"Action": raw.get("Action", "")}
    http = raw.get("HTTP")
    if http is not None:
        shaped = {k: http[k] for k in ("PathExact", "PathPrefix", "PathRegex") if http.get(k)}
        headers = [
            {"Name": h.get("Name", ""), **{k: v for k, v in h.items() if k != "Name" and v}}
            for h in http.get("Header", [])
        ]
        if headers:
            shaped["Header"] = headers
        if http.get("Methods"):
            shaped["Methods"] = [m.upper() for m in http["Methods"]]
        out["HTTP"] = shaped
    return out


def _validate(entry: dict[str, Any], fields: dict[str, Any]) -> None:
    name = entry["Name"]
    if not name:
        raise ConfigEntryInvalid("Name is required")
    _check_wildcards(name, entry["Namespace"], "")
    if fields.get("Partition", "default") not in ("", "default"):
        raise ConfigEntryInvalid("Partition: partitions are not supported by this registry")
    validate_meta(entry.get("Meta", {}))
    sources = entry["Sources"]
    if not sources:
        raise ConfigEntryInvalid("At least one source is required")
    destination_wild = WILDCARD in (name, entry["Namespace"])
    seen: set[tuple[str, str]] = set()
    for index, src in enumerate(sources):
        _validate_source(index, src, destination_wild)
        key = (src["Namespace"], src["Name"])
        if key in seen:
            raise ConfigEntryInvalid(
                f'Sources[{index}] defines "{src["Namespace"]}/{src["Name"]}" more than once'
            )
        seen.add(key)


def _check_wildcards(name: str, namespace: str, prefix: str) -> None:
    """Consul's validateIntentionWildcards."""
    if namespace != WILDCARD and WILDCARD in namespace:
        raise ConfigEntryInvalid(
            f"{prefix}Namespace: wildcard character '*' cannot be used with partial values"
        )
    if name != WILDCARD:
        if WILDCARD in name:
            raise ConfigEntryInvalid(
                f"{prefix}Name: wildcard character '*' cannot be used with partial values"
            )
        if namespace == WILDCARD:
            raise ConfigEntryInvalid(f"{prefix}Name: exact value cannot follow wildcard namespace")


def _validate_source(index: int, src: dict[str, Any], destination_wild: bool) -> None:
    at = f"Sources[{index}]"
    if not src["Name"]:
        raise ConfigEntryInvalid(f"{at}.Name is required")
    _check_wildcards(src["Name"], src["Namespace"], f"{at}.")
    if src.get("Peer") or src.get("SamenessGroup"):
        raise ConfigEntryInvalid(f"{at}: peers and sameness groups are not supported here")
    if len(src.get("Description", "")) > DESCRIPTION_MAX:
        raise ConfigEntryInvalid(f"{at}.Description exceeds maximum length {DESCRIPTION_MAX}")
    if "LegacyID" not in src and src.get("LegacyMeta"):
        raise ConfigEntryInvalid(f"{at}.LegacyMeta must be omitted")
    permissions = src.get("Permissions", [])
    if not permissions and src.get("Action") not in ("allow", "deny"):
        raise ConfigEntryInvalid(f"{at}.Action must be set to 'allow' or 'deny'")
    if permissions and src.get("Action"):
        raise ConfigEntryInvalid(f"{at}.Action must be omitted if Permissions are specified")
    if destination_wild and permissions:
        raise ConfigEntryInvalid(
            f"{at}.Permissions cannot be specified on intentions with wildcarded destinations"
        )
    if src["Type"] != "consul":
        raise ConfigEntryInvalid(f"{at}.Type must be set to 'consul'")
    for number, permission in enumerate(permissions):
        _validate_permission(f"{at}.Permissions[{number}]", permission)


def _validate_permission(at: str, permission: dict[str, Any]) -> None:
    if permission["Action"] not in ("allow", "deny"):
        raise ConfigEntryInvalid(f"{at}.Action must be set to 'allow' or 'deny'")
    http = permission.get("HTTP")
    if http is None:
        raise ConfigEntryInvalid(f"{at}.HTTP is required")
    at = f"{at}.HTTP"
    for key in ("PathExact", "PathPrefix"):
        if http.get(key) and not http[key].startswith("/"):
            raise ConfigEntryInvalid(f"{at}.{key} doesn't start with '/': \"{http[key]}\"")
    paths = sum(1 for key in ("PathExact", "PathPrefix", "PathRegex") if http.get(key))
    if paths > 1:
        raise ConfigEntryInvalid(
            f"{at} should only contain at most one of PathExact, PathPrefix, or PathRegex"
        )
    for number, header in enumerate(http.get("Header", [])):
        _validate_header(f"{at}.Header[{number}]", header)
    methods = http.get("Methods", [])
    seen: set[str] = set()
    for method in methods:
        if method not in HTTP_METHODS:
            raise ConfigEntryInvalid(f'{at}.Methods contains an invalid method "{method}"')
        if method in seen:
            raise ConfigEntryInvalid(f'{at}.Methods contains "{method}" more than once')
        seen.add(method)
    if paths + len(http.get("Header", [])) + (1 if methods else 0) == 0:
        raise ConfigEntryInvalid(f"{at} should not be empty")


def _validate_header(at: str, header: dict[str, Any]) -> None:
    if not header.get("Name"):
        raise ConfigEntryInvalid(f"{at} missing required Name field")
    tests = sum(1 for key in ("Present", "Exact", "Regex", "Prefix", "Suffix") if header.get(key))
    if tests != 1:
        raise ConfigEntryInvalid(
            f"{at} should only contain one of Present, Exact, Prefix, Suffix, or Regex"
        )


SERVICE_INTENTIONS = ConfigKind(KIND, STRUCT, normalize, namespaced=True)
