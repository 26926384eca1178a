"""Request bodies decoded as Consul's Go structs decode them, with Go's error texts.

Consul reads a body with Go's ``json.Decoder`` into a struct: keys match fields exactly or
case-insensitively (plus the snake_case aliases Consul declares), each value must fit its
field's Go type (a ``Port`` is an ``int``: ``"80"``, ``80.5`` and ``1e300`` are refused),
``null`` leaves a field unset, and the first error in document order is the one reported.
Consul's ``ServiceDefinition`` and ``CheckType`` decode through anonymous wrapper structs
that embed the real one as ``Alias``, so Go names a bad ``Port`` ``.Alias.Port``; a check
inside a service is decoded on its own and an error there aborts the whole body. Check
durations are ``interface{}``: a string is a Go duration, a number is nanoseconds,
anything else is ignored (Consul's ``CheckType.UnmarshalJSON``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshkit.registry.dev import durations
from meshkit.registry.dev.errors import DecodeError
from meshkit.registry.dev.gojson import Number

# -- Go's typed decoding -----------------------------------------------------------------


@dataclass(frozen=True)
class At:
    """Where a value is being decoded: the innermost named Go struct ("" for Consul's
    anonymous wrappers) and the field path from the root, embedded structs included."""

    struct: str = ""
    path: str = ""

    def child(self, path: str, struct: str | None = None) -> At:
        joined = f"{self.path}.{path}" if self.path else path
        return At(self.struct if struct is None else struct, joined)


@dataclass(frozen=True)
class TypeError_:
    """encoding/json's UnmarshalTypeError, kept apart so an outer decoder can add context."""

    value: str
    go_type: str
    at: At

    def text(self) -> str:
        if not self.at.struct and not self.at.path:
            return f"json: cannot unmarshal {self.value} into Go value of type {self.go_type}"
        where = f"{self.at.struct}.{self.at.path}"
        return (
            f"json: cannot unmarshal {self.value} into Go struct field {where} "
            f"of type {self.go_type}"
        )


class Decoding:
    """One decoder's state: like Go's ``saveError``, the first error is the one kept."""

    def __init__(self) -> None:
        self.first: TypeError_ | str | None = None

    def type_error(self, value: Any, go_type: str, at: At, *, literal: bool = False) -> None:
        shown = json_kind(value)
        if literal and isinstance(value, Number):
            shown = f"number {value.text}"
        self.save(TypeError_(shown, go_type, at))

    def save(self, error: TypeError_ | str) -> None:
        if self.first is None:
            self.first = error

    def raise_first(self) -> None:
        if isinstance(self.first, TypeError_):
            raise DecodeError(self.first.text())
        if self.first is not None:
            raise DecodeError(self.first)


Decoder = Callable[[Any, At, Decoding], Any]


def json_kind(value: Any) -> str:
    """The JSON kind of a decoded value, as Go's errors name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Number):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def string_of(go_type: str) -> Decoder:
    def decode(value: Any, at: At, decoding: Decoding) -> str:
        if isinstance(value, str):
            return value
        if value is not None:
            decoding.type_error(value, go_type, at)
        return ""

    return decode


STRING = string_of("string")


def _int(value: Any, at: At, decoding: Decoding) -> int:
    if isinstance(value, Number):
        parsed = value.as_int()
        if parsed is not None:
            return parsed
    if value is not None:
        decoding.type_error(value, "int", at, literal=True)
    return 0


def _bool(value: Any, at: At, decoding: Decoding) -> bool:
    if isinstance(value, bool):
        return value
    if value is not None:
        decoding.type_error(value, "bool", at)
    return False


def _any(value: Any, at: At, decoding: Decoding) -> Any:
    """``interface{}``: anything fits, but a number must still be a float64."""
    if isinstance(value, Number) and value.as_float() is None:
        decoding.type_error(value, "float64", at, literal=True)
        return None
    return value


INT: Decoder = _int
BOOL: Decoder = _bool
ANY: Decoder = _any


def list_of(element: Decoder, go_type: str) -> Decoder:
    def decode(value: Any, at: At, decoding: Decoding) -> list[Any]:
        if isinstance(value, list):
            return [element(item, at, decoding) for item in value]
        if value is not None:
            decoding.type_error(value, go_type, at)
        return []

    return decode


def map_of(element: Decoder, go_type: str) -> Decoder:
    def decode(value: Any, at: At, decoding: Decoding) -> dict[str, Any]:
        if isinstance(value, dict):
            return {key: element(item, at, decoding) for key, item in value.items()}
        if value is not None:
            decoding.type_error(value, go_type, at)
        return {}

    return decode


@dataclass(frozen=True)
class Field:
    """A Go struct field: its name in results, its path element(s), its type."""

    name: str
    path: str
    decode: Decoder


class Fields:
    """A struct's fields by JSON name; Go matches exactly first, then case-insensitively."""

    def __init__(self, fields: Iterable[tuple[str, str, Decoder]], *, embedded: str = "") -> None:
        self.exact: dict[str, Field] = {}
        for json_name, name, decode in fields:
            path = f"{embedded}.{json_name}" if embedded else json_name
            self.exact[json_name] = Field(name, path, decode)
        self.folded = {key.lower(): value for key, value in self.exact.items()}

    def __or__(self, other: Fields) -> Fields:
        merged = Fields(())
        merged.exact = {**other.exact, **self.exact}  # the shallower (own) field wins
        merged.folded = {key.lower(): value for key, value in merged.exact.items()}
        return merged

    def match(self, key: str) -> Field | None:
        return self.exact.get(key) or self.folded.get(key.lower())


