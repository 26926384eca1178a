from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshkit.ca.x509 import (
    BACKDATE,
    LocalAuthority,
    build_csr,
    check_svid,
    new_private_key,
    renewal_time,
    utcnow,
)
from meshkit.errors import CertificateError
from meshkit.identity import SpiffeId


def test_issued_leaf_follows_the_svid_profile(authority: LocalAuthority) -> None:
    issued = authority.issue("payments", namespace="shop")
    spiffe_id = check_svid(issued.certificate, issuer=authority.intermediate)
    assert spiffe_id == SpiffeId.for_service("meshkit.local", "shop", "payments")


def test_a_ca_certificate_is_not_an_svid(authority: LocalAuthority) -> None:
    with pytest.raises(CertificateError, match="basicConstraints"):
        check_svid(authority.intermediate, issuer=authority.root)


def test_a_leaf_with_two_uris_is_not_an_svid(authority: LocalAuthority) -> None:
    key = new_private_key()
    good = authority.issue("a").certificate
    builder = x509.CertificateBuilder(
        subject_name=x509.Name([]),
        issuer_name=authority.intermediate.subject,
        public_key=key.public_key(),
        serial_number=1,
        not_valid_before=good.not_valid_before_utc,
        not_valid_after=good.not_valid_after_utc,
        extensions=[
            e for e in good.extensions if not isinstance(e.value, x509.SubjectAlternativeName)
        ],
    ).add_extension(
        x509.SubjectAlternativeName(
            [
                x509.UniformResourceIdentifier("spiffe://meshkit.local/ns/default/svc/a"),
                x509.UniformResourceIdentifier("spiffe://meshkit.local/ns/default/svc/b"),
            ]
        ),
        critical=True,
    )
    bad = builder.sign(authority.intermediate_key, hashes.SHA256())
    with pytest.raises(CertificateError, match="exactly one SAN"):
        check_svid(bad, issuer=authority.intermediate)


def test_a_leaf_from_another_issuer_fails_the_key_identifier_check(
    authority: LocalAuthority,
) -> None:
    other = LocalAuthority("meshkit.local")
    with pytest.raises(CertificateError, match="authorityKeyIdentifier"):
        check_svid(other.issue("a").certificate, issuer=authority.intermediate)


def test_csr_names_nothing_unless_asked() -> None:
    key = new_private_key()
    assert len(build_csr(key).extensions) == 0
    named = build_csr(key, SpiffeId.parse("spiffe://td/ns/a/svc/b"))
    san = named.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://td/ns/a/svc/b"
    ]


def test_renewal_time_counts_from_issuance_not_backdated_not_before(
    authority: LocalAuthority,
) -> None:
    now = utcnow().replace(microsecond=0)
    leaf = authority.issue("a", ttl=dt.timedelta(seconds=10), now=now).certificate
    assert leaf.not_valid_before_utc == now - BACKDATE
    assert renewal_time(leaf) == pytest.approx(now.timestamp() + 5)
