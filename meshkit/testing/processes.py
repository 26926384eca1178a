"""Run real mesh processes inside your own tests.

``Mesh`` is a whole test mesh: a test CA, a dev registry and the service instances
you start in it, on 127.0.0.1 ephemeral ports, all stopped when it closes. The
``mesh`` pytest fixture (``meshkit.testing.pytest_plugin``, loaded automatically wherever
meshkit is installed) yields one per test.

``ServiceProcess`` starts ``meshkit run MODULE:APP`` as a subprocess on ephemeral
ports, waits until it serves, and always stops it. ``Connection`` is a blocking
mTLS HTTP/1.1 client presenting a chosen identity, for calling services from tests.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from meshkit.ca.x509 import IssuedIdentity, LocalAuthority
from meshkit.errors import MeshError
from meshkit.settings import Faults
from meshkit.testing.supervisor import Child
from meshkit.tls import TLSMaterial, client_context

_SERVING = re.compile(
    r"serving mTLS(?: and plaintext \(permissive\))? on (?P<host>\S+):(?P<port>\d+), "
    r"admin on \S+:(?P<admin>\d+)"
)
_CA = re.compile(r"listening on https://(?P<host>[^:]+):(?P<port>\d+)")
_REGISTRY = re.compile(r"serving the Consul HTTP API on http://(?P<host>[^:/]+):(?P<port>\d+)")


class MeshProcess:
    """A ``python -m meshkit ...`` subprocess, ready once a line of its output matches
    ``ready``; ``match`` holds that match. It runs in a process group of its own (a
    ``meshkit.testing.supervisor.Child``), so stopping it stops whatever it started too.

    ``lines`` is its output so far, stdout and stderr together.
    """

    def __init__(
        self,
        args: list[str],
        *,
        ready: re.Pattern[str],
        name: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        nofile: int | None = None,
    ) -> None:
        self.args = args
        self.nofile = nofile
        self.ready = ready
        self.name = name
        self.env = dict(env or {})
        self.cwd = cwd
        self.match: re.Match[str] | None = None
        self._child: Child | None = None

    @property
    def child(self) -> Child:
        if self._child is None:
            raise MeshError(f"{self.name} was not started")
        return self._child

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.child.process

    @property
    def lines(self) -> list[str]:
        return [] if self._child is None else self._child.text().splitlines()

    def start(self, *, timeout: float = 30.0) -> Self:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        argv = [sys.executable, "-m", "meshkit", *self.args]
        if self.nofile is not None:  # soft and hard: the process cannot raise it
            argv = ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--", *argv]
        self._child = Child.spawn(self.name, argv, env=env, cwd=self.cwd)
        try:
            self.match = self._child.wait_for(self.ready, timeout=timeout)
        except MeshError:
            self.stop()
            raise
        return self

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: the process vanishes without cleaning up (a crash)."""
        self.child.kill()

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout``; its exit code."""
        return None if self._child is None else self._child.stop(timeout)

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
    """``meshkit registry serve`` on an ephemeral port (extra ``args``); ``address`` is
    host:port. ``data_dir``: its state is kept there (``--data-dir``), so a restart keeps it."""

    def __init__(
        self, *args: str, env: Mapping[str, str] | None = None, data_dir: Path | None = None
    ) -> None:
        argv = ["registry", "serve", "--port", "0", *args]
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        super().__init__(argv, ready=_REGISTRY, name="registry", env=env)

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

    def start(self, *, timeout: float = 30.0) -> Self:
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
        nofile: int | None = None,
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
            nofile=nofile,
        )
        self.service = service
        self.identity = identity

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

    def get(self, path: str, *, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        """GET ``path``: the status and the JSON body (``None`` when empty)."""
        return self.request("GET", path, headers=headers)

    def request(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        """``method path`` without a body: the status and the JSON body (or ``None``)."""
        self.http.request(method, path, headers=dict(headers or {}))
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


def connect_leaf(registry: str, service: str) -> TLSMaterial:
    """``service``'s identity from the registry's Consul Connect CA: the agent's leaf for it
    (``/v1/agent/connect/ca/leaf``) and every trusted root."""
    port = int(registry.rpartition(":")[2])
    leaf = json.loads(_registry_get(port, f"/v1/agent/connect/ca/leaf/{service}"))
    roots = json.loads(_registry_get(port, "/v1/agent/connect/ca/roots"))
    bundle = "".join(root["RootCert"] for root in roots["Roots"])
    return TLSMaterial(leaf["CertPEM"], leaf["PrivateKeyPEM"], bundle)


def _registry_get(port: int, path: str) -> bytes:
    status, body = admin_get(port, path)
    if status != 200:
        raise MeshError(f"registry answered {status} to {path}: {body[:200]!r}")
    return body


class Mesh:
    """A test mesh: ``authority`` (a test CA), ``registry`` (a dev registry process) and
    the ``ServiceProcess`` instances ``start`` adds. Use it as a context manager (the
    ``mesh`` fixture does): leaving it closes every connection and stops every process.
    ``registry_args`` are extra ``meshkit registry serve`` flags.

    ``identity="consul"``: instances get their identity from the registry's Connect CA
    (``MESHKIT_IDENTITY=consul``) instead of certificate files from ``authority``, and
    ``connect`` presents a Connect leaf.
    """

    def __init__(
        self,
        directory: Path,
        *,
        trust_domain: str = "meshkit.local",
        registry_args: Sequence[str] = (),
        identity: Literal["files", "consul"] = "files",
    ) -> None:
        self.directory = directory
        self.identity = identity
        self.authority = LocalAuthority(trust_domain)
        self.registry = RegistryProcess(*registry_args)
        self.processes: list[ServiceProcess] = []
        self._connections: list[Connection] = []

    def __enter__(self) -> Self:
        self.registry.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
        # Callers before callees: the reverse of the order they were started in.
        for process in reversed(self.processes):
            process.stop()
        self.registry.stop()

    def start(
        self,
        target: str,
        service: str,
        *,
        instances: int = 1,
        env: Mapping[str, str] | None = None,
        namespace: str = "default",
        faults: str | None = None,
        timeout: float = 30.0,
    ) -> list[ServiceProcess]:
        """``meshkit run target`` as ``instances`` instances of ``service``.

        Each gets a certificate from ``authority``; this returns once every instance is
        registered and passing, so callers find them at once. ``faults`` (a
        ``MESHKIT_FAULTS`` spec, e.g. ``"abort=503,percent=50"``: see ``Faults``) are
        injected into the requests they serve; ``env`` adds or overrides variables.
        """
        if faults is not None:
            Faults.parse(faults)  # a typo fails here, not in a process's output
        started = [self._spawn(target, service, namespace, env, faults) for _ in range(instances)]
        for process in started:
            process.start(timeout=timeout)
        for process in started:
            self._wait_until_passing(process, timeout)
        return started

    def _spawn(
        self,
        target: str,
        service: str,
        namespace: str,
        env: Mapping[str, str] | None,
        faults: str | None,
    ) -> ServiceProcess:
        home = self.directory / f"{service}-{len(self.processes) + 1}"
        mesh_env = {
            "MESHKIT_TRUST_DOMAIN": self.authority.trust_domain,
            "MESHKIT_NAMESPACE": namespace,
            "MESHKIT_DATA_DIR": str(home),
            "MESHKIT_DEREGISTER_DELAY": "0",  # no watcher to wait for when a test ends
            "MESHKIT_DRAIN_TIMEOUT": "5",
        }
        if faults is not None:
            mesh_env["MESHKIT_FAULTS"] = faults
        identity = None
        if self.identity == "consul":
            mesh_env["MESHKIT_IDENTITY"] = "consul"
        else:
            identity = self.authority.issue(service, namespace=namespace)
        process = ServiceProcess(
            target,
            service=service,
            identity=identity,
            identity_dir=home,
            registry=self.registry.address,
            env={**mesh_env, **(env or {})},
        )
        self.processes.append(process)  # owned from now on, even if it fails to start
        return process

    def _wait_until_passing(self, process: ServiceProcess, timeout: float) -> None:
        port = int(self.registry.address.rpartition(":")[2])
        path = f"/v1/health/service/{process.service}?passing"

        def passing() -> bool:
            status, body = admin_get(port, path)
            return status == 200 and any(
                entry["Service"]["Port"] == process.port for entry in json.loads(body)
            )

        process.child.wait_until(passing, timeout=timeout)

    def connect(
        self,
        process: ServiceProcess,
        as_: str | None = "tester",
        *,
        namespace: str | None = None,
        timeout: float = 10.0,
    ) -> Connection:
        """A connection to ``process`` presenting a certificate for service ``as_`` (in
        ``namespace``, by default the process's own), or none when ``as_`` is None."""
        if self.identity == "consul" and as_ is not None:
            context = client_context(connect_leaf(self.registry.address, as_))
        else:
            context = self._authority_context(process, as_, namespace)
        connection = Connection(process.port, context, timeout=timeout)
        self._connections.append(connection)
        return connection

    def _authority_context(
        self, process: ServiceProcess, as_: str | None, namespace: str | None
    ) -> ssl.SSLContext:
        identity = None
        if as_ is not None:
            if namespace is None:
                own = process.identity.spiffe_id.namespace if process.identity else None
                namespace = own or "default"
            identity = self.authority.issue(as_, namespace=namespace)
        return context_for(identity, self.authority.bundle_pem)

    def kill(self, process: ServiceProcess) -> None:
        """SIGKILL ``process``: it vanishes without deregistering, as in a crash."""
        process.kill()
