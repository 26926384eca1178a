"""ClientPolicy: every tuning knob of the mesh client, as one immutable value."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from meshkit.errors import ConfigError

#: What becomes of a hedge race's losing attempt (``ClientPolicy.hedge_loser``).
HedgeLoser = Literal["finish", "abort"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientPolicy:
    """How calls to one destination are made. Defaults follow Linkerd/Finagle/Envoy.

    Timeouts are seconds; ``None`` for ``per_try_timeout`` means only the call timeout
    (and the incoming deadline) bound an attempt.
    """

    timeout: float = 10.0  # the whole call: every attempt and backoff
    per_try_timeout: float | None = 3.0
    max_attempts: int = 3
    backoff_base: float = 0.025  # exponential backoff with full jitter
    backoff_cap: float = 1.0
    max_retry_after: float = 5.0  # a longer Retry-After is not waited for
    # Answers retried (when the method is safe to repeat); a route's RetryOnStatusCodes.
    retry_status: frozenset[int] = frozenset({502, 503, 504})
    budget_ratio: float = 0.2  # retries <= 20% of requests ...
    budget_min_per_second: float = 10.0  # ... + 10 per second
    budget_ttl: float = 10.0  # over this window
    # The balancer's latency average forgets over this many seconds (Finagle's decayTime,
    # Linkerd's decay): how soon an endpoint that was slow is tried again.
    balancer_decay: float = 10.0
    ejection_failures: int = 5  # consecutive failures that eject an endpoint
    ejection_base: float = 30.0  # ejected for base x number of ejections ...
    ejection_cap: float = 300.0  # ... at most this long
    ejection_max_fraction: float = 0.5  # never eject more of a destination's endpoints
    breaker_window: float = 10.0  # failure ratio measured over this window
    breaker_min_calls: int = 20  # fewer calls in the window never open the breaker
    breaker_failure_ratio: float = 0.5
    breaker_open_for: float = 5.0  # then one probe goes through (half-open)
    max_concurrent: int = 1024  # calls in flight to the destination
    max_pending: int = 1024  # calls waiting for a slot; beyond that: Overloaded
    max_connections: int = 64  # per endpoint
    connect_timeout: float = 2.0
    idle_timeout: float = 4.0  # under uvicorn's 5 s keep-alive, so we close first
    # Hedging (Finagle's backup requests), for idempotent calls only: when the first
    # attempt has not answered after ``hedge_delay`` seconds, or else after the
    # ``hedge_percentile`` of the destination's recent attempt latencies, a second
    # attempt goes to another endpoint. Both None: no hedging.
    hedge_percentile: float | None = None
    hedge_delay: float | None = None
    hedge_min_delay: float = 0.001  # never hedge sooner, whatever the percentile says
    # The attempt that loses the race: "finish" lets it end on its keep-alive connection,
    # its answer discarded; "abort" closes its connection at once (Envoy resets the
    # losing stream, Finagle interrupts it; over HTTP/1.1 both mean a new connection).
    # Either way it ends by its attempt's deadline, within the call's.
    hedge_loser: HedgeLoser = "finish"
    busy_cap: float = 30.0  # the longest Retry-After that makes an endpoint less chosen
    # Mirroring: this share of the calls is copied to ``mirror_to`` (a destination), or
    # to its ``mirror_subset`` (a service-resolver subset: the destination's own v2, say),
    # fire-and-forget; at most ``mirror_max_in_flight`` copies at once, the rest dropped.
    mirror_to: str | None = None
    mirror_subset: str | None = None
    mirror_fraction: float = 0.0
    mirror_max_in_flight: int = 64

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, int | float) and value < 0:
                raise ConfigError(f"ClientPolicy.{item.name}: must not be negative")
        if self.max_attempts < 1:
            raise ConfigError("ClientPolicy.max_attempts: must be at least 1")
        if not 0 <= self.ejection_max_fraction <= 1:
            raise ConfigError("ClientPolicy.ejection_max_fraction: must be within 0..1")
        if self.hedge_percentile is not None and not 0 < self.hedge_percentile < 100:
            raise ConfigError("ClientPolicy.hedge_percentile: must be within 0..100 (exclusive)")
        if self.hedge_loser not in ("finish", "abort"):
            raise ConfigError('ClientPolicy.hedge_loser: must be "finish" or "abort"')
        if not 0 <= self.mirror_fraction <= 1:
            raise ConfigError("ClientPolicy.mirror_fraction: must be within 0..1")
        if self.balancer_decay <= 0:
            raise ConfigError("ClientPolicy.balancer_decay: must be positive")
        if self.max_connections < 1 or self.max_concurrent < 1:
            raise ConfigError("ClientPolicy: max_connections and max_concurrent must be >= 1")

    @property
    def hedging(self) -> bool:
        return self.hedge_delay is not None or self.hedge_percentile is not None

    def replace(self, **changes: Any) -> ClientPolicy:
        return replace(self, **changes)
