"""``/v1/config`` of the dev registry through py-consul, unchanged: its ``config`` API for
writes, reads and deletes, and its own HTTP client (``client.http``) for the blocking
reads its wrapper does not expose (``?index=&wait=``)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import consul
import consul.exceptions
import pytest
from consul.callback import CB

from meshkit.registry.dev.config_entries import ConfigEntries
from meshkit.registry.dev.config_kinds import KINDS
from meshkit.registry.dev.state import Store
from tests.registry.conftest import ThreadedRegistry
from tests.registry.dev.helpers import raw

KIND = "service-intentions"


@pytest.fixture
def client(own_registry: ThreadedRegistry) -> Iterator[Any]:
    yield own_registry.client()


def test_write_read_list_delete(client: Any) -> None:
    sources = [
        {"Name": "*", "Action": "deny"},
        {
            "Name": "web",
            "Permissions": [
                {"Action": "allow", "HTTP": {"PathPrefix": "/api", "Methods": ["get", "post"]}}
            ],
        },
    ]
    assert client.config.set(KIND, "payments", {"Sources": sources}) is True
    entry = client.config.get(KIND, "payments")
    assert entry["Kind"] == KIND and entry["Name"] == "payments"
    # Normalized as Consul does: sources by precedence, methods upper-cased, type filled in.
    assert [s["Name"] for s in entry["Sources"]] == ["web", "*"]
    assert [s["Precedence"] for s in entry["Sources"]] == [9, 8]
    assert entry["Sources"][0]["Type"] == "consul"
    assert entry["Sources"][0]["Permissions"][0]["HTTP"]["Methods"] == ["GET", "POST"]
    assert "Action" not in entry["Sources"][0]
    assert entry["CreateIndex"] == entry["ModifyIndex"] > 0

    assert client.config.set(KIND, "payments", {"Sources": [{"Name": "web", "Action": "allow"}]})
    updated = client.config.get(KIND, "payments")
    assert updated["CreateIndex"] == entry["CreateIndex"]
    assert updated["ModifyIndex"] > entry["ModifyIndex"]

    client.config.set(KIND, "orders", {"Sources": [{"Name": "web", "Action": "allow"}]})
    assert [e["Name"] for e in client.config.list(KIND)] == ["orders", "payments"]
    assert client.config.list("service-defaults") == []

    assert client.config.delete(KIND, "payments") is True
    assert client.config.get(KIND, "payments") is None  # a 404, which py-consul maps to None
    assert [e["Name"] for e in client.config.list(KIND)] == ["orders"]


def test_check_and_set(client: Any) -> None:
    body = {"Sources": [{"Name": "web", "Action": "allow"}]}
    assert client.config.set(KIND, "db", body, cas=0) is True
    assert client.config.set(KIND, "db", body, cas=0) is False  # 0: only when absent
    index = client.config.get(KIND, "db")["ModifyIndex"]
    assert client.config.set(KIND, "db", body, cas=index + 100) is False
    assert client.config.set(KIND, "db", body, cas=index) is True
    current = client.config.get(KIND, "db")["ModifyIndex"]
    assert client.config.delete(KIND, "db", cas=index) is False
    assert client.config.delete(KIND, "db", cas=current) is True
    assert client.config.get(KIND, "db") is None


@pytest.mark.parametrize(
    ("sources", "text"),
    [
        ([], "At least one source is required"),
        ([{"Name": "web"}], "Sources[0].Action must be set to 'allow' or 'deny'"),
        ([{"Name": "web", "Action": "maybe"}], "Sources[0].Action must be set to 'allow' or"),
        (
            [{"Name": "web", "Action": "allow", "Permissions": [_p := {"Action": "allow"}]}],
            "Sources[0].Action must be omitted if Permissions are specified",
        ),
        ([{"Name": "web", "Permissions": [_p]}], "Sources[0].Permissions[0].HTTP is required"),
        (
            [{"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathExact": "x"}}]}],
            "Sources[0].Permissions[0].HTTP.PathExact doesn't start with '/': \"x\"",
        ),
        (
            [
                {
                    "Name": "web",
                    "Permissions": [
                        {"Action": "allow", "HTTP": {"PathExact": "/a", "PathPrefix": "/b"}}
                    ],
                }
            ],
            "should only contain at most one of PathExact, PathPrefix, or PathRegex",
        ),
        (
            [{"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"Methods": ["GOT"]}}]}],
            'Methods contains an invalid method "GOT"',
        ),
        (
            [{"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"Header": [{}]}}]}],
            "Header[0] missing required Name field",
        ),
        ([{"Name": "we*", "Action": "allow"}], "Sources[0].Name: wildcard character '*' cannot"),
        (
            [{"Name": "web", "Action": "allow"}, {"Name": "web", "Action": "deny"}],
            'Sources[1] defines "default/web" more than once',
        ),
    ],
)
def test_consuls_validation_texts(client: Any, sources: list[Any], text: str) -> None:
    with pytest.raises(consul.exceptions.BadRequest, match=_literal(text)):
        client.config.set(KIND, "payments", {"Sources": sources})
    assert client.config.get(KIND, "payments") is None


def test_permissions_refused_on_a_wildcard_destination(client: Any) -> None:
    permission = {"Action": "allow", "HTTP": {"PathPrefix": "/"}}
    with pytest.raises(consul.exceptions.BadRequest, match="wildcarded destinations"):
        client.config.set(KIND, "*", {"Sources": [{"Name": "web", "Permissions": [permission]}]})


def test_decoding_as_consul_decodes(own_registry: ThreadedRegistry) -> None:
    """mapstructure's weak typing and aliases; unknown keys and kinds refused."""
    client = own_registry.client()
    snake = {"Kind": KIND, "name": "api", "sources": [{"name": "web", "action": "allow"}]}
    assert client.http.put(CB.json(), "/v1/config", data=_dumps(snake)) is True
    assert client.config.get(KIND, "api")["Sources"][0]["Action"] == "allow"
    alias = {"Kind": KIND, "Name": "api", "Sources": [_l7({"path_prefix": "/x"})]}
    assert client.http.put(CB.json(), "/v1/config", data=_dumps(alias)) is True
    assert client.config.get(KIND, "api")["Sources"][0]["Permissions"][0]["HTTP"] == {
        "PathPrefix": "/x"
    }

    status, text = raw(own_registry, "PUT", "/v1/config", _dumps({**snake, "Color": "red"}))
    assert (status, text) == (
        400,
        'Request decoding failed: 1 error occurred:\n\t* invalid config key "Color"\n\n',
    )
    status, text = raw(own_registry, "PUT", "/v1/config", _dumps({"Name": "x"}))
    assert status == 400
    assert (
        text == "Request decoding failed: Payload does not contain a kind/Kind key at the top level"
    )
    status, text = raw(own_registry, "PUT", "/v1/config", _dumps({"Kind": "nope", "Name": "x"}))
    assert (status, text) == (400, "Request decoding failed: invalid config entry kind: nope")
    status, text = raw(own_registry, "PUT", "/v1/config", b"[1]")
    assert status == 400 and "cannot unmarshal array" in text
    assert raw(own_registry, "GET", "/v1/config/nope")[0] == 400
    assert raw(own_registry, "GET", "/v1/config/ingress-gateway")[1] == "[]"  # known, none
    status, text = raw(own_registry, "PUT", "/v1/config", _dumps({"Kind": "mesh"}))
    assert status == 400 and "not implemented by the meshkit dev registry" in text
    assert raw(own_registry, "GET", f"/v1/config/{KIND}/missing") == (
        404,
        f'Config entry not found for "{KIND}" / "missing"',
    )
    assert raw(own_registry, "DELETE", f"/v1/config/{KIND}")[0] == 404
    assert raw(own_registry, "GET", "/v1/config")[0] == 405


