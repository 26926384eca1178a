"""The server half of a request: bare uvicorn + Starlette against a meshkit ServiceApp.

    python -m bench.serving [--concurrency 16] [--duration 3] [--warmup 1] [--rounds 5]
    python -m bench.serving --callgrind [--concurrency 1] [--windows 3,9]
    python -m bench.serving --callgrind --app [--calls 1000,4000] [--servers bare,meshkit,...]
    python -m bench.serving --callgrind --protocol [--calls 1000,4000] [--servers ...]

Two servers, each one process, serve the same ``/hello`` endpoint (bench/_endpoint.py):

- ``bare``: the uvicorn CLI (uvloop, httptools) with strict mTLS, as path B of
  bench/mesh.py: no identity check, telemetry or policy;
- ``meshkit``: ``meshkit run bench._apps:callee``, everything on as in path M's callee:
  strict mTLS with the caller's SPIFFE ID in scope, telemetry (metrics, 10% of traces
  exported over OTLP to a sink), the deadline middleware, ``@allow`` policy.

The same load generator (bench/_loadgen.py, its own process, keep-alive connections
opened in its warm-up) drives them in interleaved rounds (round 1: bare, meshkit;
round 2: ...). Printed: the server process's CPU µs per request (``/proc``, measured
window only), medians over the rounds, and a last JSON line.

Wall-clock CPU on a shared machine moves by ±20-40% between runs; instruction counts do
not. ``--callgrind`` runs both servers under ``valgrind --tool=callgrind`` and, for two
measured windows of different lengths each driven by a fresh load generator after its
warm-up, zeroes the server's counters as the window opens and dumps them as it closes
(``callgrind_control -z/-d PID``). Instructions per request are
``(Ir_long - Ir_short - idle) / (requests_long - requests_short)``: what a window costs
regardless of its length (the zero and dump themselves) cancels, and ``idle`` is what
the server spends without requests (uvicorn's 10 Hz ticks, meshkit's sweeps; measured
in a window of its own) over the seconds the two windows differ by: under valgrind a
slower server would otherwise pay more of it per request. The long window's
dump is kept for ``callgrind_annotate --inclusive=yes FILE`` (the path is printed).
At one request in flight (the default there) every request is one event-loop pass,
so the count does not depend on how requests batch. Under valgrind a server serves
tens of requests a second, so its idle work is a large share of a window and the
figure moves by a few percent between runs on a busy machine.

``--callgrind --app`` counts the app side alone (the middleware, Starlette, the
handler; bench/_serving_app.py calls the app in process, no sockets): two runs with
different numbers of calls, the difference per call. It repeats within ~0.5%, so it
is what a change to the middleware is measured by. ``--servers`` there also takes M's
callee with one part left out (``meshkit-notelemetry``, ``-nodeadline``, ``-noauthz``,
``-notap``, ``-unsampled``): each one's ``app_instructions_<part>_saves`` in the JSON
line is what that part costs a request, when ``meshkit`` is measured in the same run.

``--callgrind --protocol`` counts the same in-process way with the server's HTTP
protocol in front (bench/_serving_protocol.py): each request fed as bytes to uvicorn's
protocol (bare) or meshkit's (its request cycle, writes, noted headers), no sockets or
TLS. It repeats within ~0.5% too, and is what a change to ``meshkit/serving`` is
measured by; its JSON keys say ``protocol_instructions`` where ``--app``'s say
``app_instructions``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bench._loadgen import command as loadgen_command
from bench._loadgen import start as start_loadgen
from bench._paths import PYTHON, RunningPath, Workspace, start_uvicorn
from bench._procs import ROOT, cpu_seconds, spawn, wait_until
from bench._serving_app import ABLATIONS
from bench.mesh import CellFailed, _expect, _tell

SERVERS = ("bare", "meshkit")
_SERVING = re.compile(r"serving mTLS.*? on \S+:(?P<port>\d+), admin on")
_TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)  # the last line: the dump is whole


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.serving", description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, help="requests in flight (16; callgrind: 1)")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (CPU mode)")
    parser.add_argument("--servers", default=",".join(SERVERS), help="bare,meshkit or one")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="count instructions per request under valgrind's callgrind instead of CPU time",
    )
    parser.add_argument(
        "--windows",
        default="3,9",
        help="callgrind: the two measured windows' seconds (short,long)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="callgrind: where the dumps go (default: a temp dir)"
    )
    parser.add_argument(
        "--app",
        action="store_true",
        help="callgrind: count the app side alone, called in process (bench/_serving_app.py)",
    )
    parser.add_argument(
        "--protocol",
        action="store_true",
        help="callgrind: count the protocol and app, fed requests in process "
        "(bench/_serving_protocol.py)",
    )
    parser.add_argument(
        "--calls",
        default="1000,4000",
        help="--app, --protocol: the two runs' numbers of calls (short,long)",
    )
    args = parser.parse_args(argv)
    args.servers = args.servers.split(",")
    # --app and --protocol also count M's callee with one part left out.
    in_process = args.app or args.protocol
    known = set(SERVERS) | ({f"meshkit-{a}" for a in ABLATIONS} if in_process else set())
    if set(args.servers) - known:
        parser.error(f"--servers: choose from {', '.join(sorted(known))}")
    if args.concurrency is None:
        args.concurrency = 1 if args.callgrind else 16
    if args.callgrind:
        args.warmup = max(args.warmup, 3.0)  # under valgrind the first requests are slow
    return args


# -- the two servers ---------------------------------------------------------------------


def start_server(
    ws: Workspace, name: str, wrapper: Sequence[str] = (), timeout: float = 30.0
) -> RunningPath:
    if name == "bare":
        pid, port = start_uvicorn(
            ws, "bare", tls=ws.identity("callee"), wrapper=wrapper, timeout=timeout
        )
        contains = "uvicorn CLI, strict mTLS -> Starlette endpoint"
    else:
        pid, port = start_meshkit(ws, wrapper, timeout)
        contains = "meshkit run bench._apps:callee, everything on as M's callee"
    url = f"https://127.0.0.1:{port}/hello"
    return RunningPath(name, contains, url, ws.identity("loadgen"), {name: pid})


def start_meshkit(ws: Workspace, wrapper: Sequence[str], timeout: float) -> tuple[int, int]:
    """``meshkit run`` serving M's callee app as service ``solo``, certificates from files,
    no registry; (pid, port)."""
    env = ws.mesh_env("solo") | {
        "MESHKIT_SERVICE": "solo",
        "CONSUL_HTTP_ADDR": "",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [*wrapper, PYTHON, "-m", "meshkit", "run", "bench._apps:callee", "--log-level", "info"]
    log = ws.directory / "meshkit.log"
    process = spawn(ws.stack, argv, env=env, log=log)
    wait_until(
        lambda: bool(_SERVING.search(log.read_text())),
        what="meshkit",
        process=process,
        log=log,
        timeout=timeout,
    )
    return process.pid, int(_SERVING.search(log.read_text())["port"])  # type: ignore[index]


# -- CPU time, interleaved ---------------------------------------------------------------


def measure_cpu(args: argparse.Namespace, ws: Workspace) -> dict[str, Any]:
    paths = {name: start_server(ws, name) for name in args.servers}
    per_request: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, path in paths.items():
            cpu = functools.partial(cpu_seconds, path.processes[name])
            cell = measured_window(path, args.duration, args, cpu)
            per_request[name].append(cell.amount / cell.requests * 1e6)
    figures: dict[str, Any] = {"concurrency": args.concurrency, "rounds": args.rounds}
    for name, values in per_request.items():
        figures[f"cpu_us_per_request_{name}"] = round(statistics.median(values), 2)
        figures[f"cpu_us_per_request_{name}_all"] = [round(v, 2) for v in values]
    if len(paths) == 2:
        figures["ratio_cpu_meshkit_over_bare"] = round(
            figures["cpu_us_per_request_meshkit"] / figures["cpu_us_per_request_bare"], 3
        )
    return figures


# -- instructions, under callgrind -------------------------------------------------------


def measure_instructions(args: argparse.Namespace, ws: Workspace, out: Path) -> dict[str, Any]:
    short, long = (float(value) for value in args.windows.split(","))
    figures: dict[str, Any] = {"concurrency": args.concurrency, "windows_s": [short, long]}
    for name in args.servers:
        dump = out / f"callgrind.{name}.out"
        wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}"]
        path = start_server(ws, name, wrapper, timeout=300.0)
        pid = path.processes[name]
        idle = idle_rate(pid, short)
        windows = [measured_window(path, s, args, callgrind(pid)) for s in (short, long)]
        figures |= instruction_figures(name, idle, windows)
        figures[f"dump_{name}"] = f"{dump}.3"
        print(
            f"{name:>8}: {figures[f'instructions_per_request_{name}']:,} instructions/request "
            f"({windows[0].requests} and {windows[1].requests} requests, idle "
            f"{idle:,.0f}/s taken out; annotate {dump}.3)",
            flush=True,
        )
    if len(args.servers) == 2:
        meshkit, bare = (figures[f"instructions_per_request_{n}"] for n in ("meshkit", "bare"))
        figures["ratio_instructions_meshkit_over_bare"] = round(meshkit / bare, 3)
    return figures


def measure_app_instructions(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Instructions per request of the app side alone (``--app``: bench/_serving_app.py
    calls the app) or with the server's protocol (``--protocol``: bench/_serving_protocol.py
    feeds it requests): two processes doing it a different number of times, under
    callgrind; their difference per call (start-up and the uncounted warm-up cancel)."""
    short, long = (int(value) for value in args.calls.split(","))
    part, module = (
        ("protocol", "bench._serving_protocol") if args.protocol else ("app", "bench._serving_app")
    )
    figures: dict[str, Any] = {"calls": [short, long]}
    for name in args.servers:
        totals = []
        for calls in (short, long):
            dump = out / f"callgrind.{part}.{name}.{calls}.out"
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}", PYTHON]
            argv += ["-m", module, name, str(calls)]
            subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
            totals.append(int(_TOTALS.findall(dump.read_text(errors="replace"))[-1]))
        per_call = round((totals[1] - totals[0]) / (long - short))
        figures[f"{part}_instructions_per_request_{name}"] = per_call
        print(f"{name:>8}: {per_call:,} instructions/request, {part} side (annotate {dump})")
    per_request = {n: figures[f"{part}_instructions_per_request_{n}"] for n in args.servers}
    if "meshkit" in per_request and "bare" in per_request:
        meshkit, bare = per_request["meshkit"], per_request["bare"]
        figures[f"ratio_{part}_instructions_meshkit_over_bare"] = round(meshkit / bare, 3)
    if "meshkit" in per_request:
        for name, count in per_request.items():
            if name.startswith("meshkit-"):  # what the part left out costs
                figures[f"{part}_instructions_{name.partition('-')[2]}_saves"] = (
                    per_request["meshkit"] - count
                )
    return figures


