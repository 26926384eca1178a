"""Hedged attempts: the tail they cut and the attempts they add, side by side in one run.

Five instance processes serve strict mTLS (uvicorn, uvloop, httptools); each answers
after a latency drawn like a real service's (a base plus an exponential tail). This
process calls them with the mesh client at ``--concurrency`` concurrent GETs, every
measurement from a fresh client warmed up with 100 calls, with hedging off and on
(hedging at the p95 of the destination's recent latency), interleaved over
``--rounds`` rounds:

- ``normal``: three normal instances. What hedging costs when nothing is slow.
- ``one_slow``: the issue's "one slow instance out of three" as real tails are: two
  normal instances and one that turns slow once the warm-up is over, ``--slow-ms`` more
  on ``--slow-share`` (10%) of its requests (a noisy neighbour, GC pauses, a disk
  stall). Its average stays close to the others', so the balancer keeps sending it
  calls, and its slow answers are the destination's p99.
- ``always_slow``: two normal instances and one that is ``--slow-ms`` slower on every
  request. No tail is left here for hedging to cut: P2C's peak-EWMA cost stops
  choosing that instance after its first slow answers. Reported apart, as what the
  balancer alone already does.
- ``stalls``: three instances that each stall ``--slow-ms`` on ``--stall-share`` (2%)
  of their requests, at random: the tail at scale, which no balancer can see coming.
- ``normal_mirror``: ``normal`` with 10% of the calls copied to a ``shadow`` instance that is
  slow on every call. The caller's latency should not move.

p99.9 is reported too: the balancer keeps the slow instance's answers under 1% of
the calls in ``one_slow``, so what is left of them is deeper in the tail. So is
``slow_calls_pct``, the share of calls that took at least half of ``--slow-ms``: a p99
can hold slow answers only when more than 1% of the calls are slow.

The sweep: one slow instance of three, slow on 2%, 5% (``--sweep-shares``), 10%
(``one_slow``) and 100% (``always_slow``) of its requests, hedging off and on. How
often that instance is slow decides what is left for hedging: slow on most requests,
the balancer shuns it and no tail is left; slow on a small share, the balancer cannot
see it coming. Printed as a table (p99 off/hedged, their ratio, extra attempts, the
slow instance's share of the attempts with hedging off, slow calls off -> hedged) and
in the JSON line as ``ratio_p99_hedge_over_none_slow<N>pct``,
``extra_attempts_pct_slow<N>pct``, ``slow_instance_attempts_pct_slow<N>pct`` and
``sweep``.

``--steady-seconds S`` adds ``one_slow_steady``: ``one_slow`` measured for S seconds
instead of ``--requests`` calls. The balancer's latency cost forgets over 10 s
(``ClientPolicy.balancer_decay``), so a measurement of a few seconds ends before the
slow instance is tried again; S of 30 or more shows the share it keeps in the long run,
re-tried as its cost decays.

Each hedged setting runs twice: the race's loser left to finish on its connection
(``hedge_loser="finish"``, the default) and aborted (``"abort"``, a new mTLS connection
each time). Reported: p50/p99 of the calls as the caller saw them, extra attempts
(attempts beyond one per call to the destination: hedges and retries) in percent of
calls, and this process's CPU per call (the caller's side: the handshakes that
aborting costs show there); ratios are medians over rounds. Run:
``python -m bench.hedging [--requests N]``. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop

from bench._mtls import StaticSource, mtls_server
from bench._procs import free_port, port_open, spawn, wait_until
from bench._report import percentile
from meshkit.ca.x509 import LocalAuthority
from meshkit.client import (
    AttemptEnded,
    BaseClientHooks,
    ClientPolicy,
    HedgeStarted,
    MeshClientFactory,
    MirrorEnded,
)
from meshkit.registry.base import Endpoint
from meshkit.settings import MeshSettings
from meshkit.tls import TLSContexts, TLSMaterial

BASE_MS = 2.0  # every instance's latency: this ...
TAIL_MS = 1.0  # ... plus an exponential draw of this mean


def serve(
    directory: Path, port: int, extra_ms: float, share: float, stem: str, *, slow: bool
) -> None:
    """One instance process: mTLS on ``port``, answering after its drawn latency, and
    while slow ``extra_ms`` later for ``share`` of the requests. ``/slow`` and ``/fast``
    switch it (the bench turns the slow instance slow after each warm-up)."""
    state = {"slow": slow}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] in ("/slow", "/fast"):
            state["slow"] = scope["path"] == "/slow"
        delay = BASE_MS + random.expovariate(1 / TAIL_MS)
        if state["slow"] and random.random() < share:
            delay += extra_ms
        await asyncio.sleep(delay / 1000)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mtls_server(app, directory, port=port, stem=stem).run()


class _Counts(BaseClientHooks):
    def __init__(self) -> None:
        self.attempts = 0
        self.hedges = 0
        self.mirrored: Counter[str] = Counter()
        self.by_port: Counter[int] = Counter()  # the caller's attempts per instance

    def on_mirror_ended(self, event: MirrorEnded) -> None:
        self.mirrored["dropped" if event.dropped else "sent"] += 1

    def on_attempt_end(self, event: AttemptEnded) -> None:
        self.attempts += event.destination == "payments"  # not the mirror's
        if event.destination == "payments" and event.endpoint is not None:
            self.by_port[event.endpoint.port] += 1

    def on_hedge_started(self, event: HedgeStarted) -> None:
        self.hedges += 1


async def measure(
    ports: list[int],
    material: TLSMaterial,
    *,
    policy: ClientPolicy,
    shadow: int,
    switch: int | None,
    requests: int,
    concurrency: int,
    slow_ms: float,
    seconds: float = 0.0,
) -> dict[str, float]:
    """One cell: ``requests`` calls, or as many as ``seconds`` allow when it is set."""
    endpoints = [Endpoint(f"payments-{p}", "payments", "127.0.0.1", p) for p in ports]
    mirror = [Endpoint("shadow-1", "shadow", "127.0.0.1", shadow)]
    source = StaticSource(endpoints, {"shadow": mirror})
    counts = _Counts()
    settings = MeshSettings(service="web")
    factory = MeshClientFactory(
        source, TLSContexts(material), settings, policy=policy, hooks=counts
    )
    payments = factory.client("payments")
    for _ in range(100):  # warm up: connections, the latency window
        await payments.get("/x")
    if switch is not None:
        await _switch(material, switch, "/slow")
    warm_attempts = counts.attempts
    warm_last = counts.by_port[ports[-1]]
    latencies: list[float] = []
    failures = 0
    remaining = requests if not seconds else sys.maxsize
    ends = time.perf_counter() + seconds if seconds else math.inf
    cpu_started = time.process_time()

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0 and time.perf_counter() < ends:
            remaining -= 1
            started = time.perf_counter()
            status = (await payments.get("/x")).status_code
            latencies.append((time.perf_counter() - started) * 1000)
            failures += status != 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = time.process_time() - cpu_started
    await factory.aclose()
    if switch is not None:
        await _switch(material, switch, "/fast")
    ordered = sorted(latencies)
    # Attempts of the caller's own calls: a mirror's copies are counted apart.
    extra = counts.attempts - warm_attempts - len(latencies)
    return {
        "p50_ms": round(percentile(ordered, 50), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
        "p999_ms": round(percentile(ordered, 99.9), 3),
        "extra_attempts_pct": round(100 * extra / len(latencies), 2),
        "slow_calls_pct": round(100 * sum(ms >= slow_ms / 2 for ms in ordered) / len(ordered), 3),
        "mirror_copies_sent": counts.mirrored["sent"],
        "mirror_copies_dropped": counts.mirrored["dropped"],
        "caller_cpu_ms_per_call": round(1000 * cpu / len(latencies), 4),
        # The slow instance of one_slow and always_slow is the last: its share shows
        # how much of the traffic the balancer still sends it.
        "last_instance_attempts_pct": round(
            100 * (counts.by_port[ports[-1]] - warm_last) / (counts.attempts - warm_attempts), 2
        ),
        "failures": failures,
    }


async def _switch(material: TLSMaterial, port: int, path: str) -> None:
    """Turn the instance on ``port`` slow or fast, through a client of its own."""
    only = [Endpoint("switch", "payments", "127.0.0.1", port)]
    factory = MeshClientFactory(
        StaticSource(only), TLSContexts(material), MeshSettings(service="web")
    )
    await factory.client("payments").get(path)
    await factory.aclose()


def sweep_settings(args: argparse.Namespace) -> dict[str, str]:
    """The sweep's cells by label (``slow<N>pct``), each the prefix of its two settings
    (``<prefix>_none``, ``<prefix>_hedge``): the 10% and 100% ones are the scenarios
    ``one_slow`` and ``always_slow`` themselves, the others their own."""
    labels = {_label(share): _label(share) for share in args.sweep_shares}
    return labels | {_label(args.slow_share): "one_slow", _label(1.0): "always_slow"}


def _label(share: float) -> str:
    return f"slow{round(100 * share, 2):g}pct"


HEDGED = ClientPolicy(hedge_percentile=95)
HEDGED_ABORT = HEDGED.replace(hedge_loser="abort")
#: A tenth of the calls copied to ``shadow``, an instance slower than the others on every call.
MIRRORED = ClientPolicy(mirror_to="shadow", mirror_fraction=0.1)


async def run_all(
    ports: list[int], material: TLSMaterial, args: argparse.Namespace
) -> dict[str, list[dict[str, float]]]:
    normal, slow, shadow, stalling, always = ports[:3], ports[3], ports[4], ports[5:8], ports[8]
    one_slow = [*normal[:2], slow]
    cells: list[tuple[str, list[int], ClientPolicy, int | None, float]] = [
        ("normal_mirror", normal, MIRRORED, None, 0.0)
    ]
    settings = [
        ("normal", normal, None),
        ("one_slow", one_slow, slow),
        ("always_slow", [*normal[:2], always], None),
        ("stalls", stalling, None),
    ]
    for name, instances, switch in settings:
        cells += [
            (f"{name}_none", instances, ClientPolicy(), switch, 0.0),
            (f"{name}_hedge", instances, HEDGED, switch, 0.0),
            (f"{name}_abort", instances, HEDGED_ABORT, switch, 0.0),
        ]
    # The sweep's own instances: one of three, slow once warmed up on its share.
    for share, port in zip(args.sweep_shares, ports[9:], strict=True):
        instances = [*normal[:2], port]
        cells += [
            (f"{_label(share)}_none", instances, ClientPolicy(), port, 0.0),
            (f"{_label(share)}_hedge", instances, HEDGED, port, 0.0),
        ]
    if args.steady_seconds:
        steady = args.steady_seconds
        cells += [
            ("one_slow_steady_none", one_slow, ClientPolicy(), slow, steady),
            ("one_slow_steady_hedge", one_slow, HEDGED, slow, steady),
        ]
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for key, instances, policy, switch, seconds in cells:
            figures = await measure(
                instances,
                material,
                policy=policy,
                shadow=shadow,
                switch=switch,
                requests=args.requests,
                concurrency=args.concurrency,
                slow_ms=args.slow_ms,
                seconds=seconds,
            )
            results.setdefault(key, []).append(figures)
            print(key, figures, flush=True)
    return results


def _median(cells: list[dict[str, float]], figure: str) -> float:
    return statistics.median(cell[figure] for cell in cells)


def sweep_figures(
    results: dict[str, list[dict[str, float]]], sweep: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Per sweep label: the medians over rounds of its settings off and hedged."""
    figures = {}
    for label, setting in sweep.items():
        off, hedged = results[f"{setting}_none"], results[f"{setting}_hedge"]
        pairs = zip(off, hedged, strict=True)
        figures[label] = {
            "p99_ms_none": _median(off, "p99_ms"),
            "p99_ms_hedge": _median(hedged, "p99_ms"),
            "ratio_p99_hedge_over_none": round(
                statistics.median(h["p99_ms"] / n["p99_ms"] for n, h in pairs), 3
            ),
            "extra_attempts_pct": _median(hedged, "extra_attempts_pct"),
            "slow_instance_attempts_pct": _median(off, "last_instance_attempts_pct"),
            "slow_calls_pct_none": _median(off, "slow_calls_pct"),
            "slow_calls_pct_hedge": _median(hedged, "slow_calls_pct"),
        }
    return figures


