"""The discovery-chain config entry kinds: ``service-resolver``, ``-splitter``, ``-router``.

Their Normalize and Validate as Consul runs them on a write, with Consul's texts
(agent/structs/config_entry_discoverychain.go): a resolver's subsets (DNS-label names,
bexpr filters), default subset, redirect and failover; a splitter's weights (scaled to
0.01 %, summing to 100, each destination once); a router's matches (one path form,
one test per header and query match, valid methods) and destinations (prefix rewrite
only after a path match, valid retry conditions). A splitter or router is refused for a
service whose protocol is not HTTP-based, as Consul's chain compilation refuses it.
Entries are shown as Consul shows them: empty fields left out, durations as Go prints
them.
"""

from __future__ import annotations

import re
from typing import Any

from meshkit.registry.bexpr import FilterError, compile_filter
from meshkit.registry.dev.config_entries import (
    DEFAULT_NAMESPACE,
    ConfigEntries,
    ConfigEntryInvalid,
    ConfigKind,
    validate_meta,
)
from meshkit.registry.dev.durations import format_duration, parse_duration
from meshkit.registry.dev.errors import DecodeError
from meshkit.registry.dev.gojson import Number
from meshkit.registry.dev.mapdecode import ANY, BOOL, INT, STRING, ListOf, MapOf, Spec, Struct
from meshkit.registry.dev.service_intentions import HEADER_MATCH, HTTP_METHODS

_SUBSET_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_SUBSET_MAX = 63
_MAX_SCALED_WEIGHT = 100 * 100
_LB_POLICIES = frozenset({"", "random", "round_robin", "least_request", "ring_hash", "maglev"})
RETRY_CONDITIONS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)


class _Duration(Spec):
    """time.Duration through mapstructure's StringToTimeDurationHookFunc: "5s", or an
    integer of nanoseconds."""

    go_type = "time.Duration"

    def decode(self, value: Any, path: str, errors: list[str], unused: list[str]) -> Any:
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except DecodeError as exc:
                errors.append(f"error decoding '{path}': {exc}")
                return 0
        if isinstance(value, Number):
            return value.as_int() or int(value.as_float() or 0)
        if value is None:
            return 0
        errors.append(f"'{path}' expected type 'time.Duration', got unconvertible type")
        return 0


class _Float(Spec):
    go_type = "float32"

    def decode(self, value: Any, path: str, errors: list[str], unused: list[str]) -> Any:
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if isinstance(value, Number):
            return value.as_float() or 0.0
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value) if value else 0.0
            except ValueError:
                errors.append(
                    f"cannot parse '{path}' as float: strconv.ParseFloat: parsing "
                    f'"{value}": invalid syntax'
                )
                return 0.0
        if value is None:
            return 0.0
        errors.append(f"'{path}' expected type 'float32', got unconvertible type")
        return 0.0


