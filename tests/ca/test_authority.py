from __future__ import annotations

import base64
import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from meshkit.ca.authority import Authority
from meshkit.ca.store import CAStore
from meshkit.ca.x509 import (
    build_csr,
    build_leaf_certificate,
    certificate_pem,
    check_svid,
    csr_pem,
    new_private_key,
    utcnow,
)
from meshkit.errors import CAError, CARefused
from meshkit.identity import SpiffeId
from tests.ca.conftest import openssl_verify

WEB = SpiffeId.parse("spiffe://example.org/ns/default/svc/web")


@pytest.fixture(scope="module")
def authority(ca_store: CAStore) -> Authority:
    return Authority.from_store(ca_store, leaf_ttl=dt.timedelta(hours=1))


def tamper_signature(pem: str) -> str:
    """The same CSR with one bit of its signature flipped: well-formed, but forged."""
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature's s integer
    body = base64.b64encode(bytes(der)).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join(
        ["-----BEGIN CERTIFICATE REQUEST-----", *lines, "-----END CERTIFICATE REQUEST-----", ""]
    )


def test_issues_a_verified_svid_for_the_given_identity(authority: Authority) -> None:
    issued = authority.issue(authority.parse_csr(csr_pem(build_csr(new_private_key()))), WEB)
    assert issued.spiffe_id == WEB
    assert check_svid(issued.certificate, issuer=authority.issuer) == WEB
    lifetime = issued.not_after - issued.certificate.not_valid_before_utc
    assert lifetime == dt.timedelta(hours=1, seconds=60)
    assert len(issued.chain_pem) == 2


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_issued_certificates_pass_openssl_verify(
    authority: Authority, ca_store: CAStore, tmp_path: Path
) -> None:
    issued = authority.issue(authority.parse_csr(csr_pem(build_csr(new_private_key()))), WEB)
    result = openssl_verify(
        tmp_path,
        leaf_pem=issued.chain_pem[0],
        intermediate_pem=issued.chain_pem[1],
        bundle_pem=ca_store.bundle_pem,
        purpose="sslclient",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_csr_asking_for_an_identity_is_refused(authority: Authority) -> None:
    pem = csr_pem(build_csr(new_private_key(), WEB))
    with pytest.raises(CARefused) as refused:
        authority.parse_csr(pem)
    assert refused.value.reason == "csr_requests_identity"


def test_dev_mode_takes_the_one_uri_san(authority: Authority) -> None:
    request = authority.parse_csr(csr_pem(build_csr(new_private_key(), WEB)), allow_identity=True)
    assert request.requested_id == WEB


def test_a_bad_csr_signature_is_refused(authority: Authority) -> None:
    pem = tamper_signature(csr_pem(build_csr(new_private_key())))
    with pytest.raises(CARefused) as refused:
        authority.parse_csr(pem)
    assert refused.value.reason == "bad_signature"


def test_garbage_is_a_malformed_csr(authority: Authority) -> None:
    with pytest.raises(CARefused) as refused:
        authority.parse_csr("not a csr")
    assert refused.value.reason == "malformed_csr"


def test_only_p256_keys_are_signed(authority: Authority) -> None:
    pem = csr_pem(build_csr(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(CARefused, match="P-256"):
        authority.parse_csr(pem)


def test_other_trust_domains_and_the_ca_id_are_refused(authority: Authority) -> None:
    request = authority.parse_csr(csr_pem(build_csr(new_private_key())))
    with pytest.raises(CARefused, match="trust domain"):
        authority.issue(request, SpiffeId.parse("spiffe://evil.org/ns/default/svc/web"))
    with pytest.raises(CARefused, match="reserved"):
        authority.issue(request, authority.ca_id)


def test_an_expired_certificate_is_refused(authority: Authority, ca_store: CAStore) -> None:
    expired = build_leaf_certificate(
        spiffe_id=WEB,
        public_key=new_private_key().public_key(),
        issuer_cert=ca_store.intermediate,
        issuer_key=ca_store.intermediate_key,
        ttl=dt.timedelta(seconds=30),
        now=utcnow() - dt.timedelta(minutes=5),
    )
    with pytest.raises(CARefused) as refused:
        authority.verify_svid(expired)
    assert refused.value.reason == "cert_expired"


def test_a_certificate_from_another_ca_is_refused(authority: Authority) -> None:
    from meshkit.ca.x509 import LocalAuthority

    foreign = LocalAuthority("example.org").issue("web").certificate
    with pytest.raises(CARefused) as refused:
        authority.verify_svid(foreign)
    assert refused.value.reason == "cert_invalid"


def test_an_issuer_key_that_does_not_match_fails_closed(ca_store: CAStore) -> None:
    with pytest.raises(CAError):
        Authority(issuer=ca_store.intermediate, issuer_key=new_private_key(), roots=[ca_store.root])


def test_an_intermediate_not_from_the_root_fails_closed(ca_store: CAStore) -> None:
    from meshkit.ca.x509 import LocalAuthority

    other = LocalAuthority("example.org")
    with pytest.raises(CAError, match="does not chain"):
        Authority(
            issuer=other.intermediate, issuer_key=other.intermediate_key, roots=[ca_store.root]
        )


def test_the_server_certificate_carries_the_ca_id(authority: Authority) -> None:
    issued = authority.issue_server_certificate(new_private_key().public_key())
    assert issued.spiffe_id == authority.ca_id
    assert certificate_pem(issued.certificate) == issued.chain_pem[0]
