"""The dev registry's Connect endpoints through py-consul, unchanged, over real HTTP: the
fields, codes and blocking behaviour Consul's (structs.IndexedCARoots, structs.IssuedCert,
structs.CAConfiguration, agent/self) have. Where py-consul has no wrapper, or its wrapper
takes no blocking parameters, the test goes through py-consul's own ``client.http``."""

from __future__ import annotations

import threading
import time
from typing import Any

import consul
import pytest
from consul.callback import CB
from cryptography import x509

from meshkit.ca.x509 import new_private_key, private_key_pem
from meshkit.identity import identity_from_certificate
from tests.registry.conftest import ThreadedRegistry
from tests.registry.dev.helpers import raw

ROOT_FIELDS = {
    "ID",
    "Name",
    "SerialNumber",
    "SigningKeyID",
    "ExternalTrustDomain",
    "NotBefore",
    "NotAfter",
    "RootCert",
    "IntermediateCerts",
    "Active",
    "PrivateKeyType",
    "PrivateKeyBits",
    "CreateIndex",
    "ModifyIndex",
}
LEAF_FIELDS = {
    "SerialNumber",
    "CertPEM",
    "PrivateKeyPEM",
    "Service",
    "ServiceURI",
    "ValidAfter",
    "ValidBefore",
    "CreateIndex",
    "ModifyIndex",
}


def _blocking(client: Any, path: str, index: int, wait: str = "10s") -> tuple[int, Any]:
    params = [("index", str(index)), ("wait", wait)]
    raw_index, body = client.http.get(CB.json(index=True), path, params=params)
    return int(raw_index), body


def _rotate(client: Any) -> None:
    config = {"PrivateKey": private_key_pem(new_private_key())}
    assert client.connect.ca.update_configuration("consul", config)


