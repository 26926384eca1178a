"""The dev registry through py-consul, unchanged, over real HTTP: what py-consul's docs say
Consul answers."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from typing import Any

import consul
import consul.exceptions
import pytest
import requests

from tests.registry.conftest import HealthzServer, ThreadedRegistry, wait_until
from tests.registry.dev.helpers import raw


def _put(registry: ThreadedRegistry, path: str, body: Any) -> requests.Response:
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.put(f"http://{registry.address}{path}", data=data, timeout=5)


def test_status_and_catalog_basics(client: Any) -> None:
    assert client.status.leader() == "127.0.0.1:8300"
    assert client.status.peers() == ["127.0.0.1:8300"]
    assert client.catalog.datacenters() == ["dc1"]
    index, services = client.catalog.services()
    assert int(index) > 0
    assert services == {"consul": []}
    assert client.agent.services() == {}
    assert client.agent.self()["Config"]["Datacenter"] == "dc1"


def test_registered_service_shows_everywhere_with_default_check_id(client: Any) -> None:
    assert client.agent.service.register(
        "web",
        service_id="web-1",
        address="10.0.0.5",
        port=8080,
        tags=["v1"],
        meta={"team": "shop"},
        check=consul.Check.ttl("10s"),
    )
    service = client.agent.services()["web-1"]
    assert service["Service"] == "web"
    assert (service["Address"], service["Port"], service["Tags"]) == ("10.0.0.5", 8080, ["v1"])
    assert service["Meta"] == {"team": "shop"}
    assert service["Weights"] == {"Passing": 1, "Warning": 1}
    check = client.agent.checks()["service:web-1"]
    assert check["Status"] == "critical"  # a new check starts critical, as in Consul
    assert check["Name"] == "Service 'web' check"
    assert check["Type"] == "ttl"
    _, nodes = client.catalog.service("web")
    assert nodes[0]["ServiceID"] == "web-1" and nodes[0]["ServiceAddress"] == "10.0.0.5"
    _, entries = client.health.service("web")
    assert [c["CheckID"] for c in entries[0]["Checks"]] == ["serfHealth", "service:web-1"]
    assert client.health.service("web", passing=True)[1] == []
    assert client.agent.check.ttl_pass("service:web-1", "fine")
    _, entries = client.health.service("web", passing=True)
    assert entries[0]["Checks"][1]["Output"] == "fine"


def test_several_checks_get_numbered_ids(client: Any) -> None:
    client.agent.service.register(
        "web",
        service_id="web-1",
        check=consul.Check.ttl("10s"),
        extra_checks=[consul.Check.ttl("20s")],
    )
    assert set(client.agent.checks()) == {"service:web-1:1", "service:web-1:2"}


def test_tag_filter(client: Any) -> None:
    client.agent.service.register("web", service_id="web-1", tags=["blue"])
    client.agent.service.register("web", service_id="web-2", tags=["green"])
    _, entries = client.health.service("web", tag="green")
    assert [e["Service"]["ID"] for e in entries] == ["web-2"]
    _, nodes = client.catalog.service("web", tag="blue")
    assert [n["ServiceID"] for n in nodes] == ["web-1"]


def test_blocking_query_wakes_on_change(client: Any, registry: ThreadedRegistry) -> None:
    client.agent.service.register("web", service_id="web-1", check=consul.Check.ttl("30s"))
    index, _ = client.health.service("web")
    answer: dict[str, Any] = {}

    def watch() -> None:
        answer["index"], answer["entries"] = client.health.service("web", index=index, wait="20s")

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.2)
    assert watcher.is_alive()  # blocked: nothing changed yet
    registry.client().agent.check.ttl_pass("service:web-1")
    watcher.join(timeout=5)
    assert not watcher.is_alive()
    assert int(answer["index"]) > int(index)
    assert answer["entries"][0]["Checks"][1]["Status"] == "passing"


def test_blocking_query_times_out_with_the_same_index(client: Any) -> None:
    client.agent.service.register("web", service_id="web-1")
    index, _ = client.health.service("web")
    started = time.monotonic()
    again, _ = client.health.service("web", index=index, wait="300ms")
    assert again == index
    assert time.monotonic() - started >= 0.3


def test_other_services_do_not_wake_a_watch(client: Any) -> None:
    client.agent.service.register("web", service_id="web-1")
    index, _ = client.health.service("web")
    client.agent.service.register("db", service_id="db-1")
    again, _ = client.health.service("web", index=index, wait="200ms")
    assert again == index


def test_no_op_heartbeats_take_no_index(client: Any) -> None:
    client.agent.service.register("web", service_id="web-1", check=consul.Check.ttl("30s"))
    client.agent.check.ttl_pass("service:web-1")
    index, _ = client.health.service("web")
    client.agent.check.ttl_pass("service:web-1")
    assert client.health.service("web")[0] == index


def test_index_is_never_zero(client: Any) -> None:
    index, entries = client.health.service("nothing-here")
    assert entries == [] and int(index) >= 1


def test_ttl_expiry_turns_the_check_critical(client: Any) -> None:
    client.agent.service.register("web", service_id="web-1", check=consul.Check.ttl("1s"))
    client.agent.check.ttl_pass("service:web-1", "alive")
    index, _ = client.health.service("web", passing=True)
    index, entries = client.health.service("web", index=index, wait="5s")
    check = entries[0]["Checks"][1]
    assert check["Status"] == "critical"
    assert check["Output"] == "TTL expired (last output before timeout follows): alive"


def test_http_check_runs_against_the_url(client: Any, healthz: HealthzServer) -> None:
    url = f"http://127.0.0.1:{healthz.port}/healthz"
    client.agent.service.register("web", service_id="web-1", check=consul.Check.http(url, "1s"))
    wait_until(lambda: client.agent.checks()["service:web-1"]["Status"] == "passing")
    check = client.agent.checks()["service:web-1"]
    assert check["Output"] == f"HTTP GET {url}: 200 OK Output: ok"
    assert check["Definition"]["HTTP"] == url
    healthz.status = 503
    wait_until(lambda: client.agent.checks()["service:web-1"]["Status"] == "critical")


def test_http_check_to_a_closed_port_is_critical(client: Any) -> None:
    url = "http://127.0.0.1:9/healthz"
    client.agent.service.register("web", service_id="web-1", check=consul.Check.http(url, "1s"))
    wait_until(lambda: client.agent.checks()["service:web-1"]["Output"] != "")
    assert client.agent.checks()["service:web-1"]["Status"] == "critical"


def test_replace_existing_checks(client: Any) -> None:
    client.agent.service.register(
        "web",
        service_id="web-1",
        check={"CheckID": "a", "TTL": "10s"},
        extra_checks=[{"CheckID": "b", "TTL": "10s"}],
    )
    client.agent.service.register("web", service_id="web-1", check={"CheckID": "a", "TTL": "10s"})
    assert set(client.agent.checks()) == {"a", "b"}  # kept without the flag
    client.agent.service.register(
        "web",
        service_id="web-1",
        check={"CheckID": "a", "TTL": "10s"},
        replace_existing_checks=True,
    )
    assert set(client.agent.checks()) == {"a"}


def test_deregister_removes_the_service_and_its_checks(client: Any) -> None:
    client.agent.service.register("web", service_id="web-1", check=consul.Check.ttl("10s"))
    assert client.agent.service.deregister("web-1")
    assert client.agent.services() == {} and client.agent.checks() == {}
    assert client.health.service("web")[1] == []


BAD_REGISTRATIONS = [
    ({"ID": "x"}, "Missing service name"),
    ({"Name": "web", "Address": "0.0.0.0"}, "Invalid service address"),
    (
        {"Name": "web", "Check": {"HTTP": "http://x"}},
        "Invalid check: Interval must be > 0 "
        "for Script, HTTP, H2PING, TCP, UDP or OSService checks",
    ),
    ({"Name": "web", "Check": {"Notes": "n"}}, "Invalid check: TTL must be > 0 for TTL checks"),
    (
        {"Name": "web", "Check": {"TTL": "1s", "Interval": "1s"}},
        "Invalid check: Interval and TTL cannot both be specified",
    ),
    (
        {"Name": "web", "Check": {"TTL": "1s", "Status": "bad"}},
        "Status for checks must 'passing', 'warning', 'critical'",
    ),
    (
        {"Name": "web", "Meta": {"a b": "c"}},
        "Invalid Service Meta: Couldn't load metadata pair ('a b', 'c'): "
        "Key contains invalid characters",
    ),
    (
        {"Name": "web", "Meta": {"consul-x": "c"}},
        "Invalid Service Meta: Couldn't load metadata pair ('consul-x', 'c'): "
        "Key prefix 'consul-' is reserved for internal use",
    ),
    (
        {"Name": "web", "Weights": {"Passing": 0}},
        "Invalid Weights: Passing must be greater than 0",
    ),
    (
        {"Name": "web", "Weights": {"Passing": 1, "Warning": -1}},
        "Invalid Weights: Warning must be greater or equal than 0",
    ),
    (
        {"Name": "web", "Weights": {"Passing": 1, "Warning": 65536}},
        "Invalid Weights: DNS Weight must be between 0 and 65535",
    ),
    (
        {"Name": "web", "Check": {"TTL": "soon"}},
        'Request decode failed: time: invalid duration "soon"',
    ),
    (
        {"Name": "web", "Port": "80"},
        "Request decode failed: json: cannot unmarshal string "
        "into Go struct field .Alias.Port of type int",
    ),
]


def test_bad_registrations_get_consuls_400_texts(registry: ThreadedRegistry) -> None:
    for body, text in BAD_REGISTRATIONS:
        response = _put(registry, "/v1/agent/service/register", body)
        assert (response.status_code, response.text) == (400, text)


def test_bad_registration_through_py_consul_raises_bad_request(client: Any) -> None:
    with pytest.raises(consul.exceptions.BadRequest, match="Invalid check"):
        client.agent.service.register("web", check={"http": "http://x"})


def test_malformed_json_is_a_400(registry: ThreadedRegistry) -> None:
    response = _put(registry, "/v1/agent/service/register", "{not json")
    assert response.status_code == 400
    assert response.text.startswith("Request decode failed: ")


def test_unknown_ids_are_404s(registry: ThreadedRegistry, client: Any) -> None:
    response = _put(registry, "/v1/agent/service/deregister/nope", "")
    assert (response.status_code, response.text) == (
        404,
        'Unknown service ID "nope". Ensure that the service ID is passed, not the service name.',
    )
    response = _put(registry, "/v1/agent/check/pass/nope", "")
    assert (response.status_code, response.text) == (
        404,
        'Unknown check ID "nope". Ensure that the check ID is passed, not the check name.',
    )
    assert client.agent.check.ttl_pass("nope") is False  # py-consul: 404 -> False


def test_check_register_update_and_deregister(client: Any, registry: ThreadedRegistry) -> None:
    client.agent.service.register("web", service_id="web-1")
    assert client.agent.check.register("disk", check=consul.Check.ttl("10s"), service_id="web-1")
    assert client.agent.checks()["disk"]["ServiceName"] == "web"
    response = _put(registry, "/v1/agent/check/update/disk", {"Status": "warning", "Output": "80%"})
    assert response.status_code == 200
    assert client.agent.checks()["disk"]["Status"] == "warning"
    response = _put(registry, "/v1/agent/check/update/disk", {"Status": "meh"})
    assert (response.status_code, response.text) == (400, "Invalid check status: 'meh'")
    assert client.agent.check.ttl_fail("disk", "full")
    assert client.agent.checks()["disk"]["Status"] == "critical"
    assert client.agent.check.deregister("disk")
    assert "disk" not in client.agent.checks()
    response = _put(registry, "/v1/agent/check/register", {"TTL": "1s"})
    assert (response.status_code, response.text) == (400, "Missing check name")
    response = _put(
        registry, "/v1/agent/check/register", {"Name": "x", "TTL": "1s", "ServiceID": "no"}
    )
    assert (response.status_code, response.text) == (404, 'ServiceID "no" does not exist')


def test_ttl_update_on_a_non_ttl_check_is_refused(client: Any, registry: ThreadedRegistry) -> None:
    client.agent.service.register(
        "web", service_id="web-1", check=consul.Check.http("http://127.0.0.1:9", "10s")
    )
    response = _put(registry, "/v1/agent/check/pass/service:web-1", "")
    assert (response.status_code, response.text) == (
        400,  # Consul's text; Consul answers 500, the registry no 5xx for client input
        'CheckID "service:web-1" does not have associated TTL',
    )


def test_service_and_node_maintenance(client: Any, registry: ThreadedRegistry) -> None:
    client.agent.service.register("web", service_id="web-1")
    assert len(client.health.service("web", passing=True)[1]) == 1
    assert client.agent.service.maintenance("web-1", "true", "deploying")
    check = client.agent.checks()["_service_maintenance:web-1"]
    assert (check["Status"], check["Notes"]) == ("critical", "deploying")
    assert client.health.service("web", passing=True)[1] == []
    assert client.agent.service.maintenance("web-1", "false")
    assert len(client.health.service("web", passing=True)[1]) == 1
    assert client.agent.maintenance("true")
    assert client.health.service("web", passing=True)[1] == []
    assert "_node_maintenance" in client.agent.checks()
    assert client.agent.maintenance("false")
    response = _put(registry, "/v1/agent/service/maintenance/web-1", "")
    assert (response.status_code, response.text) == (400, "Missing value for enable")
    response = _put(registry, "/v1/agent/service/maintenance/nope?enable=true", "")
    assert (response.status_code, response.text) == (404, 'No service registered with ID "nope"')


def test_deregister_critical_service_after(registry: ThreadedRegistry, client: Any) -> None:
    assert registry.agent is not None
    registry.agent.deregister_minimum = 0.0  # Consul's one-minute floor, lowered for the test
    client.agent.service.register(
        "web",
        service_id="web-1",
        check={"TTL": "10s", "Status": "critical", "DeregisterCriticalServiceAfter": "100ms"},
    )
    time.sleep(0.2)
    registry.agent.reap()
    assert client.agent.services() == {}


def test_script_checks_are_refused_unless_enabled(registry: ThreadedRegistry) -> None:
    response = _put(
        registry,
        "/v1/agent/service/register",
        {"Name": "web", "Check": {"Args": ["true"], "Interval": "1s"}},
    )
    assert response.status_code == 400  # Consul: 500; client input never gets a 5xx here
    assert response.text.startswith("Scripts are disabled on this agent")


def test_script_checks_run_when_enabled() -> None:
    server = ThreadedRegistry(enable_script_checks=True).start()
    try:
        client = server.client()
        client.agent.service.register(
            "web",
            service_id="web-1",
            check=consul.Check.script(["sh", "-c", "echo hi; exit 1"], "1s"),
        )
        wait_until(lambda: client.agent.checks()["service:web-1"]["Status"] == "warning")
        assert client.agent.checks()["service:web-1"]["Output"] == "hi\n"
    finally:
        server.stop()


def test_kv_put_get_keys_recurse_delete(client: Any) -> None:
    assert client.kv.put("app/config/a", "1")
    assert client.kv.put("app/config/b", b"2", flags=7)
    assert client.kv.put("app/other", None)
    _, entry = client.kv.get("app/config/b")
    assert (entry["Value"], entry["Flags"], entry["Key"]) == (b"2", 7, "app/config/b")
    assert client.kv.get("app/other")[1]["Value"] is None
    assert client.kv.get("missing")[1] is None
    _, keys = client.kv.get("app/", keys=True)
    assert keys == ["app/config/a", "app/config/b", "app/other"]
    _, keys = client.kv.get("app/", keys=True, separator="/")
    assert keys == ["app/config/", "app/other"]
    _, entries = client.kv.get("app/config/", recurse=True)
    assert [e["Value"] for e in entries] == [b"1", b"2"]
    assert client.kv.delete("app/config/", recurse=True)
    assert client.kv.get("app/config/", recurse=True)[1] is None


def test_kvraw(client: Any, registry: ThreadedRegistry) -> None:
    client.kv.put("blob", b"\x00\x01raw")
    response = requests.get(f"http://{registry.address}/v1/kv/blob?raw", timeout=5)
    assert response.content == b"\x00\x01raw"


def test_kv_cas(client: Any) -> None:
    assert client.kv.put("k", "1", cas=0)  # 0: only if absent
    assert not client.kv.put("k", "2", cas=0)
    index, entry = client.kv.get("k")
    assert not client.kv.put("k", "3", cas=entry["ModifyIndex"] + 100)
    assert client.kv.get("k")[0] == index  # a failed CAS takes no index
    assert client.kv.put("k", "4", cas=entry["ModifyIndex"])
    _, entry = client.kv.get("k")
    assert not client.kv.delete("k", cas=0)
    assert client.kv.delete("k", cas=entry["ModifyIndex"])


def test_kv_blocking_get_wakes_on_its_key_only(client: Any, registry: ThreadedRegistry) -> None:
    client.kv.put("watched", "1")
    client.kv.put("unrelated", "x")
    started = time.monotonic()
    client.kv.get("watched", index=client.kv.get("watched")[0], wait="200ms")
    assert time.monotonic() - started >= 0.2  # another key did not wake it
    answer: dict[str, Any] = {}
    current, _ = client.kv.get("watched")

    def watch() -> None:
        answer["result"] = client.kv.get("watched", index=current, wait="20s")

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.1)
    registry.client().kv.put("watched", "2")
    watcher.join(timeout=5)
    assert answer["result"][1]["Value"] == b"2"


def test_kv_one_key_is_indexed_by_its_modify_index(client: Any) -> None:
    """As Consul's KVS.Get: a read of one key answers its ModifyIndex (the table's when
    it is missing), so writes to other keys between a read and a blocking read made
    with its index do not end the wait."""
    client.kv.put("mine", "1")
    raw_index, entry = client.kv.get("mine")
    index = int(raw_index)  # py-consul passes X-Consul-Index on as text
    assert index == entry["ModifyIndex"]
    client.kv.put("theirs", "x")
    assert int(client.kv.get("mine")[0]) == index
    started = time.monotonic()
    client.kv.get("mine", index=index, wait="200ms")
    assert time.monotonic() - started >= 0.2
    missing_index, _ = client.kv.get("missing")
    assert int(missing_index) == client.kv.get("theirs")[1]["ModifyIndex"]
    client.kv.delete("mine")
    assert int(client.kv.get("mine", index=index, wait="5s")[0]) > index  # deleted: at once


def test_catalog_register_and_deregister_external_node(client: Any) -> None:
    assert client.catalog.register(
        "ext",
        "10.1.1.1",
        service={"Service": "db", "ID": "db-1", "Port": 5432},
        check={"CheckID": "db-up", "Name": "db up", "Status": "passing", "ServiceID": "db-1"},
    )
    _, nodes = client.catalog.nodes()
    assert {n["Node"] for n in nodes} >= {"ext"}
    _, entries = client.health.service("db", passing=True)
    assert entries[0]["Node"]["Address"] == "10.1.1.1"
    _, node = client.catalog.node("ext")
    assert list(node["Services"]) == ["db-1"]
    assert client.health.node("ext")[1][0]["CheckID"] == "db-up"
    assert client.catalog.deregister("ext", service_id="db-1")
    assert client.health.service("db")[1] == []
    assert client.catalog.deregister("ext")
    assert client.catalog.node("ext")[1] is None


def test_catalog_register_refusals_keep_consuls_rpc_texts(registry: ThreadedRegistry) -> None:
    """Consul answers its Catalog RPC's refusals with a 500; the registry keeps the text
    and says whose mistake it was."""
    response = _put(registry, "/v1/catalog/register", {"Address": "10.0.0.1"})
    assert (response.status_code, response.text) == (400, "Must provide node")


def test_health_state_and_checks(client: Any) -> None:
    client.agent.service.register("web", service_id="web-1", check=consul.Check.ttl("10s"))
    _, critical = client.health.state("critical")
    assert [c["CheckID"] for c in critical] == ["service:web-1"]
    _, passing = client.health.state("passing")
    assert [c["CheckID"] for c in passing] == ["serfHealth"]
    _, checks = client.health.checks("web")
    assert [c["CheckID"] for c in checks] == ["service:web-1"]


def test_invalid_blocking_parameters(registry: ThreadedRegistry) -> None:
    base = f"http://{registry.address}/v1/health/service/web"
    response = requests.get(f"{base}?index=x", timeout=5)
    assert (response.status_code, response.text) == (400, "Invalid index")
    response = requests.get(f"{base}?index=1&wait=soon", timeout=5)
    assert (response.status_code, response.text) == (400, "Invalid wait time")


def test_unknown_paths_and_methods(registry: ThreadedRegistry) -> None:
    response = requests.get(f"http://{registry.address}/v1/nothing", timeout=5)
    assert response.status_code == 404
    response = requests.delete(f"http://{registry.address}/v1/agent/services", timeout=5)
    assert response.status_code == 405


def test_pretty_json(registry: ThreadedRegistry) -> None:
    response = requests.get(f"http://{registry.address}/v1/catalog/services?pretty", timeout=5)
    assert response.text == '{\n    "consul": []\n}\n'


def test_node_meta_filter(client: Any, registry: ThreadedRegistry) -> None:
    for node, rack in (("ext", "a"), ("ext2", "b")):
        body = {"Node": node, "Address": "10.1.1.1", "NodeMeta": {"rack": rack}}
        assert _put(registry, "/v1/catalog/register", body | {"Service": {"Service": "db"}}).ok
    _, entries = client.health.service("db", node_meta={"rack": "b"})
    assert [e["Node"]["Node"] for e in entries] == ["ext2"]
    _, nodes = client.catalog.nodes(node_meta={"rack": "a"})
    assert [n["Node"] for n in nodes] == ["ext"]


def test_identical_reregistration_takes_no_index(client: Any) -> None:
    check = {"CheckID": "hb", "TTL": "30s", "Status": "passing"}
    client.agent.service.register("web", service_id="web-1", check=check)
    index, _ = client.health.service("web")
    client.agent.service.register("web", service_id="web-1", check=check)
    assert client.health.service("web")[0] == index


# -- hostile and malformed input: Consul's answers, never a 5xx ------------------------


def test_ports_outside_0_to_65535_are_refused_through_py_consul(client: Any) -> None:
    for port in (-1, 65536):
        with pytest.raises(consul.exceptions.BadRequest, match="not a port number"):
            client.agent.service.register("web", service_id="web-1", port=port)
    assert client.agent.services() == {}


def test_tagged_address_ports_are_held_to_0_to_65535_on_both_write_paths(
    registry: ThreadedRegistry, client: Any
) -> None:
    tagged = {"lan": {"Address": "10.0.0.1", "Port": 80}, "wan": {"Port": 70000}}
    text = "Invalid TaggedAddresses[wan].Port: 70000 is not a port number (0-65535)"
    response = _put(
        registry, "/v1/agent/service/register", {"Name": "web", "TaggedAddresses": tagged}
    )
    assert (response.status_code, response.text) == (400, text)
    service = {"Service": "web", "Port": 70000, "TaggedAddresses": tagged}
    body = {"Node": "ext", "Address": "10.0.0.1", "Service": service}
    response = _put(registry, "/v1/catalog/register", body)  # its own port is named first
    assert (response.status_code, response.text) == (
        400,
        "Invalid Port: 70000 is not a port number (0-65535)",
    )
    response = _put(registry, "/v1/catalog/register", body | {"Service": service | {"Port": 1}})
    assert (response.status_code, response.text) == (400, text)
    assert client.agent.services() == {} and client.catalog.node("ext")[1] is None


def test_a_null_tagged_address_is_an_empty_one_not_a_500(
    registry: ThreadedRegistry, client: Any
) -> None:
    """Go decodes null into a map's struct value as the zero struct."""
    tagged = {"lan": None}
    response = _put(
        registry,
        "/v1/agent/service/register",
        {"Name": "web", "ID": "web-1", "TaggedAddresses": tagged},
    )
    assert response.status_code == 200
    assert client.agent.services()["web-1"]["TaggedAddresses"] == {"lan": {}}
    service = {"Service": "api", "TaggedAddresses": tagged}
    body = {"Node": "ext", "Address": "10.0.0.1", "Service": service}
    assert _put(registry, "/v1/catalog/register", body).status_code == 200
    assert client.catalog.node("ext")[1]["Services"]["api"]["TaggedAddresses"] == {"lan": {}}


