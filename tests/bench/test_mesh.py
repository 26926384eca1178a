"""The mesh benchmark harness stays alive: tiny real runs, the output schema, cleanup.

No timing assertions: only that every cell measured something and the figures exist.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import _profile as profile
from bench import _report as report
from bench._envoy import Identity, client_sidecar_config, server_sidecar_config
from bench._paths import spiffe
from bench.mesh import envoy_missing, extra_rss
from tests._procs import gone
from tests.bench._run import ROOT, bench_figures

pytestmark = pytest.mark.timeout(120)
TINY = ["--concurrency", "1,4", "--duration", "0.2", "--warmup", "0.1", "--repetitions", "1"]
BENCH = (sys.executable, "bench/mesh.py")
LOADGEN = (sys.executable, "-m", "bench._loadgen")
WAIT = ("--ready-timeout", "0.3")
STARTED = re.compile(r"^started (\w+): \S+ (\{.*\})$", re.MULTILINE)


def run_bench(*args: str, out: Path) -> tuple[dict[str, Any], str, str]:
    figures, done = bench_figures([*BENCH, *args, "--out", str(out), "--no-plot"], timeout=100)
    return figures, done.stdout, done.stderr


def started_pids(stderr: str) -> list[int]:
    pids: list[int] = []
    for match in STARTED.finditer(stderr):
        pids += [int(pid) for pid in re.findall(r": (\d+)", match[2])]
    return pids


def test_a_b_and_m1_produce_every_output(tmp_path: Path) -> None:
    line, stdout, stderr = run_bench("--paths", "A,B,M1", *TINY, out=tmp_path)
    for n in (1, 4):
        for path in ("A", "B", "M1"):
            assert line[f"rps_{path}_c{n}"] > 0
            assert line[f"p99_ms_{path}_c{n}"] > 0
        assert line[f"ratio_cpu_M1_over_B_c{n}"] is not None
        # M, C, N and S were not asked for: their keys exist, empty.
        for key in ("ratio_cpu_M_over_B", "ratio_cpu_M_over_N", "p99_ms_M", "p99_ms_C"):
            assert line[f"{key}_c{n}"] is None
    assert line["extra_rss_mb_M1_over_B"] is not None
    document = json.loads((tmp_path / "mesh.json").read_text())
    assert set(document["summary"]) == {"A", "B", "M1"}
    assert document["machine"]["nproc"] >= 1
    cell = document["cells"][0]
    for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_s_per_1k", "client_cpu_s_per_1k"):
        assert cell[key] is not None
    assert cell["errors"] == 0
    assert set(document["peak_rss_mb"]["M1"]) >= {"callee"}
    table = (tmp_path / "mesh.md").read_text()
    assert "| M1 | 4 |" in table and table in stdout
    pids = started_pids(stderr)
    assert len(pids) == 3
    assert all(gone(pid) for pid in pids)


@pytest.mark.skipif(envoy_missing() is not None, reason=f"Envoy: {envoy_missing()}")
def test_envoy_sidecar_path_serves_through_mtls(tmp_path: Path) -> None:
    line, _, stderr = run_bench("--paths", "C", *TINY, out=tmp_path)
    assert line["rps_C_c4"] > 0 and line["p99_ms_C_c4"] > 0
    document = json.loads((tmp_path / "mesh.json").read_text())
    assert set(document["peak_rss_mb"]["C"]) == {"envoy-client", "envoy-server", "uvicorn"}
    assert all(cell["errors"] == 0 for cell in document["cells"])
    assert all(gone(pid) for pid in started_pids(stderr))


def test_meshkit_path_calls_through_the_mesh_client(tmp_path: Path) -> None:
    line, _, stderr = run_bench("--paths", "M1,M", *TINY, out=tmp_path)
    assert line["skipped"] == {}
    assert line["rps_M_c4"] > 0 and line["p99_ms_M_c4"] > 0
    document = json.loads((tmp_path / "mesh.json").read_text())
    assert set(document["peak_rss_mb"]["M"]) == {"caller", "callee", "ca", "registry"}
    assert all(cell["errors"] == 0 for cell in document["cells"])
    assert all(gone(pid) for pid in started_pids(stderr))


@pytest.mark.skipif(envoy_missing() is not None, reason=f"Envoy: {envoy_missing()}")
def test_bare_and_sidecar_chains_serve_the_same_two_apps(tmp_path: Path) -> None:
    line, _, stderr = run_bench("--paths", "N,S", *TINY, out=tmp_path)
    assert line["skipped"] == {}
    for path in ("N", "S"):
        assert line[f"rps_{path}_c4"] > 0 and line[f"p99_ms_{path}_c4"] > 0
    document = json.loads((tmp_path / "mesh.json").read_text())
    assert set(document["peak_rss_mb"]["N"]) == {"caller", "callee"}
    assert set(document["peak_rss_mb"]["S"]) == {
        "caller",
        "envoy-client",
        "envoy-server",
        "callee",
    }
    assert all(cell["errors"] == 0 for cell in document["cells"])
    assert all(gone(pid) for pid in started_pids(stderr))


def test_sigterm_stops_every_started_process(tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [*BENCH, "--paths", "A,B", "--duration", "30", "--no-plot", "--out", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert bench.stderr is not None
    lines = ""
    deadline = time.monotonic() + 60
    while lines.count("started ") < 2 and time.monotonic() < deadline:
        lines += bench.stderr.readline()
    time.sleep(1.0)  # inside the first cell: a load generator runs too
    bench.send_signal(signal.SIGTERM)
    assert bench.wait(30) != 0
    pids = started_pids(lines)
    assert len(pids) == 2
    assert all(gone(pid) for pid in pids)
    assert not (tmp_path / "mesh.json").exists()


def test_percentiles_and_ratios() -> None:
    assert report.latency_figures([float(v) for v in range(1, 101)]) == {
        "p50_ms": 50.0,
        "p90_ms": 90.0,
        "p99_ms": 99.0,
    }
    assert report.ratio(0.3, 0.2) == 1.5
    assert report.ratio(0.3, None) is None
    assert report.ratio(float("nan"), 0.2) is None


def test_sidecar_configs_check_identities(tmp_path: Path) -> None:
    identity = Identity(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "b.pem")
    client = client_sidecar_config(
        identity, upstream_port=1234, upstream_id=spiffe("callee"), sni="callee"
    )
    tls = client["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    san = tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
    assert san == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://meshkit.local/ns/default/svc/callee"}}
    ]
    server = server_sidecar_config(identity, app_port=1234, allowed_callers=[spiffe("caller")])
    chain = server["static_resources"]["listeners"][0]["filter_chains"][0]
    assert chain["transport_socket"]["typed_config"]["require_client_certificate"] is True
    filters = chain["filters"][0]["typed_config"]["http_filters"]
    assert [f["name"] for f in filters] == ["envoy.filters.http.rbac", "envoy.filters.http.router"]


def test_loadgen_refuses_to_hang_on_a_dead_target(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *LOADGEN,
            "--url",
            "http://127.0.0.1:9/",
            "--concurrency",
            "1",
            "--duration",
            "0.1",
            *WAIT,
            "--result",
            str(tmp_path / "result.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "not ready" in done.stderr


def test_headline_sets_meshkit_against_no_mesh_and_sidecars() -> None:
    def cell(cpu: float, p99: float) -> dict[str, float]:
        return {"cpu_s_per_1k": cpu, "client_cpu_s_per_1k": 0.06, "p99_ms": p99, "rps": 1.0}

    summary = {
        "N": {16: cell(0.30, 6.0)},
        "S": {16: cell(0.50, 10.0)},
        "M": {16: cell(0.25, 5.4)},
    }
    line = report.headline(summary, [16], {"extra_rss_mb_M_over_N": 12.34})
    assert line["ratio_cpu_M_over_N_c16"] == 0.833
    assert line["ratio_cpu_M_over_S_c16"] == 0.5
    assert line["ratio_p99_M_over_N_c16"] == 0.9
    assert line["ratio_p99_M_over_S_c16"] == 0.54
    assert (line["p99_ms_M_c16"], line["p99_ms_S_c16"], line["p99_ms_N_c16"]) == (5.4, 10, 6)
    assert line["extra_rss_mb_M_over_N"] == 12.3
    assert not [key for key in line if "hop" in key]
    del summary["S"]
    assert report.headline(summary, [16], {})["ratio_cpu_M_over_S_c16"] is None


def test_extra_rss_compares_each_service_with_its_bare_twin() -> None:
    rss = {
        "N": {"caller": 60.0, "callee": 55.0},
        "M": {"caller": 80.0, "callee": 70.0, "ca": 60.0, "registry": 60.0},
    }
    figures = extra_rss(rss)
    assert figures["extra_rss_mb_M_over_N_caller"] == 20.0
    assert figures["extra_rss_mb_M_over_N_callee"] == 15.0
    assert figures["extra_rss_mb_M_over_N"] == 20.0


def test_profile_summary_ranks_functions_by_their_own_samples() -> None:
    collapsed = (
        "run (runners.py:10);send (uvicorn/protocols/h.py:5) 30\n"
        "run (runners.py:10);send (uvicorn/protocols/h.py:7);write (ssl.py:3) 10\n"
        "run (runners.py:12) 60\n"
    )
    rows = profile.summarise(collapsed)
    assert rows[0] == ("run (runners.py)", 60.0, 100.0)
    assert rows[1] == ("send (uvicorn/protocols/h.py)", 30.0, 40.0)
    assert rows[2] == ("write (ssl.py)", 10.0, 10.0)


def test_syscall_counts_come_from_perf_stat_lines() -> None:
    output = (
        "# started on Sat Dec  5 22:00:00 2026\n\n"
        "300,,syscalls:sys_enter_epoll_pwait,3000000000,100.00,,\n"
        "2000,,syscalls:sys_enter_read,3000000000,100.00,,\n"
        "2000,,syscalls:sys_enter_write,3000000000,100.00,,\n"
        "100,,syscalls:sys_enter_futex,3000000000,100.00,,\n"
        "50,,syscalls:sys_enter_clock_nanosleep,3000000000,100.00,,\n"
        "4400,,raw_syscalls:sys_enter,3000000000,100.00,,\n"
        "700,,context-switches,3000000000,100.00,,\n"
    )
    counts = profile.syscall_counts(output)
    assert counts == {
        "epoll_pwait": 300,
        "read": 2000,
        "write": 2000,
        "futex": 100,
        "clock_nanosleep": 50,
        "all": 4400,
        "context-switches": 700,
    }
    figures = profile.per_request(counts, 1000)
    assert figures == {
        "loop_passes": 0.3,
        "reads": 2.0,
        "writes": 2.0,
        "futex": 0.1,
        "clock": 0.05,
        "switches": 0.7,
        "all": 4.4,
    }
    table = profile.syscalls_markdown({"M caller": (counts, 1000)}, 1)
    assert "at 1 concurrent" in table
    assert "| M caller | 1000 | 0.30 | 2.00 | 2.00 | 0.10 | 0.05 | 0.70 | 4.40 |" in table


def test_native_time_is_split_by_shared_object() -> None:
    report_text = (
        "# Overhead  Shared Object\n"
        "    40.00%  libpython3.11.so.1.0\n"
        "    25.00%  [kernel.kallsyms]\n"
        "    10.00%  libcrypto.so.3\n"
        "     5.00%  libssl.so.3\n"
        "    12.00%  loop.cpython-311-x86_64-linux-gnu.so\n"
        "     8.00%  libc.so.6\n"
    )
    shares = profile.native_shares(report_text)
    assert shares[profile.INTERPRETER] == 0.4
    assert round(shares["TLS (OpenSSL, _ssl)"], 2) == 0.15
    assert shares["event loop C (uvloop, libuv)"] == 0.12
    assert shares[profile.NATIVE_OTHER] == 0.08
    stack = ["run (uvloop/__init__.py)", "round_trip (meshkit/client/_pool.py)", "write (ssl.py)"]
    assert profile.part_of(stack) == "client: meshkit pool (request write, TLS)"
