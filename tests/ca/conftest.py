from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.ca.store import CAStore, init_ca
from meshkit.ca.tokens import TokenStore
from meshkit.identity import SpiffeId
from meshkit.testing import CAProcess

TRUST_DOMAIN = "example.org"
_LISTENING = re.compile(r"listening on https://(?P<host>[^:]+):(?P<port>\d+)")


@pytest.fixture(scope="module")
def ca_store(tmp_path_factory: pytest.TempPathFactory) -> CAStore:
    return init_ca(tmp_path_factory.mktemp("ca") / "ca", TRUST_DOMAIN)


@pytest.fixture(scope="module")
def ca_server(ca_store: CAStore) -> Iterator[CAProcess]:
    with CAProcess(ca_store.directory) as process:
        yield process


def make_token(store: CAStore, service: str, *, uses: int = 1, ttl: float = 600) -> str:
    tokens = TokenStore(store.tokens_path)
    try:
        return tokens.create(
            SpiffeId.for_service(store.trust_domain, "default", service), ttl=ttl, uses=uses
        )
    finally:
        tokens.close()


def trusting(bundle_pem: str, *, client_chain: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=bundle_pem)
    context.check_hostname = False
    if client_chain is not None:
        context.load_cert_chain(*client_chain)
    return context


def call(
    port: int,
    method: str,
    path: str,
    context: ssl.SSLContext,
    *,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One blocking HTTPS request to the CA: (status, headers, body)."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        payload = raw if raw is not None else (json.dumps(body).encode() if body else None)
        connection.request(method, path, body=payload, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def world_readable(path: Path) -> None:
    os.chmod(path, 0o644)


def openssl_verify(
    directory: Path, *, leaf_pem: str, intermediate_pem: str, bundle_pem: str, purpose: str
) -> subprocess.CompletedProcess[str]:
    """``openssl verify`` of a leaf against the bundle, with its intermediate untrusted."""
    paths = {"leaf": leaf_pem, "intermediate": intermediate_pem, "bundle": bundle_pem}
    for name, pem in paths.items():
        (directory / f"{name}.pem").write_text(pem)
    return subprocess.run(
        [
            "openssl", "verify", "-purpose", purpose,
            "-CAfile", str(directory / "bundle.pem"),
            "-untrusted", str(directory / "intermediate.pem"),
            str(directory / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
