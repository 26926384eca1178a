"""MeshSettings: everything a mesh service is configured by, as one immutable value.

Explicit keyword arguments are the API; ``MeshSettings.from_env()`` is the only place
that reads the environment (``MESHKIT_*``, plus Consul's standard ``CONSUL_HTTP_ADDR``
and ``CONSUL_HTTP_TOKEN``). An invalid value raises ``ConfigError`` naming the
argument, or the variable when it came from the environment.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from meshkit.errors import ConfigError, IdentityError
from meshkit.identity import SpiffeId

TLSMode = Literal["strict", "permissive"]
DefaultPolicy = Literal["allow-mesh", "deny"]
#: Where intentions come from: meshkit's keys in Consul KV, or Consul's own intentions;
#: ``auto``: Consul's when the identity is Consul's (Connect), else meshkit's.
IntentionSource = Literal["auto", "meshkit", "consul"]
#: What a request meets when its Idempotency-Key is being run elsewhere: it waits for
#: that result, or is refused at once with 409.
InFlight = Literal["wait", "reject"]
#: Where the workload certificate comes from: files, the meshkit CA, or Consul Connect's
#: CA through the local agent; ``auto`` picks the first configured, in that order, and
#: Consul when its agent reports Connect enabled.
IdentitySource = Literal["auto", "files", "ca", "consul"]
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class _FieldError(ValueError):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Faults an instance injects into its own requests, for resilience tests.

    ``MESHKIT_FAULTS`` spells them ``delay=0.2,abort=503,percent=50,path=/prefix``: of the
    requests whose path starts with ``path`` (default every path), ``percent`` (default
    100) wait ``delay`` seconds, then are answered ``abort`` instead of reaching the
    handler. ``delay`` and ``abort`` may be combined; at least one is required.
    """

    delay: float = 0.0
    abort: int | None = None
    percent: float = 100.0
    path: str = "/"

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise ConfigError(f"faults: {problem}")

    def _problem(self) -> str | None:
        if self.delay < 0:
            return f"delay must not be negative, got {self.delay!r}"
        if self.abort is not None and not 400 <= self.abort <= 599:
            return f"abort must be an HTTP error status 400-599, got {self.abort!r}"
        if not 0 <= self.percent <= 100:
            return f"percent must be within 0-100, got {self.percent!r}"
        if not self.path.startswith("/"):
            return f"path must start with '/', got {self.path!r}"
        if not self.delay and self.abort is None:
            return "give delay=SECONDS and/or abort=STATUS"
        return None

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """``delay=0.2,abort=503,percent=50,path=/prefix``; ConfigError says what is wrong."""
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, equals, raw = (text.strip() for text in item.partition("="))
            if not equals or key not in _FAULT_FIELDS:
                raise ConfigError(f"{item!r}: expected delay=, abort=, percent= or path=")
            if key in values:
                raise ConfigError(f"{key} is given twice")
            try:
                values[key] = _FAULT_FIELDS[key](raw)
            except ValueError:
                raise ConfigError(f"{key}={raw!r} is not a number") from None
        return cls(**values)


_FAULT_FIELDS: dict[str, Callable[[str], Any]] = {
    "delay": float,
    "abort": int,
    "percent": float,
    "path": str,
}


