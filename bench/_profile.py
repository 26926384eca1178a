"""Where the time goes: py-spy samples the Python processes of a path under load.

``bench/mesh.py --profile`` runs one extra cell per path at 16 concurrent requests
(not counted in the figures) while ``py-spy record`` samples each Python process;
the collapsed stacks are kept (``profile-<path>-<process>.txt``, for flamegraph tools
or speedscope) and summed here into the functions holding the most samples.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
PYTHON_PROCESSES = ("uvicorn", "callee", "caller")
RATE = 1000  # samples per second


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record_argv(executable: str, pid: int, seconds: float, output: Path) -> list[str]:
    return [
        executable,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        "1000",
        "--nonblocking",  # pausing every thread 1,000 times a second would be the cost seen
        "--gil",  # only what holds the GIL: Python, and C called from it without releasing it
        "--format",
        "raw",
        "--output",
        str(output),
    ]


def frame_name(frame: str) -> str:
    """``handle (uvicorn/protocols/http/httptools_impl.py:123)`` without the line number."""
    name = _LINE.sub(")", frame.strip())
    return re.sub(r"\(.*?(site-packages/|lib/python3\.\d+/)", "(", name)


def _stacks(collapsed: str) -> Iterator[tuple[list[str], int]]:
    """(frames root first, samples) of the event loop's thread: background threads
    (span export, registry watches) wait in blocking calls py-spy counts as busy."""
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [frame_name(frame) for frame in stack.split(";")]
        if any("(threading.py)" in frame for frame in frames[:2]):
            continue
        yield frames, int(count_text)


def summarise(collapsed: str, *, top: int = 15) -> list[tuple[str, float, float]]:
    """(function, self %, inclusive %) for the functions with the most samples of their own."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in _stacks(collapsed):
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return []
    return [
        (name, 100 * count / total, 100 * inclusive[name] / total)
        for name, count in own.most_common(top)
    ]


LOOP_SELF = "the event loop's C code, called from Runner.run"
#: Where a sample's time goes: the innermost frame in one of these parts names it.
#: Standard library frames (ssl, asyncio, json) count for the part that called them.
PARTS = (
    ("handler (the app's own code)", ("(bench/",)),
    ("client: meshkit pool (request write, TLS)", ("(meshkit/client/_pool.py",)),
    ("client: meshkit transports", ("(meshkit/client/",)),
    ("client: httpx request/response", ("(httpx/", "(meshkit/_httpx.py")),
    ("client: aiohttp", ("(aiohttp/", "(multidict/", "(yarl/")),
    (
        "telemetry (metrics, spans, propagation)",
        ("(meshkit/telemetry/", "(meshkit/middleware/telemetry", "(opentelemetry/", "(prometheus"),
    ),
    (
        "deadline (scope, headers)",
        ("(meshkit/middleware/deadline", "(meshkit/deadline", "(anyio/", "(sniffio/"),
    ),
    ("authorization (policy)", ("(meshkit/middleware/authz", "(meshkit/policy/")),
    ("starlette (routing, request, response)", ("(starlette/",)),
    ("server protocol (uvicorn, meshkit/serving)", ("(uvicorn/", "(meshkit/serving/")),
    (LOOP_SELF, ("Runner.run (",)),
)


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, markers in PARTS:
            if any(marker in frame for marker in markers):
                return part
    return "other"


def breakdown(collapsed: str) -> dict[str, int]:
    """Samples of the event loop's thread per part of PARTS."""
    parts: collections.Counter[str] = collections.Counter()
    for frames, count in _stacks(collapsed):
        parts[part_of(frames)] += count
    return dict(parts)


#: Native code by shared object (perf's on-CPU samples): (row, markers in the DSO name).
#: What runs in the interpreter is split further by py-spy's Python stacks.
INTERPRETER = "Python interpreter"
NATIVE = (
    ("kernel: system calls, loopback TCP, scheduling", ("[kernel",)),
    ("TLS (OpenSSL, _ssl)", ("libssl", "libcrypto", "_ssl.")),
    ("event loop C (uvloop, libuv)", ("loop.cpython", "libuv")),
    (
        "HTTP parsing C (httptools, aiohttp's parser)",
        ("parser.cpython", "_http_parser", "_http_writer"),
    ),
    (INTERPRETER, ("libpython", "python3")),
)
NATIVE_OTHER = "other native (libc, json, multidict, ...)"