DURATION: Spec = _Duration()
FLOAT: Spec = _Float()
_ENTERPRISE = [("Meta", MapOf(STRING)), ("Namespace", STRING), ("Partition", STRING)]
_HEADERS = Struct([("Add", MapOf(STRING)), ("Set", MapOf(STRING)), ("Remove", ListOf(STRING))])
_TARGET_FIELDS = [
    ("Service", STRING),
    ("ServiceSubset", STRING),
    ("Namespace", STRING),
    ("Partition", STRING),
    ("Datacenter", STRING),
    ("Peer", STRING),
]
_FAILOVER = Struct(
    [
        ("Service", STRING),
        ("ServiceSubset", STRING),
        ("Namespace", STRING),
        ("Datacenters", ListOf(STRING)),
        ("Targets", ListOf(Struct(_TARGET_FIELDS))),
        ("Policy", Struct([("Mode", STRING), ("Regions", ListOf(STRING))])),
        ("SamenessGroup", STRING),
    ]
)
RESOLVER = Struct(
    [
        ("Name", STRING),
        ("DefaultSubset", STRING),
        ("Subsets", MapOf(Struct([("Filter", STRING), ("OnlyPassing", BOOL)]))),
        ("Redirect", Struct(_TARGET_FIELDS)),
        ("Failover", MapOf(_FAILOVER)),
        ("ConnectTimeout", DURATION),
        ("RequestTimeout", DURATION),
        ("LoadBalancer", ANY),
        *_ENTERPRISE,
    ]
)
SPLITTER = Struct(
    [
        ("Name", STRING),
        (
            "Splits",
            ListOf(
                Struct(
                    [
                        ("Weight", FLOAT),
                        ("Service", STRING),
                        ("ServiceSubset", STRING),
                        ("Namespace", STRING),
                        ("Partition", STRING),
                        ("RequestHeaders", _HEADERS),
                        ("ResponseHeaders", _HEADERS),
                    ]
                )
            ),
        ),
        *_ENTERPRISE,
    ]
)
_QUERY_MATCH = Struct([("Name", STRING), ("Present", BOOL), ("Exact", STRING), ("Regex", STRING)])
_HTTP_MATCH = Struct(
    [
        ("PathExact", STRING),
        ("PathPrefix", STRING),
        ("PathRegex", STRING),
        ("Header", ListOf(HEADER_MATCH)),
        ("QueryParam", ListOf(_QUERY_MATCH)),
        ("Methods", ListOf(STRING)),
    ]
)
_DESTINATION = Struct(
    [
        ("Service", STRING),
        ("ServiceSubset", STRING),
        ("Namespace", STRING),
        ("Partition", STRING),
        ("PrefixRewrite", STRING),
        ("RequestTimeout", DURATION),
        ("IdleTimeout", DURATION),
        ("NumRetries", INT),
        ("RetryOnConnectFailure", BOOL),
        ("RetryOn", ListOf(STRING)),
        ("RetryOnStatusCodes", ListOf(INT)),
        ("RequestHeaders", _HEADERS),
        ("ResponseHeaders", _HEADERS),
    ]
)
ROUTER = Struct(
    [
        ("Name", STRING),
        (
            "Routes",
            ListOf(
                Struct([("Match", Struct([("HTTP", _HTTP_MATCH)])), ("Destination", _DESTINATION)])
            ),
        ),
        *_ENTERPRISE,
    ]
)


def _shown(value: Any) -> Any:
    """The entry as Consul's JSON shows it: ``omitempty`` fields left out when empty."""
    if isinstance(value, dict):
        shown = {key: _shown(item) for key, item in value.items()}
        return {key: item for key, item in shown.items() if item not in ("", 0, False, [], {})}
    if isinstance(value, list):
        return [_shown(item) for item in value]
    return value


def _durations(fields: dict[str, Any], *names: str) -> None:
    for name in names:
        if fields.get(name):
            fields[name] = format_duration(fields[name])


def _common(fields: dict[str, Any], kind: str) -> dict[str, Any]:
    if not fields.get("Name"):
        raise ConfigEntryInvalid("Name is required")
    validate_meta(fields.get("Meta") or {})
    return {"Kind": kind, **{key: value for key, value in fields.items() if key != "Kind"}}


# -- service-resolver ------------------------------------------------------------------------


def normalize_resolver(fields: dict[str, Any]) -> dict[str, Any]:
    entry = _common(fields, "service-resolver")
    subsets: dict[str, Any] = entry.get("Subsets") or {}
    for name, subset in subsets.items():
        if not name:
            raise ConfigEntryInvalid("Subset defined with empty name")
        _validate_subset_name(name)
        if subset.get("Filter"):
            try:
                compile_filter(subset["Filter"])
            except FilterError as exc:
                raise ConfigEntryInvalid(
                    f'Filter for subset "{name}" is not a valid expression: {exc}'
                ) from None
    default = entry.get("DefaultSubset", "")
    if default and default not in subsets:
        raise ConfigEntryInvalid(f'DefaultSubset "{default}" is not a valid subset')
    _validate_redirect(entry, subsets)
    for subset, failover in (entry.get("Failover") or {}).items():
        _validate_failover(entry["Name"], subset, failover, subsets)
    for name in ("ConnectTimeout", "RequestTimeout"):
        if entry.get(name, 0) < 0:
            raise ConfigEntryInvalid(f"Bad {name} '{format_duration(entry[name])}', must be >= 0")
    _validate_load_balancer(entry.get("LoadBalancer"))
    _durations(entry, "ConnectTimeout", "RequestTimeout")
    shown: dict[str, Any] = _shown(entry)
    if subsets:  # a subset without a filter (all instances) shows as {}, not dropped
        shown["Subsets"] = {name: _shown(subset) for name, subset in subsets.items()}
    return shown


