"""meshkit against no mesh and against an Envoy sidecar mesh, side by side in one run.

    python bench/mesh.py [--paths A,B,C,M1,M,N,S] [--concurrency 1,16,64] [--duration 3]
                         [--warmup 1] [--repetitions 3] [--quick] [--out bench/results]

Paths (bench/_paths.py says exactly what each contains): A plaintext uvicorn, B mTLS
uvicorn, C an Envoy sidecar pair in front of one app, M1 one meshkit ServiceApp. Then
three like-for-like call chains, the same two applications doing the same work: M a
ServiceApp calling another through the mesh client; N (no mesh) a Starlette caller on
uvicorn calling the callee app through aiohttp, mTLS on both hops; S (sidecar mesh) the
same caller calling through an Envoy pair. Cells run interleaved (rep 1: every path at
each concurrency, rep 2: ...), each after its own warm-up; figures are medians over the
repetitions. CPU is what the path's server processes spent (``/proc``) during the
measured window, per 1,000 requests; the load generator's own CPU is shown apart.
The last line printed is one JSON object of the headline figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):  # run as `python bench/mesh.py`: import as the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _profile as profile
from bench import _report as report
from bench._loadgen import command as loadgen_command
from bench._loadgen import start as start_loadgen
from bench._paths import STARTERS, ControlPlane, RunningPath, Workspace
from bench._procs import ROOT, cpu_seconds, cpu_snapshot, peak_rss_mb
from meshkit.testing.envoy import envoy_missing

ALL_PATHS = ("A", "B", "C", "M1", "M", "N", "S")
MAX_KEPT_LATENCIES = 20_000  # per cell, for the plot


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/mesh.py", description=__doc__.split("\n")[0])
    parser.add_argument("--paths", help="comma-separated subset of A,B,C,M1,M,N,S (default: all)")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 s cells, 0.5 s warm-up")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after measuring, sample each path's Python processes with py-spy at 16 concurrent",
    )
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="after measuring, count each path's server system calls per request (perf stat)",
    )
    parser.add_argument(
        "--syscalls-concurrency",
        type=int,
        default=16,
        metavar="N",
        help="concurrent requests of the --syscalls cell (default 16)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 1.0, 0.5
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    args.paths = args.paths.split(",") if args.paths else list(ALL_PATHS)
    unknown = set(args.paths) - set(ALL_PATHS)
    if unknown:
        parser.error(f"unknown paths: {', '.join(sorted(unknown))}")
    return args


# -- what can run here -------------------------------------------------------------------


def unavailable(path: str) -> str | None:
    if path in ("C", "S"):
        return envoy_missing()
    return None


# -- one measured cell -------------------------------------------------------------------


class CellFailed(RuntimeError):
    pass


def _expect(loadgen: subprocess.Popen[str], word: str) -> None:
    assert loadgen.stdout is not None
    line = loadgen.stdout.readline().strip()
    if line != word:
        loadgen.wait(10)
        assert loadgen.stderr is not None
        raise CellFailed(f"load generator: {line or loadgen.stderr.read().strip()[-500:]}")


def _tell(loadgen: subprocess.Popen[str]) -> None:
    assert loadgen.stdin is not None
    loadgen.stdin.write("go\n")
    loadgen.stdin.flush()


def run_cell(
    path: RunningPath,
    concurrency: int,
    args: argparse.Namespace,
    workdir: Path,
    profilers: Sequence[Sequence[str]] = (),
) -> dict[str, Any]:
    result_file = workdir / "loadgen-result.json"
    result_file.unlink(missing_ok=True)
    client = path.client
    argv = loadgen_command(
        path.url,
        result_file,
        concurrency=concurrency,
        seconds=args.duration,
        warmup=args.warmup,
        tls=None if client is None else (client.cert, client.key, client.bundle),
    )
    loadgen = start_loadgen(argv, ROOT)
    try:
        _expect(loadgen, "ready")
        sampling = [subprocess.Popen(argv, stdout=subprocess.DEVNULL) for argv in profilers]
        if sampling:
            time.sleep(0.5)  # py-spy attaches before the window opens
        before = cpu_snapshot(path.processes), cpu_snapshot(path.control), cpu_seconds(loadgen.pid)
        _tell(loadgen)
        _expect(loadgen, "done")
        for sampler in sampling:
            sampler.wait(args.duration + 30)
        after = cpu_snapshot(path.processes), cpu_snapshot(path.control), cpu_seconds(loadgen.pid)
        _tell(loadgen)
        if loadgen.wait(30) != 0:
            assert loadgen.stderr is not None
            raise CellFailed(f"load generator failed: {loadgen.stderr.read().strip()[-800:]}")
        result = json.loads(result_file.read_text())
    finally:
        if loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
    return _cell_figures(path, result, before, after)


def _cell_figures(
    path: RunningPath, result: dict[str, Any], before: tuple[Any, ...], after: tuple[Any, ...]
) -> dict[str, Any]:
    requests = result["requests"]
    per_1k = 1000 / requests if requests else math.nan
    by_process = {name: after[0][name] - before[0][name] for name in path.processes}
    control = sum(after[1][name] - before[1][name] for name in path.control)
    latencies = result.pop("latencies_ms")
    return {
        "path": path.key,
        "concurrency": result["concurrency"],
        "requests": requests,
        "errors": result["errors"],
        "first_error": result["first_error"],
        "elapsed_s": result["elapsed_s"],
        "rps": requests / result["elapsed_s"] if result["elapsed_s"] else math.nan,
        **report.latency_figures(latencies),
        "cpu_s_per_1k": sum(by_process.values()) * per_1k,
        "cpu_s_by_process": by_process,
        "control_cpu_s_per_1k": control * per_1k,
        "client_cpu_s_per_1k": (after[2] - before[2]) * per_1k,
        "_latencies": latencies[:: max(1, len(latencies) // MAX_KEPT_LATENCIES)],
    }


# -- the run -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": os.getloadavg()[0],
    }


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds the ExitStack: every started process is stopped


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0][:300]


def start_paths(
    ws: Workspace, wanted: list[str], skipped: dict[str, str]
) -> dict[str, RunningPath]:
    running: dict[str, RunningPath] = {}
    if "M" in wanted:
        # First, so that M1 runs exactly like M's callee (CA identity, registered).
        try:
            ws.control = ControlPlane.start(ws)
        except Exception as exc:
            skipped["M"] = f"control plane did not start: {first_line(exc)}"
    for key in wanted:
        if key in skipped:
            continue
        try:
            running[key] = STARTERS[key](ws)
        except Exception as exc:  # a path that cannot start is skipped, with the reason
            skipped[key] = f"did not start: {first_line(exc)}"
            continue
        path = running[key]
        say(f"started {key}: {path.url} {path.processes | path.control}")
    return running


def measure(
    running: dict[str, RunningPath],
    args: argparse.Namespace,
    skipped: dict[str, str],
    workdir: Path,
) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    for repetition in range(1, args.repetitions + 1):
        for n in args.concurrency:
            for key, path in list(running.items()):
                if key in skipped:
                    continue
                try:
                    cell = run_cell(path, n, args, workdir)
                except CellFailed as exc:
                    skipped[key] = f"failed during the run: {exc}"
                    continue
                cell["repetition"] = repetition
                cells.append(cell)
                say(
                    f"rep {repetition} c={n:<3} {key:<2} {cell['rps']:8.0f} req/s "
                    f"p99 {cell['p99_ms']:7.3f} ms  CPU {cell['cpu_s_per_1k']:.3f} s/1k "
                    f"errors {cell['errors']}"
                )
    return cells


def profile_paths(
    running: dict[str, RunningPath],
    args: argparse.Namespace,
    workdir: Path,
    cells: list[dict[str, Any]],
) -> dict[str, profile.Profiled]:
    """One extra, uncounted cell per path at 16 concurrent requests under py-spy; with
    each profile, the process's CPU µs per request measured at 16 without a profiler."""
    executable = profile.py_spy()
    if executable is None:
        say("no profile: py-spy is not installed (pip install -e '.[bench]')")
        return {}
    args.out.mkdir(parents=True, exist_ok=True)
    profiles: dict[str, profile.Profiled] = {}
    for key, path in running.items():
        targets = {
            name: (pid, args.out / f"profile-{key}-{name}.txt", workdir / f"perf-{key}-{name}.data")
            for name, pid in path.processes.items()
            if name in profile.PYTHON_PROCESSES
        }
        argvs = [
            profile.record_argv(executable, pid, args.duration, out)
            for pid, out, _ in targets.values()
        ]
        if shutil.which("perf") is not None:
            argvs += [
                profile.perf_record_argv(pid, args.duration, data)
                for pid, _, data in targets.values()
            ]
        if not argvs:
            continue
        try:
            cell = run_cell(path, 16, args, workdir, argvs)
        except CellFailed as exc:
            say(f"no profile of {key}: {exc}")
            continue
        measured = [c for c in cells if c["path"] == key and c["concurrency"] == 16] or [cell]
        for name, (_, out, data) in targets.items():
            spent = [c["cpu_s_by_process"][name] / max(c["requests"], 1) for c in measured]
            profiles[f"{key} {name}"] = profile.Profiled(out, data, statistics.median(spent) * 1e6)
    return profiles


