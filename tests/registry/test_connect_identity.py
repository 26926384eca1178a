"""Consul-native identity end to end: services whose certificates come from the dev
registry's Connect CA (``MESHKIT_IDENTITY=consul``), with no meshkit CA process, real
processes and real mTLS; root rotation under load and leaf renewal."""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import consul
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from meshkit.ca.x509 import new_private_key, private_key_pem
from meshkit.testing import ServiceProcess
from meshkit.testing.processes import Connection, Mesh, connect_leaf
from meshkit.tls import client_context


@pytest.fixture
def consul_mesh(tmp_path: Path) -> Iterator[Mesh]:
    with Mesh(tmp_path, identity="consul") as mesh:
        yield mesh


def _client(mesh: Mesh) -> consul.Consul:
    host, _, port = mesh.registry.address.rpartition(":")
    return consul.Consul(host=host, port=int(port))


def _peer(connection: Connection) -> dict[str, object]:
    sock = connection.http.sock
    assert isinstance(sock, ssl.SSLSocket)
    return sock.getpeercert()  # type: ignore[return-value]


def _served_uri(connection: Connection) -> str:
    return next(v for k, v in _peer(connection)["subjectAltName"] if k == "URI")  # type: ignore[attr-defined]


def _issuer_cn(connection: Connection) -> str:
    issuer = dict(pair[0] for pair in _peer(connection)["issuer"])  # type: ignore[attr-defined]
    return str(issuer["commonName"])


def _served_issuer(mesh: Mesh, process: ServiceProcess) -> str:
    """The common name of the issuer of the leaf ``process`` serves a new connection."""
    connection = _fresh(mesh, process)
    try:
        return _issuer_cn(connection)
    finally:
        connection.close()


def _served_serial(mesh: Mesh, process: ServiceProcess) -> int:
    connection = _fresh(mesh, process)
    try:
        return connection.server_serial()
    finally:
        connection.close()


def _fresh(mesh: Mesh, process: ServiceProcess, as_: str = "tester") -> Connection:
    """A new connection (a new handshake) presenting ``as_``'s current Connect leaf."""
    context = client_context(connect_leaf(mesh.registry.address, as_))
    connection = Connection(process.port, context)
    connection.http.connect()
    return connection


def _active_root_cn(client: consul.Consul) -> str:
    roots = client.agent.connect.ca.roots()
    active = next(r for r in roots["Roots"] if r["Active"])
    cert = x509.load_pem_x509_certificate(active["RootCert"].encode())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _eventually(predicate: object, within: float = 15.0) -> float:
    """Seconds until ``predicate()`` holds (polled); fails after ``within``."""
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - start < within, "condition not reached in time"
        time.sleep(0.02)
    return time.monotonic() - start


def test_services_run_on_the_connect_ca_alone(consul_mesh: Mesh) -> None:
    """A caller and its upstream get leaves from the agent endpoint, verify each other with
    Consul's roots and SPIFFE IDs, and are registered Connect-native."""
    (upstream,) = consul_mesh.start("tests.apps.upstream:app", "upstream")
    (caller,) = consul_mesh.start("tests.apps.caller:app", "caller")
    client = _client(consul_mesh)
    trust_domain = client.agent.connect.ca.roots()["TrustDomain"]
    connection = consul_mesh.connect(caller)
    status, body = connection.get("/call")
    assert status == 200 and body["upstream"]["pid"] == upstream.process.pid
    assert _served_uri(connection) == f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/caller"
    # Connect-native in the catalog, as Consul's sidecars and UI look for it.
    _, native = client.catalog.connect("upstream")
    assert [entry["ServiceConnect"] for entry in native] == [{"Native": True}]
    _, healthy = client.health.connect("upstream", passing=True)
    assert [entry["Service"]["Port"] for entry in healthy] == [upstream.port]
    meta = healthy[0]["Service"]["Meta"]
    assert meta["spiffe_id"] == f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/upstream"


def test_consul_identity_is_chosen_when_the_agent_has_connect_enabled(
    consul_mesh: Mesh,
) -> None:
    """No certificate files, no CA URL, MESHKIT_IDENTITY unset: the agent's
    DebugConfig.ConnectEnabled decides."""
    (echo,) = consul_mesh.start("tests.apps.echo:app", "echo", env={"MESHKIT_IDENTITY": "auto"})
    trust_domain = _client(consul_mesh).agent.connect.ca.roots()["TrustDomain"]
    connection = consul_mesh.connect(echo, "web")
    assert connection.get("/whoami")[0] == 200
    assert _served_uri(connection) == f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/echo"