def _validate_subset_name(name: str) -> None:
    if len(name) > _SUBSET_MAX:
        reason = "must be non-empty and 63 characters or fewer"
    elif not _SUBSET_NAME.match(name):
        reason = (
            "must be 63 characters or fewer, begin or end with lower case alphanumeric "
            "characters, and contain lower case alphanumeric characters or '-' in between"
        )
    else:
        return
    raise ConfigEntryInvalid(f'Subset "{name}" is invalid: {reason}')


def _validate_redirect(entry: dict[str, Any], subsets: dict[str, Any]) -> None:
    redirect = entry.get("Redirect")
    if redirect is None:
        return
    if entry.get("Failover"):
        raise ConfigEntryInvalid("Redirect and Failover cannot both be set")
    if not any(redirect.values()):
        raise ConfigEntryInvalid("Redirect is empty")
    service, subset = redirect.get("Service", ""), redirect.get("ServiceSubset", "")
    if redirect.get("Peer") and subset:
        raise ConfigEntryInvalid("Redirect.Peer cannot be set with Redirect.ServiceSubset")
    if redirect.get("Peer") and redirect.get("Partition"):
        raise ConfigEntryInvalid("Redirect.Partition cannot be set with Redirect.Peer")
    if redirect.get("Peer") and redirect.get("Datacenter"):
        raise ConfigEntryInvalid("Redirect.Peer cannot be set with Redirect.Datacenter")
    if not service:
        for key in ("ServiceSubset", "Namespace", "Partition", "Peer"):
            if redirect.get(key):
                raise ConfigEntryInvalid(f"Redirect.{key} defined without Redirect.Service")
    elif subset and service == entry["Name"] and subset not in subsets:
        raise ConfigEntryInvalid(
            f'Redirect.ServiceSubset "{subset}" is not a valid subset of "{entry["Name"]}"'
        )


def _validate_failover(
    name: str, subset: str, failover: dict[str, Any], subsets: dict[str, Any]
) -> None:
    prefix = f'Bad Failover["{subset}"]: '
    if subset != "*" and subset not in subsets:
        raise ConfigEntryInvalid(prefix + "not a valid subset subset")
    targets = failover.get("Targets") or []
    keys = ("Service", "ServiceSubset", "Namespace", "Datacenters", "Targets")
    if not any(failover.get(key) for key in keys):
        raise ConfigEntryInvalid(
            prefix + "one of Service, ServiceSubset, Namespace, Targets, or Datacenters is required"
        )
    mode = (failover.get("Policy") or {}).get("Mode", "")
    if mode not in ("", "default", "order-by-locality"):
        raise ConfigEntryInvalid(
            prefix.rstrip(" ") + " Policy must be one of '', 'default', or 'order-by-locality'"
        )
    service, target_subset = failover.get("Service", ""), failover.get("ServiceSubset", "")
    if target_subset and service in ("", name) and target_subset not in subsets:
        raise ConfigEntryInvalid(
            f'{prefix}ServiceSubset "{target_subset}" is not a valid subset of "{service}"'
        )
    for other, text in (
        ("Datacenters", "Datacenters"),
        ("ServiceSubset", "ServiceSubset"),
        ("Service", "Service"),
    ):
        if failover.get(other) and targets:
            raise ConfigEntryInvalid(f"{prefix}Targets cannot be set with {text}")
    for index, target in enumerate(targets):
        _validate_target(f'Bad Failover["{subset}"].Targets[{index}]: ', name, target, subsets)
    if any(dc == "" for dc in failover.get("Datacenters") or []):
        raise ConfigEntryInvalid(f'Bad Failover["{subset}"].Datacenters: found empty datacenter')