def count_syscalls(running: dict[str, RunningPath], args: argparse.Namespace, workdir: Path) -> str:
    """One extra, uncounted cell per path under ``perf stat``, at ``--syscalls-concurrency``."""
    if shutil.which("perf") is None:
        say("no system call counts: perf is not installed (apt-get install linux-perf)")
        return ""
    rows: dict[str, tuple[dict[str, int], int]] = {}
    seconds = args.duration + 1.5  # attached before the window opens, detached after it
    for key, path in running.items():
        outputs = {name: workdir / f"perf-{key}-{name}.txt" for name in path.processes}
        argvs = [profile.perf_argv(pid, seconds, outputs[n]) for n, pid in path.processes.items()]
        try:
            cell = run_cell(path, args.syscalls_concurrency, args, workdir, argvs)
        except CellFailed as exc:
            say(f"no system call counts of {key}: {exc}")
            continue
        for name, output in outputs.items():
            text = output.read_text() if output.exists() else ""
            rows[f"{key} {name}"] = (profile.syscall_counts(text), cell["requests"])
    return profile.syscalls_markdown(rows, args.syscalls_concurrency)


def peak_rss(running: dict[str, RunningPath]) -> dict[str, dict[str, float]]:
    rss: dict[str, dict[str, float]] = {}
    for key, path in running.items():
        processes = path.processes | path.control
        rss[key] = {name: round(peak_rss_mb(pid), 1) for name, pid in processes.items()}
    return rss