def print_sweep(figures: dict[str, dict[str, float]]) -> None:
    print(
        "one slow instance of three | p99 off | hedged | ratio | extra attempts"
        " | slow instance | slow calls off -> hedged"
    )
    for label, cell in figures.items():
        print(
            f"{label} | {cell['p99_ms_none']} ms | {cell['p99_ms_hedge']} ms"
            f" | {cell['ratio_p99_hedge_over_none']} | {cell['extra_attempts_pct']}%"
            f" | {cell['slow_instance_attempts_pct']}%"
            f" | {cell['slow_calls_pct_none']}% -> {cell['slow_calls_pct_hedge']}%",
            flush=True,
        )


def summarize(
    results: dict[str, list[dict[str, float]]], sweep: dict[str, dict[str, float]]
) -> dict[str, Any]:
    def median(key: str, figure: str) -> float:
        return statistics.median(cell[figure] for cell in results[key])

    def ratio(setting: str, hedged: str = "hedge", figure: str = "p99_ms") -> float:
        pairs = zip(results[f"{setting}_none"], results[f"{setting}_{hedged}"], strict=True)
        return round(statistics.median(h[figure] / n[figure] for n, h in pairs), 3)

    steady: dict[str, Any] = {}
    if "one_slow_steady_none" in results:
        steady = {
            "ratio_p99_hedge_over_none_one_slow_steady": ratio("one_slow_steady"),
            "slow_instance_attempts_pct_one_slow_steady": median(
                "one_slow_steady_none", "last_instance_attempts_pct"
            ),
        }
    swept: dict[str, float] = {}
    for label, cell in sweep.items():
        swept[f"ratio_p99_hedge_over_none_{label}"] = cell["ratio_p99_hedge_over_none"]
        swept[f"extra_attempts_pct_{label}"] = cell["extra_attempts_pct"]
        swept[f"slow_instance_attempts_pct_{label}"] = cell["slow_instance_attempts_pct"]
    return (
        steady
        | swept
        | {
            "sweep": sweep,
            "ratio_p99_hedge_over_none": ratio("one_slow"),
            "ratio_p99_abort_over_none": ratio("one_slow", "abort"),
            "ratio_p999_hedge_over_none": ratio("one_slow", figure="p999_ms"),
            "ratio_p99_hedge_over_none_always_slow": ratio("always_slow"),
            "ratio_p99_hedge_over_none_stalls": ratio("stalls"),
            "ratio_p99_abort_over_none_stalls": ratio("stalls", "abort"),
            "ratio_cpu_hedge_over_none_stalls": ratio("stalls", figure="caller_cpu_ms_per_call"),
            "ratio_cpu_abort_over_none_stalls": ratio(
                "stalls", "abort", figure="caller_cpu_ms_per_call"
            ),
            "extra_attempts_pct_stalls": median("stalls_hedge", "extra_attempts_pct"),
            "ratio_p99_hedge_over_none_normal": ratio("normal"),
            "ratio_p99_abort_over_none_normal": ratio("normal", "abort"),
            "extra_attempts_pct_normal": median("normal_hedge", "extra_attempts_pct"),
            "extra_attempts_pct_one_slow": median("one_slow_hedge", "extra_attempts_pct"),
            "slow_instance_attempts_pct_one_slow": median(
                "one_slow_none", "last_instance_attempts_pct"
            ),
            "slow_instance_attempts_pct_always_slow": median(
                "always_slow_none", "last_instance_attempts_pct"
            ),
            "ratio_p50_mirror_over_none": round(
                median("normal_mirror", "p50_ms") / median("normal_none", "p50_ms"), 3
            ),
            "ratio_p99_mirror_over_none": round(
                median("normal_mirror", "p99_ms") / median("normal_none", "p99_ms"), 3
            ),
            "mirror_copies_sent": median("normal_mirror", "mirror_copies_sent"),
            "mirror_copies_dropped": median("normal_mirror", "mirror_copies_dropped"),
            "caller_cpu_ms_per_call": {
                key: median(key, "caller_cpu_ms_per_call") for key in results
            },
            "p99_ms": {key: median(key, "p99_ms") for key in results},
            "p50_ms": {key: median(key, "p50_ms") for key in results},
            "p999_ms": {key: median(key, "p999_ms") for key in results},
            "slow_calls_pct": {key: median(key, "slow_calls_pct") for key in results},
            "failures": sum(cell["failures"] for cells in results.values() for cell in cells),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="calls per measurement")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument(
        "--steady-seconds",
        type=float,
        default=0.0,
        help="also measure one_slow for this long per round, past the balancer's decay (0: no)",
    )
    parser.add_argument("--slow-ms", type=float, default=150.0, help="the slow instance's delay")
    parser.add_argument(
        "--slow-share",
        type=float,
        default=0.1,
        help="share of its requests the one slow instance delays",
    )
    parser.add_argument(
        "--sweep-shares",
        type=_shares,
        default=(0.02, 0.05),
        help="comma-separated shares of its requests a one-slow instance delays, swept"
        " besides --slow-share and 1 (default 0.02,0.05)",
    )
    parser.add_argument(
        "--stall-share", type=float, default=0.02, help="share of requests a stalling one delays"
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--extra-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--stem", default="payments", help=argparse.SUPPRESS)
    parser.add_argument("--start-slow", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(
            args.serve, args.port, args.extra_ms, args.slow_share, args.stem, slow=args.start_slow
        )
        return
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        directory = Path(tmp)
        authority = LocalAuthority()
        authority.issue("payments").write(directory, stem="payments")
        authority.issue("web").write(directory, stem="web")
        authority.issue("shadow").write(directory, stem="shadow")
        ports = []
        # Three normal instances, the one slow on some calls, the mirror (slow on all),
        # three stalling now and then, one slow on every call, and the sweep's.
        instances = [(0.0, 0.0, "payments", False)] * 3
        instances += [(args.slow_ms, args.slow_share, "payments", False)]
        instances += [(args.slow_ms, 1.0, "shadow", True)]
        instances += [(args.slow_ms, args.stall_share, "payments", True)] * 3
        instances += [(args.slow_ms, 1.0, "payments", True)]
        instances += [(args.slow_ms, share, "payments", False) for share in args.sweep_shares]
        for extra, share, stem, start_slow in instances:
            port = free_port()
            argv = [sys.executable, "-m", "bench.hedging", "--serve", tmp, "--port", str(port)]
            options = ["--extra-ms", str(extra), "--slow-share", str(share), "--stem", stem]
            options += ["--start-slow"] if start_slow else []
            process = spawn(stack, [*argv, *options])
            wait_until(lambda port=port: port_open(port), what="instance", process=process)
            ports.append(port)
        files = (directory / "web.pem", directory / "web-key.pem", directory / "bundle.pem")
        material = TLSMaterial.from_files(*files)
        results = uvloop.run(run_all(ports, material, args))
    sweep = sweep_figures(results, sweep_settings(args))
    print_sweep(sweep)
    print(json.dumps(summarize(results, sweep), sort_keys=True))


def _shares(raw: str) -> tuple[float, ...]:
    try:
        shares = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {raw!r}") from None
    if not all(0 < share < 1 for share in shares):
        raise argparse.ArgumentTypeError(f"shares must be between 0 and 1: {raw!r}")
    return shares


if __name__ == "__main__":
    main()
