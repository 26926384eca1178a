"""The CA under hostile clients: a real ``meshkit ca serve`` process, attacked as issue
#15 found it could be, and still signing for everyone else."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.ca.store import CAStore, init_ca
from meshkit.ca.x509 import build_csr, csr_pem, new_private_key
from meshkit.testing import CAProcess
from tests._procs import rss_mb
from tests.ca.conftest import call, make_token, trusting

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[tuple[CAProcess, CAStore]]:
    store = init_ca(tmp_path / "ca", "example.org")
    with CAProcess(store.directory) as process:
        yield process, store


def sign(process: CAProcess, store: CAStore, token: str | None, csr: str) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, body = call(
        process.port, "POST", "/v1/sign", trusting(store.bundle_pem),
        body={"csr": csr}, headers=headers,
    )  # fmt: skip
    return status, json.loads(body)


def a_csr() -> str:
    return csr_pem(build_csr(new_private_key(), None))


def test_slow_bodies_do_not_stop_signing(ca: tuple[CAProcess, CAStore]) -> None:
    process, store = ca
    context = trusting(store.bundle_pem)
    with contextlib.ExitStack() as held:
        for _ in range(256):
            raw = held.enter_context(socket.create_connection(("127.0.0.1", process.port)))
            stalled = held.enter_context(context.wrap_socket(raw))
            stalled.sendall(b"POST /v1/sign HTTP/1.1\r\nHost: ca\r\nContent-Length: 60000\r\n\r\n{")
        started = time.monotonic()
        status, answer = sign(process, store, make_token(store, "web"), a_csr())
        assert status == 200, answer
        assert time.monotonic() - started < 2


def test_header_floods_are_cut_off_without_memory_growth(ca: tuple[CAProcess, CAStore]) -> None:
    process, store = ca
    before = rss_mb(process.process.pid)
    answers: list[int] = []

    def flood() -> None:
        raw = socket.create_connection(("127.0.0.1", process.port))
        with trusting(store.bundle_pem).wrap_socket(raw) as sock:
            sock.sendall(b"POST /v1/sign HTTP/1.1\r\nX-Flood: ")
            line = b"a" * 65536
            try:
                for _ in range(16):  # 1 MiB of one header line, never ended
                    sock.sendall(line)
            except (ConnectionError, ssl.SSLError):
                pass
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                answers.append(int(sock.recv(64).split()[1]))

    threads = [threading.Thread(target=flood) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers and set(answers) == {431}
    assert rss_mb(process.process.pid) - before < 16
    assert sign(process, store, make_token(store, "web"), a_csr())[0] == 200


def test_failed_tokens_are_rate_limited_per_address_and_audited_in_bulk(
    ca: tuple[CAProcess, CAStore],
) -> None:
    process, store = ca
    csr = a_csr()
    statuses = [sign(process, store, f"mkjoin_guess{n}", csr)[0] for n in range(40)]
    assert statuses[:10] == [401] * 10
    assert set(statuses[10:]) == {429}
    status, headers, body = call(
        process.port, "POST", "/v1/sign", trusting(store.bundle_pem),
        body={"csr": csr}, headers={"Authorization": "Bearer mkjoin_more"},
    )  # fmt: skip
    assert status == 429 and 1 <= int(headers["retry-after"]) <= 60
    assert json.loads(body)["reason"] == "rate_limited"
    audit = [
        json.loads(line) for line in (store.directory / "audit.jsonl").read_text().splitlines()
    ]
    limited = [line for line in audit if line.get("reason") == "rate_limited"]
    assert len(limited) == 1 and limited[0]["count"] == 1  # later ones wait for the next line
    assert len(audit) < 15


def test_a_token_is_checked_before_any_signature_work(ca: tuple[CAProcess, CAStore]) -> None:
    process, store = ca
    status, answer = sign(process, store, "mkjoin_unknown", "not a CSR at all")
    assert (status, answer["reason"]) == (401, "token_invalid")


def test_deeply_nested_json_is_a_400_and_audited(ca: tuple[CAProcess, CAStore]) -> None:
    process, store = ca
    nested = b"[" * 30_000 + b"]" * 30_000
    status, _, body = call(process.port, "POST", "/v1/sign", trusting(store.bundle_pem), raw=nested)
    assert status == 400 and json.loads(body)["reason"] == "malformed_request"
    audit = (store.directory / "audit.jsonl").read_text()
    assert '"reason":"malformed_request"' in audit


def meshkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args], capture_output=True, text=True, timeout=60
    )


def test_a_world_writable_ca_directory_is_refused(tmp_path: Path) -> None:
    store = init_ca(tmp_path / "ca", "example.org")
    store.directory.chmod(0o777)
    result = meshkit("ca", "serve", "--dir", str(store.directory), "--port", "0")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "writable by group or others" in result.stderr


def test_token_lifetimes_and_uses_are_bounded(tmp_path: Path) -> None:
    store = init_ca(tmp_path / "ca", "example.org")
    base = ["ca", "token", "create", "--dir", str(store.directory), "--service", "web"]
    too_long = meshkit(*base, "--ttl", "48h")
    assert too_long.returncode == 1 and "--max-ttl" in too_long.stderr
    too_many = meshkit(*base, "--uses", "1000")
    assert too_many.returncode == 1 and "--max-uses" in too_many.stderr
    allowed = meshkit(*base, "--ttl", "48h", "--max-ttl", "72h")
    assert allowed.returncode == 0, allowed.stderr