def extra_rss(rss: dict[str, dict[str, float]]) -> dict[str, Any]:
    """meshkit's processes minus the bare ones: M's caller and callee each against N's
    (the same application, same role), and the one meshkit server (M1, else M) against
    bare uvicorn (B)."""
    figures: dict[str, Any] = {"extra_rss_mb_M_over_N": None, "extra_rss_mb_M_over_B": None}
    if "M" in rss and "N" in rss:
        for service in ("caller", "callee"):
            figures[f"extra_rss_mb_M_over_N_{service}"] = rss["M"][service] - rss["N"][service]
        figures["extra_rss_mb_M_over_N"] = max(
            figures["extra_rss_mb_M_over_N_caller"], figures["extra_rss_mb_M_over_N_callee"]
        )
    bare = rss.get("B", rss.get("A", {})).get("uvicorn")
    if bare is None:
        return figures
    if "M1" in rss:
        figures["extra_rss_mb_M1_over_B"] = rss["M1"]["callee"] - bare
    if "M" in rss:
        figures["extra_rss_mb_M_over_B"] = max(rss["M"]["caller"], rss["M"]["callee"]) - bare
    return figures


def summarise(
    cells: list[dict[str, Any]], order: list[str], concurrencies: list[int]
) -> dict[str, dict[int, dict[str, Any]]]:
    summary: dict[str, dict[int, dict[str, Any]]] = {}
    for key in order:
        for n in concurrencies:
            chosen = [c for c in cells if c["path"] == key and c["concurrency"] == n]
            if chosen:
                summary.setdefault(key, {})[n] = report.median_cells(chosen)
    return summary


