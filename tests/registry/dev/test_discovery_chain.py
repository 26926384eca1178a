"""``service-resolver``, ``service-splitter`` and ``service-router`` in the dev registry's
``/v1/config``, through py-consul unchanged: stored and shown as Consul shows them, and
refused with Consul's texts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import consul
import consul.exceptions
import pytest

from tests.registry.conftest import ThreadedRegistry


@pytest.fixture
def client(own_registry: ThreadedRegistry) -> Iterator[Any]:
    client = own_registry.client()
    # As on Consul: splitters and routers need an HTTP-based protocol.
    client.config.set("service-defaults", "inventory", {"Protocol": "http"})
    yield client


def test_splitting_and_routing_need_an_http_protocol(client: Any) -> None:
    client.config.delete("service-defaults", "inventory")
    text = (
        'discovery chain "inventory" uses a protocol "tcp" that does not permit advanced '
        "routing or splitting behavior"
    )
    splits = {"Splits": [{"Weight": 100}]}
    with pytest.raises(consul.exceptions.BadRequest, match=_literal(text)):
        client.config.set("service-splitter", "inventory", splits)
    with pytest.raises(consul.exceptions.BadRequest, match=_literal(text)):
        client.config.set("service-router", "inventory", {"Routes": []})
    assert client.config.set("service-resolver", "inventory", {})  # subsets work on L4
    client.config.set("proxy-defaults", "global", {"Config": {"protocol": "http"}})
    assert client.config.set("service-splitter", "inventory", splits)
    # Nor may a protocol change leave the splitter on tcp: written or deleted.
    with pytest.raises(consul.exceptions.BadRequest, match=_literal(text)):
        client.config.set("service-defaults", "inventory", {"Protocol": "tcp"})
    with pytest.raises(consul.exceptions.BadRequest, match=_literal(text)):
        client.config.delete("proxy-defaults", "global")
    assert client.config.get("proxy-defaults", "global") is not None
    assert client.config.set("service-defaults", "inventory", {"Protocol": "grpc"})
    assert client.config.delete("proxy-defaults", "global")  # service-defaults decides now
    client.config.delete("service-splitter", "inventory")
    assert client.config.set("service-defaults", "inventory", {"Protocol": "tcp"})


def test_resolver_round_trip(client: Any) -> None:
    body = {
        "DefaultSubset": "v1",
        "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": '"canary" in Service.Tags', "OnlyPassing": True},
            "all": {},
        },
        "Failover": {"v2": {"ServiceSubset": "v1"}},
        "ConnectTimeout": "1500ms",
        "request_timeout": "10s",  # Consul's snake_case alias
    }
    assert client.config.set("service-resolver", "inventory", body) is True
    entry = client.config.get("service-resolver", "inventory")
    assert entry["Kind"] == "service-resolver" and entry["Name"] == "inventory"
    assert entry["Subsets"]["all"] == {}
    assert entry["Subsets"]["v2"] == {"Filter": '"canary" in Service.Tags', "OnlyPassing": True}
    assert entry["Failover"] == {"v2": {"ServiceSubset": "v1"}}
    assert (entry["ConnectTimeout"], entry["RequestTimeout"]) == ("1.5s", "10s")
    assert "Redirect" not in entry and "LoadBalancer" not in entry


def test_splitter_round_trip(client: Any) -> None:
    splits = [
        {"Weight": 90.004, "ServiceSubset": "v1"},
        {"Weight": 9.996, "ServiceSubset": "v2", "RequestHeaders": {"Set": {"x-canary": "1"}}},
    ]
    assert client.config.set("service-splitter", "inventory", {"Splits": splits})
    entry = client.config.get("service-splitter", "inventory")
    assert [split["Weight"] for split in entry["Splits"]] == [90, 10]  # 0.01 % units
    assert entry["Splits"][1]["RequestHeaders"] == {"Set": {"x-canary": "1"}}
    assert entry["Splits"][0]["Namespace"] == "default"


def test_router_round_trip(client: Any) -> None:
    routes = [
        {
            "Match": {"HTTP": {"PathPrefix": "/admin", "Methods": ["get"]}},
            "Destination": {
                "Service": "admin",
                "PrefixRewrite": "/",
                "RequestTimeout": "2s",
                "NumRetries": 3,
                "RetryOnStatusCodes": [503],
            },
        },
        {
            "Match": {"HTTP": {"Header": [{"Name": "x-debug", "Exact": "1"}]}},
            "Destination": {"ServiceSubset": "v2"},
        },
    ]
    assert client.config.set("service-router", "inventory", {"Routes": routes})
    entry = client.config.get("service-router", "inventory")
    first = entry["Routes"][0]
    assert first["Match"]["HTTP"]["Methods"] == ["GET"]
    assert first["Destination"]["RequestTimeout"] == "2s"
    assert first["Destination"]["RetryOnStatusCodes"] == [503]
    assert entry["Routes"][1]["Match"]["HTTP"]["Header"] == [{"Name": "x-debug", "Exact": "1"}]
    names = [e["Name"] for e in client.config.list("service-router")]
    assert names == ["inventory"]


def test_a_regex_that_does_not_compile_is_stored_as_consul_stores_it(client: Any) -> None:
    """Consul's ServiceRouterConfigEntry.Validate counts PathRegex among the path forms
    and checks Header and QueryParam forms, but compiles no pattern: the write succeeds
    (Envoy would refuse the route table later; meshkit's client skips the route)."""
    http = {
        "PathRegex": "/items/(",
        "Header": [{"Name": "x-a", "Regex": "["}],
        "QueryParam": [{"Name": "q", "Regex": "*"}],
    }
    routes = [{"Match": {"HTTP": http}, "Destination": {"ServiceSubset": "v2"}}]
    assert client.config.set("service-router", "inventory", {"Routes": routes}) is True
    assert client.config.get("service-router", "inventory")["Routes"][0]["Match"]["HTTP"] == http


def _literal(text: str) -> str:
    return re.escape(text)


@pytest.mark.parametrize(
    ("kind", "body", "text"),
    [
        ("service-resolver", {"Subsets": {"V1": {}}}, 'Subset "V1" is invalid: must be 63'),
        (
            "service-resolver",
            {"Subsets": {"v1": {"Filter": "Service.Meta.version =="}}},
            'Filter for subset "v1" is not a valid expression',
        ),
        ("service-resolver", {"DefaultSubset": "v3"}, 'DefaultSubset "v3" is not a valid subset'),
        (
            "service-resolver",
            {"Failover": {"v9": {"Service": "other"}}},
            'Bad Failover["v9"]: not a valid subset subset',
        ),
        (
            "service-resolver",
            {"Failover": {"*": {}}},
            'Bad Failover["*"]: one of Service, ServiceSubset, Namespace, Targets, or '
            "Datacenters is required",
        ),
        (
            "service-resolver",
            {"Redirect": {"Service": "a"}, "Failover": {"*": {"Service": "b"}}},
            "Redirect and Failover cannot both be set",
        ),
        ("service-resolver", {"ConnectTimeout": "-1s"}, "Bad ConnectTimeout '-1s', must be >= 0"),
        ("service-splitter", {}, "no splits configured"),
        (
            "service-splitter",
            {"Splits": [{"Weight": 50}, {"Weight": 40, "ServiceSubset": "v2"}]},
            "the sum of all split weights must be 100, not 90.000000",
        ),
        (
            "service-splitter",
            {"Splits": [{"Weight": 50}, {"Weight": 50, "Service": "inventory"}]},
            'split destination occurs more than once: service="inventory", subset=""',
        ),
        (
            "service-router",
            {"Routes": [{"Match": {"HTTP": {"PathExact": "x"}}}]},
            "Route[0] PathExact doesn't start with '/': \"x\"",
        ),
        (
            "service-router",
            {"Routes": [{"Match": {"HTTP": {"PathExact": "/a", "PathRegex": "/b"}}}]},
            "Route[0] should only contain at most one of PathExact, PathPrefix, or PathRegex",
        ),
        (
            "service-router",
            {"Routes": [{"Match": {"HTTP": {"Header": [{"Name": "a"}]}}}]},
            "Route[0] Header[0] should only contain one of Present, Exact, Prefix, Suffix, "
            "or Regex",
        ),
        (
            "service-router",
            {"Routes": [{"Match": {"HTTP": {"QueryParam": [{"Exact": "1"}]}}}]},
            "Route[0] QueryParam[0] missing required Name field",
        ),
        (
            "service-router",
            {"Routes": [{"Match": {"HTTP": {"Methods": ["GET", "get"]}}}]},
            'Route[0] Methods contains "GET" more than once',
        ),
        (
            "service-router",
            {"Routes": [{"Destination": {"PrefixRewrite": "/"}}]},
            "Route[0] cannot make use of PrefixRewrite without configuring either PathExact "
            "or PathPrefix",
        ),
        (
            "service-router",
            {"Routes": [{"Destination": {"RetryOn": ["sometimes"]}}]},
            'Route[0] contains an invalid retry condition: "sometimes"',
        ),
    ],
)
def test_consuls_validation_texts(client: Any, kind: str, body: dict[str, Any], text: str) -> None:
    with pytest.raises(consul.exceptions.BadRequest, match=_literal(text)):
        client.config.set(kind, "inventory", body)
    assert client.config.get(kind, "inventory") is None


def test_decoding_errors_are_consuls(client: Any) -> None:
    with pytest.raises(consul.exceptions.BadRequest, match="invalid config key"):
        client.config.set("service-splitter", "inventory", {"Splits": [{"Wieght": 100}]})
    with pytest.raises(consul.exceptions.BadRequest, match="time: invalid duration"):
        client.config.set("service-resolver", "inventory", {"RequestTimeout": "soon"})
