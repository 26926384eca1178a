"""The memory benchmark stays alive: a tiny real run of M's and N's processes, its figures
and its import stages exist, and every process it started is gone."""

from __future__ import annotations

import sys

import pytest

from tests._procs import gone
from tests.bench._run import bench_figures
from tests.bench.test_mesh import started_pids

pytestmark = pytest.mark.timeout(120)
PROCESSES = {"M caller", "M callee", "N caller", "N callee"}
TINY = ("--concurrency", "4", "--duration", "0.2", "--warmup", "0.1")


def test_a_tiny_run_measures_every_process_and_every_import_stage() -> None:
    line, done = bench_figures([sys.executable, "-m", "bench.memory", *TINY], timeout=110)
    figures = line["processes"]
    assert set(figures) == PROCESSES | {"requests"}
    for process in PROCESSES:
        ready, loaded = figures[process]["ready"], figures[process]["after c4"]
        assert 0 < ready["rss_mb"] <= ready["peak_mb"] <= loaded["peak_mb"]
        assert loaded["anon_mb"] > 0 and loaded["file_mb"] > 0 and loaded["threads"] >= 1
    assert line["extra_rss_mb_M_over_N"] == max(
        line["extra_rss_mb_M_over_N_caller"], line["extra_rss_mb_M_over_N_callee"]
    )
    stages = [row["stage"] for row in line["imports_meshkit"]]
    assert stages[0] == "interpreter" and stages[-1] == "the app (bench._apps)"
    assert all(row["rss_mb"] > 0 for row in line["imports_bare"])
    assert all(gone(pid) for pid in started_pids(done.stderr))
