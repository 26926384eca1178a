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
from typing import Any, Self

from meshkit.ca.x509 import IssuedIdentity
from meshkit.errors import MeshError
from meshkit.tls import TLSMaterial, client_context

_SERVING = re.compile(r"serving mTLS on (?P<host>\S+):(?P<port>\d+), admin on \S+:(?P<admin>\d+)")
_CA = re.compile(r"listening on https://(?P<host>[^:]+):(?P<port>\d+)")
_REGISTRY = re.compile(r"serving the Consul HTTP API on http://(?P<host>[^:/]+):(?P<port>\d+)")


class MeshProcess:
    """A ``python -m meshkit ...`` subprocess, ready once a line matches ``ready``.

    Output of both streams is kept in ``lines``; ``match`` holds the ready line's match.
    """

    def __init__(
        self,
        args: list[str],
        *,
        ready: re.Pattern[str],
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = args
        self.ready = ready
        self.name = name
        self.env = dict(env or {})
        self.cwd = cwd
        self.lines: list[str] = []
        self.match: re.Match[str] | None = None
        self._process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    @property
    def process(self) -> subprocess.Popen[str]:
        if self._process is None:
            raise MeshError(f"{self.name} was not started")
        return self._process

    def start(self, *, timeout: float = 30.0) -> MeshProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self._ready.clear()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "meshkit", *self.args],
            env=env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for stream in (self._process.stdout, self._process.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise MeshError(f"{self.name} did not start:\n" + "\n".join(self.lines[-20:]))
        return self

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            match = self.ready.search(line)
            if match and not self._ready.is_set():
                self.match = match
                self._ready.set()
        stream.close()

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: the process vanishes without cleaning up (a crash)."""
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

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class RegistryProcess(MeshProcess):
    """``meshkit registry serve`` on an ephemeral port; ``address`` is host:port."""

    def __init__(self, *, env: Mapping[str, str] | None = None) -> None:
        super().__init__(
            ["registry", "serve", "--port", "0"], ready=_REGISTRY, name="registry", env=env
        )

    @property
    def address(self) -> str:
        assert self.match is not None
        return f"{self.match['host']}:{self.match['port']}"


class CAProcess(MeshProcess):
    """``meshkit ca serve --dir DIR`` (extra ``args``, e.g. ``--dev``); ``url`` once started.

    ``port`` 0 picks an ephemeral port; restart it on the same ``port`` to bring the same
    CA back at the same address.
    """

    def __init__(self, directory: Path, *args: str, port: int = 0) -> None:
        self.directory = directory
        self.extra_args = args
        super().__init__([], ready=_CA, name="ca")
        self._bind(port)

    def _bind(self, port: int) -> None:
        self.args = ["ca", "serve", "--dir", str(self.directory), "--port", str(port)]
        self.args.extend(self.extra_args)

    def start(self, *, timeout: float = 30.0) -> CAProcess:
        super().start(timeout=timeout)
        self._bind(self.port)  # a restart comes back on the same port
        return self

    @property
    def port(self) -> int:
        assert self.match is not None
        return int(self.match["port"])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


class ServiceProcess(MeshProcess):
    """``meshkit run MODULE:APP`` on ephemeral ports: ``port`` and ``admin_port`` once started.

    With ``identity``, its certificate files are written under ``identity_dir/service``.
    ``registry`` is the registry's host:port; without it the instance joins no registry.
    """

    def __init__(
        self,
        target: str,
        *,
        service: str,
        identity: IssuedIdentity | None = None,
        identity_dir: Path | None = None,
        registry: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        settings_env = {"MESHKIT_SERVICE": service, "CONSUL_HTTP_ADDR": registry or ""}
        if identity is not None:
            if identity_dir is None:
                raise ValueError("identity_dir is required with identity")
            cert, key, bundle = identity.write(identity_dir / service)
            settings_env.update(
                MESHKIT_CERT_FILE=str(cert),
                MESHKIT_KEY_FILE=str(key),
                MESHKIT_BUNDLE_FILE=str(bundle),
            )
        super().__init__(
            ["run", target, "--log-level", "info"],
            ready=_SERVING,
            name=service,
            env={**settings_env, **(env or {})},
            cwd=cwd,
        )
        self.service = service

    @property
    def port(self) -> int:
        assert self.match is not None
        return int(self.match["port"])

    @property
    def admin_port(self) -> int:
        assert self.match is not None
        return int(self.match["admin"])


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