def perf_record_argv(pid: int, seconds: float, output: Path) -> list[str]:
    """On-CPU samples of every thread (cpu-clock: a preempted thread is not sampled)."""
    target = ["-p", str(pid), "--", "sleep", f"{seconds:g}"]
    return ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(RATE), "-o", str(output), *target]


def native_shares(report: str) -> dict[str, float]:
    """Share (0..1) of on-CPU samples per NATIVE row, from ``perf report --sort dso``."""
    shares: collections.Counter[str] = collections.Counter()
    for line in report.splitlines():
        fields = line.split()
        if len(fields) < 2 or not fields[0].endswith("%") or line.lstrip().startswith("#"):
            continue
        dso = " ".join(fields[1:])
        row = next((name for name, marks in NATIVE if any(m in dso for m in marks)), NATIVE_OTHER)
        shares[row] += float(fields[0].rstrip("%")) / 100
    return dict(shares)


def perf_report(data: Path) -> str:
    done = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout


@dataclass(frozen=True)
class Profiled:
    """A process's py-spy profile and perf record, and its CPU µs per request."""

    pyspy: Path
    perf: Path
    cpu_us: float


def _python_parts(collapsed: str) -> dict[str, float]:
    """Shares (0..1) of the interpreter's time per part: py-spy samples on Python frames
    (not the loop's own C under the GIL, which perf counts as uvloop/httptools)."""
    counts = breakdown(collapsed)
    counts.pop(LOOP_SELF, None)
    total = sum(counts.values())
    return {part: count / total for part, count in counts.items()} if total else {}


def breakdown_table(profiled: Profiled) -> dict[str, float]:
    """µs per request: native rows from perf, the interpreter's share split by py-spy."""
    if not profiled.perf.exists():
        return {}
    native = native_shares(perf_report(profiled.perf))
    interpreter = native.pop(INTERPRETER, 0.0) * profiled.cpu_us
    rows = {row: share * profiled.cpu_us for row, share in native.items()}
    python = _python_parts(profiled.pyspy.read_text()) if profiled.pyspy.exists() else {}
    for part, share in python.items():
        rows[f"Python: {part}"] = share * interpreter
    if not python:
        rows[INTERPRETER] = interpreter
    return rows


def breakdown_markdown(profiles: Mapping[str, Profiled]) -> list[str]:
    table = {label: breakdown_table(profiled) for label, profiled in profiles.items()}
    table = {label: rows for label, rows in table.items() if rows}
    labels = list(table)
    order = [name for name, _ in NATIVE if name != INTERPRETER] + [NATIVE_OTHER]
    order += [f"Python: {name}" for name, _ in PARTS if name != LOOP_SELF] + ["Python: other"]
    lines = ["| where | " + " | ".join(f"{label} µs" for label in labels) + " |"]
    lines.append("|---|" + "---:|" * len(labels))
    for row in order:
        cells = [f"{table[label].get(row, 0.0):.1f}" for label in labels]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    totals = [f"{profiles[label].cpu_us:.1f}" for label in labels]
    lines.append(
        "| **all: CPU per request (/proc, unprofiled cells)** | " + " | ".join(totals) + " |"
    )
    return lines


def markdown(profiles: Mapping[str, Profiled]) -> str:
    lines = [
        "## Profiles at 16 concurrent requests (py-spy, the event loop's thread)",
        "",
        "Where each process's CPU per request goes (µs): its /proc CPU per request split by",
        "perf's on-CPU samples per shared object (kernel, OpenSSL, uvloop, parsers, the",
        "interpreter); the interpreter's part split further by py-spy's Python stacks (the",
        "innermost frame in a part names it; stdlib frames count for their caller).",
        "",
        *breakdown_markdown(profiles),
        "",
        "Self time in `Runner.run` (or `serve`) is the event loop's C code while it holds",
        "the GIL (uvloop's callbacks, httptools parsing); TLS crypto and system calls",
        "release the GIL and are not sampled.",
        "",
    ]
    for label, profiled in profiles.items():
        path = profiled.pyspy
        rows = summarise(path.read_text()) if path.exists() else []
        lines += [f"### {label} (`{path.name}`)", ""]
        if not rows:
            lines += ["no samples", ""]
            continue
        lines += ["| function | self % | inclusive % |", "|---|---:|---:|"]
        lines += [f"| `{name}` | {own:.1f} | {inc:.1f} |" for name, own, inc in rows]
        lines.append("")
    return "\n".join(lines)


