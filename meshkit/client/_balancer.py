"""One destination's endpoints: discovery, power-of-two-choices, outlier ejection.

Endpoints come from the ``EndpointSource`` (the watched registry cache); the list is
rebuilt only when the source's ``generation`` changes, keeping the state of endpoints
that stay. A pick draws two endpoints at random and takes the one with the lower
cost, peak-EWMA latency x (outstanding requests + 1) (Finagle's "P2C peak EWMA"), so
a slow or overloaded instance loses nearly every draw. It is not starved for good: as in
Finagle and Linkerd, the latency part of the cost decays toward zero with the time since
the endpoint last answered (``ClientPolicy.balancer_decay``), so an endpoint nobody picks
wins a draw again after about decay x ln(its peak / the others' cost), and that call's
answer shows whether it recovered. An endpoint failing ``ejection_failures`` times in a
row is ejected for ``ejection_base`` x its number of ejections (capped), unless that
would eject more than ``ejection_max_fraction`` of the destination (Envoy's rules).
An endpoint that asked for a pause (429, or 503 with Retry-After) is busy until then:
its cost counts ``_BUSY_PENALTY`` times, so it loses nearly every draw against an
endpoint that is not busy, yet is neither ejected nor starved when all of them are.
"""

from __future__ import annotations

import math
import random
import ssl
from collections.abc import Callable, Sequence

from meshkit.client._errors import NoHealthyInstances
from meshkit.client._hooks import ClientHooks, EndpointBusy, EndpointEjected, EndpointReadmitted
from meshkit.client._policy import ClientPolicy
from meshkit.client._pool import EndpointPool
from meshkit.identity import SpiffeId
from meshkit.registry.base import Endpoint, EndpointSource

_UNKNOWN_RTT = 0.001  # cost of an endpoint that has not answered yet
_BUSY_PENALTY = 64.0


def _key(endpoint: Endpoint) -> tuple[str, str, int, str | None]:
    # Endpoint holds a meta dict, so it is not hashable itself.
    return (endpoint.instance_id, endpoint.address, endpoint.port, endpoint.spiffe_id)


class EndpointState:
    """What the balancer knows about one endpoint."""

    __slots__ = (
        "busy_until",
        "decay",
        "ejected_until",
        "ejections",
        "endpoint",
        "ewma",
        "failures",
        "outstanding",
        "pool",
        "stamp",
    )

    def __init__(self, endpoint: Endpoint, pool: EndpointPool, decay: float) -> None:
        self.endpoint = endpoint
        self.pool = pool
        self.outstanding = 0
        self.ewma = 0.0
        self.stamp = 0.0  # when ewma was last updated
        self.failures = 0  # consecutive
        self.ejections = 0
        self.ejected_until = 0.0
        self.busy_until = 0.0  # asked for a pause until then (Retry-After)
        self.decay = decay  # seconds for the latency average to forget

    def cost(self, now: float) -> float:
        # Decayed toward zero since the last answer (Finagle decays on every read; the
        # same curve computed lazily): the way back in for an endpoint nobody picks.
        rtt = self.ewma * math.exp((self.stamp - now) / self.decay) if self.ewma else _UNKNOWN_RTT
        cost = rtt * (self.outstanding + 1)
        if self.busy_until > now:
            cost *= _BUSY_PENALTY
        return cost

    def observe(self, rtt: float, now: float) -> None:
        if rtt > self.ewma:
            self.ewma = rtt  # peak-sensitive: a slow answer counts at once
        else:
            weight = math.exp((self.stamp - now) / self.decay)
            self.ewma = self.ewma * weight + rtt * (1.0 - weight)
        self.stamp = now


