"""TLS material and the SSLContexts built from it, swapped in place on rotation.

``TLSContexts`` owns one server context that uvicorn listens with for the life of the
process; its SNI callback (OpenSSL's servername callback, which runs on every
handshake, SNI or not) moves each new connection onto the newest context. Rotating
the certificate or the trust bundle therefore affects only new handshakes, and open
keep-alive connections keep the context they were made with.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from meshkit.errors import CertificateError
from meshkit.identity import SpiffeId, identity_from_peercert

logger = logging.getLogger("meshkit.tls")


@dataclass(frozen=True)
class TLSMaterial:
    """A workload's certificate chain (leaf first), its private key, and the trust bundle."""

    chain_pem: str
    key_pem: str = field(repr=False)
    bundle_pem: str

    @classmethod
    def from_files(cls, cert_file: Path, key_file: Path, bundle_file: Path) -> TLSMaterial:
        try:
            material = cls(cert_file.read_text(), key_file.read_text(), bundle_file.read_text())
        except OSError as exc:
            raise CertificateError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        material.validate()
        return material

    @cached_property
    def leaf(self) -> Leaf:
        """The leaf certificate's facts, read once the chain, key and bundle fit together."""
        if "BEGIN CERTIFICATE" not in self.bundle_pem:
            raise CertificateError("trust bundle holds no certificate")
        return Leaf.from_decoded(_decode_leaf(self))

    @property
    def spiffe_id(self) -> SpiffeId:
        identity = self.leaf.spiffe_id
        if identity is None:
            raise CertificateError("certificate has no single SPIFFE ID URI SAN")
        return identity

    @property
    def not_after(self) -> float:
        return self.leaf.not_after

    def validate(self) -> None:
        """Fail early, with a clear message, on a key that does not match the certificate
        or a chain the bundle does not vouch for."""
        self.leaf  # noqa: B018 - reading it checks the material


#: Our CA backdates notBefore by this much for clock skew (``ca.x509.BACKDATE``).
BACKDATE_SECONDS = 60.0


@dataclass(frozen=True)
class Leaf:
    """What a service needs from its certificate, as the ssl module decodes it."""

    spiffe_id: SpiffeId | None
    serial_number: int
    not_before: float
    not_after: float

    @classmethod
    def from_decoded(cls, decoded: Mapping[str, Any]) -> Leaf:
        return cls(
            identity_from_peercert(decoded),
            int(decoded["serialNumber"], 16),
            float(ssl.cert_time_to_seconds(decoded["notBefore"])),
            float(ssl.cert_time_to_seconds(decoded["notAfter"])),
        )

    def renewal_time(self, fraction: float = 0.5) -> float:
        """Unix time at ``fraction`` of the lifetime, counted from issuance (notBefore +
        the backdate): from notBefore, a short-lived leaf's half-life would be past."""
        issued = min(self.not_before + BACKDATE_SECONDS, self.not_after)
        return issued + fraction * (self.not_after - issued)


# OpenSSL's X509_V_FLAG_NO_CHECK_TIME, which ssl.VerifyFlags does not name: a leaf is
# read whatever its dates, and judged by them where that matters (renewal, reuse).
_NO_CHECK_TIME = 0x200000


def _decode_leaf(material: TLSMaterial) -> dict[str, Any]:
    """The leaf as ``getpeercert()`` decodes it, from a TLS handshake in memory.

    The ssl module decodes only a certificate it verified in a handshake; this one also
    proves the key matches the leaf and the bundle vouches for the chain, without the
    cryptography package in the service's process.
    """
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(server, material)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_flags |= _NO_CHECK_TIME
    _load_trust(client, material)
    try:
        calling = handshake_in_memory(client, server)
    except ssl.SSLError as exc:
        raise CertificateError(f"certificate chain not trusted by the bundle: {exc}") from exc
    return dict(calling.getpeercert() or {})


def handshake_in_memory(client: ssl.SSLContext, server: ssl.SSLContext) -> ssl.SSLObject:
    """A whole TLS handshake between two contexts, in memory; the client's side after it.

    ``ssl.SSLError`` says why either side refused the other.
    """
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    sides = [
        client.wrap_bio(to_client, to_server),
        server.wrap_bio(to_server, to_client, server_side=True),
    ]
    pending = list(sides)
    for _ in range(5):  # each round moves both sides one flight on: three finish any handshake
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
        if not pending:
            return sides[0]
    raise ssl.SSLError("the handshake did not finish")


_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def pem_certificates(text: str) -> list[str]:
    """Each certificate of a PEM text, in order; ``CertificateError`` if there is none."""
    blocks = _PEM_CERTIFICATE.findall(text)
    if not blocks:
        raise CertificateError("no PEM certificate found")
    return [block + "\n" for block in blocks]


def der_fingerprint(der: bytes) -> str:
    """``sha256:<hex>`` of a DER certificate: the form CA pins are given in."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def pem_fingerprint(pem: str) -> str:
    """``der_fingerprint`` of one PEM certificate."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
    except ValueError as exc:
        raise CertificateError(f"not a valid PEM certificate: {exc}") from exc
    return der_fingerprint(der)


