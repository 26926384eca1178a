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
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
PYTHON_PROCESSES = ("uvicorn", "callee", "caller")


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
    ("event loop in C (uvloop: epoll, socket I/O, TLS, parsing)", ("Runner.run (",)),
)


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, markers in PARTS:
            if any(marker in frame for marker in markers):
                return part
    return "other"


def breakdown(collapsed: str) -> dict[str, float]:
    """Share (0..1) of the event loop thread's samples per part of PARTS."""
    parts: collections.Counter[str] = collections.Counter()
    for frames, count in _stacks(collapsed):
        parts[part_of(frames)] += count
    total = sum(parts.values())
    return {part: count / total for part, count in parts.items()} if total else {}


def breakdown_markdown(profiles: Mapping[str, tuple[Path, float]]) -> list[str]:
    """µs of CPU per request per part: each process's measured CPU split by its samples."""
    shares = {
        label: breakdown(path.read_text()) for label, (path, _) in profiles.items() if path.exists()
    }
    labels = list(shares)
    lines = ["| part | " + " | ".join(f"{label} µs" for label in labels) + " |"]
    lines.append("|---|" + "---:|" * len(labels))
    for part in [name for name, _ in PARTS] + ["other"]:
        cells = [f"{shares[label].get(part, 0.0) * profiles[label][1]:.1f}" for label in labels]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    totals = [f"{profiles[label][1]:.1f}" for label in labels]
    lines.append("| **all (CPU per request, /proc)** | " + " | ".join(totals) + " |")
    return lines


def markdown(profiles: Mapping[str, tuple[Path, float]]) -> str:
    lines = [
        "## Profiles at 16 concurrent requests (py-spy, the event loop's thread)",
        "",
        "Where each process's CPU per request goes: its /proc CPU over the profiled cell,",
        "split by the share of samples whose innermost frame lies in each part.",
        "",
        *breakdown_markdown(profiles),
        "",
        "Self time in `Runner.run` (or `serve`) is the event loop's own C code: uvloop's",
        "socket I/O, TLS and httptools parsing run there, below any Python frame.",
        "",
    ]
    for label, (path, _) in profiles.items():
        rows = summarise(path.read_text()) if path.exists() else []
        lines += [f"### {label} (`{path.name}`)", ""]
        if not rows:
            lines += ["no samples", ""]
            continue
        lines += ["| function | self % | inclusive % |", "|---|---:|---:|"]
        lines += [f"| `{name}` | {own:.1f} | {inc:.1f} |" for name, own, inc in rows]
        lines.append("")
    return "\n".join(lines)


# -- system calls per request (strace -c) ------------------------------------------------

#: The calls that make up a keep-alive request's I/O; the rest are summed as "other".
IO_CALLS = ("read", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg")
LOOP_CALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")


def strace_argv(pid: int, seconds: float, output: Path) -> list[str]:
    """Count every thread's system calls for ``seconds`` (SIGINT detaches, then it writes
    the summary). strace slows the process down: only counts per request are kept."""
    strace = ["strace", "-c", "-f", "-q", "-o", str(output), "-p", str(pid)]
    return ["timeout", "-s", "INT", f"{seconds:g}", *strace]


def syscall_counts(summary: str) -> dict[str, int]:
    """``{syscall: calls}`` from ``strace -c`` output."""
    counts: dict[str, int] = {}
    for line in summary.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[-1] == "total" or not fields[0][0].isdigit():
            continue
        # "% time, seconds, usecs/call, calls, [errors,] syscall": calls is the 4th.
        counts[fields[-1]] = int(fields[3])
    return counts


def per_request(counts: dict[str, int], requests: int) -> dict[str, float]:
    """Loop passes (epoll waits), socket reads and writes, and all calls, per request."""
    if not requests:
        return {}
    reads = sum(counts.get(name, 0) for name in IO_CALLS[:3])
    writes = sum(counts.get(name, 0) for name in IO_CALLS[3:])
    loop = sum(counts.get(name, 0) for name in LOOP_CALLS)
    return {
        "loop_passes": loop / requests,
        "reads": reads / requests,
        "writes": writes / requests,
        "all": sum(counts.values()) / requests,
    }


def syscalls_markdown(rows: Mapping[str, tuple[dict[str, int], int]]) -> str:
    """One row per (path, process): ``rows[label] = (strace counts, requests)``."""
    lines = [
        "## System calls per request at 16 concurrent (strace -c, all threads)",
        "",
        "Loop passes: epoll waits (uvloop polls once per pass). Reads and writes: socket",
        "I/O calls; with TLS each carries one or more records.",
        "",
        "| path process | requests | loop passes | reads | writes | all calls | top calls |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, (counts, requests) in rows.items():
        figures = per_request(counts, requests)
        if not figures:
            lines.append(f"| {label} | 0 | - | - | - | - | |")
            continue
        top = sorted(counts.items(), key=lambda item: -item[1])[:5]
        named = ", ".join(f"{name} {calls / requests:.2f}" for name, calls in top)
        lines.append(
            f"| {label} | {requests} | {figures['loop_passes']:.2f} | {figures['reads']:.2f} | "
            f"{figures['writes']:.2f} | {figures['all']:.2f} | {named} |"
        )
    return "\n".join(lines) + "\n"
