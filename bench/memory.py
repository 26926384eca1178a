"""Memory of a meshkit service against the bare stack, per process and per import.

    python -m bench.memory [--concurrency 16,64] [--duration 3] [--no-imports]

Two measurements, side by side in one run:

1. **Processes.** M's caller and callee (``meshkit run``, everything on as in
   bench/mesh.py: CA identity, registry, telemetry with 10% of traces exported over
   OTLP) and N's (bench/_plain.py and bench/_endpoint.py on bare uvicorn with mTLS),
   started by bench/_paths.py. For each: VmRSS and VmHWM (peak) once ready, then after
   load-generator cells at each concurrency; the resident set split into anonymous
   memory (heap, Python objects) and file pages (code of the shared libraries touched),
   the thread count, and how much of the anonymous memory sits in glibc's per-thread
   malloc arenas (64 MiB-aligned anonymous mappings, each thread that mallocs gets one).
   A peak well above the resident set at ready means a startup transient set it. From
   ``smaps_rollup``: the proportional set (PSS: a page shared by n processes counts
   1/n) and the clean pages shared with other processes (library code: every process
   that maps a library counts its touched pages in its RSS, the machine holds them
   once). After the last cell, the file-backed resident memory of each library whose
   share differs between M's and N's same process (``smaps``).
2. **Imports.** In a fresh interpreter per side, the packages each process imports,
   one stage after another in import order, VmRSS after each, split into anonymous
   memory and file pages: what each stage adds on top of the previous ones (a shared
   dependency is charged to the first stage that loads it). The last stage is the
   rest of what the process imports before serving.

The last line is one JSON object: ``extra_rss_mb_M_over_N`` as bench/mesh.py computes it
(the larger of caller and callee, peak minus N's same process), each process's figures,
and the import stages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/memory.py`: import as the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._paths import RunningPath, Workspace
from bench._procs import ROOT, status_kb
from bench.mesh import extra_rss, run_cell, start_paths

ARENA_ALIGNMENT = 64 * 1024 * 1024  # glibc's HEAP_MAX_SIZE on 64-bit: arenas are aligned to it

#: What each side's process imports, stage by stage, in the order it imports them. The
#: bare side runs ``python -m uvicorn bench._plain:caller``; the meshkit side
#: ``python -m meshkit run bench._apps:caller``.
#: cryptography is not among them: a service's keys and CSRs come from ``python -m
#: meshkit.ca.keygen`` (bench/results/memory.md).
COMMON_STAGES: list[tuple[str, list[str]]] = [
    ("stdlib (asyncio, ssl, logging, json)", ["asyncio", "ssl", "logging", "json"]),
    ("uvloop + httptools", ["uvloop", "httptools"]),
    (
        "uvicorn (its CLI, protocols, loop)",
        [
            "uvicorn.main",
            "uvicorn.loops.uvloop",
            "uvicorn.protocols.http.httptools_impl",
            "uvicorn.lifespan.on",
        ],
    ),
    ("starlette", ["starlette.applications", "starlette.routing", "starlette.responses"]),
]
BARE_STAGES = [
    *COMMON_STAGES,
    ("aiohttp", ["aiohttp"]),
    ("the app (bench._plain, bench._endpoint)", ["bench._plain", "bench._endpoint"]),
]
MESHKIT_STAGES = [
    *COMMON_STAGES,
    ("httpx (without its CLI, as meshkit._httpx imports it)", ["!httpx._main", "httpx"]),
    (
        "requests (urllib3, idna's codec, certifi; its charset detection deferred, as "
        "meshkit._requests imports it)",
        ["!charset_normalizer", "requests"],
    ),
    ("py-consul", ["consul"]),
    ("prometheus_client", ["prometheus_client"]),
    ("opentelemetry API + SDK", ["opentelemetry.trace", "opentelemetry.sdk.trace"]),
    (
        "OTLP/HTTP sending (the exporter's HTTP client; no protobuf)",
        [
            "opentelemetry.exporter.otlp.common.http",
            "opentelemetry.exporter.otlp.common._exporter_metrics",
            "opentelemetry.exporter.otlp.proto.http._common",
        ],
    ),
    ("Zipkin exporter", ["opentelemetry.exporter.zipkin.json"]),
    ("meshkit.app (meshkit's own modules)", ["meshkit.app"]),
    ("meshkit's CLI (`meshkit run`)", ["meshkit.cli:build_parser:run"]),
    ("the app (bench._apps)", ["bench._apps"]),
]

#: Run in a fresh interpreter: import each stage (``module:function:words`` also calls
#: ``function`` with the words as a list; ``!module`` blocks that module's import, as
#: meshkit._httpx does), and print VmRSS, RssAnon and RssFile and the top-level
#: packages each stage loaded.
_IMPORTER = """
import importlib, json, sys
def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return [int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "RssAnon", "RssFile")]
stages = json.loads(sys.argv[1])
out = [["interpreter", rss(), []]]
for name, modules in stages:
    before = {m.partition(".")[0] for m, loaded in sys.modules.items() if loaded}
    for spec in modules:
        if spec.startswith("!"):
            sys.modules[spec[1:]] = None
            continue
        module, *call = spec.split(":")
        loaded = importlib.import_module(module)
        if call:
            getattr(loaded, call[0])(call[1].split())
    new = sorted({m.partition(".")[0] for m, loaded in sys.modules.items() if loaded} - before)
    out.append([name, rss(), [m for m in new if not m.startswith("_")]])