class Window(NamedTuple):
    """What a server spent (CPU seconds, instructions) over a measured window."""

    amount: float
    requests: int
    seconds: float


def instruction_figures(name: str, idle: float, windows: list[Window]) -> dict[str, Any]:
    """Instructions per request from a short and a long window: what the two windows
    differ by, less what the server spends idle in the time they differ by (uvicorn's
    ticks, meshkit's sweeps: under valgrind a slower server pays more of it a request)."""
    short, long = windows
    extra = long.amount - short.amount
    requests = long.requests - short.requests
    idle_part = idle * (long.seconds - short.seconds)
    return {
        f"instructions_per_request_{name}": round((extra - idle_part) / requests),
        f"instructions_per_request_{name}_with_idle": round(extra / requests),
        f"idle_instructions_per_s_{name}": round(idle),
        f"requests_{name}": [short.requests, long.requests],
    }


def idle_rate(pid: int, seconds: float) -> float:
    """Instructions per second the server spends with no request to serve."""
    callgrind_control("-z", pid)
    started = time.monotonic()
    time.sleep(seconds)
    dumped = callgrind_control("-d", pid)
    return dumped / (time.monotonic() - started)


def measured_window(
    path: RunningPath, seconds: float, args: argparse.Namespace, measure: Callable[[], float]
) -> Window:
    """One window of ``seconds`` of load on ``path`` after the load generator's warm-up;
    ``measure()`` is read as it opens and as it closes (the amount is the difference)."""
    with loadgen(path, args.concurrency, seconds, args.warmup) as (process, result):
        _expect(process, "ready")
        before = measure()
        started = time.monotonic()
        _tell(process)
        _expect(process, "done")
        amount = measure() - before
        elapsed = time.monotonic() - started
        _tell(process)  # closing connections wakes the server: only after measuring
        if process.wait(60) != 0:
            raise CellFailed(f"load generator failed for {path.key}")
        tally = json.loads(result.read_text())
    if tally["errors"] or not tally["requests"]:
        raise CellFailed(f"{path.key}: {tally['errors']} errors: {tally['first_error']}")
    return Window(amount, int(tally["requests"]), elapsed)


