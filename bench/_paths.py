"""The paths under test: each starts its processes and says exactly what a request crosses.

Every path ends in the same ``/hello`` endpoint (bench/_endpoint.py) and is driven by the
same load generator (bench/_loadgen.py). A path's *data-plane* processes are the ones
whose CPU is charged to it; CA and registry (M's control plane) are reported apart,
as istiod would be for C.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from bench._envoy import Identity, client_sidecar_config, server_sidecar_config, start_envoy
from bench._procs import ROOT, http_get, port_open, spawn, wait_until
from meshkit.ca.x509 import LocalAuthority, new_private_key, private_key_pem, write_private
from meshkit.identity import SpiffeId
from meshkit.tls import TLSMaterial, client_context

TRUST_DOMAIN = "meshkit.local"
PYTHON = sys.executable
MESHKIT = (PYTHON, "-m", "meshkit")


@dataclass
class RunningPath:
    key: str
    contains: str
    url: str
    client: Identity | None
    processes: dict[str, int]
    control: dict[str, int] = field(default_factory=dict)


def spiffe(service: str) -> str:
    return str(SpiffeId.for_service(TRUST_DOMAIN, "default", service))


class Workspace:
    """Certificates (LocalAuthority), a trace sink, and M's control plane when it runs."""

    def __init__(self, directory: Path, stack: contextlib.ExitStack) -> None:
        self.directory = directory
        self.stack = stack
        self.authority = LocalAuthority(TRUST_DOMAIN)
        self._identities: dict[str, Identity] = {}
        self.trace_sink_port = start_trace_sink(stack)
        self.control: ControlPlane | None = None

    def identity(self, service: str) -> Identity:
        if service not in self._identities:
            issued = self.authority.issue(service)
            cert, key, bundle = issued.write(self.directory / "local" / service)
            self._identities[service] = Identity(cert, key, bundle)
        return self._identities[service]

    def mesh_env(self, service: str) -> dict[str, str]:
        """Everything on: strict mTLS, telemetry with 10% trace sampling exported over OTLP."""
        env = {
            "MESHKIT_DEREGISTER_DELAY": "0",
            "MESHKIT_TLS_MODE": "strict",
            "MESHKIT_ACCESS_LOG": "false",
            "MESHKIT_DATA_DIR": str(self.directory / "data" / service),
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": (
                f"http://127.0.0.1:{self.trace_sink_port}/v1/traces"
            ),
        }
        if self.control is None:
            identity = self.identity(service)
            env |= {
                "MESHKIT_CERT_FILE": str(identity.cert),
                "MESHKIT_KEY_FILE": str(identity.key),
                "MESHKIT_BUNDLE_FILE": str(identity.bundle),
            }
        else:
            env |= self.control.env_for(service)
        return env

    def edge_identity(self) -> Identity:
        """The load generator's certificate when it calls meshkit services."""
        if self.control is None:
            return self.identity("loadgen")
        return self.control.loadgen


def start_trace_sink(stack: contextlib.ExitStack) -> int:
    """An OTLP/HTTP endpoint that accepts and drops spans (a collector outside the path)."""

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stack.callback(server.server_close)
    stack.callback(server.shutdown)
    return int(server.server_address[1])


# -- bare uvicorn ------------------------------------------------------------------------


