"""meshkit/tls.py: a service reads its certificate with the ssl module alone."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from meshkit.ca.x509 import LEAF_TTL, LocalAuthority, fingerprint, leaf_facts, load_certificates
from meshkit.errors import CertificateError
from meshkit.tls import TLSMaterial, decode_ca_certificate, pem_certificates, pem_fingerprint


def _material(
    authority: LocalAuthority, *, ttl: dt.timedelta = LEAF_TTL, now: dt.datetime | None = None
) -> TLSMaterial:
    issued = authority.issue("web", ttl=ttl, now=now)
    return TLSMaterial(issued.chain_pem, issued.key_pem, issued.bundle_pem)


def test_the_leaf_reads_as_cryptography_parses_it(authority: LocalAuthority) -> None:
    material = _material(authority)
    parsed = load_certificates(material.chain_pem)[0]
    assert material.leaf == leaf_facts(parsed)
    assert material.spiffe_id == authority.issue("web").spiffe_id
    assert material.not_after == parsed.not_valid_after_utc.timestamp()


def test_an_expired_leaf_is_still_read(authority: LocalAuthority) -> None:
    # Reuse and renewal judge a certificate by its dates: reading it must not.
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    material = _material(authority, ttl=dt.timedelta(seconds=10), now=an_hour_ago)
    assert material.not_after == pytest.approx(an_hour_ago.timestamp() + 10, abs=1)


def test_a_key_of_another_certificate_is_refused(authority: LocalAuthority) -> None:
    web, api = authority.issue("web"), authority.issue("api")
    with pytest.raises(CertificateError, match="chain or key rejected"):
        TLSMaterial(web.chain_pem, api.key_pem, web.bundle_pem).validate()


def test_a_chain_the_bundle_does_not_vouch_for_is_refused(authority: LocalAuthority) -> None:
    web = authority.issue("web")
    other = LocalAuthority("meshkit.local")
    with pytest.raises(CertificateError, match="not trusted by the bundle"):
        TLSMaterial(web.chain_pem, web.key_pem, other.bundle_pem).validate()


def test_not_pem_is_refused(authority: LocalAuthority) -> None:
    web = authority.issue("web")
    with pytest.raises(CertificateError):
        TLSMaterial("not a certificate", web.key_pem, web.bundle_pem).validate()
    with pytest.raises(CertificateError, match="no certificate"):
        TLSMaterial(web.chain_pem, web.key_pem, "").validate()


def test_bundle_certificates_and_fingerprints_as_cryptography_reads_them(
    authority: LocalAuthority,
) -> None:
    chain = authority.issue("web").chain_pem
    assert [pem_fingerprint(pem) for pem in pem_certificates(chain)] == [
        fingerprint(cert) for cert in load_certificates(chain)
    ]
    root = decode_ca_certificate(authority.bundle_pem)
    assert root["subjectAltName"] == (("URI", "spiffe://meshkit.local"),)
    with pytest.raises(CertificateError):
        pem_certificates("no PEM here")


def test_a_service_never_loads_cryptography() -> None:
    # What `meshkit run` imports before serving; certificates come from meshkit.ca.keygen.
    code = (
        "import sys, meshkit.app, meshkit.cli.run, meshkit.ca.client; "
        "print(sorted(m for m in sys.modules if m.startswith('cryptography')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr
