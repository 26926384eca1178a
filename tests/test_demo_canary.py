"""``meshkit demo --canary``: its pure parts, then a short run of the real shop."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from meshkit.demo.canary import (
    PHASES,
    VersionBoard,
    phase_at,
    phase_results,
    version_table,
)
from meshkit.demo.run import DemoOptions
from meshkit.demo.traffic import TrafficStats
from meshkit.telemetry.metrics import MeshMetrics
from meshkit.testing.supervisor import Supervisor
from tests._demo import run_local_demo

pytestmark = pytest.mark.timeout(120)


def test_phases_split_the_run_and_sum_to_100() -> None:
    assert [phase_at(t, 50.0) for t in (0, 9.9, 10, 49, 60)] == [0, 0, 1, 4, 4]
    for phase in PHASES:
        assert sum(split["Weight"] for split in phase.splitter()["Splits"]) == 100


def client_scrape(counts: dict[str, tuple[int, int]], destination: str = "inventory") -> str:
    """A caller's exposition: (calls, failed calls) per subset of ``destination``."""
    metrics = MeshMetrics()
    for subset, (calls, failed) in counts.items():
        for n in range(calls):
            status = 500 if n < failed else 200
            # As the client's telemetry records a call: through its series.
            metrics.client_series("GET", destination, status, "", subset)[1].observe(0.001)
    return generate_latest(metrics.registry).decode()


def test_version_board_counts_each_window_per_version_from_the_callers() -> None:
    board = VersionBoard()
    first = board.update(
        {
            "web-1": client_scrape({"stable": (6, 0), "canary": (2, 1)}),
            "cart-1": client_scrape({"stable": (4, 0)}),
            "orders-1": client_scrape({"stable": (99, 0)}, destination="payments"),
        }
    )
    assert {v: (h.count, h.errors) for v, h in first.items()} == {
        "stable": (10, 0),
        "2.0.0": (2, 1),
    }
    second = board.update(
        {
            "web-1": client_scrape({"stable": (9, 0), "canary": (2, 1)}),
            "cart-1": client_scrape({"stable": (4, 0)}),
        }
    )
    assert second["stable"].count == 3
    assert second["2.0.0"].count == 0
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
    options = DemoOptions(duration=20.0, rate=8.0, interval=1.0, kill=False, canary=True)
    with Supervisor(tmp_path / "logs", stop_timeout=10) as supervisor:
        code, text = run_local_demo(options, supervisor, tmp_path, registry_env)
    assert code == 0
    for phase in PHASES:
        assert f"splitter written: {phase.name}" in text
    # 2.0.0 served part of some window: the splitter reached web's and cart's clients.
    shares = [float(m) for m in re.findall(r"  2\.0\.0\s+([\d.]+)%", text)]
    assert max(shares) > 0, text
    summary = text.split("demo-user's success per phase:")[-1]
    assert re.search(r"2\.0\.1 rolled back\s+demo-user\s+\d+ requests,\s+100\.00% ok", summary)
