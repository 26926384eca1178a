"""SPIFFE IDs: parse, format and validate them, and read a peer's from its certificate.

A workload's identity is ``spiffe://<trust-domain>/ns/<namespace>/svc/<service>``
(the layout Istio uses). Consul Connect's forms name the same workload with its
datacenter, and its admin partition when not the default one:
``/ns/<ns>/dc/<dc>/svc/<svc>`` and ``/ap/<partition>/ns/<ns>/dc/<dc>/svc/<svc>``. All
three give ``namespace`` and ``service``, and ``same_workload`` / ``service_in`` match
them with each other: a policy naming service X in namespace N holds for either form (the
datacenter is not part of a service's identity in Consul's intentions either).
Validation follows the SPIFFE ID specification (spiffe/spiffe standards/SPIFFE-ID.md):
lowercase trust domain of ``[a-z0-9._-]``, no port, user info, query or fragment; path
segments of ``[A-Za-z0-9._-]``, none empty, ``.`` or ``..``; at most 2048 bytes in all.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

from meshkit.errors import IdentityError

if TYPE_CHECKING:
    from cryptography import x509

_SCHEME = "spiffe://"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_MAX_ID_BYTES = 2048
_MAX_TRUST_DOMAIN = 255
#: Key under which the server puts the caller's SpiffeId into the ASGI TLS extension.
PEER_IDENTITY_KEY = "meshkit.peer_identity"
_NO_EXTENSIONS: Mapping[str, Any] = {}
#: Consul omits ``/ap/<partition>`` for this one; meshkit's own form lives in it too.
DEFAULT_PARTITION = "default"


def _service_parts(path: str) -> tuple[str, str, str | None, str | None] | None:
    """``(namespace, service, datacenter, partition)`` of a service ID's path, else None."""
    parts = path.split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "svc":
        return parts[2], parts[4], None, None
    partition = None
    if len(parts) == 9 and parts[1] == "ap":
        partition = parts[2]
        parts = ["", *parts[3:]]
    if len(parts) == 7 and parts[1] == "ns" and parts[3] == "dc" and parts[5] == "svc":
        return parts[2], parts[6], parts[4], partition
    return None


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A validated SPIFFE ID. ``str(spiffe_id)`` gives the URI."""

    trust_domain: str
    path: str
    # Derived once: telemetry reads them on every request of a connection.
    namespace: str | None = field(init=False, repr=False, compare=False)
    """The namespace of a ``/ns/<ns>/svc/<name>`` ID, else None."""
    service: str | None = field(init=False, repr=False, compare=False)
    """The service name of a ``/ns/<ns>/svc/<name>`` ID, else None."""
    datacenter: str | None = field(init=False, repr=False, compare=False)
    """The Consul datacenter of a Consul-form service ID, else None."""
    partition: str | None = field(init=False, repr=False, compare=False)
    """The admin partition of an ``/ap/<partition>/...`` ID, else None (the default)."""
    workload_uri: str = field(init=False, repr=False, compare=False)
    """The URI in meshkit's form for a service of the default partition (what every
    form of it shares), else the URI itself."""
    uri: str = field(init=False, repr=False, compare=False)
    """``spiffe://<trust-domain><path>``, as ``str()`` gives it."""

    def __post_init__(self) -> None:
        _check_trust_domain(self.trust_domain)
        _check_path(self.path)
        uri = f"{_SCHEME}{self.trust_domain}{self.path}"
        if len(uri.encode()) > _MAX_ID_BYTES:
            raise IdentityError(f"SPIFFE ID longer than {_MAX_ID_BYTES} bytes")
        namespace, service, datacenter, partition = _service_parts(self.path) or (None,) * 4
        object.__setattr__(self, "namespace", namespace)
        object.__setattr__(self, "service", service)
        object.__setattr__(self, "datacenter", datacenter)
        object.__setattr__(self, "partition", partition)
        object.__setattr__(self, "uri", uri)
        canonical = service is not None and partition in (None, DEFAULT_PARTITION)
        workload = f"{_SCHEME}{self.trust_domain}/ns/{namespace}/svc/{service}"
        object.__setattr__(self, "workload_uri", workload if canonical else uri)

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse and validate ``spiffe://trust-domain/path``."""
        if not uri.startswith(_SCHEME):
            raise IdentityError(f"not a SPIFFE ID (scheme must be spiffe://): {uri!r}")
        rest = uri[len(_SCHEME) :]
        if "?" in rest or "#" in rest:
            raise IdentityError(f"SPIFFE ID must not have a query or fragment: {uri!r}")
        trust_domain, slash, path = rest.partition("/")
        return cls(trust_domain, slash + path)

    @classmethod
    def for_service(cls, trust_domain: str, namespace: str, service: str) -> SpiffeId:
        return cls(trust_domain, f"/ns/{namespace}/svc/{service}")

    @classmethod
    def for_consul_service(
        cls,
        trust_domain: str,
        namespace: str,
        datacenter: str,
        service: str,
        *,
        partition: str = DEFAULT_PARTITION,
    ) -> SpiffeId:
        """The ID Consul's CA puts in a service's leaf (``connect.SpiffeIDService``)."""
        prefix = "" if partition == DEFAULT_PARTITION else f"/ap/{partition}"
        return cls(trust_domain, f"{prefix}/ns/{namespace}/dc/{datacenter}/svc/{service}")

    def same_workload(self, other: SpiffeId | None) -> bool:
        """Whether ``other`` names the same workload, in meshkit's form or Consul's."""
        return other is not None and other.workload_uri == self.workload_uri

    def service_in(self, trust_domain: str, namespace: str) -> str | None:
        """The service name if this is a service of ``namespace`` in ``trust_domain``
        (and the default partition), in either form; else None."""
        if (
            self.trust_domain != trust_domain
            or self.namespace != namespace
            or self.partition not in (None, DEFAULT_PARTITION)
        ):
            return None
        return self.service

    def __str__(self) -> str:
        return self.uri