print(json.dumps(out))
"""


def import_stages(stages: list[tuple[str, list[str]]]) -> list[dict[str, Any]]:
    """VmRSS after each stage in a fresh interpreter, and what each stage added."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTER, json.dumps(stages)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    rows: list[dict[str, Any]] = []
    previous = [0.0, 0.0, 0.0]
    for name, (rss, anon, file), packages in json.loads(done.stdout):
        rows.append(
            {
                "stage": name,
                "rss_mb": round(rss, 1),
                "added_mb": round(rss - previous[0], 1),
                "added_anon_mb": round(anon - previous[1], 1),
                "added_file_mb": round(file - previous[2], 1),
                "packages": packages,
            }
        )
        previous = [rss, anon, file]
    return rows


def arena_rss_mb(pid: int) -> tuple[float, int]:
    """Resident MiB in glibc's thread arenas and how many there are: anonymous
    mappings starting on a 64 MiB boundary (the main arena is ``[heap]``)."""
    resident_kb, arenas = 0, 0
    in_arena = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
            start = head[0].partition("-")[0]
            anonymous = len(head) == 5  # no path
            in_arena = anonymous and int(start, 16) % ARENA_ALIGNMENT == 0 and head[1] == "rw-p"
            arenas += in_arena
        elif in_arena and head[0] == "Rss:":
            resident_kb += int(head[1])
    return resident_kb / 1024, arenas


def rollup_kb(pid: int) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup``'s fields (Rss, Pss, Pss_Anon, Shared_Clean, ...), kB."""
    lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    return {name: int(value.split()[0]) for name, value in (line.split(":", 1) for line in lines)}


def file_pages_mb(pid: int) -> dict[str, float]:
    """Resident MiB of each mapped file (by its name), from ``/proc/<pid>/smaps``."""
    resident: dict[str, float] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's first line
            name = Path(head[5]).name if len(head) > 5 and head[5].startswith("/") else ""
        elif name and head[0] == "Rss:":
            resident[name] = resident.get(name, 0.0) + int(head[1]) / 1024
    return resident


def snapshot(pid: int) -> dict[str, Any]:
    arena_mb, arenas = arena_rss_mb(pid)
    rollup = rollup_kb(pid)
    return {
        "rss_mb": round(status_kb(pid, "VmRSS") / 1024, 1),
        "peak_mb": round(status_kb(pid, "VmHWM") / 1024, 1),
        "anon_mb": round(status_kb(pid, "RssAnon") / 1024, 1),
        "file_mb": round(status_kb(pid, "RssFile") / 1024, 1),
        "threads": status_kb(pid, "Threads"),
        "arenas": arenas,
        "arena_mb": round(arena_mb, 1),
        "pss_mb": round(rollup.get("Pss", 0) / 1024, 1),
        "pss_file_mb": round(rollup.get("Pss_File", 0) / 1024, 1),
        "shared_clean_mb": round(rollup.get("Shared_Clean", 0) / 1024, 1),
    }


#: Libraries whose file pages differ by less than this (MiB) between M and N are not listed.
LIBRARY_MIN_MB = 0.1


def library_differences(m_pid: int, n_pid: int) -> dict[str, list[float]]:
    """``{library: [M's MiB, N's MiB]}`` of file pages resident in one process and not
    (or less) in the other, the largest difference first."""
    m, n = file_pages_mb(m_pid), file_pages_mb(n_pid)
    rows = {
        name: [round(m.get(name, 0.0), 1), round(n.get(name, 0.0), 1)]
        for name in m.keys() | n.keys()
        if abs(m.get(name, 0.0) - n.get(name, 0.0)) >= LIBRARY_MIN_MB
    }
    return dict(sorted(rows.items(), key=lambda item: item[1][1] - item[1][0]))


def measure_processes(
    args: argparse.Namespace, workdir: Path
) -> tuple[
    dict[str, dict[str, Any]], dict[str, dict[str, float]], dict[str, dict[str, list[float]]]
]:
    """Snapshots of every M and N process, once ready and after each load cell, and the
    libraries' file pages of M's processes against N's after the last cell."""
    figures: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        ws = Workspace(workdir, stack)
        skipped: dict[str, str] = {}
        running: dict[str, RunningPath] = start_paths(ws, ["M", "N"], skipped)
        if skipped:
            raise SystemExit(f"bench/memory.py: {skipped}")

        def record(phase: str) -> None:
            for key, path in running.items():
                for name, pid in path.processes.items():
                    figures.setdefault(f"{key} {name}", {})[phase] = snapshot(pid)

        record("ready")
        for concurrency in args.concurrency:
            for path in running.values():
                cell = run_cell(path, concurrency, args, workdir)
                figures.setdefault("requests", {})[f"{path.key} c{concurrency}"] = cell["requests"]
            record(f"after c{concurrency}")
        peaks = {
            key: {
                name: figures[f"{key} {name}"][f"after c{args.concurrency[-1]}"]["peak_mb"]
                for name in path.processes
            }
            for key, path in running.items()
        }
        m, n = running["M"].processes, running["N"].processes
        libraries = {name: library_differences(m[name], n[name]) for name in m.keys() & n.keys()}
    return figures, peaks, libraries


def table(figures: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| process | phase | VmRSS | VmHWM (peak) | anon | file | shared clean | PSS (file) "
        "| threads | arenas (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for process, phases in figures.items():
        if process == "requests":
            continue
        for phase, s in phases.items():
            lines.append(
                f"| {process} | {phase} | {s['rss_mb']} | {s['peak_mb']} | {s['anon_mb']} | "
                f"{s['file_mb']} | {s['shared_clean_mb']} | {s['pss_mb']} ({s['pss_file_mb']}) | "
                f"{s['threads']} | {s['arenas']} ({s['arena_mb']}) |"
            )
    return "\n".join(lines)


def libraries_table(libraries: dict[str, dict[str, list[float]]]) -> str:
    lines = ["| process | library (file pages resident, MiB) | M | N |", "|---|---|---:|---:|"]
    for process, rows in sorted(libraries.items()):
        lines += [f"| {process} | {name} | {m} | {n} |" for name, (m, n) in rows.items()]
    return "\n".join(lines)


def stages_table(side: str, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| {side}: stage | VmRSS after | added | anon | file | new top-level packages |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        packages = ", ".join(row["packages"][:12]) + (" ..." if len(row["packages"]) > 12 else "")
        lines.append(
            f"| {row['stage']} | {row['rss_mb']} | {row['added_mb']:+} | "
            f"{row['added_anon_mb']:+} | {row['added_file_mb']:+} | {packages} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/memory.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--concurrency", default="16,64", help="load cells run in turn (comma-separated)"
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load cell")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per cell")
    parser.add_argument("--no-imports", action="store_true", help="skip the import stages")
    args = parser.parse_args(argv)
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result: dict[str, Any] = {}
    if not args.no_imports:
        for side, stages in (("bare", BARE_STAGES), ("meshkit", MESHKIT_STAGES)):
            rows = import_stages(stages)
            print(stages_table(side, rows) + "\n")
            result[f"imports_{side}"] = rows
    with tempfile.TemporaryDirectory(prefix="meshkit-memory-") as directory:
        figures, peaks, libraries = measure_processes(args, Path(directory))
    print(table(figures) + "\n")
    print(libraries_table(libraries) + "\n")
    result |= extra_rss(peaks)
    result["processes"] = figures
    result["libraries"] = libraries
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
