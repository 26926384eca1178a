"""The watched cache: healthy endpoints per destination, kept current by blocking queries.

``endpoints()`` is on the request path and only reads a dict. Each primed service has one
background watch (a blocking query on its passing instances) in the cache's task group.
While the registry is unreachable a watch keeps the last list, counts it as stale
(``stale_seconds``, for a telemetry gauge) and retries with jittered, capped backoff; once
back it starts over with a non-blocking read, since a restarted registry's index may have
gone backwards.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from meshkit.errors import RegistryError, RegistryUnavailable
from meshkit.registry.base import Endpoint, Registry

logger = logging.getLogger("meshkit.registry")


class WatchedCache:
    """An ``EndpointSource`` over a ``Registry``; use as ``async with WatchedCache(r) as c``.

    ``wait`` is the blocking-query wait; ``prime_timeout`` bounds the first answer;
    ``retry_max`` caps the backoff while the registry is unreachable.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        wait: float = 30.0,
        prime_timeout: float = 5.0,
        retry_first: float = 0.1,
        retry_max: float = 5.0,
    ) -> None:
        self.registry = registry
        self.wait = wait
        self.prime_timeout = prime_timeout
        self.retry_first = retry_first
        self.retry_max = retry_max
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
        index, delay = 0, self.retry_first
        while True:
            try:
                new_index, found = await self.registry.healthy_endpoints(
                    service, index=index, wait=self.wait
                )
            except RegistryError as exc:
                self._stale_since.setdefault(service, time.monotonic())
                if isinstance(exc, RegistryUnavailable):
                    logger.warning("watch %s: registry unreachable: %s", service, exc)
                else:
                    logger.error("watch %s: registry refused: %s", service, exc)
                index = 0  # a restarted registry's index may be behind ours
                await anyio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self.retry_max)
                continue
            delay = self.retry_first
            self._stale_since.pop(service, None)
            self._store(service, tuple(found))
            # Consul: an index that went backwards means start over; never block on 0.
            index = new_index if new_index >= index else 0
            index = max(index, 1)

    def _store(self, service: str, found: tuple[Endpoint, ...]) -> None:
        if self._endpoints.get(service) != found:
            self._endpoints[service] = found
            self._generation += 1
        self._first_answer[service].set()
