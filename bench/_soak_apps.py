"""The two services of ``bench/soak.py``: ``soaker`` forwards to ``soakee`` by name.

``caller`` (service ``soaker``) answers the load generator's ``GET /item`` and
``POST /item`` by making the same call to ``soakee`` through the mesh client, passing
an ``Idempotency-Key`` through, with a per-try timeout (``SOAK_PER_TRY_TIMEOUT``,
default 0.5 s) shorter than the delay the slow callee instances inject, so every
attempt that lands on one is abandoned mid-request.

``SOAK_DEBUG=1`` adds ``GET /_debug`` to the caller: what its memory holds (object
counts by type, those made since startup: ``meshkit run`` freezes the rest out of the
collector's sight; asyncio tasks and threads; /proc smaps_rollup; glibc's mallinfo2;
with ``SOAK_TRACEMALLOC=<frames>`` a tracemalloc diff against the first snapshot, at
a CPU cost that starves the caller). ``?trim=1`` runs the cyclic GC and glibc's
``malloc_trim(0)`` first, to tell memory held free by malloc from memory in use.
Investigation only: it is never on in a measured run.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import gc
import os
import tracemalloc
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshkit import ClientPolicy, ServiceApp
from meshkit.policy import allow, idempotent

DESTINATION = "soakee"
_FORWARDED = ("idempotency-key", "content-type")


async def forward(request: Request) -> Response:
    """The same method, path and body to the callee; its answer back as it came."""
    headers = {name: request.headers[name] for name in _FORWARDED if name in request.headers}
    response = await request.app.client(DESTINATION).request(
        request.method, "/item", content=await request.body(), headers=headers
    )
    return Response(response.content, response.status_code, media_type="application/json")


@allow("soaker")
async def item(request: Request) -> JSONResponse:
    return JSONResponse({"item": 1, "served_by": os.getpid()})


@allow("soaker")
@idempotent()
async def create(request: Request) -> JSONResponse:
    return JSONResponse({"created": len(await request.body()), "served_by": os.getpid()}, 201)


# -- investigation hook (SOAK_DEBUG) -----------------------------------------------------

_baseline: list[tracemalloc.Snapshot] = []


def _smaps_rollup() -> dict[str, int]:
    """kB per field of /proc/self/smaps_rollup (Rss, Anonymous, Private_Dirty, ...)."""
    fields: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return fields


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6")


def _malloc_trim() -> int:
    return int(_libc().malloc_trim(0))


def _mallinfo() -> dict[str, float]:
    """glibc's heap, all arenas, MB: ``arena`` from the system (brk + arena heaps),
    ``in_use`` and ``free`` of it (free: held by malloc, resident if touched), ``mmapped``
    (big blocks, returned on free)."""
    mallinfo2 = _libc().mallinfo2
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    mb = 2**20
    return {
        "arena": info.arena / mb,
        "in_use": info.uordblks / mb,
        "free": info.fordblks / mb,
        "mmapped": info.hblkhd / mb,
    }


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _object_counts(top: int) -> dict[str, int]:
    counts = collections.Counter(type(obj).__qualname__ for obj in gc.get_objects())
    return dict(counts.most_common(top))


def _tracemalloc_diff(top: int) -> list[str]:
    """The biggest growths since the first call, by allocation site (tracebacks)."""
    if not tracemalloc.is_tracing():
        return []
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    if not _baseline:
        _baseline.append(snapshot)
        return ["baseline taken"]
    stats = snapshot.compare_to(_baseline[0], "traceback")[:top]
    return ["\n".join([str(stat), *stat.traceback.format()[-6:]]) for stat in stats]


@allow("loadgen")
async def debug(request: Request) -> JSONResponse:
    figures: dict[str, Any] = {}
    if request.query_params.get("trim"):
        gc.collect()
        figures["smaps_before_trim"] = _smaps_rollup()
        figures["malloc_before_trim"] = _mallinfo()
        figures["malloc_trim"] = _malloc_trim()
    figures["smaps"] = _smaps_rollup()
    figures["malloc"] = _mallinfo()
    figures["threads"] = _threads()
    figures["tasks"] = len(asyncio.all_tasks())
    figures["objects"] = _object_counts(25)
    figures["tracemalloc"] = _tracemalloc_diff(15)
    figures["traced_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
    return JSONResponse(figures)


def _caller_routes() -> list[Route]:
    routes = [Route("/item", allow("loadgen")(forward), methods=["GET", "POST"])]
    if os.environ.get("SOAK_DEBUG"):
        routes.append(Route("/_debug", debug))
        frames = int(os.environ.get("SOAK_TRACEMALLOC", "0"))
        if frames:
            tracemalloc.start(frames)
    return routes


caller = ServiceApp(
    service="soaker",
    routes=_caller_routes(),
    client_policy=ClientPolicy(
        per_try_timeout=float(os.environ.get("SOAK_PER_TRY_TIMEOUT", "0.5"))
    ),
)
callee = ServiceApp(
    service=DESTINATION,
    routes=[Route("/item", item, methods=["GET"]), Route("/item", create, methods=["POST"])],
)
