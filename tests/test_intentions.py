from __future__ import annotations

import json
import socket

import anyio
import consul
import pytest

from meshkit import cli
from meshkit.errors import ConfigError, RegistryUnavailable
from meshkit.policy.intentions import (
    Intention,
    Intentions,
    IntentionStore,
    IntentionWatcher,
    consul_client,
)
from meshkit.settings import MeshSettings
from meshkit.testing import RegistryProcess


def _store(address: str) -> IntentionStore:
    return IntentionStore(consul_client(MeshSettings(consul_http_addr=address)))


def _closed_port_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_most_specific_intention_wins() -> None:
    rules = Intentions(
        [
            Intention("*", "*", "deny"),
            Intention("*", "payments", "deny"),
            Intention("web", "payments", "allow"),
            Intention("cart", "*", "allow"),
        ]
    )
    assert rules.action("web", "payments") == "allow"
    assert rules.action("cart", "payments") == "deny"  # exact destination beats * destination
    assert rules.action("cart", "inventory") == "allow"
    assert rules.action("batch", "inventory") == "deny"
    assert rules.action(None, "payments") == "deny"  # unnamed callers meet * rules only
    assert Intentions().action("web", "payments") is None


@pytest.mark.parametrize(("src", "dst", "action"), [("Web", "p", "allow"), ("w", "p", "maybe")])
def test_invalid_intentions_are_refused(src: str, dst: str, action: str) -> None:
    with pytest.raises(ConfigError):
        Intention(src, dst, action)  # type: ignore[arg-type]


def test_store_round_trip_against_the_dev_registry(dev_registry: RegistryProcess) -> None:
    address = dev_registry.address
    kv = consul.Consul(host="127.0.0.1", port=int(address.split(":")[1])).kv
    store = _store(address)
    assert store.rules() == []
    store.set(Intention("web", "payments", "allow"))
    store.set(Intention("*", "payments", "deny"))
    kv.put("meshkit/intentions/payments/cart", "perhaps")  # ignored with a warning
    assert store.rules() == [
        Intention("*", "payments", "deny"),
        Intention("web", "payments", "allow"),
    ]
    store.delete("web", "payments")
    index, rules = store.fetch()
    assert rules == [Intention("*", "payments", "deny")]
    assert index == int(kv.get("meshkit/intentions/", recurse=True)[0])


def test_store_translates_an_unreachable_registry() -> None:
    with pytest.raises(RegistryUnavailable):
        _store(_closed_port_address()).rules()


@pytest.mark.anyio
async def test_watcher_follows_changes_live(dev_registry: RegistryProcess) -> None:
    store = _store(dev_registry.address)
    store.set(Intention("web", "payments", "allow"))
    intentions = Intentions()
    watcher = IntentionWatcher(store, intentions, wait=5)
    async with anyio.create_task_group() as tasks:
        await tasks.start(watcher.run)
        assert list(intentions) == [Intention("web", "payments", "allow")]
        await anyio.to_thread.run_sync(store.set, Intention("web", "payments", "deny"))
        with anyio.fail_after(10):
            while intentions.action("web", "payments") != "deny":  # noqa: ASYNC110 - polling is the point
                await anyio.sleep(0.01)
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_watcher_keeps_the_last_rules_while_the_registry_is_down() -> None:
    intentions = Intentions([Intention("web", "payments", "deny")])
    watcher = IntentionWatcher(_store(_closed_port_address()), intentions, wait=1)
    async with anyio.create_task_group() as tasks:
        await tasks.start(watcher.run)  # returns after the first (failed) attempt
        assert intentions.action("web", "payments") == "deny"
        tasks.cancel_scope.cancel()


def test_intentions_cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    dev_registry: RegistryProcess,
) -> None:
    address = dev_registry.address
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"http://{address}")
    assert cli.main(["intentions", "list"]) == 0
    assert capsys.readouterr().out == "no intentions\n"
    assert cli.main(["intentions", "allow", "web", "payments"]) == 0
    assert cli.main(["intentions", "deny", "*", "payments"]) == 0
    capsys.readouterr()
    assert cli.main(["intentions", "list"]) == 0
    assert capsys.readouterr().out == "* -> payments: deny\nweb -> payments: allow\n"
    assert cli.main(["intentions", "delete", "*", "payments"]) == 0
    capsys.readouterr()
    assert cli.main(["intentions", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [{"source": "web", "destination": "payments", "action": "allow"}]
    assert cli.main(["intentions", "allow", "Web!", "payments"]) == 1
    assert "source must be a service name" in capsys.readouterr().err
    monkeypatch.setenv("CONSUL_HTTP_ADDR", _closed_port_address())
    assert cli.main(["intentions", "list"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("meshkit: error: registry unreachable") and error.count("\n") == 1


def test_policy_export_prints_a_stable_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policy", "export", "tests.middleware.shop_app:app"]) == 0
    first = capsys.readouterr().out
    assert cli.main(["policy", "export", "tests.middleware.shop_app:app"]) == 0
    assert capsys.readouterr().out == first
    manifest = json.loads(first)
    paths = {(entry["path"], entry["method"]) for entry in manifest["routes"]}
    assert ("/pay", "POST") in paths and ("/refunds", "POST") in paths
    assert len(paths) == len(manifest["routes"])
    assert manifest["default_policy"] == "allow-mesh"
    assert (
        cli.main(["policy", "export", "--default-policy", "deny", "tests.middleware.shop_app:app"])
        == 0
    )
    denied = json.loads(capsys.readouterr().out)
    plain = next(e for e in denied["routes"] if e["path"] == "/plain")
    assert plain["access"] == "intentions-only"
    assert cli.main(["policy", "export", "tests.nowhere:app"]) == 1
    assert cli.main(["policy", "export", "tests.middleware.shop_app"]) == 1


def test_consul_client_follows_settings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-environment")
    client = consul_client(MeshSettings(consul_http_addr="https://consul.internal:8501"))
    assert client.http.base_uri == "https://consul.internal:8501"
    assert client.token is None
    client = consul_client(MeshSettings(consul_http_addr="10.0.0.5", consul_token="t"))
    assert (client.http.base_uri, client.token) == ("http://10.0.0.5:8500", "t")
    with pytest.raises(ConfigError):
        consul_client(MeshSettings(consul_http_addr=None))
