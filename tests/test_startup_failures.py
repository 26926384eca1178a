"""A service that cannot start says why in one line naming the setting to fix, and
exits non-zero: whatever layer failed (certificate files, the CA, the trust domain, the
join token), never a traceback. Real ``meshkit run`` processes, a real CA."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.ca.store import CAStore, init_ca
from meshkit.ca.tokens import TokenStore
from meshkit.identity import SpiffeId
from meshkit.testing import CAProcess

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CAProcess, CAStore]]:
    store = init_ca(tmp_path_factory.mktemp("ca") / "ca", "example.org")
    with CAProcess(store.directory) as process:
        yield process, store


def token_for(store: CAStore, service: str) -> str:
    tokens = TokenStore(store.tokens_path)
    try:
        return tokens.create(SpiffeId.for_service("example.org", "default", service), ttl=600)
    finally:
        tokens.close()


def run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "MESHKIT_SERVICE": "echo",
        "MESHKIT_DATA_DIR": str(tmp_path / "data"),
        "CONSUL_HTTP_ADDR": "",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "meshkit", "run", "tests.apps.echo:app"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def joining(ca: tuple[CAProcess, CAStore], **env: str) -> dict[str, str]:
    """What a service needs to join the test CA, with ``env`` over it."""
    process, store = ca
    return {
        "MESHKIT_TRUST_DOMAIN": "example.org",
        "MESHKIT_CA_URL": process.url,
        "MESHKIT_CA_FINGERPRINT": store.root_fingerprint,
        "MESHKIT_JOIN_TOKEN": token_for(store, "echo"),
        **env,
    }


def one_line_naming(result: subprocess.CompletedProcess[str], setting: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("meshkit: error: ") and setting in last, last
    return last


def test_unreadable_certificate_files(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.pem")
    result = run(
        tmp_path, MESHKIT_CERT_FILE=missing, MESHKIT_KEY_FILE=missing, MESHKIT_BUNDLE_FILE=missing
    )
    assert "nowhere.pem" in one_line_naming(result, "MESHKIT_CERT_FILE")


def test_the_ca_unreachable(tmp_path: Path) -> None:
    result = run(
        tmp_path, MESHKIT_CA_URL="https://127.0.0.1:1", MESHKIT_CA_FINGERPRINT="sha256:" + "a" * 64
    )
    one_line_naming(result, "MESHKIT_CA_URL")


def test_the_wrong_fingerprint(tmp_path: Path, ca: tuple[CAProcess, CAStore]) -> None:
    result = run(tmp_path, **joining(ca, MESHKIT_CA_FINGERPRINT="sha256:" + "a" * 64))
    one_line_naming(result, "MESHKIT_CA_FINGERPRINT")


def test_another_trust_domain(tmp_path: Path, ca: tuple[CAProcess, CAStore]) -> None:
    result = run(tmp_path, **joining(ca, MESHKIT_TRUST_DOMAIN="meshkit.local"))
    assert "MESHKIT_TRUST_DOMAIN=example.org" in one_line_naming(result, "MESHKIT_TRUST_DOMAIN")


def test_a_token_for_another_service(tmp_path: Path, ca: tuple[CAProcess, CAStore]) -> None:
    result = run(tmp_path, **joining(ca, MESHKIT_JOIN_TOKEN=token_for(ca[1], "billing")))
    one_line_naming(result, "MESHKIT_JOIN_TOKEN")


def test_no_token(tmp_path: Path, ca: tuple[CAProcess, CAStore]) -> None:
    result = run(tmp_path, **joining(ca, MESHKIT_JOIN_TOKEN=""))
    one_line_naming(result, "MESHKIT_JOIN_TOKEN")
