"""Figures from the measured cells: medians, ratios, the Markdown table, the plot."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

CELL_FIGURES = ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_s_per_1k", "client_cpu_s_per_1k")


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (``q`` in 0..100)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_figures(latencies_ms: Iterable[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    return {f"p{q}_ms": percentile(ordered, q) for q in (50, 90, 99)}


def median_cells(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over the repetitions of one (path, concurrency)."""
    summary: dict[str, Any] = {}
    for figure in CELL_FIGURES:
        values = [cell[figure] for cell in cells if not math.isnan(cell[figure])]
        summary[figure] = statistics.median(values) if values else math.nan
    summary["control_cpu_s_per_1k"] = statistics.median(c["control_cpu_s_per_1k"] for c in cells)
    summary["requests"] = sum(cell["requests"] for cell in cells)
    summary["errors"] = sum(cell["errors"] for cell in cells)
    summary["repetitions"] = len(cells)
    return summary


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or not denominator:
        return None
    if math.isnan(numerator) or math.isnan(denominator):
        return None
    return round(numerator / denominator, 3)


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)


def headline(
    summary: Mapping[str, Mapping[int, Mapping[str, Any]]],
    concurrencies: Sequence[int],
    extra_rss: Mapping[str, Any],
) -> dict[str, Any]:
    """The one-line JSON: meshkit's chain (M) against the same chain with no mesh (N) and
    with sidecars (S), then M1 and M against B and C, then medians per path."""

    def figure(path: str, n: int, name: str) -> float | None:
        cell = summary.get(path, {}).get(n)
        return None if cell is None else rounded(cell[name])

    line: dict[str, Any] = {}
    for n in concurrencies:
        for baseline in ("S", "N"):
            line[f"ratio_cpu_M_over_{baseline}_c{n}"] = ratio(
                figure("M", n, "cpu_s_per_1k"), figure(baseline, n, "cpu_s_per_1k")
            )
        for path in ("M", "S", "N"):
            line[f"p99_ms_{path}_c{n}"] = figure(path, n, "p99_ms")
        for baseline in ("S", "N"):
            line[f"ratio_p99_M_over_{baseline}_c{n}"] = ratio(
                figure("M", n, "p99_ms"), figure(baseline, n, "p99_ms")
            )
    line |= {
        key: rounded(value, 1) if not isinstance(value, str) else value
        for key, value in extra_rss.items()
    }
    for n in concurrencies:
        for meshkit in ("M", "M1"):
            for baseline in ("B", "C"):
                line[f"ratio_cpu_{meshkit}_over_{baseline}_c{n}"] = ratio(
                    figure(meshkit, n, "cpu_s_per_1k"), figure(baseline, n, "cpu_s_per_1k")
                )
        for path in summary:
            line[f"p99_ms_{path}_c{n}"] = figure(path, n, "p99_ms")
        line.setdefault(f"p99_ms_C_c{n}", None)
        for path in summary:
            line[f"rps_{path}_c{n}"] = figure(path, n, "rps")
            line[f"cpu_s_per_1k_{path}_c{n}"] = figure(path, n, "cpu_s_per_1k")
    return line


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown(
    summary: Mapping[str, Mapping[int, Mapping[str, Any]]],
    rss: Mapping[str, Mapping[str, float]],
    contains: Mapping[str, str],
    headline_figures: Mapping[str, Any],
    header: str,
) -> str:
    lines = [header, ""]
    lines += [
        "| path | conc. | req/s | p50 ms | p90 ms | p99 ms | CPU s / 1k req | "
        "vs N | vs S | vs B | vs C | loadgen CPU s / 1k | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path, by_concurrency in summary.items():
        for n, cell in by_concurrency.items():
            cpu = cell["cpu_s_per_1k"]
            vs = [
                ratio(cpu, summary.get(base, {}).get(n, {}).get("cpu_s_per_1k")) for base in "NSBC"
            ]
            lines.append(
                f"| {path} | {n} | {_cell(cell['rps'], 0)} | {_cell(cell['p50_ms'], 3)} | "
                f"{_cell(cell['p90_ms'], 3)} | {_cell(cell['p99_ms'], 3)} | {_cell(cpu, 3)} | "
                f"{_cell(vs[0], 2)} | {_cell(vs[1], 2)} | {_cell(vs[2], 2)} | {_cell(vs[3], 2)} | "
                f"{_cell(cell['client_cpu_s_per_1k'], 3)} | {cell['errors']} |"
            )
    lines += ["", "Peak RSS per process (VmHWM, MiB):", ""]
    lines += ["| path | process | peak RSS MiB |", "|---|---|---:|"]
    for path, processes in rss.items():
        for name, mib in processes.items():
            lines.append(f"| {path} | {name} | {mib:.1f} |")
    lines += ["", "What each path contains:", ""]
    lines += [f"- **{path}**: {text}" for path, text in contains.items()]
    extra = {k: v for k, v in headline_figures.items() if k.startswith("extra_rss")}
    if extra:
        lines += ["", "Extra RSS: " + ", ".join(f"`{k}` = {v}" for k, v in extra.items())]
    return "\n".join(lines) + "\n"


def plot(
    latencies: Mapping[str, Mapping[int, Sequence[float]]],
    concurrencies: Sequence[int],
    destination: Path,
) -> str | None:
    """Latency distributions (ECDF, log scale) per concurrency; None, or why there is no PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    figure, axes = plt.subplots(1, len(concurrencies), figsize=(5 * len(concurrencies), 4))
    axes_list = list(axes) if len(concurrencies) > 1 else [axes]
    for axis, n in zip(axes_list, concurrencies, strict=True):
        for path, by_concurrency in latencies.items():
            ordered = sorted(by_concurrency.get(n, ()))
            if not ordered:
                continue
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            axis.plot(ordered, fractions, label=path, linewidth=1.2)
        axis.set_xscale("log")
        axis.set_title(f"{n} concurrent requests")
        axis.set_xlabel("latency (ms, client-measured)")
        axis.set_ylabel("fraction of requests")
        axis.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
        axis.grid(True, which="both", linewidth=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(destination, dpi=110)
    plt.close(figure)
    return None


def print_figures(figures: Mapping[str, Any]) -> None:
    """A small bench's output: one aligned line per figure, then the JSON line."""
    for key, value in figures.items():
        print(f"{key:40} {value}")
    print(json.dumps(figures, separators=(",", ":")))
