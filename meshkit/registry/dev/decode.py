"""Request bodies as Consul decodes them: case-insensitive keys, snake_case aliases,
Go durations, and Go's error texts when a field has the wrong JSON type."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class DecodeError(ValueError):
    """The body cannot be decoded; the message is Consul's text after 'Request decode failed: '."""


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration, in seconds ("1m30s", "500ms", "0")."""
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    if not body:
        raise DecodeError(f'time: invalid duration "{text}"')
    position, total = 0, 0.0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            if re.fullmatch(r"[\d.]+", body[position:]):
                raise DecodeError(f'time: missing unit in duration "{text}"')
            raise DecodeError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return -total if text.startswith("-") else total


def format_duration(seconds: float) -> str:
    """Go's Duration.String(): "10s", "1m0s", "1h0m0s", "500ms", "0s"."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign, nanos = ("-", -nanos) if nanos < 0 else ("", nanos)
    if nanos < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanos >= size:
                return sign + _trim(nanos / size) + unit
    hours, rest = divmod(nanos, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = _trim(rest / 1e9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _trim(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".")


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass(frozen=True)
class _Field:
    name: str  # the Go field name, for error texts
    go_type: str
    check: Callable[[Any], bool]


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == int(value)


_STR = ("string", lambda v: isinstance(v, str))
_INT = ("int", _is_int)
_BOOL = ("bool", lambda v: isinstance(v, bool))
_LIST = ("[]string", _is_str_list)
_MAP = ("map[string]string", _is_str_map)
_OBJECT = ("struct", lambda v: isinstance(v, dict))
_DURATION = (
    "time.Duration",
    lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool),
)
_HEADER = (
    "map[string][]string",
    lambda v: isinstance(v, dict) and all(_is_str_list(item) for item in v.values()),
)


def _fields(**spec: tuple[str, tuple[str, Callable[[Any], bool]]]) -> dict[str, _Field]:
    return {key: _Field(name, kind[0], kind[1]) for key, (name, kind) in spec.items()}


_CHECK_FIELDS = _fields(
    name=("Name", _STR),
    id=("CheckID", _STR),
    checkid=("CheckID", _STR),
    notes=("Notes", _STR),
    status=("Status", _STR),
    serviceid=("ServiceID", _STR),
    ttl=("TTL", _DURATION),
    interval=("Interval", _DURATION),
    timeout=("Timeout", _DURATION),
    deregistercriticalserviceafter=("DeregisterCriticalServiceAfter", _DURATION),
    http=("HTTP", _STR),
    header=("Header", _HEADER),
    method=("Method", _STR),
    body=("Body", _STR),
    tlsskipverify=("TLSSkipVerify", _BOOL),
    tlsservername=("TLSServerName", _STR),
    args=("ScriptArgs", _LIST),
    scriptargs=("ScriptArgs", _LIST),
    tcp=("TCP", _STR),
    udp=("UDP", _STR),
    grpc=("GRPC", _STR),
    h2ping=("H2PING", _STR),
    dockercontainerid=("DockerContainerID", _STR),
    aliasnode=("AliasNode", _STR),
    aliasservice=("AliasService", _STR),
    osservice=("OSService", _STR),
    outputmaxsize=("OutputMaxSize", _INT),
    successbeforepassing=("SuccessBeforePassing", _INT),
    failuresbeforecritical=("FailuresBeforeCritical", _INT),
    failuresbeforewarning=("FailuresBeforeWarning", _INT),
)

_SERVICE_FIELDS = _fields(
    name=("Name", _STR),
    id=("ID", _STR),
    tags=("Tags", _LIST),
    address=("Address", _STR),
    port=("Port", _INT),
    meta=("Meta", _MAP),
    enabletagoverride=("EnableTagOverride", _BOOL),
    weights=("Weights", _OBJECT),
    taggedaddresses=("TaggedAddresses", _OBJECT),
    kind=("Kind", _STR),
    check=("Check", _OBJECT),
    checks=("Checks", ("CheckTypes", lambda v: isinstance(v, list))),
)


def load_json(body: bytes) -> Any:
    """Parse a JSON body the way Go's decoder reports failures."""
    if not body.strip():
        raise DecodeError("EOF")
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"invalid character in JSON body: {exc.msg}") from None
    except UnicodeDecodeError:
        raise DecodeError("invalid character in JSON body") from None