def test_proxy_defaults_is_named_global(client: Any) -> None:
    assert client.config.set("proxy-defaults", "global", {"Config": {"protocol": "http"}})
    assert client.config.get("proxy-defaults", "global")["Config"] == {"protocol": "http"}
    with pytest.raises(consul.exceptions.BadRequest, match='only "global" is supported'):
        client.config.set("proxy-defaults", "other", {})


def test_blocking_list_wakes_on_a_write_of_its_kind(client: Any) -> None:
    index, _ = _blocking_list(client, KIND, 0)
    answer: dict[str, Any] = {}

    def watch() -> None:
        answer["index"], answer["entries"] = _blocking_list(client, KIND, index, "20s")

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.2)  # parked: a write made before it asks would answer it at once
    client.config.set("service-defaults", "web", {"Protocol": "HTTP"})  # another kind
    time.sleep(0.2)
    assert watcher.is_alive()
    client.config.set(KIND, "web", {"Sources": [{"Name": "api", "Action": "deny"}]})
    watcher.join(timeout=5)
    assert not watcher.is_alive()
    assert int(answer["index"]) > int(index)
    assert [e["Name"] for e in answer["entries"]] == ["web"]


def test_blocking_get_times_out_with_the_same_index(client: Any) -> None:
    client.config.set(KIND, "web", {"Sources": [{"Name": "api", "Action": "deny"}]})
    path = f"/v1/config/{KIND}/web"
    index, _ = client.http.get(CB.json(index=True), path)
    started = time.monotonic()
    again, _ = client.http.get(
        CB.json(index=True), path, params=[("index", index), ("wait", "300ms")]
    )
    assert again == index
    assert time.monotonic() - started >= 0.3