def test_weights_default_to_1_and_1_and_an_absent_warning_is_0(
    registry: ThreadedRegistry, client: Any
) -> None:
    """The agent refuses weights ValidateWeights refuses (BAD_REGISTRATIONS); a catalog
    write keeps them only if it accepts them, else 1/1 (Consul's ToServiceNode)."""
    client.agent.service.register("web", service_id="web-1", weights={"Passing": 3})
    assert client.agent.services()["web-1"]["Weights"] == {"Passing": 3, "Warning": 0}
    for node, weights, kept in (
        ("a", {"Passing": 5}, {"Passing": 5, "Warning": 0}),
        ("b", {"Passing": 0, "Warning": 2}, {"Passing": 1, "Warning": 1}),
        ("c", {"Passing": 70000}, {"Passing": 1, "Warning": 1}),
    ):
        service = {"Service": "api", "Weights": weights}
        body = {"Node": node, "Address": "10.0.0.1", "Service": service}
        assert _put(registry, "/v1/catalog/register", body).status_code == 200
        assert client.catalog.node(node)[1]["Services"]["api"]["Weights"] == kept


def test_non_integer_ports_fail_as_gos_decoder_fails(
    registry: ThreadedRegistry, client: Any
) -> None:
    for literal in (b"NaN", b"1e300", b"80.5"):
        status, text = raw(
            registry,
            "PUT",
            "/v1/agent/service/register",
            b'{"Name": "web", "Port": ' + literal + b"}",
        )
        assert status == 400 and text.startswith("Request decode failed: ")
    assert client.agent.services() == {}


