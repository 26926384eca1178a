"""Run real mesh processes inside your own tests.

``ServiceProcess`` starts ``meshkit run MODULE:APP`` as a subprocess on ephemeral
ports, waits until it serves, and always stops it. ``Connection`` is a blocking
mTLS HTTP/1.1 client presenting a chosen identity, for calling services from tests.
"""

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
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from meshkit.ca.x509 import IssuedIdentity
from meshkit.errors import MeshError
from meshkit.tls import TLSMaterial, client_context

_SERVING = re.compile(r"serving mTLS on (?P<host>\S+):(?P<port>\d+), admin on \S+:(?P<admin>\d+)")


class ServiceProcess:
    """``meshkit run`` in a subprocess: ``port`` and ``admin_port`` once started."""

    def __init__(
        self,
        target: str,
        *,
        service: str,
        identity: IssuedIdentity | None = None,
        identity_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.target = target
        self.service = service
        self.env = dict(env or {})
        self.cwd = cwd
        if identity is not None:
            if identity_dir is None:
                raise ValueError("identity_dir is required with identity")
            cert, key, bundle = identity.write(identity_dir / service)
            self.env.update(
                MESHKIT_CERT_FILE=str(cert),
                MESHKIT_KEY_FILE=str(key),
                MESHKIT_BUNDLE_FILE=str(bundle),
            )
        self.lines: list[str] = []
        self.port = 0
        self.admin_port = 0
        self._process: subprocess.Popen[str] | None = None
        self._serving = threading.Event()

    @property
    def process(self) -> subprocess.Popen[str]:
        if self._process is None:
            raise MeshError(f"{self.service} was not started")
        return self._process

    def start(self, *, timeout: float = 30.0) -> ServiceProcess:
        env = {**os.environ, "MESHKIT_SERVICE": self.service, **self.env}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "meshkit", "run", self.target, "--log-level", "info"],
            env=env,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._serving.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise MeshError(f"{self.service} did not start:\n" + "\n".join(self.lines[-20:]))
        return self

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            match = _SERVING.search(line)
            if match and not self._serving.is_set():
                self.port = int(match["port"])
                self.admin_port = int(match["admin"])
                self._serving.set()

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: the instance vanishes without deregistering (a crash)."""
        self.signal(signal.SIGKILL)
        self.process.wait()

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout``."""
        if self._process is None or self._process.poll() is not None:
            return None if self._process is None else self._process.returncode
        self._process.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def context_for(identity: IssuedIdentity | None, bundle_pem: str) -> ssl.SSLContext:
    """A client context presenting ``identity`` (or no certificate) and trusting the bundle."""
    if identity is not None:
        return client_context(TLSMaterial(identity.chain_pem, identity.key_pem, bundle_pem))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=bundle_pem)
    return context


class Connection:
    """One keep-alive connection to 127.0.0.1:port."""

    def __init__(self, port: int, context: ssl.SSLContext, *, timeout: float = 10.0) -> None:
        self.http = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=timeout)

    def get(self, path: str) -> tuple[int, Any]:
        self.http.request("GET", path)
        response = self.http.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else None

    def server_serial(self) -> int:
        sock = self.http.sock
        assert isinstance(sock, ssl.SSLSocket)
        return int(sock.getpeercert()["serialNumber"], 16)  # type: ignore[index, arg-type]

    def close(self) -> None:
        self.http.close()


def admin_get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
