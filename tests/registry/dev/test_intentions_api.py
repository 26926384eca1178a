"""The dev registry's intentions API (Consul 1.9+) through py-consul, unchanged: the same
data as ``service-intentions`` config entries, Consul's precedence, ``check``, ``match``
and ``/v1/agent/connect/authorize`` (POST, through py-consul's own HTTP client: its
``agent.connect.authorize`` sends PUT, which Consul refuses)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import consul
import consul.exceptions
import pytest
from consul.callback import CB

from meshkit.testing.processes import RegistryProcess
from tests.registry.conftest import ThreadedRegistry
from tests.registry.dev.helpers import raw

KIND = "service-intentions"
WEB = "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web"
API = "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/api"


@pytest.fixture
def client(own_registry: ThreadedRegistry) -> Iterator[Any]:
    yield own_registry.client()


def test_exact_crud_is_the_config_entry(client: Any) -> None:
    intentions = client.connect.intentions
    assert intentions.upsert("web", "db", action="allow", description="front end") is True
    entry = client.config.get(KIND, "db")
    assert entry["Sources"][0]["Name"] == "web" and entry["Sources"][0]["Action"] == "allow"

    read = intentions.read("web", "db")
    assert read["SourceName"] == "web" and read["DestinationName"] == "db"
    assert read["SourceNS"] == read["DestinationNS"] == "default"
    assert (read["Action"], read["Precedence"], read["Description"]) == ("allow", 9, "front end")
    assert read["CreateIndex"] == entry["CreateIndex"]

    intentions.upsert("*", "db", action="deny")
    assert [s["Name"] for s in client.config.get(KIND, "db")["Sources"]] == ["web", "*"]
    intentions.upsert("web", "db", action="deny")  # replaces web's, keeps *'s
    assert intentions.read("web", "db")["Action"] == "deny"
    assert len(client.config.get(KIND, "db")["Sources"]) == 2

    assert intentions.delete("web", "db") is True
    assert intentions.read("web", "db") is None  # 404 "Intention not found"
    assert intentions.delete("*", "db") is True
    assert client.config.get(KIND, "db") is None  # the last source took the entry with it


def test_list_and_match_in_precedence_order(client: Any) -> None:
    client.config.set(KIND, "*", {"Sources": [{"Name": "*", "Action": "deny"}]})
    client.config.set(
        KIND,
        "db",
        {"Sources": [{"Name": "web", "Action": "allow"}, {"Name": "*", "Action": "deny"}]},
    )
    listed = client.connect.intentions.list()
    assert [(i["SourceName"], i["DestinationName"], i["Precedence"]) for i in listed] == [
        ("web", "db", 9),
        ("*", "db", 8),
        ("*", "*", 5),
    ]
    matched = client.connect.intentions.match("destination", "db")
    assert [(i["SourceName"], i["DestinationName"]) for i in matched["db"]] == [
        ("web", "db"),
        ("*", "db"),
        ("*", "*"),
    ]
    by_source = client.connect.intentions.match("source", "web")
    assert [i["DestinationName"] for i in by_source["web"]] == ["db", "db", "*"]


def test_check_and_authorize_follow_precedence(client: Any) -> None:
    client.config.set(KIND, "db", {"Sources": [{"Name": "web", "Action": "allow"}]})
    client.config.set(KIND, "*", {"Sources": [{"Name": "*", "Action": "deny"}]})
    assert client.connect.intentions.check("web", "db") is True
    assert client.connect.intentions.check("api", "db") is False
    assert client.connect.intentions.check("api", "other") is False

    answer = _authorize(client, "db", WEB)
    assert answer == {
        "Authorized": True,
        "Reason": "Matched L4 intention: default/web => default/db (Precedence: 9, Action: ALLOW)",
    }
    assert _authorize(client, "db", API)["Authorized"] is False


def test_l7_intentions_deny_check_and_authorize(client: Any) -> None:
    permission = {"Action": "allow", "HTTP": {"PathPrefix": "/"}}
    client.config.set(KIND, "db", {"Sources": [{"Name": "web", "Permissions": [permission]}]})
    assert client.connect.intentions.check("web", "db") is False
    answer = _authorize(client, "db", WEB)
    assert answer["Authorized"] is False
    assert answer["Reason"].startswith("Matched L7 intention: default/web => default/db")
    # With nothing matching, ACLs disabled (consul agent -dev): allowed.
    assert _authorize(client, "other", WEB) == {
        "Authorized": True,
        "Reason": "ACLs disabled, access is allowed by default",
    }


def test_refusals(own_registry: ThreadedRegistry, client: Any) -> None:
    assert raw(own_registry, "GET", "/v1/connect/intentions/check?source=web")[0] == 400
    status, text = raw(own_registry, "GET", "/v1/connect/intentions/match?by=up&name=x")
    assert (status, text) == (400, "'by' parameter must be one of 'source' or 'destination'")
    body = json.dumps({"Target": "db", "ClientCertURI": "spiffe://x/ns/default/svc/web"})
    status, text = raw(own_registry, "POST", "/v1/agent/connect/authorize", body.encode())
    assert (status, text) == (400, "ClientCertURI not a valid Connect identifier")
    assert raw(own_registry, "PUT", "/v1/agent/connect/authorize", body.encode())[0] == 405
    status, text = raw(
        own_registry,
        "PUT",
        "/v1/connect/intentions/exact?source=web&destination=db",
        json.dumps({"Action": "perhaps"}).encode(),
    )
    assert (status, text) == (400, "Sources[0].Action must be set to 'allow' or 'deny'")


def test_default_deny_from_the_acl_default_policy() -> None:
    with RegistryProcess("--acl-default-policy", "deny") as registry:
        host, port = registry.address.rsplit(":", 1)
        client = consul.Consul(host=host, port=int(port))
        assert client.connect.intentions.check("web", "db") is False
        assert _authorize(client, "db", WEB) == {
            "Authorized": False,
            "Reason": "Default behavior configured by ACLs",
        }
        _, headers = client.http.get(_with_headers(), "/v1/connect/intentions")
        assert headers["X-Consul-Default-Acl-Policy"] == "deny"
        _, headers = client.http.get(_with_headers(), "/v1/agent/self")  # on every answer
        assert headers["X-Consul-Default-Acl-Policy"] == "deny"


def _authorize(client: Any, target: str, uri: str) -> dict[str, Any]:
    body = {"Target": target, "ClientCertURI": uri, "ClientCertSerial": "01"}
    answer: dict[str, Any] = client.http.post(
        CB.json(), "/v1/agent/connect/authorize", data=json.dumps(body)
    )
    return answer


def _with_headers() -> Any:
    def callback(response: Any) -> tuple[Any, Any]:
        return json.loads(response.body), response.headers

    return callback


def test_legacy_api_by_id(client: Any) -> None:
    """The deprecated ID API (py-consul leaves it out; its HTTP client reaches it)."""
    body = {"SourceName": "web", "DestinationName": "db", "Action": "allow", "Meta": {"a": "b"}}
    created = client.http.post(CB.json(), "/v1/connect/intentions", data=json.dumps(body))
    legacy_id = created["ID"]
    read = client.http.get(CB.json(), f"/v1/connect/intentions/{legacy_id}")
    assert (read["ID"], read["SourceName"], read["Action"], read["Meta"]) == (
        legacy_id,
        "web",
        "allow",
        {"a": "b"},
    )
    assert read["CreatedAt"] == read["UpdatedAt"]
    # The same data as the config entry and the exact API.
    assert client.config.get(KIND, "db")["Sources"][0]["LegacyID"] == legacy_id
    assert client.connect.intentions.read("web", "db")["ID"] == legacy_id

    update = {**body, "Action": "deny"}
    path = f"/v1/connect/intentions/{legacy_id}"
    assert client.http.put(CB.boolean(), path, data=json.dumps(update)) is True
    again = client.http.get(CB.json(), path)
    assert again["Action"] == "deny" and again["CreatedAt"] == read["CreatedAt"]
    assert client.connect.intentions.check("web", "db") is False

    with pytest.raises(consul.exceptions.ConsulException, match="duplicate intention found"):
        client.http.post(CB.json(), "/v1/connect/intentions", data=json.dumps(body))
    assert client.http.delete(CB.boolean(), path) is True
    assert client.http.get(CB.json(), path) is None  # 404 "Intention not found"
    assert client.config.get(KIND, "db") is None
