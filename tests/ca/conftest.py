from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshkit.ca.store import CAStore, init_ca
from meshkit.ca.tokens import TokenStore
from meshkit.identity import SpiffeId

TRUST_DOMAIN = "example.org"
_LISTENING = re.compile(r"listening on https://(?P<host>[^:]+):(?P<port>\d+)")


class CAProcess:
    """``python -m meshkit ca serve`` in a subprocess; always stopped by its fixture."""

    def __init__(self, directory: Path, *args: str, port: int = 0) -> None:
        self.directory = directory
        self.args = args
        self.port = port
        self.stderr: list[str] = []
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> CAProcess:
        command = [sys.executable, "-m", "meshkit", "ca", "serve", "--dir", str(self.directory)]
        process = subprocess.Popen(
            [*command, "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._process = process
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        for line in process.stdout:
            match = _LISTENING.search(line)
            if match:
                self.port = int(match["port"])
                threading.Thread(target=process.stdout.read, daemon=True).start()
                return self
            if time.monotonic() > deadline:
                break
        self.stop()
        raise RuntimeError("CA did not start:\n" + "\n".join(self.stderr))

    def _drain_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self.stderr.append(line.rstrip("\n"))

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def ca_store(tmp_path_factory: pytest.TempPathFactory) -> CAStore:
    return init_ca(tmp_path_factory.mktemp("ca") / "ca", TRUST_DOMAIN)


@pytest.fixture(scope="module")
def ca_server(ca_store: CAStore) -> Iterator[CAProcess]:
    process = CAProcess(ca_store.directory).start()
    yield process
    process.stop()


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