# -- system calls per request (perf stat on syscall tracepoints) -------------------------

#: The calls that make up a keep-alive request's I/O, and the event loop's polls.
IO_CALLS = ("read", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg")
LOOP_CALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
#: Clock reads that reach the kernel (the vDSO answers most without a system call).
CLOCK_CALLS = ("clock_gettime", "clock_nanosleep", "nanosleep")
COUNTED = (*LOOP_CALLS, *IO_CALLS, "futex", *CLOCK_CALLS, "getpid")
#: Software events: a switch is a thread leaving the CPU (sleeping or preempted).
SOFTWARE = ("context-switches",)


def perf_argv(pid: int, seconds: float, output: Path) -> list[str]:
    """Count every thread's system calls and context switches for ``seconds``, by kernel
    tracepoints: unlike strace the process runs at full speed, so its loop batches as it
    does unobserved."""
    events = [f"syscalls:sys_enter_{name}" for name in COUNTED]
    events += ["raw_syscalls:sys_enter", *SOFTWARE]
    target = ["-p", str(pid), "--", "sleep", f"{seconds:g}"]
    return ["perf", "stat", "-x", ",", "-o", str(output), "-e", ",".join(events), *target]


def syscall_counts(summary: str) -> dict[str, int]:
    """``{syscall or software event: count}`` from ``perf stat -x ,`` output; ``all`` is
    every system call."""
    counts: dict[str, int] = {}
    for line in summary.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        event = fields[2]
        name = "all" if event == "raw_syscalls:sys_enter" else event.rpartition("sys_enter_")[2]
        counts[name] = int(fields[0])
    return counts


def per_request(counts: dict[str, int], requests: int) -> dict[str, float]:
    """Loop passes (epoll waits), socket reads and writes, futex and clock calls, context
    switches and all system calls, per request."""
    if not requests:
        return {}

    def summed(names: tuple[str, ...]) -> float:
        return sum(counts.get(name, 0) for name in names) / requests

    return {
        "loop_passes": summed(LOOP_CALLS),
        "reads": summed(IO_CALLS[:3]),
        "writes": summed(IO_CALLS[3:]),
        "futex": summed(("futex",)),
        "clock": summed(CLOCK_CALLS),
        "switches": summed(SOFTWARE),
        "all": counts.get("all", 0) / requests,
    }


COLUMNS = ("loop_passes", "reads", "writes", "futex", "clock", "switches", "all")


def syscalls_markdown(rows: Mapping[str, tuple[dict[str, int], int]], concurrency: int) -> str:
    """One row per (path, process): ``rows[label] = (perf counts, requests)``."""
    lines = [
        f"## System calls per request at {concurrency} concurrent (perf stat, all threads)",
        "",
        "Loop passes: epoll waits (uvloop polls once per pass). Reads and writes: socket",
        "I/O calls; with TLS each carries one or more records. Clock: clock_gettime and",
        "sleeps that reach the kernel. Switches: context switches of every thread.",
        "",
        "| path process | requests | loop passes | reads | writes | futex | clock | "
        "switches | all calls | top calls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, (counts, requests) in rows.items():
        figures = per_request(counts, requests)
        if not figures:
            lines.append(f"| {label} | 0 |" + " - |" * len(COLUMNS) + " |")
            continue
        named_calls = {
            name: calls
            for name, calls in counts.items()
            if name != "all" and name not in SOFTWARE and calls
        }
        top = sorted(named_calls.items(), key=lambda item: -item[1])[:6]
        named = ", ".join(f"{name} {calls / requests:.2f}" for name, calls in top)
        cells = " | ".join(f"{figures[column]:.2f}" for column in COLUMNS)
        lines.append(f"| {label} | {requests} | {cells} | {named} |")
    return "\n".join(lines) + "\n"