def decode_struct(
    raw: Mapping[str, Any], fields: Fields, at: At, decoding: Decoding
) -> dict[str, Any]:
    """Decode an object's known keys in document order; unknown keys are skipped."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        match = fields.match(key)
        if match is not None and value is not None:
            out[match.name] = match.decode(value, at.child(match.path), decoding)
    return out


def struct_of(fields: Fields, go_type: str, *, pointer: bool = True) -> Decoder:
    """A named struct (``structs.Weights``): its name becomes the error's struct.

    ``null`` leaves a pointer nil (None); a struct held by value (a map's element) is
    then its zero value, ``{}`` here (unset fields are left out, as for any struct).
    """
    struct = go_type.rpartition(".")[2]

    def decode(value: Any, at: At, decoding: Decoding) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return decode_struct(value, fields, At(struct, at.path), decoding)
        if value is not None:
            decoding.type_error(value, go_type, at)
        return None if pointer else {}

    return decode


def owned(*names: str, decode: Decoder) -> list[tuple[str, str, Decoder]]:
    return [(name, name, decode) for name in names]


STRINGS = list_of(STRING, "[]string")
STRING_MAP = map_of(STRING, "map[string]string")
HEADER = map_of(list_of(STRING, "[]string"), "map[string][]string")
_ADDRESS_FIELDS = Fields([("Address", "Address", STRING), ("Port", "Port", INT)])
SERVICE_ADDRESS = struct_of(_ADDRESS_FIELDS, "structs.ServiceAddress", pointer=False)
TAGGED_ADDRESSES = map_of(SERVICE_ADDRESS, "map[string]structs.ServiceAddress")
WEIGHTS = struct_of(
    Fields([("Passing", "Passing", INT), ("Warning", "Warning", INT)]), "structs.Weights"
)


def decode_top(raw: Any, fields: Fields, go_type: str, *, struct: str = "") -> dict[str, Any]:
    """The root object of a body (``struct``: its Go name; "" for Consul's anonymous
    wrappers), or ``DecodeError`` with the first error in it; anything but an object is
    Go's "Go value" error."""
    if not isinstance(raw, dict):
        raise DecodeError(TypeError_(json_kind(raw), go_type, At()).text())
    decoding = Decoding()
    values = decode_struct(raw, fields, At(struct), decoding)
    decoding.raise_first()
    return values


# -- checks --------------------------------------------------------------------------------

DURATIONS = ("Interval", "Timeout", "TTL", "DeregisterCriticalServiceAfter")
_CHECK_OWN = Fields(
    [
        *owned(*DURATIONS, decode=ANY),
        ("args", "ArgsSnake", STRINGS),
        ("script_args", "ScriptArgsSnake", STRINGS),
        ("deregister_critical_service_after", "DeregisterSnake", ANY),
        ("docker_container_id", "DockerContainerIDSnake", STRING),
        ("tls_server_name", "TLSServerNameSnake", STRING),
        ("tls_skip_verify", "TLSSkipVerifySnake", BOOL),
        ("grpc_use_tls", "GRPCUseTLSSnake", BOOL),
        ("h2ping_use_tls", "H2PingUseTLSSnake", BOOL),
        ("service_id", "ServiceIDSnake", STRING),
    ]
)
_CHECK_COMMON = [
    *owned(
        "Name", "Status", "Notes", "HTTP", "H2PING", "Method", "Body", "TCP", "UDP", decode=STRING
    ),
    *owned("AliasNode", "AliasService", "DockerContainerID", "Shell", "GRPC", decode=STRING),
    *owned("OSService", "TLSServerName", "ProxyHTTP", "ProxyGRPC", decode=STRING),
    *owned("H2PingUseTLS", "DisableRedirects", "GRPCUseTLS", "TLSSkipVerify", decode=BOOL),
    *owned("SuccessBeforePassing", "FailuresBeforeWarning", "FailuresBeforeCritical", decode=INT),
    *owned("OutputMaxSize", decode=INT),
    ("ScriptArgs", "ScriptArgs", STRINGS),
    ("Header", "Header", HEADER),
]
#: structs.CheckType, as a service's ``Check`` / ``Checks`` (ServiceID is read and dropped).
_CHECK_TYPE_FIELDS = (
    Fields([("ServiceID", "ServiceIDIgnored", STRING)])
    | _CHECK_OWN
    | Fields([*_CHECK_COMMON, ("CheckID", "CheckID", string_of("types.CheckID"))], embedded="Alias")
)
#: structs.CheckDefinition, the body of PUT /v1/agent/check/register.
_CHECK_DEFINITION_FIELDS = _CHECK_OWN | Fields(
    [
        *_CHECK_COMMON,
        ("ID", "CheckID", string_of("types.CheckID")),
        *owned("ServiceID", "Token", "TCPUseTLS", decode=STRING),
    ],
    embedded="Alias",
)


@dataclass
class CheckDefinition:
    """A check as a client defines it (Consul's CheckType / CheckDefinition); durations
    in nanoseconds, as Go holds them."""

    name: str = ""
    check_id: str = ""
    notes: str = ""
    status: str = ""
    service_id: str = ""
    ttl: int = 0
    interval: int = 0
    timeout: int = 0
    deregister_after: int = 0
    http: str = ""
    header: dict[str, list[str]] = field(default_factory=dict)
    method: str = ""
    body: str = ""
    tls_skip_verify: bool = False
    script_args: list[str] = field(default_factory=list)
    other_kind: str = ""  # TCP/UDP/gRPC/... : accepted but not run by the dev registry
    alias: bool = False
    output_max_size: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0
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
        if self.failures_before_warning > self.failures_before_critical:
            return "FailuresBeforeWarning can't be higher than FailuresBeforeCritical"
        return None


def decode_check(raw: Any) -> CheckDefinition:
    """The body of PUT /v1/agent/check/register (structs.CheckDefinition)."""
    values = decode_top(raw, _CHECK_DEFINITION_FIELDS, "structs.CheckDefinition")
    return _check(values)


def decode_wrapped(value: Any, at: At, fields: Fields, go_type: str) -> dict[str, Any] | None:
    """A struct with its own UnmarshalJSON (Consul's ``Alias`` wrappers), read by an inner
    decoder: a type error there ends the outer decode, named from the outer field."""
    if value is None:  # e.g. a null in ``Checks``: Consul would dereference it and panic
        return None
    if not isinstance(value, dict):
        raise DecodeError(TypeError_(json_kind(value), go_type, at).text())
    inner = Decoding()
    values = decode_struct(value, fields, At(), inner)
    if isinstance(inner.first, TypeError_):
        error = inner.first
        raise DecodeError(TypeError_(error.value, error.go_type, at.child(error.at.path)).text())
    return values


def check_type(value: Any, at: At, outer: Decoding) -> CheckDefinition | None:
    """A service's ``Check`` (structs.CheckType); a bad duration is saved as Go saves
    an UnmarshalJSON error, so an earlier error in the body still wins."""
    values = decode_wrapped(value, at, _CHECK_TYPE_FIELDS, "structs.CheckType")
    if values is None:
        return None
    try:
        return _check(values)
    except DecodeError as exc:
        outer.save(str(exc))
        return None


def _check(values: dict[str, Any]) -> CheckDefinition:
    """The decoded fields, merged as Consul's UnmarshalJSON merges the snake_case ones."""
    if values.get("DeregisterCriticalServiceAfter") is None:
        values["DeregisterCriticalServiceAfter"] = values.get("DeregisterSnake")
    spans = {name: duration(values.get(name)) for name in DURATIONS}
    other = next((k for k in ("TCP", "UDP", "GRPC", "H2PING", "OSService") if values.get(k)), "")
    if values.get("DockerContainerID") or values.get("DockerContainerIDSnake"):
        other = "docker"
    check = CheckDefinition(
        name=values.get("Name", ""),
        check_id=values.get("CheckID", ""),
        notes=values.get("Notes", ""),
        status=values.get("Status", ""),
        service_id=values.get("ServiceID") or values.get("ServiceIDSnake", ""),
        ttl=spans["TTL"],
        interval=spans["Interval"],
        timeout=spans["Timeout"],
        deregister_after=spans["DeregisterCriticalServiceAfter"],
        http=values.get("HTTP", ""),
        header=values.get("Header", {}),
        method=values.get("Method", ""),
        body=values.get("Body", ""),
        tls_skip_verify=bool(values.get("TLSSkipVerify") or values.get("TLSSkipVerifySnake")),
        script_args=values.get("ScriptArgs")
        or values.get("ArgsSnake")
        or values.get("ScriptArgsSnake")
        or [],
        other_kind=other.lower(),
        alias=bool(values.get("AliasNode") or values.get("AliasService")),
        output_max_size=values.get("OutputMaxSize", 0),
        failures_before_warning=values.get("FailuresBeforeWarning", 0),
        failures_before_critical=values.get("FailuresBeforeCritical", 0),
    )
    fields = (value for name, value in values.items() if name not in _AUX_ONLY)
    check.empty = not any(_set(value) for value in fields) and not any(spans.values())
    return check


#: Fields of Consul's decoding wrapper that a CheckType itself does not hold.
_AUX_ONLY = frozenset({*DURATIONS, "DeregisterSnake", "ServiceIDIgnored", "ServiceIDSnake"})


def _set(value: Any) -> bool:
    """Non-zero as Go's reflect.DeepEqual against a zero CheckType sees it."""
    return isinstance(value, dict | list) or value not in (None, "", 0, False)


def duration(value: Any) -> int:
    """A check duration field (``interface{}``): string, number of nanoseconds, or nothing."""
    if isinstance(value, str):
        return durations.parse_duration(value)
    if isinstance(value, Number):
        parsed = value.as_float()
        return durations.from_float(parsed) if parsed is not None else 0
    return 0


# -- services ------------------------------------------------------------------------------


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
    weights: dict[str, int] | None = None
    tagged_addresses: dict[str, dict[str, Any]] = field(default_factory=dict)
    kind: str = ""
    checks: list[CheckDefinition] = field(default_factory=list)
    connect: dict[str, Any] = field(default_factory=dict)  # structs.ServiceConnect
    proxy: dict[str, Any] = field(default_factory=dict)  # structs.ConnectProxyConfig


#: What the mesh reads of structs.ServiceConnect and structs.ConnectProxyConfig: a
#: Connect-native service, and which service a sidecar proxy (Kind connect-proxy) fronts.
CONNECT = struct_of(Fields([("Native", "Native", BOOL)]), "structs.ServiceConnect")
PROXY = struct_of(
    Fields(
        [
            *owned("DestinationServiceName", "DestinationServiceID", decode=STRING),
            *owned("LocalServiceAddress", "Mode", decode=STRING),
            ("LocalServicePort", "LocalServicePort", INT),
        ]
    ),
    "structs.ConnectProxyConfig",
)


#: structs.ServiceDefinition; ``Check`` and ``Checks`` are decoded apart (``_checks_of``).
_SERVICE_FIELDS = Fields(
    [
        ("enable_tag_override", "EnableTagOverrideSnake", BOOL),
        ("tagged_addresses", "TaggedSnake", TAGGED_ADDRESSES),
    ]
) | Fields(
    [
        ("Kind", "Kind", string_of("structs.ServiceKind")),
        *owned("ID", "Name", "Address", "SocketPath", "Token", decode=STRING),
        ("Tags", "Tags", STRINGS),
        ("Meta", "Meta", STRING_MAP),
        ("Port", "Port", INT),
        ("TaggedAddresses", "TaggedAddresses", TAGGED_ADDRESSES),
        ("Weights", "Weights", WEIGHTS),
        ("EnableTagOverride", "EnableTagOverride", BOOL),
        ("Check", "Check", check_type),
        ("Checks", "Checks", list_of(check_type, "structs.CheckTypes")),
        ("Connect", "Connect", CONNECT),
        ("Proxy", "Proxy", PROXY),
    ],
    embedded="Alias",
)


def decode_service(raw: Any) -> ServiceDefinition:
    """The body of PUT /v1/agent/service/register."""
    values = decode_top(raw, _SERVICE_FIELDS, "structs.ServiceDefinition")
    single: CheckDefinition | None = values.get("Check")
    checks = (
        [single] if single is not None and not single.empty else []
    )  # as Consul: {} is no check
    checks.extend(check for check in values.get("Checks", []) if check is not None)
    return ServiceDefinition(
        name=values.get("Name", ""),
        id=values.get("ID", ""),
        tags=values.get("Tags", []),
        address=values.get("Address", ""),
        port=values.get("Port", 0),
        meta=values.get("Meta", {}),
        enable_tag_override=bool(
            values.get("EnableTagOverride") or values.get("EnableTagOverrideSnake")
        ),
        weights=values.get("Weights"),
        tagged_addresses=values.get("TaggedAddresses") or values.get("TaggedSnake") or {},
        kind=values.get("Kind", ""),
        checks=checks,
        connect=values.get("Connect") or {},
        proxy=values.get("Proxy") or {},
    )


# -- values Consul validates after decoding ---------------------------------------------

#: structs: metaMaxKeyPairs, metaKeyMaxLength, metaValueMaxLength, MetaKeyReservedPrefix.
META_MAX_PAIRS = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512
META_RESERVED_PREFIX = "consul-"
PORT_MAX = 65535
WEIGHT_MAX = 65535  # a DNS SRV weight


def validate_meta(meta: Mapping[str, str], *, allow_consul_prefix: bool = False) -> str | None:
    """structs.validateMetadata: the error text, or None. Lengths are in bytes, as Go's
    ``len``; Go walks a map in random order, so of several bad pairs the first is named."""
    if len(meta) > META_MAX_PAIRS:
        return f"Node metadata cannot contain more than {META_MAX_PAIRS} key/value pairs"
    for key, value in meta.items():
        problem = _meta_pair_problem(key, value, allow_consul_prefix=allow_consul_prefix)
        if problem:
            return f"Couldn't load metadata pair ('{key}', '{value}'): {problem}"
    return None


def _meta_pair_problem(key: str, value: str, *, allow_consul_prefix: bool) -> str | None:
    if not key:
        return "Key cannot be blank"
    if not key.isascii() or not all(char.isalnum() or char in "_-" for char in key):
        return "Key contains invalid characters"
    if len(key.encode()) > META_KEY_MAX:
        return f"Key is too long (limit: {META_KEY_MAX} characters)"
    if key.startswith(META_RESERVED_PREFIX) and not allow_consul_prefix:
        return f"Key prefix '{META_RESERVED_PREFIX}' is reserved for internal use"
    if len(value.encode()) > META_VALUE_MAX:
        return f"Value is too long (limit: {META_VALUE_MAX} characters)"
    return None


def weights_problem(weights: Mapping[str, int]) -> str | None:
    """structs.ValidateWeights on the decoded ``structs.Weights`` (absent fields are 0):
    the error text, or None."""
    passing, warning = weights.get("Passing", 0), weights.get("Warning", 0)
    if passing < 1:
        return "Passing must be greater than 0"
    if warning < 0:
        return "Warning must be greater or equal than 0"
    if passing > WEIGHT_MAX or warning > WEIGHT_MAX:
        return f"DNS Weight must be between 0 and {WEIGHT_MAX}"
    return None


def port_problem(port: int, what: str = "Port") -> str | None:
    """A port a client could never dial. Consul checks only the Go ``int`` type; the
    registry also holds ports to 0-65535, so no instance is published unreachable."""
    if 0 <= port <= PORT_MAX:
        return None
    return f"Invalid {what}: {port} is not a port number (0-{PORT_MAX})"


def ports_problem(port: int, tagged_addresses: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The first problem of a service's ports: its own, then its tagged addresses'."""
    tagged = (
        port_problem(address.get("Port", 0), f"TaggedAddresses[{name}].Port")
        for name, address in tagged_addresses.items()
    )
    return port_problem(port) or next((problem for problem in tagged if problem), None)
