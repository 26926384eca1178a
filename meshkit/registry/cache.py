"""The watched cache: healthy endpoints per destination, kept current by blocking queries.

``endpoints()`` is on the request path and only reads a dict. Each primed service has one
background watch (a blocking query on its passing instances) in the cache's task group.
While the registry is unreachable a watch keeps the last list, counts it as stale
(``stale_seconds``, for a telemetry gauge) and retries with jittered, capped backoff; once
back it starts over with a non-blocking read, since a restarted registry's index may have
gone backwards.

A registry that just came back (after an error, or whose index went backwards as Consul's
does after a restart) may be empty only because its instances have not re-registered yet.
An empty answer from it never replaces a known non-empty list: the cache keeps that list,
counted as stale, until the registry has said "empty" for ``restart_grace`` seconds of a
healthy session. Kept endpoints that really died are the client's outlier ejection's to
skip. Any non-empty answer applies at once (a shrinking list is a normal scale-down).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from meshkit.errors import RegistryError, RegistryUnavailable
from meshkit.registry.base import Endpoint, Registry
from meshkit.registry.lifecycle import REREGISTER_WITHIN

logger = logging.getLogger("meshkit.registry")

#: Twice the time a running instance takes to re-register with a registry that came back
#: empty, so one slow re-registration never empties a caller's list.
DEFAULT_RESTART_GRACE = 2 * REREGISTER_WITHIN


@dataclass
class _WatchState:
    """Where one watch stands: the index it blocks on, its backoff, and whether the registry
    answering may be one that just came back (``suspect``) and since when it answers."""

    delay: float
    index: int = 0
    suspect: bool = False
    back_since: float | None = None  # set only while a kept list awaits confirmation


class WatchedCache:
    """An ``EndpointSource`` over a ``Registry``; use as ``async with WatchedCache(r) as c``.

    ``wait`` is the blocking-query wait; ``prime_timeout`` bounds the first answer;
    ``retry_max`` caps the backoff while the registry is unreachable; ``restart_grace`` is
    how long a registry that came back must keep answering "no instances" before a known
    non-empty list is dropped.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        wait: float = 30.0,
        prime_timeout: float = 5.0,
        retry_first: float = 0.1,
        retry_max: float = 5.0,
        restart_grace: float = DEFAULT_RESTART_GRACE,
    ) -> None:
        self.registry = registry
        self.wait = wait
        self.prime_timeout = prime_timeout
        self.retry_first = retry_first
        self.retry_max = retry_max
        self.restart_grace = restart_grace
        self._endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self._first_answer: dict[str, anyio.Event] = {}
        self._stale_since: dict[str, float] = {}
        self._generation = 0
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> WatchedCache:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, traceback)
        finally:
            self._task_group = None

    # -- EndpointSource --------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    def endpoints(self, service: str) -> Sequence[Endpoint] | None:
        return self._endpoints.get(service)

    async def prime(self, service: str) -> Sequence[Endpoint]:
        """Watch ``service`` (once) and wait, at most ``prime_timeout``, for its first list."""
        first = self._first_answer.get(service)
        if first is None:
            if self._task_group is None:
                raise RuntimeError("WatchedCache is not running: use 'async with'")
            first = self._first_answer[service] = anyio.Event()
            self._task_group.start_soon(self._watch, service, name=f"watch {service}")
        with anyio.move_on_after(self.prime_timeout):
            await first.wait()
        known = self._endpoints.get(service)
        if known is None:
            raise RegistryUnavailable(
                f"no answer from the registry about {service!r} within {self.prime_timeout:g}s"
            )
        return known

    # -- staleness -----------------------------------------------------------------------

    def stale_seconds(self, service: str) -> float:
        """How long ``service``'s list has gone without the registry confirming it (0: fresh)."""
        since = self._stale_since.get(service)
        return 0.0 if since is None else time.monotonic() - since

    @property
    def services(self) -> Sequence[str]:
        """The services being watched."""
        return list(self._first_answer)

    # -- the watch -------------------------------------------------------------------------

    async def _watch(self, service: str) -> None:
        state = _WatchState(delay=self.retry_first)
        while True:
            try:
                new_index, found = await self.registry.healthy_endpoints(
                    service, index=state.index, wait=self._wait(state)
                )
            except RegistryError as exc:
                self._lost(service, state, exc)
                await anyio.sleep(random.uniform(state.delay / 2, state.delay))
                state.delay = min(state.delay * 2, self.retry_max)
                continue
            state.delay = self.retry_first
            self._answered(service, state, new_index, tuple(found))

    def _wait(self, state: _WatchState) -> float:
        """The blocking-query wait; while a kept list awaits confirmation, no longer than
        the grace has left, so a registry that stays empty is believed on time."""
        if state.back_since is None:
            return self.wait
        left = self.restart_grace - (time.monotonic() - state.back_since)
        return min(self.wait, max(left, 0.05))

    def _lost(self, service: str, state: _WatchState, exc: RegistryError) -> None:
        """No answer: keep the list, count it stale, and distrust the next answer's emptiness
        (the registry may come back restarted, before its instances re-register)."""
        self._stale_since.setdefault(service, time.monotonic())
        if isinstance(exc, RegistryUnavailable):
            logger.warning("watch %s: registry unreachable: %s", service, exc)
        else:
            logger.error("watch %s: registry refused: %s", service, exc)
        state.index = 0  # a restarted registry's index may be behind ours
        state.suspect, state.back_since = True, None

    def _answered(
        self, service: str, state: _WatchState, new_index: int, found: tuple[Endpoint, ...]
    ) -> None:
        went_back = new_index < state.index
        if went_back:  # Consul's index goes backwards when the registry restarted
            state.suspect, state.back_since = True, None
        now = time.monotonic()
        came_back = state.suspect and state.back_since is None
        if came_back:
            state.back_since = now
        if self._keeps(service, state, found, now):
            self._keep(service, now, announce=came_back)
        else:
            self._apply(service, state, found)
        # Start over after an index went backwards; never block on 0.
        state.index = 1 if went_back else max(new_index, 1)

    def _keeps(
        self, service: str, state: _WatchState, found: tuple[Endpoint, ...], now: float
    ) -> bool:
        """Whether ``found`` is an empty answer, over a known non-empty list, from a registry
        that came back less than ``restart_grace`` ago: one not to believe yet."""
        return (
            not found
            and bool(self._endpoints.get(service))
            and state.back_since is not None
            and now - state.back_since < self.restart_grace
        )

    def _keep(self, service: str, now: float, *, announce: bool) -> None:
        if announce:
            logger.warning(
                "watch %s: the registry came back with no instances; keeping the last %d "
                "for up to %gs while they re-register",
                service,
                len(self._endpoints[service]),
                self.restart_grace,
            )
        self._stale_since.setdefault(service, now)

    def _apply(self, service: str, state: _WatchState, found: tuple[Endpoint, ...]) -> None:
        known = self._endpoints.get(service)
        if state.back_since is not None and known and not found:
            logger.warning(
                "watch %s: the registry confirmed no instances for %gs; dropping the last %d",
                service,
                self.restart_grace,
                len(known),
            )
        state.suspect, state.back_since = False, None
        self._stale_since.pop(service, None)
        self._store(service, found)

    def _store(self, service: str, found: tuple[Endpoint, ...]) -> None:
        if self._endpoints.get(service) != found:
            self._endpoints[service] = found
            self._generation += 1
        self._first_answer[service].set()