def _validate_target(
    prefix: str, name: str, target: dict[str, Any], subsets: dict[str, Any]
) -> None:
    pairs = (
        ("Peer", "ServiceSubset", "Peer cannot be set with ServiceSubset"),
        ("Peer", "Partition", "Partition cannot be set with Peer"),
        ("Peer", "Datacenter", "Peer cannot be set with Datacenter"),
        ("Partition", "Datacenter", "Partition cannot be set with Datacenter"),
    )
    for first, second, text in pairs:
        if target.get(first) and target.get(second):
            raise ConfigEntryInvalid(prefix + text)
    subset = target.get("ServiceSubset", "")
    if subset and target.get("Service", "") in ("", name) and subset not in subsets:
        raise ConfigEntryInvalid(
            f'{prefix}ServiceSubset "{subset}" is not a valid subset of "{name}"'
        )


def _validate_load_balancer(balancer: Any) -> None:
    if balancer is None:
        return
    policy = balancer.get("Policy", "") if isinstance(balancer, dict) else ""
    if policy not in _LB_POLICIES:
        raise ConfigEntryInvalid(f'Bad LoadBalancer policy: "{policy}" is not supported')


# -- service-splitter ------------------------------------------------------------------------


def normalize_splitter(fields: dict[str, Any]) -> dict[str, Any]:
    entry = _common(fields, "service-splitter")
    splits = entry.get("Splits") or []
    for split in splits:
        split.setdefault("Namespace", DEFAULT_NAMESPACE)
        split["Weight"] = _scaled(split.get("Weight", 0.0)) / 100
    if not splits:
        raise ConfigEntryInvalid("no splits configured")
    seen: set[tuple[str, str, str, str]] = set()
    for split in splits:
        key = (
            split.get("Service") or entry["Name"],
            split.get("ServiceSubset", ""),
            split.get("Namespace", ""),
            split.get("Partition", ""),
        )
        if key in seen:
            service, subset, namespace, partition = key
            raise ConfigEntryInvalid(
                f'split destination occurs more than once: service="{service}", '
                f'subset="{subset}", namespace="{namespace}", partition="{partition}"'
            )
        seen.add(key)
    total = sum(_scaled(split["Weight"]) for split in splits)
    if total != _MAX_SCALED_WEIGHT:
        raise ConfigEntryInvalid(f"the sum of all split weights must be 100, not {total / 100:f}")
    shown: dict[str, Any] = _shown(entry)
    for split, original in zip(shown["Splits"], splits, strict=True):
        split["Weight"] = _weight_json(original["Weight"])  # not omitempty, even when 0
    return shown


def _scaled(weight: float) -> int:
    """Consul's scaleWeight: the weight in 0.01 % units."""
    return round(weight * 100)


def _weight_json(weight: float) -> int | float:
    scaled = _scaled(weight)
    return scaled // 100 if scaled % 100 == 0 else scaled / 100


# -- service-router --------------------------------------------------------------------------


def normalize_router(fields: dict[str, Any]) -> dict[str, Any]:
    entry = _common(fields, "service-router")
    for index, route in enumerate(entry.get("Routes") or []):
        http = (route.get("Match") or {}).get("HTTP")
        if http is not None and http.get("Methods"):
            http["Methods"] = [method.upper() for method in http["Methods"]]
        _validate_route(index, http, route.get("Destination"))
        if route.get("Destination"):
            _durations(route["Destination"], "RequestTimeout", "IdleTimeout")
    return _shown(entry)  # type: ignore[no-any-return]


def _validate_route(index: int, http: dict[str, Any] | None, destination: Any) -> None:
    at = f"Route[{index}]"
    rewritable = False
    if http is not None:
        rewritable = _validate_http_match(at, http)
    if destination is None:
        return
    if destination.get("PrefixRewrite") and not rewritable:
        raise ConfigEntryInvalid(
            f"{at} cannot make use of PrefixRewrite without configuring either PathExact "
            "or PathPrefix"
        )
    for condition in destination.get("RetryOn") or []:
        if condition not in RETRY_CONDITIONS:
            raise ConfigEntryInvalid(f'{at} contains an invalid retry condition: "{condition}"')