def _blocking_list(client: Any, kind: str, index: Any, wait: str = "") -> tuple[Any, Any]:
    params = [("index", index), ("wait", wait)] if wait else []
    result: tuple[Any, Any] = client.http.get(
        CB.json(index=True), f"/v1/config/{kind}", params=params
    )
    return result


def _l7(http: dict[str, Any]) -> dict[str, Any]:
    return {"Name": "web", "Permissions": [{"Action": "allow", "HTTP": http}]}


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _literal(text: str) -> str:
    return re.escape(text)


def test_weak_typing_and_its_refusals(own_registry: ThreadedRegistry) -> None:
    client = own_registry.client()
    header = {"Name": "X-Debug", "Present": "true"}  # a string for a bool: weakly decoded
    body = {"Kind": KIND, "Name": "api", "Sources": [_l7({"Header": [header]})]}
    assert client.http.put(CB.json(), "/v1/config", data=_dumps(body)) is True
    stored = client.config.get(KIND, "api")["Sources"][0]["Permissions"][0]["HTTP"]
    assert stored == {"Header": [{"Name": "X-Debug", "Present": True}]}

    bad = {"Kind": KIND, "Name": "api", "Sources": [{"Name": {"a": 1}, "Action": "allow"}]}
    status, text = raw(own_registry, "PUT", "/v1/config", _dumps(bad))
    assert (status, text) == (
        400,
        "Request decoding failed: 1 error(s) decoding:\n\n* 'Sources[0].Name' expected type "
        "'string', got unconvertible type 'map[string]interface {}'",
    )


def test_dump_and_restore_keep_entries_and_indexes(own_registry: ThreadedRegistry) -> None:
    """What a data directory needs to keep the entries over a restart."""
    client = own_registry.client()
    client.config.set(KIND, "db", {"Sources": [{"Name": "web", "Action": "allow"}]})
    client.config.set("service-defaults", "web", {"Protocol": "http"})
    before = [client.config.get(KIND, "db"), client.config.get("service-defaults", "web")]
    assert own_registry._server is not None
    dumped = own_registry._server.app.config_entries.dump()
    assert sorted(e["Name"] for e in dumped) == ["db", "web"]

    fresh = ConfigEntries(Store(), KINDS)
    fresh.restore(json.loads(json.dumps(dumped)))
    assert fresh.dump() == dumped
    restored = fresh.get(KIND, "db")
    assert restored is not None and restored.to_json() == before[0]


def test_namespace_parameter_scopes_an_entry(own_registry: ThreadedRegistry) -> None:
    client = own_registry.client()
    body = {"Kind": KIND, "Name": "payments", "Sources": [{"Name": "web", "Action": "deny"}]}
    assert client.http.put(CB.json(), "/v1/config", params=[("ns", "shop")], data=_dumps(body))
    path = f"/v1/config/{KIND}/payments"
    entry = client.http.get(CB.json(), path, params=[("ns", "shop")])
    assert entry["Namespace"] == entry["Sources"][0]["Namespace"] == "shop"
    assert client.config.get(KIND, "payments") is None  # the default namespace has none
    assert client.connect.intentions.check("shop/web", "shop/payments") is False
    assert client.connect.intentions.check("web", "shop/payments") is True