def test_meta_through_py_consul_is_held_to_consuls_limits(client: Any) -> None:
    too_many = {f"k{i}": "v" for i in range(65)}
    with pytest.raises(consul.exceptions.BadRequest, match="more than 64 key/value pairs"):
        client.agent.service.register("web", meta=too_many)
    with pytest.raises(consul.exceptions.BadRequest, match="Value is too long"):
        client.agent.service.register("web", meta={"k": "v" * 513})
    with pytest.raises(consul.exceptions.BadRequest, match="of type string"):
        client.agent.service.register("web", meta={"k": 1})
    assert client.agent.services() == {}


def test_catalog_node_meta_must_be_strings(registry: ThreadedRegistry, client: Any) -> None:
    """py-consul sends ``node_meta`` as a query filter, so the body goes raw."""
    body = {"Node": "ext", "Address": "10.1.1.1", "NodeMeta": {"rack": 5}}
    response = _put(registry, "/v1/catalog/register", body)
    assert (response.status_code, response.text) == (
        400,
        "Request decode failed: json: cannot unmarshal number into Go struct field "
        "RegisterRequest.NodeMeta of type string",
    )
    response = _put(registry, "/v1/catalog/register", body | {"NodeMeta": {"a b": "c"}})
    assert response.status_code == 400 and "Key contains invalid characters" in response.text
    assert client.catalog.node("ext")[1] is None


