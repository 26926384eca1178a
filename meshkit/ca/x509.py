"""X.509 building for the mesh, every extension explicit (after trustme).

One place builds every certificate meshkit makes: the root and intermediate CAs, and
leaf X.509-SVIDs (SPIFFE profile: exactly one URI SAN, empty subject with a critical
SAN, ``cA=false``, critical keyUsage digitalSignature, EKU serverAuth+clientAuth, SKI
and AKI, ECDSA P-256). ``LocalAuthority`` is a root + intermediate in memory, for
tests, examples and the CA daemon's signing core.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.identity import SpiffeId

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey
BACKDATE = dt.timedelta(seconds=60)
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


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


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
        .add_extension(_ca_key_usage(), critical=True)
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
        .subject_name(x509.Name([]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def private_key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def fingerprint(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the DER certificate: the form CA pins are given in."""
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


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


def write_private(path: Path, text: str) -> None:
    """Write a secret with mode 0600 from the first byte (no window of wider access)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


class LocalAuthority:
    """A root and an intermediate CA held in memory, issuing leaf SVIDs."""

    def __init__(self, trust_domain: str = "meshkit.local") -> None:
        self.trust_domain = trust_domain
        self.root_key = new_private_key()
        self.root = build_ca_certificate(
            trust_domain=trust_domain,
            common_name="meshkit root CA",
            key=self.root_key,
            path_length=1,
            ttl=ROOT_TTL,
        )
        self.intermediate_key = new_private_key()
        self.intermediate = build_ca_certificate(
            trust_domain=trust_domain,
            common_name="meshkit intermediate CA",
            key=self.intermediate_key,
            issuer=(self.root, self.root_key),
            path_length=0,
            ttl=INTERMEDIATE_TTL,
        )

    @property
    def bundle_pem(self) -> str:
        return certificate_pem(self.root)

    def issue(
        self,
        service: str,
        *,
        namespace: str = "default",
        ttl: dt.timedelta = LEAF_TTL,
        now: dt.datetime | None = None,
    ) -> IssuedIdentity:
        """A fresh key and leaf certificate for ``service`` (tests and examples)."""
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
