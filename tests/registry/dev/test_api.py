"""The dev registry through py-consul, unchanged, over real HTTP: what py-consul's docs say
Consul answers."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import consul
import consul.exceptions
import pytest
import requests

from tests.registry.conftest import HealthzServer, ThreadedRegistry, wait_until


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
        {"Name": "web", "Check": {"TTL": "soon"}},
        'Request decode failed: time: invalid duration "soon"',
    ),
    (
        {"Name": "web", "Port": "80"},
        "Request decode failed: json: cannot unmarshal string "
        "into Go struct field ServiceDefinition.Port of type int",
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


def test_ttl_update_on_a_non_ttl_check_is_a_500(client: Any, registry: ThreadedRegistry) -> None:
    client.agent.service.register(
        "web", service_id="web-1", check=consul.Check.http("http://127.0.0.1:9", "10s")
    )
    response = _put(registry, "/v1/agent/check/pass/service:web-1", "")
    assert (response.status_code, response.text) == (
        500,
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
    assert response.status_code == 500
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


def test_kv_raw(client: Any, registry: ThreadedRegistry) -> None:
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


def test_catalog_register_refusals_are_rpc_errors(registry: ThreadedRegistry) -> None:
    response = _put(registry, "/v1/catalog/register", {"Address": "10.0.0.1"})
    assert (response.status_code, response.text) == (500, "Must provide node")


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