def test_roots_have_consuls_fields_and_one_active_root(client: Any) -> None:
    roots = client.agent.connect.ca.roots()
    assert set(roots) == {"ActiveRootID", "TrustDomain", "Roots"}
    assert roots["TrustDomain"].endswith(".consul")
    (root,) = [r for r in roots["Roots"] if r["Active"]]
    assert set(root) >= ROOT_FIELDS
    assert root["ID"] == roots["ActiveRootID"]
    cert = x509.load_pem_x509_certificate(root["RootCert"].encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # The server endpoint answers the same, and the PEM chain on ?pem=true.
    assert client.connect.ca.roots() == roots
    status, pem = raw(_served(client), "GET", "/v1/connect/ca/roots?pem=true")
    assert status == 200 and pem.count("BEGIN CERTIFICATE") == len(roots["Roots"])


def _served(client: Any) -> Any:
    class Address:
        address = f"{client.http.host}:{client.http.port}"

    return Address()


def test_leaf_carries_consuls_spiffe_id_signed_by_the_active_root(client: Any) -> None:
    roots = client.agent.connect.ca.roots()
    leaf = client.agent.connect.ca.leaf("web")
    assert set(leaf) == LEAF_FIELDS
    uri = f"spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/web"
    assert leaf["Service"] == "web" and leaf["ServiceURI"] == uri
    cert = x509.load_pem_x509_certificate(leaf["CertPEM"].encode())
    assert str(identity_from_certificate(cert)) == uri
    active = next(r for r in roots["Roots"] if r["Active"])
    root = x509.load_pem_x509_certificate(active["RootCert"].encode())
    cert.verify_directly_issued_by(root)
    # Cached: the same leaf until renewal or rotation.
    assert client.agent.connect.ca.leaf("web")["SerialNumber"] == leaf["SerialNumber"]


def test_rotation_cross_signs_and_wakes_blocked_leaf_and_roots_queries(
    own_registry: ThreadedRegistry,
) -> None:
    client = own_registry.client()
    leaf_index, leaf = _blocking(client, "/v1/agent/connect/ca/leaf/web", 0)
    roots_index, roots = _blocking(client, "/v1/agent/connect/ca/roots", 0)
    answers: dict[str, tuple[int, Any]] = {}

    def watch(name: str, path: str, index: int) -> None:
        answers[name] = _blocking(client, path, index, wait="30s")

    watchers = [
        threading.Thread(target=watch, args=("leaf", "/v1/agent/connect/ca/leaf/web", leaf_index)),
        threading.Thread(target=watch, args=("roots", "/v1/agent/connect/ca/roots", roots_index)),
    ]
    for thread in watchers:
        thread.start()
    time.sleep(0.3)  # both parked
    assert not answers
    _rotate(client)
    for thread in watchers:
        thread.join(timeout=10)
    new_roots = answers["roots"][1]
    assert answers["roots"][0] > roots_index
    old, new = new_roots["Roots"]
    assert (old["Active"], new["Active"]) == (False, True)
    assert old["ID"] == roots["ActiveRootID"] and new_roots["ActiveRootID"] == new["ID"]
    new_leaf = answers["leaf"][1]
    assert answers["leaf"][0] > leaf_index and new_leaf["SerialNumber"] != leaf["SerialNumber"]
    # The new leaf's chain: leaf, then the new root cross-signed by the old root.
    leaf_cert, cross = x509.load_pem_x509_certificates(new_leaf["CertPEM"].encode())
    old_root = x509.load_pem_x509_certificate(old["RootCert"].encode())
    new_root = x509.load_pem_x509_certificate(new["RootCert"].encode())
    leaf_cert.verify_directly_issued_by(new_root)
    leaf_cert.verify_directly_issued_by(cross)
    cross.verify_directly_issued_by(old_root)
    (intermediate,) = new["IntermediateCerts"]
    assert x509.load_pem_x509_certificate(intermediate.encode()) == cross


def test_leaf_blocking_query_returns_at_renewal(own_registry: ThreadedRegistry) -> None:
    client = own_registry.client()
    assert client.connect.ca.update_configuration(
        "consul", {"LeafCertTTL": "2s", "SkipValidate": True}
    )
    index, leaf = _blocking(client, "/v1/agent/connect/ca/leaf/api", 0)
    started = time.monotonic()
    new_index, renewed = _blocking(client, "/v1/agent/connect/ca/leaf/api", index, wait="30s")
    # Renewed at 60-90% of its 2 s life: long before the 30 s wait.
    assert time.monotonic() - started < 10
    assert new_index > index and renewed["SerialNumber"] != leaf["SerialNumber"]


def test_configuration_get_and_validation(client: Any) -> None:
    config = client.connect.ca.configuration()
    assert config["Provider"] == "consul"
    assert config["Config"]["LeafCertTTL"] == "72h"
    assert "PrivateKey" not in config["Config"]
    with pytest.raises(consul.ConsulException, match="leaf cert TTL must be greater"):
        client.connect.ca.update_configuration("consul", {"LeafCertTTL": "5m"})
    with pytest.raises(consul.ConsulException, match="Unknown CA provider"):
        client.connect.ca.update_configuration("vault", {})
    # A configuration change without a new key keeps the root.
    active = client.agent.connect.ca.roots()["ActiveRootID"]
    assert client.connect.ca.update_configuration("consul", {"LeafCertTTL": "24h"})
    assert client.connect.ca.configuration()["Config"]["LeafCertTTL"] == "24h"
    assert client.agent.connect.ca.roots()["ActiveRootID"] == active
    client.connect.ca.update_configuration("consul", {"LeafCertTTL": "72h"})


def test_connect_native_and_sidecar_instances(client: Any) -> None:
    client.agent.service.register("db", service_id="db-1", port=5432, connect={"Native": True})
    client.agent.service.register("plain", service_id="plain-1", port=80)
    client.agent.service.register(
        "plain-sidecar-proxy",
        service_id="plain-sidecar-1",
        port=21000,
        kind="connect-proxy",
        proxy={"DestinationServiceName": "plain", "LocalServicePort": 80},
    )
    assert client.agent.services()["db-1"]["Connect"] == {"Native": True}
    _, db = client.catalog.connect("db")
    assert [(e["ServiceID"], e["ServiceConnect"]) for e in db] == [("db-1", {"Native": True})]
    _, plain = client.health.connect("plain")
    assert [e["Service"]["ID"] for e in plain] == ["plain-sidecar-1"]
    assert plain[0]["Service"]["Proxy"]["DestinationServiceName"] == "plain"
    _, not_connect = client.catalog.connect("nothing")
    assert not_connect == []


def test_agent_self_reports_connect_xds_and_leader(client: Any) -> None:
    me = client.agent.self()
    assert me["DebugConfig"]["ConnectEnabled"] is True
    assert me["DebugConfig"]["Datacenter"] == me["Config"]["Datacenter"]
    assert set(me["xDS"]) == {"SupportedProxies", "Port", "Ports"}
    assert me["Stats"]["consul"]["leader_addr"] == client.status.leader()


def test_health_query_for_a_peer_finds_no_instances(client: Any) -> None:
    client.agent.service.register("web", service_id="web-1", port=80)
    assert len(client.health.service("web")[1]) == 1
    _, imported = client.health.service("web", peer="other-cluster")
    assert imported == []
