from __future__ import annotations

import pytest

from meshkit.ca.x509 import LocalAuthority
from meshkit.errors import IdentityError
from meshkit.identity import (
    SpiffeId,
    identity_from_certificate,
    identity_from_peercert,
    peer_identity,
)


def test_round_trip_service_id() -> None:
    spiffe_id = SpiffeId.parse("spiffe://prod.example/ns/shop/svc/payments")
    assert spiffe_id.trust_domain == "prod.example"
    assert spiffe_id.namespace == "shop"
    assert spiffe_id.service == "payments"
    assert str(spiffe_id) == "spiffe://prod.example/ns/shop/svc/payments"
    assert SpiffeId.for_service("prod.example", "shop", "payments") == spiffe_id


def test_consul_forms_name_the_same_workload() -> None:
    consul = SpiffeId.parse("spiffe://11111111-2222.consul/ns/shop/dc/dc1/svc/payments")
    assert (consul.namespace, consul.service) == ("shop", "payments")
    assert (consul.datacenter, consul.partition) == ("dc1", None)
    assert consul == SpiffeId.for_consul_service("11111111-2222.consul", "shop", "dc1", "payments")
    ours = SpiffeId.for_service("11111111-2222.consul", "shop", "payments")
    assert consul != ours  # equality stays exact; same_workload is the matching rule
    assert ours.same_workload(consul) and consul.same_workload(ours)
    assert consul.service_in("11111111-2222.consul", "shop") == "payments"
    assert consul.service_in("11111111-2222.consul", "other") is None
    assert consul.service_in("other.consul", "shop") is None
    assert not ours.same_workload(None)


def test_consul_partition_form() -> None:
    uri = "spiffe://td.consul/ap/finance/ns/shop/dc/dc2/svc/ledger"
    spiffe_id = SpiffeId.parse(uri)
    assert (spiffe_id.partition, spiffe_id.namespace) == ("finance", "shop")
    assert (spiffe_id.datacenter, spiffe_id.service) == ("dc2", "ledger")
    assert (
        str(SpiffeId.for_consul_service("td.consul", "shop", "dc2", "ledger", partition="finance"))
        == uri
    )
    # Another partition is another workload; the default partition is meshkit's.
    assert not SpiffeId.for_service("td.consul", "shop", "ledger").same_workload(spiffe_id)
    assert spiffe_id.service_in("td.consul", "shop") is None
    default = SpiffeId.parse("spiffe://td.consul/ap/default/ns/shop/dc/dc2/svc/ledger")
    assert default.same_workload(SpiffeId.for_service("td.consul", "shop", "ledger"))


def test_other_paths_have_no_service() -> None:
    assert SpiffeId.parse("spiffe://td/workload/x").service is None


@pytest.mark.parametrize(
    "uri",
    [
        "http://td/ns/a/svc/b",
        "SPIFFE://td/ns/a/svc/b",
        "spiffe://td",
        "spiffe://td/",
        "spiffe:///ns/a",
        "spiffe://TD/ns/a",
        "spiffe://td:8080/ns/a",
        "spiffe://user@td/ns/a",
        "spiffe://td/ns/a?x=1",
        "spiffe://td/ns/a#frag",
        "spiffe://td/ns//a",
        "spiffe://td/ns/./a",
        "spiffe://td/ns/../a",
        "spiffe://td/ns/a%20b",
        "spiffe://td/" + "a" * 2100,
    ],
)
def test_rejects_invalid_ids(uri: str) -> None:
    with pytest.raises(IdentityError):
        SpiffeId.parse(uri)


def test_identity_of_issued_certificate(authority: LocalAuthority) -> None:
    issued = authority.issue("cart", namespace="shop")
    assert identity_from_certificate(issued.certificate) == SpiffeId.for_service(
        "meshkit.local", "shop", "cart"
    )


def test_ca_certificate_has_no_workload_identity(authority: LocalAuthority) -> None:
    # A CA's SAN is the bare trust domain, which is not a workload ID.
    assert identity_from_certificate(authority.root) is None


def test_peercert_needs_exactly_one_uri() -> None:
    one = {"subjectAltName": (("URI", "spiffe://td/ns/a/svc/b"), ("DNS", "x"))}
    two = {"subjectAltName": (("URI", "spiffe://td/ns/a/svc/b"), ("URI", "spiffe://td/x"))}
    assert identity_from_peercert(one) == SpiffeId.parse("spiffe://td/ns/a/svc/b")
    assert identity_from_peercert(two) is None
    assert identity_from_peercert({}) is None
    assert identity_from_peercert(None) is None


def test_peer_identity_from_scope_without_precomputed_id(authority: LocalAuthority) -> None:
    issued = authority.issue("web")
    leaf_pem = (
        issued.chain_pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )
    scope = {"type": "http", "extensions": {"tls": {"client_cert_chain": [leaf_pem]}}}
    assert peer_identity(scope) == issued.spiffe_id
    assert peer_identity({"type": "http"}) is None