def test_echo_sees_the_callers_consul_identity(consul_mesh: Mesh) -> None:
    (echo,) = consul_mesh.start("tests.apps.echo:app", "echo")
    trust_domain = _client(consul_mesh).agent.connect.ca.roots()["TrustDomain"]
    status, body = consul_mesh.connect(echo, "web").get("/whoami")
    assert status == 200
    assert body["caller"] == f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/web"


def test_a_connect_member_obeys_consuls_intentions_by_default(consul_mesh: Mesh) -> None:
    """MESHKIT_INTENTIONS unset (auto): with Consul's identity come Consul's intentions,
    so an operator's `consul intention create -deny web echo` holds for meshkit too."""
    (echo,) = consul_mesh.start("tests.apps.echo:app", "echo")
    connection = consul_mesh.connect(echo, "web")
    assert connection.get("/whoami")[0] == 200  # Consul's default (allow) until told
    sources = [{"Name": "web", "Action": "deny"}]
    assert _client(consul_mesh).config.set("service-intentions", "echo", {"Sources": sources})
    _eventually(lambda: connection.get("/whoami")[0] == 403, within=5)
    assert consul_mesh.connect(echo, "other").get("/whoami")[0] == 200


class _Load:
    """Requests through ``caller`` in a thread until stopped: keep-alive requests on one
    connection, and every tenth request on a new connection with a freshly fetched leaf
    (new handshakes against whatever roots and leaves are current)."""

    def __init__(self, mesh: Mesh, caller: ServiceProcess) -> None:
        self.mesh, self.caller = mesh, caller
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        kept = _fresh(self.mesh, self.caller)
        sent = 0
        while not self._stop.is_set() and sent < 20_000:
            fresh = sent % 10 == 0
            connection = _fresh(self.mesh, self.caller) if fresh else kept
            try:
                status, _ = connection.get("/call")
                self.outcomes[str(status)] += 1
            except (OSError, ssl.SSLError) as exc:
                self.outcomes[type(exc).__name__] += 1
            if fresh:
                connection.close()
            sent += 1
        kept.close()


def test_root_rotation_under_load_fails_no_request(consul_mesh: Mesh) -> None:
    """A new root through PUT /v1/connect/ca/configuration: new leaves are cross-signed
    to the old root, both roots are trusted during the overlap, and no request fails."""
    upstream = consul_mesh.start("tests.apps.upstream:app", "upstream", instances=2)
    (caller,) = consul_mesh.start("tests.apps.caller:app", "caller")
    client = _client(consul_mesh)
    old_root = _active_root_cn(client)
    before_rotation = connect_leaf(consul_mesh.registry.address, "tester")
    with _Load(consul_mesh, caller) as load:
        _eventually(lambda: load.outcomes["200"] >= 20)
        key = private_key_pem(new_private_key())
        assert client.connect.ca.update_configuration("consul", {"PrivateKey": key})
        new_root = _active_root_cn(client)
        assert new_root != old_root
        # Each service serves a leaf of the new root to new connections.
        for process in (*upstream, caller):
            took = _eventually(lambda p=process: _served_issuer(consul_mesh, p) == new_root)
            print(f"{process.service} serves the new root's leaf {took:.2f}s after the PUT")
        # A peer that still has only the old root and an old leaf: it verifies the new
        # leaves through the cross-signed certificate, and is verified with the old root.
        late = Connection(upstream[0].port, client_context(before_rotation))
        assert late.get("/work")[0] == 200
        assert _issuer_cn(late) == new_root
        late.close()
        before = load.outcomes["200"]
        _eventually(lambda: load.outcomes["200"] >= before + 50)
    print(f"requests during the rotation: {dict(load.outcomes)}")
    assert set(load.outcomes) == {"200"}, load.outcomes
    roots = client.agent.connect.ca.roots()["Roots"]
    assert [root["Active"] for root in roots] == [False, True]  # the old one still trusted


def test_leaf_renewal_is_picked_up_and_open_connections_keep_working(
    consul_mesh: Mesh,
) -> None:
    client = _client(consul_mesh)
    config = {"LeafCertTTL": "4s", "SkipValidate": True}  # as Consul's own tests shorten it
    assert client.connect.ca.update_configuration("consul", config)
    (upstream,) = consul_mesh.start("tests.apps.upstream:app", "upstream")
    kept = _fresh(consul_mesh, upstream)
    assert kept.get("/work")[0] == 200
    first = kept.server_serial()
    # The agent renews at 60-90% of the 4 s life; new handshakes get the new leaf.
    took = _eventually(lambda: _served_serial(consul_mesh, upstream) != first)
    print(f"renewed leaf in use {took:.2f}s after the first check")
    assert kept.get("/work")[0] == 200  # the connection made with the old leaf still works
    assert kept.server_serial() == first
