"""X.509 building for the mesh, every extension explicit (after trustme).

One place builds every certificate meshkit makes: the root and intermediate CAs, and
leaf X.509-SVIDs (SPIFFE profile: exactly one URI SAN, empty subject with a critical
SAN, ``cA=false``, critical keyUsage digitalSignature, EKU serverAuth+clientAuth, SKI
and AKI, ECDSA P-256). ``LocalAuthority`` is a root + intermediate in memory, for
tests, examples and the CA daemon's signing core.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from meshkit._statedir import write_private as write_private
from meshkit.errors import CertificateError, IdentityError
from meshkit.identity import SpiffeId, identity_from_certificate
from meshkit.tls import BACKDATE_SECONDS, Leaf, der_fingerprint

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey
BACKDATE = dt.timedelta(seconds=BACKDATE_SECONDS)
ROOT_TTL = dt.timedelta(days=3650)
INTERMEDIATE_TTL = dt.timedelta(days=365)
LEAF_TTL = dt.timedelta(hours=24)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_private_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _serial() -> int:
    # 159 random bits: positive, under 20 octets (RFC 5280 4.1.2.2).
    return secrets.randbits(159) | 1


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs) only; a leaf signs handshakes only."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


# A leaf's fixed extensions are immutable values: built once, not per certificate
# (the CA issues thousands per second).
_LEAF_KEY_USAGE = _key_usage(ca=False)
_LEAF_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_EXTENDED_KEY_USAGE = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
_EMPTY_NAME = x509.Name([])


def build_ca_certificate(
    *,
    trust_domain: str,
    common_name: str,
    key: PrivateKey,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    path_length: int | None,
    ttl: dt.timedelta,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A CA certificate: self-signed when ``issuer`` is None, else signed by it."""
    now = now or utcnow()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    not_after = now + ttl
    if issuer_cert is not None:
        not_after = min(not_after, issuer_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def build_leaf_certificate(
    *,
    spiffe_id: SpiffeId,
    public_key: PublicKey,
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    ttl: dt.timedelta = LEAF_TTL,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A leaf X.509-SVID for ``spiffe_id``; never valid past its issuer."""
    now = now or utcnow()
    not_after = min(now + ttl, issuer_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_EMPTY_NAME)
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(_LEAF_BASIC_CONSTRAINTS, critical=True)
        .add_extension(_LEAF_KEY_USAGE, critical=True)
        .add_extension(_LEAF_EXTENDED_KEY_USAGE, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(issuer_cert), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


@functools.lru_cache(maxsize=16)
def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # RFC 5280 4.2.1.1: a leaf's AKI is its issuer's SKI. Cached: the issuer rarely changes.
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def build_csr(key: PrivateKey, spiffe_id: SpiffeId | None = None) -> x509.CertificateSigningRequest:
    """A CSR proving possession of ``key``. It names no identity (the CA takes that from the
    join token) unless ``spiffe_id`` is given, which only a CA in dev mode accepts."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(_EMPTY_NAME)
    if spiffe_id is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=True,
        )
    return builder.sign(key, hashes.SHA256())


def csr_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def check_svid(cert: x509.Certificate, *, issuer: x509.Certificate) -> SpiffeId:
    """Check ``cert`` against the X.509-SVID leaf profile; return its SPIFFE ID.

    Raises ``CertificateError`` naming the first rule broken. Run on every certificate the
    CA issues before it leaves the process (fail closed), and by tests.
    """
    # One pass over the extensions: get_extension_for_class scans them all each call.
    extensions = {extension.oid: extension for extension in cert.extensions}
    try:
        _check_svid(cert, issuer, extensions)
        return _svid_identity(cert, extensions[ExtensionOID.SUBJECT_ALTERNATIVE_NAME])
    except KeyError as exc:
        name = _EXTENSION_NAMES.get(exc.args[0], exc.args[0].dotted_string)
        raise CertificateError(f"SVID lacks a required extension: {name}") from exc


_EXTENSION_NAMES = {
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME: "subjectAltName",
    ExtensionOID.BASIC_CONSTRAINTS: "basicConstraints",
    ExtensionOID.KEY_USAGE: "keyUsage",
    ExtensionOID.EXTENDED_KEY_USAGE: "extendedKeyUsage",
    ExtensionOID.SUBJECT_KEY_IDENTIFIER: "subjectKeyIdentifier",
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER: "authorityKeyIdentifier",
}


def _check_svid(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    extensions: dict[x509.ObjectIdentifier, x509.Extension[x509.ExtensionType]],
) -> None:
    if cert.version is not x509.Version.v3:
        raise CertificateError("SVID must be an X.509 v3 certificate")
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise CertificateError("SVID key must be ECDSA P-256")
    constraints = extensions[ExtensionOID.BASIC_CONSTRAINTS]
    if not constraints.critical or constraints.value != _LEAF_BASIC_CONSTRAINTS:
        raise CertificateError("SVID must carry a critical basicConstraints with cA=false")
    usage = extensions[ExtensionOID.KEY_USAGE]
    if not usage.critical or usage.value != _LEAF_KEY_USAGE:
        raise CertificateError("SVID keyUsage must be critical digitalSignature only")
    extended = extensions[ExtensionOID.EXTENDED_KEY_USAGE].value
    if not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(extended):  # type: ignore[call-overload]
        raise CertificateError("SVID extendedKeyUsage must hold serverAuth and clientAuth")
    extensions[ExtensionOID.SUBJECT_KEY_IDENTIFIER]
    authority = extensions[ExtensionOID.AUTHORITY_KEY_IDENTIFIER].value
    issuer_id = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    if authority.key_identifier != issuer_id.digest:  # type: ignore[attr-defined]
        raise CertificateError("SVID authorityKeyIdentifier does not name its issuer")
    if cert.not_valid_after_utc > issuer.not_valid_after_utc:
        raise CertificateError("SVID must not outlive its issuer")


def _svid_identity(cert: x509.Certificate, san: x509.Extension[x509.ExtensionType]) -> SpiffeId:
    if len(cert.subject) == 0 and not san.critical:
        raise CertificateError("SVID with an empty subject must mark its SAN critical")
    names = san.value
    assert isinstance(names, x509.SubjectAlternativeName)
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or len(names) != 1:
        raise CertificateError("SVID must hold exactly one SAN, a SPIFFE ID URI")
    try:
        return SpiffeId.parse(uris[0])
    except IdentityError as exc:
        raise CertificateError(f"SVID URI SAN is not a SPIFFE ID: {exc}") from exc


def ca_trust_domain(cert: x509.Certificate) -> str:
    """The trust domain a meshkit CA certificate names in its ``spiffe://<td>`` URI SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError("CA certificate names no trust domain") from exc
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://") and "/" not in uri[len("spiffe://") :]:
            return uri[len("spiffe://") :]
    raise CertificateError("CA certificate names no spiffe:// trust domain")


def public_key_sha256(public_key: PublicKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo (what the audit log records)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def load_certificates(pem: str) -> list[x509.Certificate]:
    """Every certificate in a PEM text, in order; ``CertificateError`` if none or invalid."""
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise CertificateError(f"not valid PEM certificates: {exc}") from exc
    return certificates


def load_private_key(pem: str) -> PrivateKey:
    """An unencrypted PEM ECDSA key; ``CertificateError`` for anything else."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"private key is not valid unencrypted PEM: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("private key is not an ECDSA key")
    return key


def renewal_time(cert: x509.Certificate, fraction: float = 0.5) -> float:
    """Unix time at ``fraction`` of a leaf's lifetime (``tls.Leaf.renewal_time``)."""
    return leaf_facts(cert).renewal_time(fraction)


def leaf_facts(cert: x509.Certificate) -> Leaf:
    """The facts a service reads from its leaf, from a parsed certificate."""
    return Leaf(
        identity_from_certificate(cert),
        cert.serial_number,
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
    )


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def private_key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def fingerprint(cert: x509.Certificate) -> str:
    """``tls.der_fingerprint`` of ``cert``: the form CA pins are given in."""
    return der_fingerprint(cert.public_bytes(serialization.Encoding.DER))


@dataclass(frozen=True)
class IssuedIdentity:
    """A workload's key and certificate chain (leaf first) plus the trust bundle, as PEM."""

    spiffe_id: SpiffeId
    certificate: x509.Certificate
    key_pem: str
    chain_pem: str
    bundle_pem: str

    def write(self, directory: Path, *, stem: str = "svid") -> tuple[Path, Path, Path]:
        """Write ``<stem>.pem``, ``<stem>-key.pem`` (0600) and ``bundle.pem``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{stem}.pem"
        key_path = directory / f"{stem}-key.pem"
        bundle_path = directory / "bundle.pem"
        write_private(key_path, self.key_pem)
        cert_path.write_text(self.chain_pem)
        bundle_path.write_text(self.bundle_pem)
        return cert_path, key_path, bundle_path


class LocalAuthority:
    """A root and an intermediate CA held in memory, issuing leaf SVIDs.

    ``signer`` (intermediate certificate, its key, the trust bundle PEM) issues from an
    existing CA instead, e.g. a ``meshkit ca init`` directory's, for tests.
    """

    def __init__(
        self,
        trust_domain: str = "meshkit.local",
        *,
        signer: tuple[x509.Certificate, PrivateKey, str] | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.root: x509.Certificate | None = None
        if signer is not None:
            self.intermediate, self.intermediate_key, self.bundle_pem = signer
            return
        root_key = new_private_key()
        root = build_ca_certificate(
            trust_domain=trust_domain,
            common_name="meshkit root CA",
            key=root_key,
            path_length=1,
            ttl=ROOT_TTL,
        )
        self.intermediate_key = new_private_key()
        self.intermediate = build_ca_certificate(
            trust_domain=trust_domain,
            common_name="meshkit intermediate CA",
            key=self.intermediate_key,
            issuer=(root, root_key),
            path_length=0,
            ttl=INTERMEDIATE_TTL,
        )
        self.root = root
        self.bundle_pem = certificate_pem(root)

    def issue(
        self,
        service: str,
        *,
        namespace: str = "default",
        ttl: dt.timedelta = LEAF_TTL,
        now: dt.datetime | None = None,
        spiffe_id: SpiffeId | None = None,
    ) -> IssuedIdentity:
        """A fresh key and leaf certificate for ``service`` (tests and examples);
        ``spiffe_id`` names it in another form (e.g. Consul's, with a datacenter)."""
        if spiffe_id is None:
            spiffe_id = SpiffeId.for_service(self.trust_domain, namespace, service)
        key = new_private_key()
        leaf = build_leaf_certificate(
            spiffe_id=spiffe_id,
            public_key=key.public_key(),
            issuer_cert=self.intermediate,
            issuer_key=self.intermediate_key,
            ttl=ttl,
            now=now,
        )
        return IssuedIdentity(
            spiffe_id=spiffe_id,
            certificate=leaf,
            key_pem=private_key_pem(key),
            chain_pem=certificate_pem(leaf) + certificate_pem(self.intermediate),
            bundle_pem=self.bundle_pem,
        )
