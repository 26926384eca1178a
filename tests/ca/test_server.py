"""The CA's HTTPS API, against a real ``meshkit ca serve`` process."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meshkit.ca.store import INTERMEDIATE_KEY, CAStore, init_ca
from meshkit.ca.x509 import (
    build_csr,
    build_leaf_certificate,
    certificate_pem,
    check_svid,
    csr_pem,
    new_private_key,
    private_key_pem,
    utcnow,
    write_private,
)
from meshkit.identity import SpiffeId
from meshkit.testing import CAProcess
from tests.ca.conftest import call, make_token, openssl_verify, trusting
from tests.ca.test_authority import tamper_signature


def _csr(spiffe_id: SpiffeId | None = None) -> tuple[str, str]:
    key = new_private_key()
    return private_key_pem(key), csr_pem(build_csr(key, spiffe_id))


def _sign(
    ca: CAProcess, store: CAStore, token: str | None, csr: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, response_headers, body = call(
        ca.port, "POST", "/v1/sign", trusting(store.bundle_pem), body={"csr": csr},
        headers=headers,
    )  # fmt: skip
    return status, response_headers, json.loads(body)


def _identity_files(tmp_path: Path, key_pem: str, chain: list[str]) -> tuple[Path, Path]:
    write_private(tmp_path / "key.pem", key_pem)
    (tmp_path / "chain.pem").write_text("".join(chain))
    return tmp_path / "chain.pem", tmp_path / "key.pem"


def test_sign_issues_the_token_identity(ca_server: CAProcess, ca_store: CAStore) -> None:
    _, csr = _csr()
    status, _, answer = _sign(ca_server, ca_store, make_token(ca_store, "web"), csr)
    assert status == 200, answer
    leaf = x509.load_pem_x509_certificate(answer["certificate"].encode())
    assert check_svid(leaf, issuer=ca_store.intermediate) == SpiffeId.parse(
        "spiffe://example.org/ns/default/svc/web"
    )
    assert answer["chain"] == [answer["certificate"], certificate_pem(ca_store.intermediate)]
    assert dt.datetime.fromisoformat(answer["expires_at"]) == leaf.not_valid_after_utc


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_issued_certificates_pass_openssl_verify(
    ca_server: CAProcess, ca_store: CAStore, tmp_path: Path
) -> None:
    _, _, answer = _sign(ca_server, ca_store, make_token(ca_store, "web"), _csr()[1])
    result = openssl_verify(
        tmp_path,
        leaf_pem=answer["chain"][0],
        intermediate_pem=answer["chain"][1],
        bundle_pem=answer["bundle"],
        purpose="sslserver",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_replayed_token_is_refused(ca_server: CAProcess, ca_store: CAStore) -> None:
    token = make_token(ca_store, "web")
    assert _sign(ca_server, ca_store, token, _csr()[1])[0] == 200
    status, _, answer = _sign(ca_server, ca_store, token, _csr()[1])
    assert (status, answer["reason"]) == (403, "token_used")


def test_a_token_for_a_with_a_csr_naming_b_is_refused(
    ca_server: CAProcess, ca_store: CAStore
) -> None:
    token = make_token(ca_store, "a")
    b = SpiffeId.for_service(ca_store.trust_domain, "default", "b")
    status, _, answer = _sign(ca_server, ca_store, token, _csr(b)[1])
    assert (status, answer["reason"]) == (403, "csr_requests_identity")
    # The refused CSR did not burn the token.
    assert _sign(ca_server, ca_store, token, _csr()[1])[0] == 200


def test_a_bad_csr_signature_gets_400(ca_server: CAProcess, ca_store: CAStore) -> None:
    csr = tamper_signature(_csr()[1])
    status, _, answer = _sign(ca_server, ca_store, make_token(ca_store, "web"), csr)
    assert (status, answer["reason"]) == (400, "bad_signature")


def test_missing_and_unknown_tokens_get_401(ca_server: CAProcess, ca_store: CAStore) -> None:
    assert _sign(ca_server, ca_store, None, _csr()[1])[0] == 401
    assert _sign(ca_server, ca_store, "mkjoin_nope", _csr()[1])[0] == 401


def test_malformed_and_oversized_bodies(ca_server: CAProcess, ca_store: CAStore) -> None:
    context = trusting(ca_store.bundle_pem)
    status, _, body = call(ca_server.port, "POST", "/v1/sign", context, raw=b"{not json")
    assert status == 400 and "error" in json.loads(body)
    status, _, body = call(ca_server.port, "POST", "/v1/sign", context, raw=b"x" * 70_000)
    assert status == 413 and json.loads(body)["error"] == "request_body_too_large"


def test_two_concurrent_uses_of_a_token_exactly_one_wins(
    ca_server: CAProcess, ca_store: CAStore
) -> None:
    token = make_token(ca_store, "web")
    csrs = [_csr()[1] for _ in range(2)]
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def attempt(csr: str) -> None:
        barrier.wait()
        statuses.append(_sign(ca_server, ca_store, token, csr)[0])

    threads = [threading.Thread(target=attempt, args=(csr,)) for csr in csrs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 403]


def test_renewal_over_mtls_keeps_the_identity(
    ca_server: CAProcess, ca_store: CAStore, tmp_path: Path
) -> None:
    key_pem, csr = _csr()
    _, _, first = _sign(ca_server, ca_store, make_token(ca_store, "cart"), csr)
    context = trusting(
        ca_store.bundle_pem, client_chain=_identity_files(tmp_path, key_pem, first["chain"])
    )
    status, _, body = call(ca_server.port, "POST", "/v1/renew", context, body={"csr": _csr()[1]})
    renewed = json.loads(body)
    assert status == 200, renewed
    assert renewed["spiffe_id"] == first["spiffe_id"] == "spiffe://example.org/ns/default/svc/cart"
    assert renewed["serial"] != first["serial"]


def test_renewal_without_a_client_certificate_gets_401(
    ca_server: CAProcess, ca_store: CAStore
) -> None:
    context = trusting(ca_store.bundle_pem)
    status, _, body = call(ca_server.port, "POST", "/v1/renew", context, body={"csr": _csr()[1]})
    assert (status, json.loads(body)["reason"]) == (401, "client_cert_missing")


def test_an_expired_certificate_cannot_renew(
    ca_server: CAProcess, ca_store: CAStore, tmp_path: Path
) -> None:
    key = new_private_key()
    expired = build_leaf_certificate(
        spiffe_id=SpiffeId.for_service(ca_store.trust_domain, "default", "web"),
        public_key=key.public_key(),
        issuer_cert=ca_store.intermediate,
        issuer_key=ca_store.intermediate_key,
        ttl=dt.timedelta(seconds=30),
        now=utcnow() - dt.timedelta(minutes=5),
    )
    chain = [certificate_pem(expired), certificate_pem(ca_store.intermediate)]
    context = trusting(
        ca_store.bundle_pem, client_chain=_identity_files(tmp_path, private_key_pem(key), chain)
    )
    # The handshake verifies the optional client certificate and rejects it.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        call(ca_server.port, "POST", "/v1/renew", context, body={"csr": _csr()[1]})


def test_bundle_roots_health_and_metrics(ca_server: CAProcess, ca_store: CAStore) -> None:
    context = trusting(ca_store.bundle_pem)
    status, _, body = call(ca_server.port, "GET", "/v1/bundle", context)
    assert status == 200 and body.decode() == ca_store.bundle_pem
    fingerprint = ca_store.root_fingerprint
    status, _, body = call(ca_server.port, "GET", f"/v1/roots/{fingerprint}", context)
    assert status == 200 and body.decode() == certificate_pem(ca_store.root)
    assert call(ca_server.port, "GET", "/v1/roots/sha256:" + "0" * 64, context)[0] == 404
    assert call(ca_server.port, "GET", "/healthz", context)[0] == 200
    _sign(ca_server, ca_store, "mkjoin_nope", _csr()[1])
    status, _, body = call(ca_server.port, "GET", "/metrics", context)
    metrics = body.decode()
    assert 'meshkit_ca_refusals_total{method="sign",reason="token_invalid"}' in metrics
    assert 'meshkit_ca_expiry_timestamp_seconds{ca="intermediate"}' in metrics
    assert "meshkit_ca_request_duration_seconds_bucket" in metrics


def test_every_issuance_and_refusal_is_audited(ca_server: CAProcess, ca_store: CAStore) -> None:
    _, _, answer = _sign(ca_server, ca_store, make_token(ca_store, "audit"), _csr()[1])
    _sign(ca_server, ca_store, "mkjoin_nope", _csr()[1])
    lines = [json.loads(line) for line in ca_store.audit_path.read_text().splitlines()]
    issued = next(line for line in lines if line["serial"] == answer["serial"])
    assert issued["result"] == "issued"
    assert issued["spiffe_id"] == "spiffe://example.org/ns/default/svc/audit"
    assert issued["method"] == "sign" and issued["peer"] == "127.0.0.1"
    assert len(issued["public_key_sha256"]) == 64 and issued["not_after"]
    assert lines[-1]["result"] == "refused" and lines[-1]["reason"] == "token_invalid"


@pytest.fixture(scope="module")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CAProcess, CAStore]]:
    store = init_ca(tmp_path_factory.mktemp("dev") / "ca", "dev.local")
    process = CAProcess(store.directory, "--dev", "--max-connections", "4").start()
    yield process, store
    process.stop()


def test_dev_mode_signs_the_identity_the_csr_names_and_warns(
    dev_ca: tuple[CAProcess, CAStore],
) -> None:
    ca, store = dev_ca
    wanted = SpiffeId.for_service("dev.local", "shop", "cart")
    status, _, answer = _sign(ca, store, None, _csr(wanted)[1])
    assert status == 200 and answer["spiffe_id"] == str(wanted)
    assert any("DEV MODE" in line for line in ca.lines)


def test_requests_whose_body_never_comes_hold_no_signing_slot(
    dev_ca: tuple[CAProcess, CAStore],
) -> None:
    ca, store = dev_ca
    context = trusting(store.bundle_pem)
    wanted = SpiffeId.for_service("dev.local", "shop", "cart")
    with contextlib.ExitStack() as held:
        for _ in range(3):  # of the 4 connections the CA holds, 3 stall on their body
            raw = held.enter_context(socket.create_connection(("127.0.0.1", ca.port)))
            stalled = held.enter_context(context.wrap_socket(raw))
            stalled.sendall(b"POST /v1/sign HTTP/1.1\r\nHost: ca\r\nContent-Length: 100\r\n\r\n{")
        status, _, answer = _sign(ca, store, None, _csr(wanted)[1])
    assert status == 200 and answer["spiffe_id"] == str(wanted)


def test_serve_refuses_a_world_readable_key(tmp_path: Path) -> None:
    store = init_ca(tmp_path / "ca", "example.org")
    (store.directory / INTERMEDIATE_KEY).chmod(0o644)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshkit",
            "ca",
            "serve",
            "--dir",
            str(store.directory),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "intermediate-key.pem" in lines[0] and "chmod 600" in lines[0]


def test_a_certificate_that_expires_on_a_kept_alive_connection_cannot_renew(
    tmp_path: Path,
) -> None:
    store = init_ca(tmp_path / "ca", "example.org")
    ca = CAProcess(store.directory, "--leaf-ttl", "2s").start()
    try:
        key_pem, csr = _csr()
        _, _, answer = _sign(ca, store, make_token(store, "web"), csr)
        chain = _identity_files(tmp_path, key_pem, answer["chain"])
        connection = http.client.HTTPSConnection(
            "127.0.0.1", ca.port, context=trusting(store.bundle_pem, client_chain=chain)
        )
        body = json.dumps({"csr": _csr()[1]})
        connection.request("POST", "/v1/renew", body=body)
        first = connection.getresponse()
        assert first.status == 200 and json.loads(first.read())["spiffe_id"] == answer["spiffe_id"]
        expires = dt.datetime.fromisoformat(answer["expires_at"])
        time.sleep(max(0.0, (expires - utcnow()).total_seconds()) + 0.2)
        # Same connection: the handshake was valid, the certificate no longer is. The
        # server closes it (once a second it looks), or refuses a request sent before.
        try:
            connection.request("POST", "/v1/renew", body=body)
            response = connection.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected, ssl.SSLError):
            pass
        else:
            assert response.status == 401
            assert json.loads(response.read())["error"] == "peer_certificate_expired"
        connection.close()
    finally:
        ca.stop()