def decode_ca_certificate(pem: str) -> dict[str, Any]:
    """A CA certificate as the ssl module decodes trust anchors (``get_ca_certs``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=pem)
    except ssl.SSLError as exc:
        raise CertificateError(f"not a valid CA certificate: {exc}") from exc
    decoded = context.get_ca_certs()
    if len(decoded) != 1:
        raise CertificateError("expected one CA certificate")
    return decoded[0]


def _load_chain(context: ssl.SSLContext, material: TLSMaterial) -> None:
    # The ssl module loads chains from files only; keep them private and short-lived.
    with tempfile.TemporaryDirectory(prefix="meshkit-tls-") as directory:
        cert_path = Path(directory, "chain.pem")
        key_path = Path(directory, "key.pem")
        cert_path.write_text(material.chain_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w") as handle:
            handle.write(material.key_pem)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise CertificateError(f"certificate chain or key rejected: {exc}") from exc


def _load_trust(context: ssl.SSLContext, material: TLSMaterial) -> None:
    try:
        context.load_verify_locations(cadata=material.bundle_pem)
    except ssl.SSLError as exc:
        raise CertificateError(f"trust bundle rejected: {exc}") from exc


#: Where a server hears why a handshake it accepted was refused: set per connection by
#: the code that accepts it (asyncio's transport reports only a lost connection).
HANDSHAKE_FAILED: ContextVar[Callable[[ssl.SSLError], None] | None] = ContextVar(
    "meshkit_handshake_failed", default=None
)


class AlertingSSLObject(ssl.SSLObject):
    """An SSLObject whose refused handshake gets its TLS alert to the client.

    asyncio's and uvloop's TLS transports abort the connection when ``do_handshake``
    raises, dropping the alert (certificate_required, unknown_ca, certificate_expired...)
    OpenSSL just wrote. Reported first as "wants more data", the failure lets the
    transport send what is pending (the alert) as it does for any handshake step; the
    next call raises it for real.
    """

    _failed: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        if self._failed is not None:
            raise self._failed
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            self._failed = exc
            report = HANDSHAKE_FAILED.get()
            if report is not None:
                report(exc)
            raise ssl.SSLWantReadError("the alert is on its way") from exc


def server_context(material: TLSMaterial, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """A server context: our chain, and client certificates verified against the bundle;
    a refused client gets its TLS alert (``AlertingSSLObject``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sslobject_class = AlertingSSLObject
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["http/1.1"])
    _load_trust(context, material)
    _load_chain(context, material)
    return context


def client_context(material: TLSMaterial) -> ssl.SSLContext:
    """A client context presenting our chain; the server's SPIFFE ID is checked by the caller,
    since hostnames prove nothing in a mesh."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    _load_trust(context, material)
    _load_chain(context, material)
    return context


class TLSContexts:
    """The current server and client contexts of one workload; ``update`` rotates both."""

    def __init__(self, material: TLSMaterial, *, require_client_cert: bool = True) -> None:
        self._require_client_cert = require_client_cert
        self._listeners: list[Callable[[TLSMaterial], None]] = []
        self._install(material)
        # uvicorn listens with this one context forever; _select moves handshakes onward.
        self.listening_context = self._server

    def _install(self, material: TLSMaterial) -> None:
        material.validate()
        server = server_context(material, require_client_cert=self._require_client_cert)
        server.sni_callback = self._select
        self._client = client_context(material)
        self._server = server
        self.material = material

    def _select(
        self, connection: ssl.SSLObject, server_name: str | None, current: ssl.SSLContext
    ) -> None:
        if current is not self._server:
            connection.context = self._server

    @property
    def server(self) -> ssl.SSLContext:
        return self._server

    @property
    def client(self) -> ssl.SSLContext:
        return self._client

    def update(self, material: TLSMaterial) -> None:
        """Use ``material`` for every handshake from now on; open connections are untouched."""
        self._install(material)
        logger.info("TLS identity rotated: serial %x", material.leaf.serial_number)
        for listener in self._listeners:
            listener(material)

    def on_update(self, listener: Callable[[TLSMaterial], None]) -> None:
        """Call ``listener`` after every rotation (metrics, pools)."""
        self._listeners.append(listener)


class FileIdentityWatcher:
    """Reload cert, key and bundle files when they change ("bring your own PKI").

    Polls ``stat`` (cheap, and works on every filesystem, unlike inotify on some
    volume mounts); a half-written set of files is retried on the next tick.
    """

    def __init__(
        self, cert_file: Path, key_file: Path, bundle_file: Path, *, interval: float = 1.0
    ) -> None:
        self.paths = (cert_file, key_file, bundle_file)
        self.interval = interval
        self._seen = self._stamp()

    def load(self) -> TLSMaterial:
        return TLSMaterial.from_files(*self.paths)

    def _stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in self.paths:
            try:
                st = path.stat()
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def reload_if_changed(self, contexts: TLSContexts) -> None:
        """Swap ``contexts`` to the files' material if they changed since last seen;
        the owner calls it every ``interval`` seconds."""
        stamp = self._stamp()
        if stamp == self._seen:
            return
        try:
            contexts.update(self.load())
        except CertificateError as exc:
            logger.warning("identity files changed but cannot be used yet: %s", exc)
            return
        self._seen = stamp