def test_a_refused_catalog_registration_writes_nothing(client: Any) -> None:
    """Consul applies a registration in one transaction: a bad check leaves no node."""
    with pytest.raises(consul.exceptions.BadRequest, match="Missing service registration"):
        client.catalog.register("ext", "10.1.1.1", check={"Name": "c", "ServiceID": "nope"})
    assert client.catalog.node("ext")[1] is None


def test_check_durations_are_go_durations(client: Any, registry: ThreadedRegistry) -> None:
    with pytest.raises(consul.exceptions.BadRequest, match=r'time: invalid duration "Infinity"'):
        client.agent.service.register("web", check={"TTL": "Infinity"})
    with pytest.raises(consul.exceptions.BadRequest, match="TTL must be > 0"):
        client.agent.service.register("web", check={"TTL": "-10s"})
    status, text = raw(
        registry, "PUT", "/v1/agent/service/register", b'{"Name":"web","Check":{"TTL":Infinity}}'
    )
    assert (status, text) == (
        400,
        "Request decode failed: invalid character 'I' looking for beginning of value",
    )
    assert client.agent.services() == {}
    client.agent.service.register(
        "web",
        service_id="web-1",
        check={"HTTP": "http://127.0.0.1:9", "Interval": "10ms", "Timeout": "-1s"},
    )
    check = client.agent.checks()["service:web-1"]
    assert check["Definition"]["Interval"] == "10ms"  # kept as given; run at least 1s apart


