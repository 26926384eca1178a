"""``meshkit top SERVICE`` over a real mesh: what the service serves, per caller and route."""

from __future__ import annotations

import json

import pytest

from meshkit.cli import main
from meshkit.testing import Mesh
from tests.observe.helpers import Traffic


@pytest.fixture
def registry(mesh: Mesh) -> str:
    mesh.start("tests.apps.upstream:app", "upstream", instances=2)
    return mesh.registry.address


def _top(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["top", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_rows_per_caller_and_route(
    mesh: Mesh, registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (caller,) = mesh.start("tests.apps.caller:app", "caller")
    with Traffic(mesh.connect(caller, as_="tester")):
        args = ("upstream", "--registry", registry, "--once", "--output", "json")
        code, out, _ = _top(capsys, *args, "--interval", "1")
    assert code == 0
    report = json.loads(out)
    assert report["service"] == "upstream" and report["window_seconds"] > 0
    (row,) = report["rows"]
    assert (row["caller"], row["method"], row["route"]) == ("caller", "GET", "/work")
    assert row["requests"] > 0 and row["rps"] > 0 and row["success"] == 1.0
    assert 0 < row["p50_ms"] <= row["p99_ms"]


def test_table_shows_each_caller_of_the_service(
    mesh: Mesh, registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (caller,) = mesh.start("tests.apps.caller:app", "caller")
    with Traffic(mesh.connect(caller, as_="tester")):
        code, out, _ = _top(capsys, "caller", "--registry", registry, "--once", "--interval", "1")
    assert code == 0
    title, header, *rows = out.splitlines()
    assert title.startswith("caller: requests served over the last")
    assert header.split()[:3] == ["caller", "method", "route"]
    assert [row.split()[:3] for row in rows] == [["tester", "GET", "/call"]]


def test_an_idle_service_has_no_rows(registry: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _top(capsys, "upstream", "--registry", registry, "--once", "--interval", "0.2")
    assert code == 0 and out.splitlines()[1] == "(no requests)"


def test_an_unknown_service_is_one_line_and_exit_1(
    registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _top(capsys, "nosuch", "--registry", registry, "--once")
    assert code == 1 and out == ""
    assert err == "meshkit: error: no service 'nosuch' in the registry (services: upstream)\n"


def test_an_unreachable_registry_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _top(capsys, "upstream", "--registry", "127.0.0.1:1", "--once")
    assert code == 1
    assert err.startswith("meshkit: error: consul at http://127.0.0.1:1") and err.count("\n") == 1


def test_a_bad_interval_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _top(capsys, "upstream", "--interval", "0", "--once")
    assert code == 1 and "--interval 0.0" in err