@dataclass(frozen=True, kw_only=True)
class ConnectionLimits:
    """What one client may make a meshkit server hold: time, memory, connections.

    The same policy serves every port meshkit runs (service, admin, CA, dev registry),
    with defaults in line with Envoy's and nginx's: a TLS handshake must finish within
    ``handshake_timeout``; a request's line and headers must arrive within
    ``header_timeout`` (from the connection's start or the end of the previous
    response) and fit in ``max_header_bytes`` (else 431); its body must arrive within
    ``body_timeout`` of its headers and fit in ``max_body_bytes`` (else 413, checked
    from Content-Length before anything is buffered, and while streaming); an idle
    keep-alive connection closes after ``keepalive_timeout``; past ``max_connections``
    the oldest idle or still-handshaking connection is shed for a new one.
    """

    handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 8 * 1024 * 1024
    max_connections: int = 10_000

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "header_timeout", "body_timeout", "keepalive_timeout"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigError(f"{name}: must be a positive number of seconds, got {value!r}")
        for name in ("max_header_bytes", "max_body_bytes", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: must be a positive whole number, got {value!r}")

    def replace(self, **changes: Any) -> ConnectionLimits:
        return replace(self, **changes)


#: The admin port's own budget: health checks and scrapes, a few clients at a time.
ADMIN_LIMITS = ConnectionLimits(max_connections=64, max_body_bytes=1024)


@dataclass(frozen=True, kw_only=True)
class MeshSettings:
    """How one service instance joins the mesh. Every field has a safe default."""

    service: str = "service"
    namespace: str = "default"
    trust_domain: str = "meshkit.local"
    version: str = "0.0.0"
    host: str = "127.0.0.1"
    port: int = 0  # 0: an ephemeral port; the registry publishes the real one
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    advertise_address: str | None = None
    tls_mode: TLSMode = "strict"
    identity: IdentitySource = "auto"
    cert_file: Path | None = None
    key_file: Path | None = None
    bundle_file: Path | None = None
    cert_reload_interval: float = 1.0
    data_dir: Path | None = None
    ca_url: str | None = None
    ca_fingerprint: str | None = None
    join_token: str | None = field(default=None, repr=False)
    consul_http_addr: str | None = "127.0.0.1:8500"
    consul_token: str | None = field(default=None, repr=False)
    deregister_delay: float = 1.0
    drain_timeout: float = 30.0
    # How far hosts' clocks may disagree before a request's sent time shortens its
    # budget on the server (meshkit.deadline says why): NTP keeps them milliseconds apart.
    max_clock_skew: float = 0.25
    default_policy: DefaultPolicy = "allow-mesh"
    intentions: IntentionSource = "auto"
    access_log: bool = False
    # The admin port's /tap: how many recent requests each instance keeps (0: none), and
    # whether callers other than loopback may read them (they hold callers' identities).
    tap_size: int = 1024
    tap_remote: bool = False
    faults: Faults | None = None  # injected into this instance's requests (tests only)
    idempotency_store: str = "memory"  # memory | sqlite:PATH | consul
    idempotency_in_flight: InFlight = "wait"
    handshake_timeout: float = ConnectionLimits.handshake_timeout
    header_timeout: float = ConnectionLimits.header_timeout
    body_timeout: float = ConnectionLimits.body_timeout
    keepalive_timeout: float = ConnectionLimits.keepalive_timeout
    max_header_bytes: int = ConnectionLimits.max_header_bytes
    max_body_bytes: int = ConnectionLimits.max_body_bytes
    max_connections: int = ConnectionLimits.max_connections

    def __post_init__(self) -> None:
        try:
            self._validate()
        except _FieldError as exc:
            raise ConfigError(str(exc)) from None

    def _validate(self) -> None:
        for name in ("service", "namespace"):
            value = getattr(self, name)
            if not _NAME.fullmatch(value):
                raise _FieldError(name, f"must be a DNS label (a-z, 0-9, '-'), got {value!r}")
        for name in ("port", "admin_port"):
            _check_port(name, getattr(self, name))
        if isinstance(self.tap_size, bool) or not isinstance(self.tap_size, int):
            raise _FieldError("tap_size", f"must be a whole number, got {self.tap_size!r}")
        if not 0 <= self.tap_size <= 100_000:
            raise _FieldError("tap_size", f"must be within 0-100000, got {self.tap_size!r}")
        for name in ("cert_reload_interval", "deregister_delay", "drain_timeout", "max_clock_skew"):
            if getattr(self, name) < 0:
                raise _FieldError(name, "must not be negative")
        if self.tls_mode not in ("strict", "permissive"):
            raise _FieldError("tls_mode", f"must be strict or permissive, got {self.tls_mode!r}")
        if self.default_policy not in ("allow-mesh", "deny"):
            raise _FieldError(
                "default_policy", f"must be allow-mesh or deny, got {self.default_policy!r}"
            )
        if self.intentions not in ("auto", "meshkit", "consul"):
            raise _FieldError(
                "intentions", f"must be auto, meshkit or consul, got {self.intentions!r}"
            )
        self._validate_idempotency()
        files = (self.cert_file, self.key_file, self.bundle_file)
        if any(files) and not all(files):
            raise _FieldError("cert_file", "cert_file, key_file and bundle_file go together")
        if self.ca_url and not self.ca_fingerprint:
            raise _FieldError("ca_fingerprint", "is required with ca_url (the pinned root)")
        self._validate_identity()
        try:
            SpiffeId.for_service(self.trust_domain, self.namespace, self.service)
        except IdentityError as exc:
            raise _FieldError("trust_domain", str(exc)) from None
        try:
            self.connection_limits  # noqa: B018 (validates)
        except ConfigError as exc:
            name, _, problem = str(exc).partition(": ")
            raise _FieldError(name, problem) from None

    def _validate_identity(self) -> None:
        needs = {"files": self.cert_file, "ca": self.ca_url, "consul": self.consul_http_addr}
        if self.identity == "auto":
            return
        if self.identity not in needs:
            raise _FieldError(
                "identity", f"must be auto, files, ca or consul, got {self.identity!r}"
            )
        if not needs[self.identity]:
            wanted = {"files": "cert_file", "ca": "ca_url", "consul": "consul_http_addr"}
            raise _FieldError("identity", f"{self.identity} needs {wanted[self.identity]}")

    def _validate_idempotency(self) -> None:
        store = self.idempotency_store
        if store not in ("memory", "consul") and not re.fullmatch(r"sqlite:.+", store):
            raise _FieldError(
                "idempotency_store", f"must be memory, sqlite:PATH or consul, got {store!r}"
            )
        if self.idempotency_in_flight not in ("wait", "reject"):
            raise _FieldError(
                "idempotency_in_flight",
                f"must be wait or reject, got {self.idempotency_in_flight!r}",
            )

    @property
    def connection_limits(self) -> ConnectionLimits:
        """The service port's connection policy (the admin port has ``ADMIN_LIMITS``)."""
        return ConnectionLimits(**{f.name: getattr(self, f.name) for f in fields(ConnectionLimits)})

    @property
    def spiffe_id(self) -> SpiffeId:
        return SpiffeId.for_service(self.trust_domain, self.namespace, self.service)

    @property
    def state_dir(self) -> Path:
        """Where this instance keeps its key and certificate."""
        return self.data_dir or Path(".meshkit") / self.service

    def replace(self, **changes: Any) -> MeshSettings:
        return replace(self, **changes)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        base: MeshSettings | None = None,
        **overrides: Any,
    ) -> MeshSettings:
        """Settings from ``MESHKIT_*`` / ``CONSUL_HTTP_*`` over ``base`` (the code's defaults);
        ``overrides`` win over both."""
        env = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {} if base is None else _values(base)
        from_environment: dict[str, str] = {}
        for name, (variable, parse) in _ENVIRONMENT.items():
            raw = env.get(variable)
            if raw is None or name in overrides:
                continue
            try:
                kwargs[name] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{variable}={raw!r}: {exc}") from None
            from_environment[name] = raw
        kwargs.update(overrides)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(_name_variable(str(exc), from_environment)) from None