def test_kv_values_are_limited_to_512_kib(client: Any, registry: ThreadedRegistry) -> None:
    with pytest.raises(consul.exceptions.ClientError) as raised:
        client.kv.put("big", b"x" * (512 * 1024 + 1))
    assert str(raised.value) == (
        "413 Request body(524289 bytes) too large, max size: 524288 bytes. "
        "See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
    )
    assert client.kv.put("fits", b"x" * (512 * 1024))
    assert client.kv.get("big")[1] is None


def test_kv_keys_refuse_traversal(registry: ThreadedRegistry, client: Any) -> None:
    for target, text in (
        ("/v1/kv/a/..%2fb", "URL path contains invalid or encoded traversal sequence"),
        ("/v1/kv/..", "key contains path traversal sequence"),
        ("/v1/kv/a%252e%252e%252fb", "URL path contains invalid or encoded traversal sequence"),
        ("/v1/kv/%20a", "key must not begin or end with whitespace"),
        ("/v1/kv//a", "key must not begin with a '/'"),
    ):
        assert raw(registry, "PUT", target, b"x") == (400, text)
    assert client.kv.get("", recurse=True)[1] is None


def test_kv_flags_and_cas_are_uint64s(registry: ThreadedRegistry) -> None:
    assert raw(registry, "PUT", "/v1/kv/k?cas=%C2%B2", b"x") == (
        400,
        'strconv.ParseUint: parsing "²": invalid syntax',
    )
    assert raw(registry, "PUT", "/v1/kv/k?flags=-1", b"x")[0] == 400
    assert raw(registry, "PUT", "/v1/kv/k?cas=1&acquire=s", b"x") == (
        400,
        "Conflicting flags: acquire=s&cas=1\n",
    )
    assert raw(registry, "PUT", "/v1/kv/k?acquire=s", b"x") == (400, 'Invalid session "s"')


