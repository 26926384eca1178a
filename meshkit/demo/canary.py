"""``meshkit demo --canary``: inventory 2.0.0 rolled out, then a bad 2.0.1 rolled back.

Two more inventory instances join the shop: ``inventory-v2`` publishing
``MESHKIT_VERSION=2.0.0``, and ``inventory-v2-bad`` publishing 2.0.1 and failing half of
its requests with a 500 (``MESHKIT_FAULTS``). A ``service-resolver`` names the subsets by
version (``stable`` is every other version) and sends everything to ``stable`` by
default. Then one ``service-splitter`` per phase, written through the registry's
``/v1/config`` exactly as ``meshkit config write`` would, moves the traffic: 2.0.0 takes
10%, 50%, then 100%; then the bad 2.0.1 takes 10%, and the splitter is written back to
``stable``. web and cart apply each change within a second, without restarting.

Each tick shows the edges, then inventory's requests and success per version as its
callers saw them (their client metrics' ``destination_subset``: a failed call counts
even when no inventory instance answered it); the summary gives demo-user's success
per phase: failures only in the bad canary's phase, none after the rollback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from prometheus_client.parser import text_string_to_metric_families

from meshkit.demo.traffic import TrafficStats
from meshkit.observe.golden import CLIENT_METRIC, Histogram, add_sample
from meshkit.registry.consul import ConsulRegistry

SERVICE = "inventory"
PHASE_SETTLE = 1.0  # seconds after a splitter write before its phase's calls count
CANARY, BAD = "2.0.0", "2.0.1"
#: (instance name, MESHKIT_VERSION, MESHKIT_FAULTS or "")
CANARIES = (("inventory-v2", CANARY, ""), ("inventory-v2-bad", BAD, "abort=500,percent=50"))
RESOLVER = {
    "DefaultSubset": "stable",
    "Subsets": {
        "stable": {
            "Filter": f'Service.Meta.version != "{CANARY}" and Service.Meta.version != "{BAD}"'
        },
        "canary": {"Filter": f'Service.Meta.version == "{CANARY}"'},
        "bad": {"Filter": f'Service.Meta.version == "{BAD}"'},
    },
}
#: What the table calls each subset: the version its filter selects.
SUBSET_VERSIONS = {"stable": "stable", "canary": CANARY, "bad": BAD}


@dataclass(frozen=True)
class Phase:
    name: str
    weights: Mapping[str, float]  # subset -> percent

    def splitter(self) -> dict[str, Any]:
        return {"Splits": [{"Weight": w, "ServiceSubset": s} for s, w in self.weights.items()]}


PHASES = (
    Phase(f"{CANARY} takes 10%", {"stable": 90, "canary": 10}),
    Phase(f"{CANARY} takes 50%", {"stable": 50, "canary": 50}),
    Phase(f"{CANARY} takes 100%", {"canary": 100}),
    Phase(f"bad {BAD} takes 10%", {"stable": 90, "bad": 10}),
    Phase(f"{BAD} rolled back", {"stable": 100}),
)


class RoutingWriter:
    """Writes inventory's routing entries to the mesh's registry."""

    def __init__(self, address: str) -> None:
        self._registry = ConsulRegistry(address=address)

    def write(self, kind: str, body: Mapping[str, Any]) -> None:
        anyio.run(self._registry.call, lambda client: client.config.set(kind, SERVICE, dict(body)))

    def prepare(self) -> None:
        """What must exist before splitting: an HTTP protocol (as Consul requires) and
        the subsets, with everything on ``stable``."""
        self.write("service-defaults", {"Protocol": "http"})
        self.write("service-resolver", RESOLVER)


class VersionBoard:
    """inventory's calls per version, per tick, from its callers' scrapes (every
    instance's: those that never call inventory add nothing)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], Histogram] = {}  # (instance, subset) -> so far

    def update(self, scrapes: Mapping[str, str]) -> dict[str, Histogram]:
        """This tick's calls per version, from each instance's exposition text."""
        window: dict[str, Histogram] = {}
        for instance, text in scrapes.items():
            for subset, total in subset_calls(text).items():
                delta = total - self._last.get((instance, subset), Histogram())
                self._last[instance, subset] = total
                version = SUBSET_VERSIONS.get(subset, subset)
                window[version] = window.get(version, Histogram()) + delta
        return window


def subset_calls(text: str) -> dict[str, Histogram]:
    """One caller's calls to inventory so far, per ``destination_subset``."""
    calls: dict[str, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.name != CLIENT_METRIC:
            continue
        for sample in family.samples:
            labels = sample.labels
            subset = labels.get("destination_subset", "")
            if labels.get("destination_service") == SERVICE and subset:
                add_sample(calls, subset, sample.name, labels, sample.value)
    return calls


def version_table(window: Mapping[str, Histogram]) -> str:
    """``inventory by version``: each version's share of the window's requests, success."""
    total = sum(h.count for h in window.values())
    lines = [f"{SERVICE} by version  share  requests  success %"]
    for version, histogram in sorted(window.items()):
        share = histogram.count / total * 100 if total else 0.0
        success = "-" if histogram.success is None else f"{histogram.success * 100:.2f}"
        lines.append(f"  {version:<17} {share:5.1f}%  {histogram.count:8.0f}  {success:>9}")
    return "\n".join(lines)


@dataclass
class PhaseResult:
    phase: Phase
    requests: int
    failures: int

    def line(self) -> str:
        ok = 100.0 if not self.requests else (1 - self.failures / self.requests) * 100
        return f"  {self.phase.name:<22} demo-user {self.requests:5d} requests, {ok:6.2f}% ok"


def phase_results(
    boundaries: Sequence[tuple[Phase, int, int]], stats: TrafficStats
) -> list[PhaseResult]:
    """Per phase, what demo-user saw: from (phase, requests, failures) at each start."""
    ends = [(r, f) for _, r, f in boundaries[1:]] + [(stats.requests, stats.failures)]
    return [
        PhaseResult(phase, end_requests - requests, end_failures - failures)
        for (phase, requests, failures), (end_requests, end_failures) in zip(
            boundaries, ends, strict=True
        )
    ]


def canary_env(version: str, faults: str) -> dict[str, str]:
    env = {"MESHKIT_VERSION": version}
    if faults:
        env["MESHKIT_FAULTS"] = faults
    return env


def phase_at(elapsed: float, duration: float) -> int:
    """The phase running ``elapsed`` seconds into a run of ``duration``."""
    return min(int(elapsed / (duration / len(PHASES))), len(PHASES) - 1)
