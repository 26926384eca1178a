"""``meshkit demo --canary``: its pure parts, then a short run of the real shop."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from meshkit.demo.canary import (
    PHASES,
    VersionBoard,
    phase_at,
    phase_results,
    version_table,
)
from meshkit.demo.run import DemoOptions, Display, LocalIdentities, run_demo
from meshkit.demo.traffic import TrafficStats
from meshkit.observe.golden import Edge, Histogram
from meshkit.testing.supervisor import Supervisor

pytestmark = pytest.mark.timeout(120)


def test_phases_split_the_run_and_sum_to_100() -> None:
    assert [phase_at(t, 50.0) for t in (0, 9.9, 10, 49, 60)] == [0, 0, 1, 4, 4]
    for phase in PHASES:
        assert sum(split["Weight"] for split in phase.splitter()["Splits"]) == 100


def test_version_board_counts_each_window_per_version() -> None:
    board = VersionBoard({"inventory-1": "stable", "inventory-v2": "2.0.0"})
    edge = Edge("web", "inventory")
    first = board.update(
        {
            "inventory-1": {edge: Histogram(count=10, errors=0)},
            "inventory-v2": {edge: Histogram(count=2, errors=1)},
            "cart-1": {Edge("web", "cart"): Histogram(count=99)},  # not inventory
        }
    )
    assert {v: (h.count, h.errors) for v, h in first.items()} == {
        "stable": (10, 0),
        "2.0.0": (2, 1),
    }
    second = board.update({"inventory-1": {edge: Histogram(count=13)}})
    assert second["stable"].count == 3
    assert "2.0.0" not in second
    table = version_table(first)
    assert re.search(r"2\.0\.0\s+16\.7%\s+2\s+50\.00", table)


def test_phase_results_are_what_each_phase_added() -> None:
    stats = TrafficStats(requests=30, failures=2)
    results = phase_results([(PHASES[0], 0, 0), (PHASES[3], 10, 0), (PHASES[4], 20, 2)], stats)
    assert [(r.requests, r.failures) for r in results] == [(10, 0), (10, 2), (10, 0)]
    assert "80.00% ok" in results[1].line()


def test_a_short_canary_run_moves_traffic_and_rolls_back(
    tmp_path: Path, registry_env: dict[str, str]
) -> None:
    out = io.StringIO()
    options = DemoOptions(duration=20.0, rate=8.0, interval=1.0, kill=False, canary=True)
    with Supervisor(tmp_path / "logs", stop_timeout=10) as supervisor:
        code = run_demo(
            options,
            supervisor,
            tmp_path,
            Display(out, interactive=False),
            mesh=lambda s, d: (LocalIdentities(), registry_env),
        )
    assert code == 0
    text = out.getvalue()
    for phase in PHASES:
        assert f"splitter written: {phase.name}" in text
    # 2.0.0 served part of some window: the splitter reached web's and cart's clients.
    shares = [float(m) for m in re.findall(r"  2\.0\.0\s+([\d.]+)%", text)]
    assert max(shares) > 0, text
    summary = text.split("demo-user's success per phase:")[-1]
    assert re.search(r"2\.0\.1 rolled back\s+demo-user\s+\d+ requests,\s+100\.00% ok", summary)