def callgrind(pid: int) -> Callable[[], float]:
    """A ``measure`` for a server under callgrind: zeroes its counters at a window's
    start and dumps them at its end (the instructions counted in between)."""
    opened = False

    def measure() -> float:
        nonlocal opened
        opened = not opened
        return callgrind_control("-z", pid) if opened else callgrind_control("-d", pid)

    return measure


def callgrind_control(flag: str, pid: int) -> int:
    """Zero (``-z``) or dump (``-d``) the counters of callgrind process ``pid``; for a dump,
    the instructions it counted. Always one pid: without it the command reaches every
    callgrind process on the machine."""
    if pid <= 0:
        raise ValueError(f"callgrind_control needs a process id, not {pid}")
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)
    if flag != "-d":
        return 0
    return _newest_dump_total(pid)


def _newest_dump_total(pid: int) -> int:
    """The instructions in the dump just asked for: callgrind numbers its dumps
    ``OUT.1``, ``OUT.2``..., and writes the file after ``callgrind_control`` returns."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    option = next(a for a in command if a.startswith(b"--callgrind-out-file="))
    base = Path(option.partition(b"=")[2].decode())
    number = _DUMPS[pid] = _DUMPS.get(pid, 0) + 1
    dump = base.with_name(f"{base.name}.{number}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = _TOTALS.search(dump.read_text(errors="replace")) if dump.exists() else None
        if match:
            return int(match[1])
        time.sleep(0.2)
    raise CellFailed(f"no callgrind dump {dump}")


_DUMPS: dict[int, int] = {}


@contextlib.contextmanager
def loadgen(
    path: RunningPath, concurrency: int, seconds: float, warmup: float
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A load generator against ``path`` (its process, and the file its result goes to)."""
    result = Path(tempfile.mkstemp(prefix="loadgen-", suffix=".json")[1])
    assert path.client is not None
    argv = loadgen_command(
        path.url,
        result,
        concurrency=concurrency,
        seconds=seconds,
        warmup=warmup,
        tls=(path.client.cert, path.client.key, path.client.bundle),
        extra=("--ready-timeout", "300", "--mesh-headers"),
    )
    process = start_loadgen(argv, ROOT)
    try:
        yield process, result
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        result.unlink(missing_ok=True)


def measure(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    # The directory outlives the processes (their logs are in it): the stack stops them first.
    with contextlib.ExitStack() as stack:
        ws = Workspace(directory, stack)
        if not args.callgrind:
            return measure_cpu(args, ws)
        out = args.out or Path(tempfile.mkdtemp(prefix="bench-serving-callgrind-"))
        out.mkdir(parents=True, exist_ok=True)
        if args.app or args.protocol:
            return measure_app_instructions(args, out)
        return measure_instructions(args, ws, out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        figures = measure(args, Path(tmp))
    if not args.callgrind:
        for name in args.servers:
            cpu, rounds = (figures[f"cpu_us_per_request_{name}{s}"] for s in ("", "_all"))
            print(f"{name:>8}: {cpu:7.2f} µs server CPU/request (rounds: {rounds})")
    figures["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main(sys.argv[1:])
