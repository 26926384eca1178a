"""``meshkit config write|read|list|delete`` against a dev registry, as ``consul config``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshkit.cli import main
from tests.registry.conftest import ThreadedRegistry

SPLITTER = {
    "Kind": "service-splitter",
    "Name": "inventory",
    "Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}],
}


@pytest.fixture
def env(own_registry: ThreadedRegistry, monkeypatch: pytest.MonkeyPatch) -> ThreadedRegistry:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", own_registry.address)
    # As on Consul: a splitter needs the service's protocol to be HTTP-based.
    own_registry.client().config.set("service-defaults", "inventory", {"Protocol": "http"})
    return own_registry


def test_write_read_list_delete(
    env: ThreadedRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = tmp_path / "splitter.json"
    entry.write_text(json.dumps(SPLITTER))
    assert main(["config", "write", str(entry)]) == 0
    assert capsys.readouterr().out == "Config entry written: service-splitter/inventory\n"
    assert env.client().config.get("service-splitter", "inventory")["Splits"][1]["Weight"] == 10
    assert main(["config", "read", "--kind", "service-splitter", "--name", "inventory"]) == 0
    assert json.loads(capsys.readouterr().out)["Name"] == "inventory"
    assert main(["config", "list", "--kind", "service-splitter"]) == 0
    assert capsys.readouterr().out == "inventory\n"
    assert main(["config", "delete", "--kind", "service-splitter", "--name", "inventory"]) == 0
    assert env.client().config.get("service-splitter", "inventory") is None


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("{not json", "not JSON"),
        ("[]", "expected one config entry"),
        ('{"Kind": "service-splitter"}', "needs a Kind and a Name"),
        (json.dumps({**SPLITTER, "Splits": [{"Weight": 50}]}), "must be 100, not 50.000000"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    env: ThreadedRegistry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    text: str,
) -> None:
    entry = tmp_path / "entry.json"
    entry.write_text(content)
    assert main(["config", "write", str(entry)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err, err


def test_missing_file_is_one_line(
    env: ThreadedRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "write", "/nonexistent/entry.json"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err


def test_policy_export_includes_the_routing_per_destination(
    env: ThreadedRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = tmp_path / "splitter.json"
    entry.write_text(json.dumps(SPLITTER))
    assert main(["config", "write", str(entry)]) == 0
    resolver = {"Kind": "service-resolver", "Name": "inventory", "DefaultSubset": "v1"}
    entry.write_text(json.dumps({**resolver, "Subsets": {"v1": {}, "v2": {}}}))
    assert main(["config", "write", str(entry)]) == 0
    capsys.readouterr()
    assert main(["policy", "export", "--routing", "tests.middleware.shop_app:app"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    routing = manifest["routing"]["inventory"]
    assert set(routing) == {"service-splitter", "service-resolver"}
    assert routing["service-resolver"]["DefaultSubset"] == "v1"
    assert "ModifyIndex" not in routing["service-splitter"]
    assert set(manifest) > {"routing"}  # the app's own policies are still there


def test_split_writes_a_splitter_in_one_line(
    env: ThreadedRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["split", "inventory", "v1=90", "v2=10"]) == 0
    assert capsys.readouterr().out.endswith("(v1 90%, v2 10%)\n")
    splits = env.client().config.get("service-splitter", "inventory")["Splits"]
    assert [(s["ServiceSubset"], s["Weight"]) for s in splits] == [("v1", 90), ("v2", 10)]
    assert main(["split", "inventory", "v1=90", "v2=5"]) == 1  # Consul's sum check
    assert "must be 100, not 95.000000" in capsys.readouterr().err
    assert main(["split", "inventory", "v1"]) == 1
    assert "expected SUBSET=WEIGHT" in capsys.readouterr().err


def test_route_writes_a_router_in_one_line(
    env: ThreadedRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    first = ["route", "inventory", "--header", "x-canary=1", "--subset", "v2"]
    assert main(first) == 0
    assert capsys.readouterr().out.endswith("(route to v2)\n")
    legacy = ["--path-prefix", "/legacy/", "--method", "get", "--query", "debug"]
    legacy += ["--to-service", "catalog", "--prefix-rewrite", "/", "--timeout", "2s"]
    assert main(["route", "inventory", *legacy, "--retries", "2", "--append"]) == 0
    routes = env.client().config.get("service-router", "inventory")["Routes"]
    assert routes[0] == {
        "Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
        "Destination": {"ServiceSubset": "v2"},
    }
    assert routes[1]["Match"]["HTTP"] == {
        "PathPrefix": "/legacy/",
        "Methods": ["GET"],
        "QueryParam": [{"Name": "debug", "Present": True}],
    }
    assert routes[1]["Destination"] == {
        "Service": "catalog",
        "PrefixRewrite": "/",
        "RequestTimeout": "2s",
        "NumRetries": 2,
    }
    assert main(first) == 0  # without --append: the router is this one route again
    assert len(env.client().config.get("service-router", "inventory")["Routes"]) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--header", "x=1"], "--subset or --to-service"),
        (["--header", "=1", "--subset", "v2"], "expected NAME or NAME=VALUE"),
        (["--path-prefix", "legacy", "--subset", "v2"], "doesn't start with"),  # registry
    ],
)
def test_route_refuses_bad_input_in_one_line(
    env: ThreadedRegistry, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["route", "inventory", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