def _values(settings: MeshSettings) -> dict[str, Any]:
    return {f.name: getattr(settings, f.name) for f in fields(settings)}


def _check_port(name: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise _FieldError(name, f"must be a port number 0-65535, got {port!r}")


def _port(raw: str) -> int:
    if not raw.strip().isdigit() or not 0 <= int(raw) <= 65535:
        raise ValueError("expected a port number 0-65535")
    return int(raw)


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if value < 0:
        raise ValueError("expected a non-negative number of seconds")
    return value


def _count(raw: str) -> int:
    if not raw.strip().isdigit():
        raise ValueError("expected a positive whole number")
    return int(raw)


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _text(raw: str) -> str:
    return raw.strip()


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _faults(raw: str) -> Faults | None:
    if not raw.strip():
        return None
    try:
        return Faults.parse(raw)
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix("faults: ")) from None


_ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "service": ("MESHKIT_SERVICE", _text),
    "namespace": ("MESHKIT_NAMESPACE", _text),
    "trust_domain": ("MESHKIT_TRUST_DOMAIN", _text),
    "version": ("MESHKIT_VERSION", _text),
    "host": ("MESHKIT_HOST", _text),
    "port": ("MESHKIT_PORT", _port),
    "admin_host": ("MESHKIT_ADMIN_HOST", _text),
    "admin_port": ("MESHKIT_ADMIN_PORT", _port),
    "advertise_address": ("MESHKIT_ADVERTISE_ADDRESS", _optional_text),
    "tls_mode": ("MESHKIT_TLS_MODE", _text),
    "identity": ("MESHKIT_IDENTITY", _text),
    "cert_file": ("MESHKIT_CERT_FILE", _path),
    "key_file": ("MESHKIT_KEY_FILE", _path),
    "bundle_file": ("MESHKIT_BUNDLE_FILE", _path),
    "cert_reload_interval": ("MESHKIT_CERT_RELOAD_INTERVAL", _seconds),
    "data_dir": ("MESHKIT_DATA_DIR", _path),
    "ca_url": ("MESHKIT_CA_URL", _optional_text),
    "ca_fingerprint": ("MESHKIT_CA_FINGERPRINT", _optional_text),
    "join_token": ("MESHKIT_JOIN_TOKEN", _optional_text),
    "consul_http_addr": ("CONSUL_HTTP_ADDR", _optional_text),
    "consul_token": ("CONSUL_HTTP_TOKEN", _optional_text),
    "deregister_delay": ("MESHKIT_DEREGISTER_DELAY", _seconds),
    "drain_timeout": ("MESHKIT_DRAIN_TIMEOUT", _seconds),
    "max_clock_skew": ("MESHKIT_MAX_CLOCK_SKEW", _seconds),
    "default_policy": ("MESHKIT_DEFAULT_POLICY", _text),
    "intentions": ("MESHKIT_INTENTIONS", _text),
    "access_log": ("MESHKIT_ACCESS_LOG", _flag),
    "tap_size": ("MESHKIT_TAP_SIZE", _count),
    "tap_remote": ("MESHKIT_TAP_REMOTE", _flag),
    "faults": ("MESHKIT_FAULTS", _faults),
    "idempotency_store": ("MESHKIT_IDEMPOTENCY_STORE", _text),
    "idempotency_in_flight": ("MESHKIT_IDEMPOTENCY_IN_FLIGHT", _text),
    "handshake_timeout": ("MESHKIT_HANDSHAKE_TIMEOUT", _seconds),
    "header_timeout": ("MESHKIT_HEADER_TIMEOUT", _seconds),
    "body_timeout": ("MESHKIT_BODY_TIMEOUT", _seconds),
    "keepalive_timeout": ("MESHKIT_KEEPALIVE_TIMEOUT", _seconds),
    "max_header_bytes": ("MESHKIT_MAX_HEADER_BYTES", _count),
    "max_body_bytes": ("MESHKIT_MAX_BODY_BYTES", _count),
    "max_connections": ("MESHKIT_MAX_CONNECTIONS", _count),
}
assert set(_ENVIRONMENT) == {f.name for f in fields(MeshSettings)}


def _name_variable(message: str, from_environment: Mapping[str, str]) -> str:
    """Rewrite 'field: problem' as 'VARIABLE=value: problem' when the value came from env."""
    name, _, problem = message.partition(": ")
    if name in from_environment:
        return f"{_ENVIRONMENT[name][0]}={from_environment[name]}: {problem}"
    return message
