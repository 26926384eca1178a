"""The signing core: CSR in, verified X.509-SVID out, or a refusal saying why.

It never generates keys and never trusts a name a CSR asks for: the identity comes from
the caller (a join token, or the certificate a renewal is made with). Every certificate
is checked against the SVID profile and verified by ``cryptography``'s path builder
before it is returned; any failure refuses the request (fail closed).

Speed (bench/ca.py): the intermediate and roots are parsed once. The intermediate's own
chain to a root is verified once, at load, by issuing and fully verifying a probe leaf;
after that each leaf is verified against the intermediate as its anchor, which costs
one signature check instead of two. Per certificate what remains is the CSR signature
check, one ECDSA signature and one verification.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

from meshkit.ca import CA_NAMESPACE, CA_SERVICE
from meshkit.ca.store import CAStore
from meshkit.ca.x509 import (
    LEAF_TTL,
    PrivateKey,
    PublicKey,
    build_leaf_certificate,
    ca_trust_domain,
    certificate_pem,
    check_svid,
    new_private_key,
    public_key_sha256,
    utcnow,
)
from meshkit.errors import CAError, CARefused, CertificateError, IdentityError
from meshkit.identity import SpiffeId


@dataclass(frozen=True)
class SigningRequest:
    """A CSR whose signature was verified: the key it proves, and (dev mode) the ID it asks."""

    public_key: PublicKey
    requested_id: SpiffeId | None = None


@dataclass(frozen=True)
class Issued:
    """A certificate the authority issued and verified."""

    certificate: x509.Certificate
    spiffe_id: SpiffeId
    chain_pem: tuple[str, ...]  # leaf first, up to but excluding the root
    public_key_sha256: str

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def as_json(self) -> dict[str, Any]:
        return {
            "certificate": self.chain_pem[0],
            "chain": list(self.chain_pem),
            "expires_at": self.not_after.isoformat(),
            "spiffe_id": str(self.spiffe_id),
            "serial": self.serial,
        }


class Authority:
    """Issues leaf SVIDs from one intermediate CA for its trust domain."""

    def __init__(
        self,
        *,
        issuer: x509.Certificate,
        issuer_key: PrivateKey,
        roots: Sequence[x509.Certificate],
        leaf_ttl: dt.timedelta = LEAF_TTL,
    ) -> None:
        if leaf_ttl <= dt.timedelta(0):
            raise CAError("leaf TTL must be positive")
        self.trust_domain = ca_trust_domain(issuer)
        #: The SPIFFE ID of the CA's own HTTPS server (validated once, compared per request).
        self.ca_id = SpiffeId.for_service(self.trust_domain, CA_NAMESPACE, CA_SERVICE)
        self.issuer = issuer
        self.leaf_ttl = leaf_ttl
        self._issuer_key = issuer_key
        self._issuer_pem = certificate_pem(issuer)
        self._anchor = verification.Store([issuer])
        self._check_chain(roots)

    @classmethod
    def from_store(cls, store: CAStore, *, leaf_ttl: dt.timedelta = LEAF_TTL) -> Authority:
        return cls(
            issuer=store.intermediate,
            issuer_key=store.intermediate_key,
            roots=[store.root],
            leaf_ttl=leaf_ttl,
        )

    @property
    def not_after(self) -> dt.datetime:
        return self.issuer.not_valid_after_utc

    def _check_chain(self, roots: Sequence[x509.Certificate]) -> None:
        # A probe leaf verified up to a root proves the intermediate chains to it, with
        # the issuer key matching the issuer certificate, before anything is served.
        probe = self.issue_unchecked(new_private_key().public_key(), self.ca_id)
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(list(roots)))
            .time(utcnow())
            .build_client_verifier()
        )
        try:
            verifier.verify(probe, [self.issuer])
        except verification.VerificationError as exc:
            raise CAError(f"the intermediate CA does not chain to the root: {exc}") from exc

    def parse_csr(self, pem: str, *, allow_identity: bool = False) -> SigningRequest:
        """Parse a PEM CSR and check its proof of possession.

        A CSR may not ask for a subject, SANs or extensions: the identity comes from the
        join token. Only ``allow_identity`` (dev mode) accepts one SPIFFE ID URI SAN.
        """
        try:
            csr = x509.load_pem_x509_csr(pem.encode())
            valid = csr.is_signature_valid
            public_key = csr.public_key()
            extensions = csr.extensions
        except (ValueError, UnicodeError) as exc:
            raise CARefused(f"malformed CSR: {exc}", reason="malformed_csr") from exc
        if not valid:
            raise CARefused("CSR signature does not verify", reason="bad_signature")
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise CARefused("CSR key must be ECDSA P-256", reason="unsupported_key")
        if len(csr.subject) == 0 and len(extensions) == 0:
            return SigningRequest(public_key)
        if not allow_identity:
            raise CARefused(
                "the CSR must not ask for a subject, SANs or extensions: "
                "the identity comes from the join token",
                reason="csr_requests_identity",
            )
        return SigningRequest(public_key, self._requested_id(csr))

    def _requested_id(self, csr: x509.CertificateSigningRequest) -> SpiffeId:
        try:
            (extension,) = csr.extensions
            uris = extension.value.get_values_for_type(x509.UniformResourceIdentifier)
            (uri,) = uris
            if len(csr.subject) or len(extension.value) != 1:
                raise ValueError
            spiffe_id = SpiffeId.parse(uri)
        except (ValueError, AttributeError, IdentityError) as exc:
            raise CARefused(
                "a dev-mode CSR must hold only one SAN, a SPIFFE ID URI",
                reason="csr_requests_identity",
            ) from exc
        return spiffe_id

    def check_identity(self, spiffe_id: SpiffeId) -> None:
        """Refuse IDs outside the trust domain and the CA's own ID."""
        if spiffe_id.trust_domain != self.trust_domain:
            raise CARefused(
                f"{spiffe_id} is not in the trust domain {self.trust_domain}",
                reason="wrong_trust_domain",
            )
        if spiffe_id == self.ca_id:
            raise CARefused(f"{spiffe_id} is reserved for the CA", reason="reserved_identity")

    def issue(
        self, request: SigningRequest, spiffe_id: SpiffeId, *, now: dt.datetime | None = None
    ) -> Issued:
        """Sign, profile-check and verify a leaf for ``spiffe_id``; fail closed."""
        self.check_identity(spiffe_id)
        leaf = self.issue_unchecked(request.public_key, spiffe_id, now=now)
        return self._verified(leaf, request.public_key)

    def issue_server_certificate(self, public_key: PublicKey) -> Issued:
        """The CA's own HTTPS certificate, under the ID reserved for it."""
        return self._verified(self.issue_unchecked(public_key, self.ca_id), public_key)

    def issue_unchecked(
        self, public_key: PublicKey, spiffe_id: SpiffeId, *, now: dt.datetime | None = None
    ) -> x509.Certificate:
        return build_leaf_certificate(
            spiffe_id=spiffe_id,
            public_key=public_key,
            issuer_cert=self.issuer,
            issuer_key=self._issuer_key,
            ttl=self.leaf_ttl,
            now=now,
        )

    def _verified(self, leaf: x509.Certificate, public_key: PublicKey) -> Issued:
        try:
            spiffe_id = self.verify_svid(leaf)
        except CARefused as exc:
            raise CAError(f"issued certificate failed its own checks: {exc}") from exc
        return Issued(
            certificate=leaf,
            spiffe_id=spiffe_id,
            chain_pem=(certificate_pem(leaf), self._issuer_pem),
            public_key_sha256=public_key_sha256(public_key),
        )

    def verify_svid(self, cert: x509.Certificate, *, now: dt.datetime | None = None) -> SpiffeId:
        """The SPIFFE ID of a currently valid SVID this authority issued, else ``CARefused``."""
        now = now or utcnow()
        if cert.not_valid_after_utc <= now:
            raise CARefused("certificate has expired", reason="cert_expired")
        verifier = (
            verification.PolicyBuilder().store(self._anchor).time(now).build_client_verifier()
        )
        try:
            verifier.verify(cert, [])
            spiffe_id = check_svid(cert, issuer=self.issuer)
        except (verification.VerificationError, CertificateError) as exc:
            raise CARefused(f"certificate rejected: {exc}", reason="cert_invalid") from exc
        if spiffe_id.trust_domain != self.trust_domain:
            raise CARefused("certificate is for another trust domain", reason="cert_invalid")
        return spiffe_id
