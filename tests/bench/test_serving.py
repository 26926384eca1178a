"""bench/serving.py stays alive: a tiny real run of both servers, its JSON line, and the
in-process app calls its --app mode counts. No timing assertions."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.bench._run import ROOT, bench_figures

pytestmark = pytest.mark.timeout(180)
TINY = ("--rounds", "1", "--duration", "0.3", "--warmup", "0.2", "--concurrency", "2")


def test_a_tiny_run_measures_both_servers_with_a_mesh_clients_headers() -> None:
    figures, _ = bench_figures([sys.executable, "-m", "bench.serving", *TINY], timeout=150)
    assert figures["cpu_us_per_request_bare"] > 0
    assert figures["cpu_us_per_request_meshkit"] > 0
    assert figures["ratio_cpu_meshkit_over_bare"] > 0


@pytest.mark.parametrize("server", ["meshkit", "bare"])
@pytest.mark.parametrize(
    ("module", "answered"),
    [
        ("bench._serving_app", "550 of 550 calls"),
        ("bench._serving_protocol", "550 of 550 requests"),
    ],
)
def test_the_in_process_counts_answer_every_request(
    server: str, module: str, answered: str
) -> None:
    """What --callgrind --app and --protocol count: every call with a mesh client's headers
    (a deadline, a trace parent) answered 200 by M's callee or the bare app, called in
    process (--app) or fed as bytes through the server's HTTP protocol (--protocol)."""
    done = subprocess.run(
        [sys.executable, "-m", module, server, "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert f"{server}: {answered} answered 200" in done.stdout