def _check_trust_domain(trust_domain: str) -> None:
    if not trust_domain:
        raise IdentityError("SPIFFE ID has an empty trust domain")
    if ":" in trust_domain:
        raise IdentityError(f"SPIFFE trust domain must not have a port: {trust_domain!r}")
    if "@" in trust_domain:
        raise IdentityError(f"SPIFFE trust domain must not have user info: {trust_domain!r}")
    if len(trust_domain) > _MAX_TRUST_DOMAIN or not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise IdentityError(
            f"SPIFFE trust domain must be lowercase letters, digits, '.', '-' or '_': "
            f"{trust_domain!r}"
        )


def _check_path(path: str) -> None:
    if not path:
        raise IdentityError("SPIFFE ID of a workload must have a path")
    if path.endswith("/"):
        raise IdentityError(f"SPIFFE ID path must not end with '/': {path!r}")
    for segment in path.split("/")[1:]:
        if not segment:
            raise IdentityError(f"SPIFFE ID path has an empty segment: {path!r}")
        if segment in (".", ".."):
            raise IdentityError(f"SPIFFE ID path has a relative segment: {path!r}")
        if not _SEGMENT.fullmatch(segment):
            raise IdentityError(f"SPIFFE ID path segment has invalid characters: {segment!r}")


def _x509() -> ModuleType:
    # Loaded on first use: a service reads its peers with getpeercert() and its own
    # certificate through the ssl module (tls.Leaf), so it never loads cryptography.
    return importlib.import_module("cryptography.x509")


def identity_from_certificate(cert: x509.Certificate) -> SpiffeId | None:
    """The SPIFFE ID of a certificate: its one URI SAN, else None (X.509-SVID rule)."""
    x509 = _x509()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return _single_spiffe_id(uris)


def identity_from_peercert(peercert: Mapping[str, Any] | None) -> SpiffeId | None:
    """The SPIFFE ID from ``SSLObject.getpeercert()``'s dict (cheap: no DER parsing)."""
    if not peercert:
        return None
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    return _single_spiffe_id(uris)


def _single_spiffe_id(uris: list[str]) -> SpiffeId | None:
    if len(uris) != 1:
        return None
    try:
        return SpiffeId.parse(uris[0])
    except IdentityError:
        return None


def peer_identity(request: Mapping[str, Any]) -> SpiffeId | None:
    """The verified caller's SPIFFE ID, from a Starlette ``Request`` or an ASGI scope.

    None when the connection was not mutual TLS or the certificate held no SPIFFE ID.
    """
    # A Starlette Request (any HTTPConnection) is a Mapping over its scope: read alike.
    tls = request.get("extensions", _NO_EXTENSIONS).get("tls")
    if not tls:
        return None
    cached = tls.get(PEER_IDENTITY_KEY)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    chain = tls.get("client_cert_chain")
    if not chain:
        return None
    # Another ASGI server provided the extension without our precomputed identity.
    return identity_from_certificate(_x509().load_pem_x509_certificate(chain[0].encode()))