def write_outputs(
    args: argparse.Namespace,
    context: dict[str, Any],
    cells: list[dict[str, Any]],
    summary: dict[str, dict[int, dict[str, Any]]],
    rss: dict[str, dict[str, float]],
    contains: dict[str, str],
    headline: dict[str, Any],
) -> str:
    args.out.mkdir(parents=True, exist_ok=True)
    m = context["machine"]
    header = (
        f"Measured {m['date_utc']} on {m['nproc']} x {m['cpu_model']} "
        f"(load average {m['loadavg_start']:.1f} at start, {m['loadavg_end']:.1f} at end); "
        f"{args.duration:g} s per cell after {args.warmup:g} s warm-up, "
        f"{args.repetitions} interleaved repetitions, medians. CPU: the path's server "
        "processes (all threads), per 1,000 requests; the load generator apart."
    )
    if context["skipped"]:
        header += "\n\nSkipped: " + "; ".join(f"{k}: {v}" for k, v in context["skipped"].items())
    table = report.markdown(summary, rss, contains, headline, header)
    (args.out / "mesh.md").write_text(table)
    latencies: dict[str, dict[int, list[float]]] = {}
    for cell in cells:
        latencies.setdefault(cell["path"], {}).setdefault(cell["concurrency"], []).extend(
            cell.pop("_latencies")
        )
    document = {
        **context,
        "contains": contains,
        "summary": summary,
        "peak_rss_mb": rss,
        "cells": cells,
        "headline": headline,
    }
    (args.out / "mesh.json").write_text(json.dumps(without_nan(document), indent=1))
    if not args.no_plot:
        why_not = report.plot(latencies, args.concurrency, args.out / "mesh.png")
        if why_not:
            say(f"no plot: {why_not}")
    return table


def without_nan(value: Any) -> Any:
    """NaN (a figure with no requests behind it) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    skipped = {key: reason for key in args.paths if (reason := unavailable(key))}
    for key, reason in skipped.items():
        say(f"skipping path {key}: {reason}")
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    context: dict[str, Any] = {"machine": machine(), "skipped": skipped}
    context["settings"] = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repetitions": args.repetitions,
        "concurrency": args.concurrency,
    }
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshkit-bench-")))
        ws = Workspace(directory, stack)
        wanted = [key for key in args.paths if key not in skipped]
        running = start_paths(ws, wanted, skipped)
        cells = measure(running, args, skipped, directory)
        profiles = profile_paths(running, args, directory, cells) if args.profile else {}
        profiled = profile.markdown(profiles) if profiles else ""  # reads the workdir's files
        syscalls = count_syscalls(running, args, directory) if args.syscalls else ""
        rss = peak_rss(running)
    context["machine"]["loadavg_end"] = os.getloadavg()[0]
    order = [key for key in ALL_PATHS if key in running and key not in skipped]
    summary = summarise(cells, order, args.concurrency)
    contains = {key: running[key].contains for key in order}
    headline = report.headline(summary, args.concurrency, extra_rss(rss))
    headline["skipped"] = skipped
    print(write_outputs(args, context, cells, summary, rss, contains, headline))
    if profiled:
        (args.out / "profile.md").write_text(profiled)
        print(profiled)
    if syscalls:
        (args.out / "syscalls.md").write_text(syscalls)
        print(syscalls)
    print(json.dumps(without_nan(headline), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