def _validate_http_match(at: str, http: dict[str, Any]) -> bool:
    """Consul's checks of one route's HTTP match; whether a prefix rewrite may follow."""
    for key in ("PathExact", "PathPrefix"):
        if http.get(key) and not http[key].startswith("/"):
            raise ConfigEntryInvalid(f"{at} {key} doesn't start with '/': \"{http[key]}\"")
    if sum(1 for key in ("PathExact", "PathPrefix", "PathRegex") if http.get(key)) > 1:
        raise ConfigEntryInvalid(
            f"{at} should only contain at most one of PathExact, PathPrefix, or PathRegex"
        )
    for number, header in enumerate(http.get("Header") or []):
        _one_test(
            f"{at} Header[{number}]", header, ("Present", "Exact", "Prefix", "Suffix", "Regex")
        )
    for number, query in enumerate(http.get("QueryParam") or []):
        _one_test(f"{at} QueryParam[{number}]", query, ("Present", "Exact", "Regex"))
    seen: set[str] = set()
    for method in http.get("Methods") or []:
        if method not in HTTP_METHODS:
            raise ConfigEntryInvalid(f'{at} Methods contains an invalid method "{method}"')
        if method in seen:
            raise ConfigEntryInvalid(f'{at} Methods contains "{method}" more than once')
        seen.add(method)
    return bool(http.get("PathExact") or http.get("PathPrefix"))


def _one_test(at: str, match: dict[str, Any], tests: tuple[str, ...]) -> None:
    if not match.get("Name"):
        raise ConfigEntryInvalid(f"{at} missing required Name field")
    if sum(1 for key in tests if match.get(key)) != 1:
        listed = ", ".join(tests[:-1]) + f", or {tests[-1]}"
        raise ConfigEntryInvalid(f"{at} should only contain one of {listed}")


# -- graph validation -------------------------------------------------------------------------

_ADVANCED_PROTOCOLS = frozenset({"http", "http2", "grpc"})


_ROUTING_KINDS = ("service-splitter", "service-router")


def check_chains(entries: ConfigEntries, kind: str, name: str, body: dict[str, Any] | None) -> None:
    """A splitter or router is advanced routing: Consul refuses any change (a splitter or
    router written; a service-defaults or proxy-defaults written or deleted) that leaves
    one on a service whose protocol (service-defaults, else proxy-defaults'
    ``Config.protocol``, else tcp) is not HTTP-based, when it compiles the chains."""

    def after(of_kind: str, of_name: str) -> dict[str, Any] | None:
        if (of_kind, of_name) == (kind, name):
            return body
        stored = entries.get(of_kind, of_name)
        return None if stored is None else stored.body

    names = {entry.name for k in _ROUTING_KINDS for entry in entries.of_kind(k)} | {name}
    for service in sorted(names):
        if not any(after(k, service) is not None for k in _ROUTING_KINDS):
            continue
        protocol = _protocol(after("service-defaults", service), after("proxy-defaults", "global"))
        if protocol not in _ADVANCED_PROTOCOLS:
            raise ConfigEntryInvalid(
                f'discovery chain "{service}" uses a protocol "{protocol}" that does not '
                "permit advanced routing or splitting behavior"
            )


def _protocol(defaults: dict[str, Any] | None, proxy: dict[str, Any] | None) -> str:
    if defaults is not None and defaults.get("Protocol"):
        return str(defaults["Protocol"]).lower()
    config = (proxy or {}).get("Config") or {}
    protocol = config.get("protocol") if isinstance(config, dict) else None
    return str(protocol).lower() if protocol else "tcp"


SERVICE_RESOLVER = ConfigKind("service-resolver", RESOLVER, normalize_resolver)
SERVICE_SPLITTER = ConfigKind(
    "service-splitter", SPLITTER, normalize_splitter, check_graph=check_chains
)
SERVICE_ROUTER = ConfigKind("service-router", ROUTER, normalize_router, check_graph=check_chains)