def test_query_strings_are_read_as_go_reads_them(registry: ThreadedRegistry, client: Any) -> None:
    assert raw(registry, "GET", "/v1/health/service/web?index=%C2%B2") == (400, "Invalid index")
    assert raw(registry, "GET", "/v1/health/service/web?index=1&wait=1e3s") == (
        400,
        "Invalid wait time",
    )
    assert raw(registry, "GET", "/v1/catalog/services?a=%zz") == (400, 'invalid URL escape "%zz"')
    assert raw(registry, "GET", "/v1/catalog/services?a=1;b=2") == (
        400,
        "invalid semicolon separator in query",
    )
    assert raw(registry, "GET", "/v1/catalog/services?stale&consistent") == (
        400,
        "Cannot specify ?stale with ?consistent, conflicting semantics.",
    )
    with pytest.raises(consul.exceptions.BadRequest, match="No path to datacenter"):
        client.catalog.services(dc="dc2")
    with pytest.raises(consul.exceptions.BadRequest, match="Invalid index"):
        client.health.service("web", index="\u00b2")


def test_unknown_query_parameters_are_ignored_as_consul_ignores_them(
    client: Any, registry: ThreadedRegistry
) -> None:
    assert raw(registry, "GET", "/v1/catalog/services?whatever=1")[0] == 200


