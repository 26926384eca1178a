"""``meshkit top SERVICE``: the requests a service serves, per caller and route, live.

Like ``linkerd viz top``: one row per (caller, method, route) with requests/s, success,
p50 and p99 over the last window, busiest first; rendered as a fixed-width table or as
JSON for scripts. The numbers come from ``meshkit.observe.scrape``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshkit.errors import MeshError, RegistryUnavailable
from meshkit.observe.scrape import FlowGolden, Observer, Tick, inbound_golden, window_seconds


def rows(ticks: Sequence[Tick], service: str) -> list[FlowGolden]:
    """The service's inbound flows over ``ticks``, busiest first."""
    return sorted(inbound_golden(ticks, service), key=lambda r: (-r.golden.rate, r.flow))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def as_json(service: str, ticks: Sequence[Tick]) -> dict[str, Any]:
    return {
        "service": service,
        "window_seconds": round(window_seconds(ticks), 3),
        "rows": [
            {
                "caller": row.flow.source,
                "method": row.flow.method,
                "route": row.flow.route,
                "requests": row.golden.requests,
                "rps": round(row.golden.rate, 3),
                "success": row.golden.success,
                "p50_ms": _ms(row.golden.p50),
                "p99_ms": _ms(row.golden.p99),
            }
            for row in rows(ticks, service)
        ],
    }


def _cell(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def as_table(service: str, ticks: Sequence[Tick]) -> str:
    """A fixed-width table headed by the service and the window it covers."""
    header = ("caller", "method", "route", "req/s", "success %", "p50 ms", "p99 ms")
    lines = [
        (
            row.flow.source,
            row.flow.method,
            row.flow.route,
            _cell(row.golden.rate),
            _cell(row.golden.success, 100, 2),
            _cell(row.golden.p50, 1000),
            _cell(row.golden.p99, 1000),
        )
        for row in rows(ticks, service)
    ]
    title = f"{service}: requests served over the last {window_seconds(ticks):.1f}s"
    if not lines:
        return f"{title}\n(no requests)"
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [header, *lines]
    ]
    return "\n".join([title, *text])


def check_service(observer: Observer, service: str) -> None:
    """Fail with one line when the registry is down or does not know ``service``."""
    if observer.error is not None and not observer.targets:
        raise RegistryUnavailable(observer.error)
    if service not in observer.services:
        known = ", ".join(observer.services) or "none"
        raise MeshError(f"no service {service!r} in the registry (services: {known})")