def _normalized(
    raw: Mapping[str, Any], fields: Mapping[str, _Field], struct: str
) -> dict[str, Any]:
    """Keys lowercased without underscores (Consul accepts both casings and snake_case)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        norm = key.lower().replace("_", "")
        spec = fields.get(norm)
        if spec is None or value is None:
            continue
        if not spec.check(value):
            raise DecodeError(
                f"json: cannot unmarshal {_go_type(value)} into Go struct field "
                f"{struct}.{spec.name} of type {spec.go_type}"
            )
        out[spec.name] = value
    return out


def _duration(raw: Mapping[str, Any], name: str) -> float:
    value = raw.get(name)
    if value is None:
        return 0.0
    if isinstance(value, str):
        return parse_duration(value)
    return float(value) / 1e9  # JSON numbers are nanoseconds, as in Go


@dataclass
class CheckDefinition:
    """A check as a client defines it (Consul's CheckType / CheckDefinition)."""

    name: str = ""
    check_id: str = ""
    notes: str = ""
    status: str = ""
    service_id: str = ""
    ttl: float = 0.0
    interval: float = 0.0
    timeout: float = 0.0
    deregister_after: float = 0.0
    http: str = ""
    header: dict[str, list[str]] = field(default_factory=dict)
    method: str = ""
    body: str = ""
    tls_skip_verify: bool = False
    script_args: list[str] = field(default_factory=list)
    other_kind: str = ""  # TCP/UDP/gRPC/... : accepted but not run by the dev registry
    alias: bool = False
    output_max_size: int = 0
    empty: bool = False

    @property
    def type(self) -> str:
        if self.script_args:
            return "script"
        if self.http:
            return "http"
        if self.other_kind:
            return self.other_kind
        if self.alias:
            return "alias"
        return "ttl" if self.ttl > 0 else ""

    def validate(self) -> str | None:
        """Consul's CheckType.Validate(): the error text, or None."""
        interval_check = bool(self.script_args or self.http or self.other_kind)
        if self.interval > 0 and self.ttl > 0:
            return "Interval and TTL cannot both be specified"
        if interval_check and self.interval <= 0:
            return "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
        if interval_check and self.alias:
            return "Interval cannot be set for Alias checks"
        if self.alias and self.ttl > 0:
            return "TTL must be not be set for Alias checks"
        if not interval_check and not self.alias and self.ttl <= 0:
            return "TTL must be > 0 for TTL checks"
        if self.output_max_size < 0:
            return "MaxOutputMaxSize must be positive"
        return None


def decode_check(raw: Any, struct: str = "CheckDefinition") -> CheckDefinition:
    if not isinstance(raw, dict):
        raise DecodeError(
            f"json: cannot unmarshal {_go_type(raw)} into Go value of type structs.{struct}"
        )
    values = _normalized(raw, _CHECK_FIELDS, struct)
    other = next((k for k in ("TCP", "UDP", "GRPC", "H2PING", "OSService") if values.get(k)), "")
    if values.get("DockerContainerID"):
        other = "docker"
    return CheckDefinition(
        name=values.get("Name", ""),
        check_id=values.get("CheckID", ""),
        notes=values.get("Notes", ""),
        status=values.get("Status", ""),
        service_id=values.get("ServiceID", ""),
        ttl=_duration(values, "TTL"),
        interval=_duration(values, "Interval"),
        timeout=_duration(values, "Timeout"),
        deregister_after=_duration(values, "DeregisterCriticalServiceAfter"),
        http=values.get("HTTP", ""),
        header=values.get("Header", {}),
        method=values.get("Method", ""),
        body=values.get("Body", ""),
        tls_skip_verify=values.get("TLSSkipVerify", False),
        script_args=values.get("ScriptArgs", []),
        other_kind=other.lower(),
        alias=bool(values.get("AliasNode") or values.get("AliasService")),
        output_max_size=int(values.get("OutputMaxSize", 0)),
        empty=not values,
    )


@dataclass
class ServiceDefinition:
    """A service registration body (Consul's ServiceDefinition)."""

    name: str = ""
    id: str = ""
    tags: list[str] = field(default_factory=list)
    address: str = ""
    port: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    enable_tag_override: bool = False
    weights: dict[str, Any] | None = None
    tagged_addresses: dict[str, Any] = field(default_factory=dict)
    kind: str = ""
    checks: list[CheckDefinition] = field(default_factory=list)


def decode_service(raw: Any) -> ServiceDefinition:
    if not isinstance(raw, dict):
        raise DecodeError(
            f"json: cannot unmarshal {_go_type(raw)} into Go value of type "
            "structs.ServiceDefinition"
        )
    values = _normalized(raw, _SERVICE_FIELDS, "ServiceDefinition")
    checks = []
    if "Check" in values:
        single = decode_check(values["Check"], "CheckType")
        if not single.empty:  # Consul ignores an empty Check object
            checks.append(single)
    checks.extend(decode_check(item, "CheckType") for item in values.get("Checks", []))
    return ServiceDefinition(
        name=values.get("Name", ""),
        id=values.get("ID", ""),
        tags=values.get("Tags", []),
        address=values.get("Address", ""),
        port=int(values.get("Port", 0)),
        meta=values.get("Meta", {}),
        enable_tag_override=values.get("EnableTagOverride", False),
        weights=values.get("Weights"),
        tagged_addresses=values.get("TaggedAddresses", {}),
        kind=values.get("Kind", ""),
        checks=checks,
    )


def object_field(raw: Mapping[str, Any], name: str) -> Any:
    """One field of a JSON object, matched the way Go matches (case-insensitively)."""
    wanted = name.lower()
    for key, value in raw.items():
        if key.lower().replace("_", "") == wanted:
            return value
    return None
