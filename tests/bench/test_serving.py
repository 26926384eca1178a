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
def test_the_app_side_answers_every_call(server: str) -> None:
    """What --callgrind --app counts: every call, with a mesh client's headers (a
    deadline, a trace parent), answered 200 by M's callee or the bare app."""
    done = subprocess.run(
        [sys.executable, "-m", "bench._serving_app", server, "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert f"{server}: 550 of 550 calls answered 200" in done.stdout


@pytest.mark.parametrize("server", ["meshkit", "bare"])
def test_the_protocol_side_answers_every_request(server: str) -> None:
    """What --callgrind --protocol counts: every request, fed as bytes to the server's
    HTTP protocol (meshkit's or uvicorn's), answered 200."""
    done = subprocess.run(
        [sys.executable, "-m", "bench._serving_protocol", server, "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert f"{server}: 550 of 550 requests answered 200" in done.stdout
