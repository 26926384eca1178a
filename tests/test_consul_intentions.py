"""Authorization from Consul's intentions (``MESHKIT_INTENTIONS=consul``), over real
processes: a dev registry, a ServiceApp with decorated routes, callers with their own
certificates. Intentions are written through py-consul, as an operator's tools would."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import consul
import pytest

from meshkit import cli
from meshkit.testing import Mesh, RegistryProcess
from meshkit.testing.processes import Connection, ServiceProcess

APP = "tests.apps.guarded:app"
CONSUL_SOURCE = {"MESHKIT_INTENTIONS": "consul"}
KIND = "service-intentions"
#: The issue's target: an intention change is in force within a second.
APPLIED_WITHIN = 1.0


def _registry(mesh: Mesh) -> Any:
    host, port = mesh.registry.address.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port))


def _until(connection: Connection, path: str, status: int) -> float:
    """Seconds until ``path`` answers ``status``, polling; fails past APPLIED_WITHIN."""
    started = time.monotonic()
    while True:
        if connection.get(path)[0] == status:
            return time.monotonic() - started
        elapsed = time.monotonic() - started
        assert elapsed < APPLIED_WITHIN, f"{path} still not {status} after {elapsed:.3f}s"
        time.sleep(0.005)


def _start(mesh: Mesh) -> ServiceProcess:
    (payments,) = mesh.start(APP, "payments", env=CONSUL_SOURCE)
    return payments


def test_an_intention_change_is_in_force_within_a_second(mesh: Mesh) -> None:
    payments = _start(mesh)
    web = mesh.connect(payments, as_="web")
    assert web.get("/items") == (200, {"caller": "web"})  # Consul's default: allow

    intentions = _registry(mesh).connect.intentions
    intentions.upsert("web", "payments", action="deny")
    denied_after = _until(web, "/items", 403)
    assert mesh.connect(payments, as_="cart").get("/items")[0] == 200  # only web's changed

    intentions.upsert("web", "payments", action="allow")
    allowed_after = _until(web, "/items", 200)
    print(f"intention change in force after {denied_after:.3f}s (deny), {allowed_after:.3f}s")


def test_l7_permissions_by_path_method_and_header(mesh: Mesh) -> None:
    payments = _start(mesh)
    web_rules = [
        {"Action": "deny", "HTTP": {"PathPrefix": "/items/", "Methods": ["DELETE"]}},
        {"Action": "deny", "HTTP": {"Header": [{"Name": "X-Debug", "Present": True}]}},
        {"Action": "allow", "HTTP": {"PathRegex": "/items(/[0-9]+)?"}},
    ]
    sources = [{"Name": "web", "Permissions": web_rules}, {"Name": "*", "Action": "deny"}]
    _registry(mesh).config.set(KIND, "payments", {"Sources": sources})
    web = mesh.connect(payments, as_="web")
    _until(web, "/items/3", 200)  # the entry is in force (web matched its L7 intention)
    _until(mesh.connect(payments, as_="cart"), "/items", 403)  # and * denies the others

    assert web.request("GET", "/items")[0] == 200
    assert web.request("POST", "/items")[0] == 200
    assert web.request("DELETE", "/items/3")[0] == 403  # the first matching permission
    assert web.request("GET", "/items", headers={"X-Debug": "1"})[0] == 403
    # No permission matches: the default (allow) decides, then the decorators.
    assert web.request("GET", "/admin")[0] == 403  # @deny("web") wins
    assert web.request("GET", "/internal")[0] == 403  # @allow("ops") only

    ops = mesh.connect(payments, as_="ops")
    assert ops.get("/internal")[0] == 403  # @allow("ops"), but the * intention denies


def test_a_permission_whose_regex_does_not_compile_fails_closed(mesh: Mesh) -> None:
    """Consul stores the entry (it compiles no regex); the service neither lets web in
    by the inverted header test on a broken pattern nor lets cart past the broken deny,
    and says so once in its log however many requests meet the permission."""
    payments = _start(mesh)
    web_rules = [
        {"Action": "allow", "HTTP": {"Header": [{"Name": "X-Env", "Regex": "(", "Invert": True}]}},
        {"Action": "deny", "HTTP": {"PathPrefix": "/items"}},
    ]
    cart_rules = [
        {"Action": "deny", "HTTP": {"PathRegex": "/items/("}},
        {"Action": "allow", "HTTP": {"PathPrefix": "/"}},
    ]
    sources = [
        {"Name": "web", "Permissions": web_rules},
        {"Name": "cart", "Permissions": cart_rules},
        {"Name": "ops", "Action": "deny"},
    ]
    _registry(mesh).config.set(KIND, "payments", {"Sources": sources})
    _until(mesh.connect(payments, as_="ops"), "/items", 403)  # the entry is in force

    web, cart = mesh.connect(payments, as_="web"), mesh.connect(payments, as_="cart")
    for _ in range(3):
        assert web.get("/items")[0] == 403  # failing open, the inverted test allowed it
        assert web.get("/items", headers={"X-Env": "prod"})[0] == 403
        assert cart.get("/items")[0] == 403  # failing open, the allow after it decided
    warnings = [line for line in payments.lines if "does not compile" in line]
    assert len(warnings) == 2, warnings
    assert "default/web -> default/payments: regex '(' does not compile" in warnings[0]
    assert "default/cart -> default/payments: regex '/items/(' does not compile" in warnings[1]


def test_default_deny_from_consuls_acl_default(tmp_path: Path) -> None:
    with Mesh(tmp_path / "mesh", registry_args=("--acl-default-policy", "deny")) as mesh:
        payments = _start(mesh)
        web = mesh.connect(payments, as_="web")
        assert web.get("/items")[0] == 403  # no intention: Consul's default denies
        _registry(mesh).connect.intentions.upsert("web", "payments", action="allow")
        _until(web, "/items", 200)
        assert mesh.connect(payments, as_="cart").get("/items")[0] == 403
        assert web.get("/admin")[0] == 403  # the decorator's deny still wins


@pytest.mark.parametrize("status", [403])
def test_meshkit_intentions_are_not_consulted_in_consul_mode(mesh: Mesh, status: int) -> None:
    """With Consul as the source, meshkit's KV rules do not widen or narrow anything."""
    payments = _start(mesh)
    registry = _registry(mesh)
    registry.kv.put("meshkit/intentions/payments/web", "deny")
    registry.connect.intentions.upsert("web", "payments", action="allow")
    registry.connect.intentions.upsert("cart", "payments", action="deny")
    web, cart = mesh.connect(payments, as_="web"), mesh.connect(payments, as_="cart")
    _until(cart, "/items", status)
    assert web.get("/items")[0] == 200


