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
from collections.abc import Mapping
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
        "250",
        "--format",
        "raw",
        "--output",
        str(output),
    ]


def frame_name(frame: str) -> str:
    """``handle (uvicorn/protocols/http/httptools_impl.py:123)`` without the line number."""
    name = _LINE.sub(")", frame.strip())
    return re.sub(r"\(.*?(site-packages/|lib/python3\.\d+/)", "(", name)


def summarise(collapsed: str, *, top: int = 15) -> list[tuple[str, float, float]]:
    """(function, self %, inclusive %) for the functions with the most samples of their own."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(frame) for frame in stack.split(";")]
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


def markdown(profiles: Mapping[str, Path]) -> str:
    lines = [
        "## Profiles at 16 concurrent requests (py-spy, share of samples)",
        "",
        "Self time in `Runner.run` (or `serve`) is the event loop's own C code: uvloop's",
        "socket I/O, TLS and httptools parsing run there, below any Python frame.",
        "",
    ]
    for label, path in profiles.items():
        rows = summarise(path.read_text()) if path.exists() else []
        lines += [f"### {label} (`{path.name}`)", ""]
        if not rows:
            lines += ["no samples", ""]
            continue
        lines += ["| function | self % | inclusive % |", "|---|---:|---:|"]
        lines += [f"| `{name}` | {own:.1f} | {inc:.1f} |" for name, own, inc in rows]
        lines.append("")
    return "\n".join(lines)