def start_uvicorn(
    ws: Workspace,
    name: str,
    *,
    tls: Identity | None,
    target: str = "bench._endpoint:app",
    env: dict[str, str] | None = None,
    wrapper: Sequence[str] = (),
    timeout: float = 30.0,
) -> tuple[int, int]:
    """The uvicorn CLI (uvloop, httptools) serving ``target`` on an ephemeral port;
    (pid, port). ``env`` adds to the environment (the bare caller's upstream);
    ``wrapper`` runs the interpreter under another program (valgrind), which may need
    more than ``timeout`` seconds to start.

    Not ``--fd``: uvicorn wraps an inherited descriptor as AF_UNIX, so its TCP
    connections lose TCP_NODELAY and stall ~40 ms on delayed ACKs.
    """
    argv = [*wrapper, PYTHON, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", "0"]
    argv += ["--loop", "uvloop", "--http", "httptools", "--lifespan", "on" if env else "off"]
    argv += ["--no-access-log", "--log-level", "info"]
    if tls is not None:
        argv += ["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
        argv += ["--ssl-ca-certs", str(tls.bundle), "--ssl-cert-reqs", str(int(ssl.CERT_REQUIRED))]
    log = ws.directory / f"{name}.log"
    process = spawn(ws.stack, argv, env=env, log=log)
    running = re.compile(r"Uvicorn running on https?://127\.0\.0\.1:(\d+)")
    wait_until(
        lambda: bool(running.search(log.read_text())),
        what=name,
        process=process,
        log=log,
        timeout=timeout,
    )
    port = int(running.search(log.read_text())[1])  # type: ignore[index]
    scheme = "https" if tls else "http"
    context = client_context(material(ws.identity("loadgen"))) if tls else None
    url = f"{scheme}://127.0.0.1:{port}/hello"
    wait_until(lambda: answers(url, context), what=name, process=process, log=log, timeout=timeout)
    return process.pid, port


def material(identity: Identity) -> TLSMaterial:
    return TLSMaterial.from_files(identity.cert, identity.key, identity.bundle)


def answers(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        return http_get(url, context=context)[0] == 200
    except OSError:
        return False


def start_a(ws: Workspace) -> RunningPath:
    pid, port = start_uvicorn(ws, "A-uvicorn", tls=None)
    return RunningPath(
        "A",
        "loadgen -> uvicorn (plaintext HTTP/1.1 keep-alive) -> Starlette endpoint",
        f"http://127.0.0.1:{port}/hello",
        None,
        {"uvicorn": pid},
    )


def start_b(ws: Workspace) -> RunningPath:
    pid, port = start_uvicorn(ws, "B-uvicorn", tls=ws.identity("callee"))
    return RunningPath(
        "B",
        "loadgen (client cert) -> uvicorn requiring client certs (mTLS, keep-alive) "
        "-> Starlette endpoint; no identity check, no telemetry, no policy",
        f"https://127.0.0.1:{port}/hello",
        ws.identity("loadgen"),
        {"uvicorn": pid},
    )


def start_sidecars(ws: Workspace, prefix: str, app_port: int) -> tuple[int, int, int]:
    """An Envoy pair in front of the app on ``app_port``, the client Envoy holding the
    caller's SVID, the server Envoy the callee's; (client pid, server pid, client port)."""
    server = start_envoy(
        ws.stack,
        f"{prefix}-envoy-server",
        server_sidecar_config(
            ws.identity("callee"), app_port=app_port, allowed_callers=[spiffe("caller")]
        ),
        ws.directory,
    )
    client = start_envoy(
        ws.stack,
        f"{prefix}-envoy-client",
        client_sidecar_config(
            ws.identity("caller"),
            upstream_port=server.port,
            upstream_id=spiffe("callee"),
            sni="outbound_.80_._.callee.default.svc.cluster.local",
        ),
        ws.directory,
    )
    return client.pid, server.pid, client.port


def start_c(ws: Workspace) -> RunningPath:
    app_pid, app_port = start_uvicorn(ws, "C-uvicorn", tls=None)
    client_pid, server_pid, client_port = start_sidecars(ws, "C", app_port)
    return RunningPath(
        "C",
        "loadgen -> client Envoy (plaintext, loopback) -> mTLS with SPIFFE SAN check -> "
        "server Envoy (RBAC allows caller) -> uvicorn (plaintext) -> Starlette endpoint",
        f"http://127.0.0.1:{client_port}/hello",
        None,
        {"envoy-client": client_pid, "envoy-server": server_pid, "uvicorn": app_pid},
    )


# -- the same two applications as M, without meshkit -------------------------------------


def start_bare_caller(
    ws: Workspace, name: str, upstream: str, env: dict[str, str] | None = None
) -> tuple[int, int]:
    """bench/_plain.py's caller on uvicorn with mTLS (the load generator's certificate),
    relaying to ``upstream`` through aiohttp."""
    env = {"BENCH_UPSTREAM_URL": upstream, **(env or {})}
    return start_uvicorn(ws, name, tls=ws.identity("caller"), target="bench._plain:caller", env=env)


def start_n(ws: Workspace) -> RunningPath:
    callee_pid, callee_port = start_uvicorn(ws, "N-callee", tls=ws.identity("callee"))
    caller = ws.identity("caller")
    tls = {
        "BENCH_UPSTREAM_CERT": str(caller.cert),
        "BENCH_UPSTREAM_KEY": str(caller.key),
        "BENCH_UPSTREAM_CA": str(caller.bundle),
    }
    upstream = f"https://127.0.0.1:{callee_port}/hello"
    caller_pid, caller_port = start_bare_caller(ws, "N-caller", upstream, tls)
    return RunningPath(
        "N",
        "loadgen (client cert) -> caller app (Starlette on uvicorn, mTLS) -> aiohttp with "
        "mTLS (keep-alive, no identity check) -> callee app (Starlette on uvicorn, mTLS); "
        "no telemetry, no policy, no discovery, no retries",
        f"https://127.0.0.1:{caller_port}/hello",
        ws.identity("loadgen"),
        {"caller": caller_pid, "callee": callee_pid},
    )


def start_s(ws: Workspace) -> RunningPath:
    callee_pid, callee_port = start_uvicorn(ws, "S-callee", tls=None)
    client_pid, server_pid, client_port = start_sidecars(ws, "S", callee_port)
    upstream = f"http://127.0.0.1:{client_port}/hello"
    caller_pid, caller_port = start_bare_caller(ws, "S-caller", upstream)
    return RunningPath(
        "S",
        "loadgen (client cert) -> caller app (Starlette on uvicorn, mTLS) -> aiohttp "
        "(plaintext, loopback) -> client Envoy -> mTLS with SPIFFE SAN check -> server "
        "Envoy (RBAC allows caller) -> callee app (Starlette on uvicorn, plaintext)",
        f"https://127.0.0.1:{caller_port}/hello",
        ws.identity("loadgen"),
        {
            "caller": caller_pid,
            "envoy-client": client_pid,
            "envoy-server": server_pid,
            "callee": callee_pid,
        },
    )


# -- meshkit -----------------------------------------------------------------------------


def start_service(ws: Workspace, target: str, service: str) -> tuple[int, int]:
    from meshkit.testing.processes import ServiceProcess

    process = ServiceProcess(target, service=service, env=ws.mesh_env(service), cwd=ROOT)
    ws.stack.callback(process.stop)
    process.start()
    return process.process.pid, process.port


def server_features() -> str:
    """What a ServiceApp's server side has on in this checkout (parts merge one by one)."""
    import importlib.util

    def merged(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    features = ["strict mTLS", "peer identity in scope"]
    features.append("telemetry" if merged("meshkit.middleware.telemetry") else "NO telemetry yet")
    features.append("@allow policy" if merged("meshkit.policy") else "NO @allow policy yet")
    return ", ".join(features)


def identity_source(ws: Workspace) -> str:
    if ws.control is None:
        return "certificates from files"
    return "certificate from the CA, registered in the registry"


def start_m1(ws: Workspace) -> RunningPath:
    # Its own service name, so that M's caller never balances onto this instance.
    pid, port = start_service(ws, "bench._apps:callee", "solo")
    return RunningPath(
        "M1",
        "loadgen (client cert 'loadgen') -> meshkit ServiceApp (the callee app, as service "
        f"'solo': {server_features()}; {identity_source(ws)}) -> Starlette endpoint; "
        "one Python process",
        f"https://127.0.0.1:{port}/hello",
        ws.edge_identity(),
        {"callee": pid},
        dict(ws.control.pids) if ws.control else {},
    )


def start_m(ws: Workspace) -> RunningPath:
    if ws.control is None:
        ws.control = ControlPlane.start(ws)
    callee_pid, _ = start_service(ws, "bench._apps:callee", "callee")
    caller_pid, caller_port = start_service(ws, "bench._apps:caller", "caller")
    return RunningPath(
        "M",
        f"loadgen (client cert 'loadgen') -> meshkit 'caller' ({server_features()}) -> mesh "
        "client (registry discovery, P2C, retries+budget, mTLS with SPIFFE check, traces at "
        "10%) -> meshkit 'callee' (the same server side) -> Starlette endpoint; CA-issued "
        "certificates",
        f"https://127.0.0.1:{caller_port}/hello",
        ws.edge_identity(),
        {"caller": caller_pid, "callee": callee_pid},
        dict(ws.control.pids),
    )


STARTERS: dict[str, Callable[[Workspace], RunningPath]] = {
    "A": start_a,
    "B": start_b,
    "C": start_c,
    "M1": start_m1,
    "M": start_m,
    "N": start_n,
    "S": start_s,
}


# -- M's control plane: `meshkit ca serve --dev` and `meshkit registry serve` -------------


def on_port(port: int) -> tuple[str, ...]:
    return ("--host", "127.0.0.1", "--port", str(port))


def meshkit_cli(*args: str) -> str:
    done = subprocess.run([*MESHKIT, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"meshkit {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1].strip()


@dataclass
class ControlPlane:
    ca_dir: Path
    ca_url: str
    fingerprint: str
    registry: str
    pids: dict[str, int]
    loadgen: Identity

    @classmethod
    def start(cls, ws: Workspace) -> ControlPlane:
        from bench._procs import free_port

        ca_dir = ws.directory / "ca"
        output = meshkit_cli("ca", "init", "--dir", str(ca_dir), "--trust-domain", TRUST_DOMAIN)
        fingerprint = next(w for w in output.split() if w.startswith("sha256:"))
        ca_port, registry_port = free_port(), free_port()
        ca = spawn(
            ws.stack,
            [*MESHKIT, "ca", "serve", "--dir", str(ca_dir), "--dev", *on_port(ca_port)],
            log=ws.directory / "ca.log",
        )
        registry = spawn(
            ws.stack,
            [*MESHKIT, "registry", "serve", *on_port(registry_port)],
            log=ws.directory / "registry.log",
        )
        for process, port, log in (
            (ca, ca_port, "ca.log"),
            (registry, registry_port, "registry.log"),
        ):
            wait_until(
                lambda port=port: port_open(port),  # type: ignore[misc]
                what=log.removesuffix(".log"),
                process=process,
                log=ws.directory / log,
            )
        ca_url = f"https://127.0.0.1:{ca_port}"
        plane = cls(
            ca_dir,
            ca_url,
            fingerprint,
            f"127.0.0.1:{registry_port}",
            {"ca": ca.pid, "registry": registry.pid},
            loadgen=Identity(Path(), Path(), Path()),
        )
        plane.loadgen = plane.issue_edge_identity(ws.directory / "ca-issued" / "loadgen")
        return plane

    def token(self, service: str) -> str:
        return last_line(
            meshkit_cli("ca", "token", "create", "--dir", str(self.ca_dir), "--service", service)
        )

    def env_for(self, service: str) -> dict[str, str]:
        return {
            "MESHKIT_CA_URL": self.ca_url,
            "MESHKIT_CA_FINGERPRINT": self.fingerprint,
            "MESHKIT_JOIN_TOKEN": self.token(service),
            "CONSUL_HTTP_ADDR": self.registry,
        }

    def issue_edge_identity(self, directory: Path) -> Identity:
        """A CA-signed SVID for the load generator: pinned bundle, local key, token + CSR."""
        bundle = directory / "bundle.pem"
        directory.mkdir(parents=True, exist_ok=True)
        meshkit_cli(
            "ca",
            "bootstrap",
            "--url",
            self.ca_url,
            "--fingerprint",
            self.fingerprint,
            "--out",
            str(bundle),
        )
        key = new_private_key()
        # The identity comes from the join token: the CSR asks for nothing but the key.
        builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        csr = builder.sign(key, hashes.SHA256())
        body = json.dumps({"csr": csr.public_bytes(serialization.Encoding.PEM).decode()})
        request = urllib.request.Request(
            f"{self.ca_url}/v1/sign",
            data=body.encode(),
            method="POST",
            headers={
                "content-type": "application/json",
                "authorization": f"Bearer {self.token('loadgen')}",
            },
        )
        context = ssl.create_default_context(cafile=str(bundle))
        context.check_hostname = False
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            signed = json.loads(response.read())
        cert, key_path = directory / "svid.pem", directory / "svid-key.pem"
        cert.write_text("".join(signed["chain"]))
        write_private(key_path, private_key_pem(key))
        return Identity(cert, key_path, bundle)