class Balancer:
    """Picks the endpoint of each attempt to ``destination`` and learns from outcomes.

    ``service`` is the destination's name in the registry (``payments`` for the
    destination ``payments.shop``); ``destination`` names it in errors and hooks.
    """

    def __init__(
        self,
        destination: str,
        source: EndpointSource,
        *,
        service: str,
        policy: ClientPolicy,
        ssl_context: Callable[[], ssl.SSLContext],
        expected_identity: SpiffeId,
        hooks: ClientHooks | None,
    ) -> None:
        self.destination = destination
        self.service = service
        self._source = source
        self._policy = policy
        self._ssl_context = ssl_context
        self._expected_identity = expected_identity
        self._hooks = hooks
        self._generation: int | None = None
        self._states: list[EndpointState] = []
        self._ejected = 0

    @property
    def stale(self) -> bool:
        """The source changed since the last ``refresh`` (checked on every attempt)."""
        return self._source.generation != self._generation

    async def refresh(self) -> None:
        """Follow the source; cheap when nothing changed."""
        generation = self._source.generation
        if generation == self._generation:
            return
        endpoints = self._source.endpoints(self.service)
        if endpoints is None:
            endpoints = await self._source.prime(self.service)
        self._rebuild(endpoints)
        self._generation = generation

    def _rebuild(self, endpoints: Sequence[Endpoint]) -> None:
        known = {_key(state.endpoint): state for state in self._states}
        states = []
        for endpoint in endpoints:
            state = known.pop(_key(endpoint), None)
            states.append(state if state is not None else self._new_state(endpoint))
        for gone in known.values():
            gone.pool.retire()
        self._states = states
        self._ejected = sum(1 for state in states if state.ejected_until)

    def _new_state(self, endpoint: Endpoint) -> EndpointState:
        policy = self._policy
        pool = EndpointPool(
            endpoint.address,
            endpoint.port,
            destination=self.destination,
            ssl_context=self._ssl_context,
            # From the destination and settings, never from the registry's metadata: a
            # registry entry cannot make another workload acceptable for this name.
            expected_identity=self._expected_identity,
            max_connections=policy.max_connections,
            connect_timeout=policy.connect_timeout,
            idle_timeout=policy.idle_timeout,
        )
        return EndpointState(endpoint, pool, policy.balancer_decay)

    def pick(self, now: float, tried: Sequence[EndpointState] = ()) -> EndpointState:
        """Power of two choices among admitted endpoints, preferring untried ones."""
        states = self._states
        if self._ejected or tried:
            states = self._candidates(now, tried)
        count = len(states)
        if count == 0:
            raise NoHealthyInstances(
                "no healthy instance is registered", destination=self.destination
            )
        if count == 1:
            chosen = states[0]
        else:
            # math.floor where int() would do: a C function, not a constructor call.
            first = math.floor(random.random() * count)
            second = math.floor(random.random() * (count - 1))
            if second >= first:
                second += 1
            a, b = states[first], states[second]
            chosen = a if a.cost(now) <= b.cost(now) else b
        chosen.outstanding += 1
        return chosen

    def _candidates(self, now: float, tried: Sequence[EndpointState]) -> list[EndpointState]:
        if self._ejected:
            self._readmit_due(now)
        admitted = [state for state in self._states if not state.ejected_until]
        untried = [state for state in admitted if state not in tried]
        return untried or admitted

    def has_untried(self, tried: Sequence[EndpointState]) -> bool:
        return any(not s.ejected_until and s not in tried for s in self._states)

    def record(self, state: EndpointState, ok: bool | None, rtt: float, now: float) -> None:
        """An attempt on ``state`` ended: ok, failed, or None when the caller gave up."""
        state.outstanding -= 1
        if ok is None:
            return
        state.observe(rtt, now)
        if ok:
            state.failures = 0
            return
        state.failures += 1
        if state.failures >= self._policy.ejection_failures and not state.ejected_until:
            self._maybe_eject(state, now)

    def record_lost(self, state: EndpointState, rtt: float, now: float) -> None:
        """An attempt on ``state`` lost a hedge race and was cancelled after ``rtt``:
        a lower bound of its latency, so a slow endpoint keeps looking slow."""
        state.outstanding -= 1
        state.observe(rtt, now)

    def busy(self, state: EndpointState, status: int, duration: float, now: float) -> None:
        """``state`` asked for a pause of ``duration`` seconds: pick it less until then."""
        duration = min(duration, self._policy.busy_cap)
        state.busy_until = max(state.busy_until, now + duration)
        if self._hooks is not None:
            self._hooks.on_endpoint_busy(
                EndpointBusy(self.destination, state.endpoint, status, duration)
            )

    def _maybe_eject(self, state: EndpointState, now: float) -> None:
        limit = int(len(self._states) * self._policy.ejection_max_fraction)
        if self._ejected >= limit:
            return
        state.ejections += 1
        duration = min(self._policy.ejection_base * state.ejections, self._policy.ejection_cap)
        state.ejected_until = now + duration
        self._ejected += 1
        if self._hooks is not None:
            event = EndpointEjected(self.destination, state.endpoint, duration, state.ejections)
            self._hooks.on_endpoint_ejected(event)

    def _readmit_due(self, now: float) -> None:
        for state in self._states:
            if state.ejected_until and state.ejected_until <= now:
                state.ejected_until = 0.0
                state.failures = 0
                self._ejected -= 1
                if self._hooks is not None:
                    event = EndpointReadmitted(self.destination, state.endpoint)
                    self._hooks.on_endpoint_readmitted(event)

    @property
    def states(self) -> Sequence[EndpointState]:
        return self._states

    def close(self) -> None:
        for state in self._states:
            state.pool.close()