def test_a_non_printable_path_is_a_bare_400(registry: ThreadedRegistry) -> None:
    assert raw(registry, "GET", "/v1/kv/a%00b") == (400, "")


def test_any_nesting_depth_is_a_400(registry: ThreadedRegistry) -> None:
    for depth in (2_000, 10_001):
        body = b'{"Name": "web", "Meta": ' + b"[" * depth + b"]" * depth + b"}"
        status, text = raw(registry, "PUT", "/v1/agent/service/register", body)
        assert status == 400 and text.startswith("Request decode failed: ")


def test_options_and_405_name_the_methods_as_consul_does(registry: ThreadedRegistry) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=10)
    connection.request("OPTIONS", "/v1/kv/x")
    response = connection.getresponse()
    response.read()
    assert (response.status, response.getheader("Allow")) == (200, "OPTIONS,GET,PUT,DELETE")
    connection.request("POST", "/v1/kv/x")
    response = connection.getresponse()
    assert (response.status, response.read(), response.getheader("Allow")) == (
        405,
        b"method POST not allowed",
        "OPTIONS,GET,PUT,DELETE",
    )
    connection.close()


def test_an_unexpected_failure_is_a_logged_bare_500(
    registry: ThreadedRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The catch-all, reached here only by a planted bug: no client input gets there."""
    assert registry.agent is not None

    def broken() -> dict[str, Any]:
        raise RuntimeError("planted bug")

    monkeypatch.setattr(registry.agent, "local_services", broken)
    with caplog.at_level(logging.ERROR, logger="meshkit.registry"):
        assert raw(registry, "GET", "/v1/agent/services") == (500, "Internal Server Error")
    assert "planted bug" in caplog.text


def test_a_catalog_checks_definition_is_typed_not_storedraw(
    client: Any, registry: ThreadedRegistry
) -> None:
    definition = {"HTTP": "http://10.1.1.1/h", "Interval": "10s", "Timeout": 5e9, "X": [[1]]}
    body = {"Node": "ext", "Address": "10.1.1.1", "Check": {"Name": "h", "Definition": definition}}
    assert _put(registry, "/v1/catalog/register", body).ok
    check = client.health.node("ext")[1][0]
    assert check["Definition"] == {"HTTP": "http://10.1.1.1/h", "Interval": "10s", "Timeout": "5s"}
    body["Check"]["Definition"] = {"Interval": "soon"}
    response = _put(registry, "/v1/catalog/register", body | {"Node": "ext2"})
    assert (response.status_code, response.text) == (
        400,
        'Request decode failed: time: invalid duration "soon"',
    )
    assert client.catalog.node("ext2")[1] is None


def test_agent_adds_consuls_default_tagged_addresses(client: Any) -> None:
    """Consul's agent (addServiceInternal) tags an IP-addressed service lan_ipv4/wan_ipv4
    (or _ipv6), keeping any given; the catalog shows them as ServiceTaggedAddresses."""
    given = {"lan": {"address": "10.0.0.1", "port": 81}}
    client.agent.service.register("web", address="10.0.0.1", port=80, tagged_addresses=given)
    client.agent.service.register("v6", address="::1", port=80)
    client.agent.service.register("named", address="web.local", port=80)
    services = client.agent.services()
    own = {"Address": "10.0.0.1", "Port": 80}
    assert services["web"]["TaggedAddresses"] == {
        "lan": {"Address": "10.0.0.1", "Port": 81},
        "lan_ipv4": own,
        "wan_ipv4": own,
    }
    assert set(services["v6"]["TaggedAddresses"]) == {"lan_ipv6", "wan_ipv6"}
    assert "TaggedAddresses" not in services["named"]
    (entry,) = client.catalog.service("web")[1]
    assert entry["ServiceTaggedAddresses"] == services["web"]["TaggedAddresses"]