def test_intentions_cli_reads_and_writes_consuls_intentions(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    dev_registry: RegistryProcess,
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"http://{dev_registry.address}")
    monkeypatch.setenv("MESHKIT_INTENTIONS", "consul")
    assert cli.main(["intentions", "allow", "web", "payments"]) == 0
    assert cli.main(["intentions", "deny", "*", "payments"]) == 0
    host, port = dev_registry.address.rsplit(":", 1)
    registry = consul.Consul(host=host, port=int(port))
    entry = registry.config.get(KIND, "payments")  # the same data as the config entry
    assert [(s["Name"], s["Action"]) for s in entry["Sources"]] == [("web", "allow"), ("*", "deny")]
    permission = {"Action": "allow", "HTTP": {"PathPrefix": "/api"}}
    registry.config.set(KIND, "orders", {"Sources": [{"Name": "web", "Permissions": [permission]}]})
    capsys.readouterr()

    assert cli.main(["intentions", "list"]) == 0
    assert capsys.readouterr().out == (
        "web -> orders: 1 L7 permissions\nweb -> payments: allow\n* -> payments: deny\n"
    )
    assert cli.main(["intentions", "delete", "web", "payments"]) == 0
    capsys.readouterr()
    assert cli.main(["intentions", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"source": "web", "destination": "orders", "action": "L7", "permissions": [permission]},
        {"source": "*", "destination": "payments", "action": "deny"},
    ]
    assert cli.main(["intentions", "allow", "we*b", "payments"]) == 1  # Consul's refusal
    error = capsys.readouterr().err
    assert "wildcard character '*' cannot be used with partial values" in error
    assert error.count("\n") == 1


def test_namespaces_scope_intentions(mesh: Mesh) -> None:
    """An entry in namespace "shop" names shop's callers; the same name elsewhere is
    another service (Consul Enterprise's namespaces, which meshkit's IDs carry)."""
    (payments,) = mesh.start(APP, "payments", env=CONSUL_SOURCE, namespace="shop")
    entry = {"Namespace": "shop", "Sources": [{"Name": "web", "Action": "deny"}]}
    _registry(mesh).config.set(KIND, "payments", entry)
    shop_web = mesh.connect(payments, as_="web")  # the process's namespace: shop
    _until(shop_web, "/items", 403)
    other_web = mesh.connect(payments, as_="web", namespace="default")
    # Not shop's web: no intention applies, and both defaults (Consul's allow, meshkit's
    # allow-mesh: any identity of the trust domain) let it in.
    assert other_web.get("/items")[0] == 200
