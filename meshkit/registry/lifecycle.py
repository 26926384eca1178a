"""Keeping one instance registered for as long as it runs.

``ServiceRegistration.run`` registers the instance (TTL + HTTP checks), reports
``task_status.started()``, then heartbeats the TTL check forever. When a heartbeat finds the
registry has forgotten the instance (the dev registry or a Consul agent restarted), it
registers again at once; while the registry is unreachable it retries with jittered,
capped backoff, so a restarted registry sees the instance again within seconds.
"""

from __future__ import annotations

import logging
import random

import anyio

from meshkit.errors import RegistryError, RegistryUnavailable
from meshkit.registry.base import InstanceRegistration, Registry

logger = logging.getLogger("meshkit.registry")

MAX_HEARTBEAT_INTERVAL = 2.0  # bounds how long a restarted registry misses an instance
RETRY_FIRST, RETRY_MAX = 0.1, 2.0
#: How long a registry that came back empty may miss a running instance: until its next
#: heartbeat (at most MAX_HEARTBEAT_INTERVAL away) or its next retry (at most RETRY_MAX),
#: which finds itself forgotten and registers again. Callers' caches size their grace on it.
REREGISTER_WITHIN = max(MAX_HEARTBEAT_INTERVAL, RETRY_MAX)


class ServiceRegistration:
    """Registers ``instance`` in ``registry`` and keeps it registered.

    Run ``run`` in the app's task group; call ``deregister`` at shutdown (before draining):
    it removes the instance and makes ``run`` return instead of registering it again.
    """

    def __init__(
        self,
        registry: Registry,
        instance: InstanceRegistration,
        *,
        deregister_timeout: float = 5.0,
    ) -> None:
        self.registry = registry
        self.instance = instance
        self.deregister_timeout = deregister_timeout
        self.registered = False
        self._stopping = False
        # Heartbeat well inside the TTL so one lost heartbeat never turns the check critical.
        self.heartbeat_interval = min(instance.ttl / 3, MAX_HEARTBEAT_INTERVAL)

    def __repr__(self) -> str:
        return f"ServiceRegistration({self.instance.service!r}, {self.instance.instance_id!r})"

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Register, report started, then heartbeat until ``deregister`` or cancellation."""
        await self._register_until_done()
        task_status.started()
        while not self._stopping:
            await anyio.sleep(self.heartbeat_interval)
            if not self._stopping:
                await self._heartbeat_until_done()

    async def _register_until_done(self) -> None:
        delay = RETRY_FIRST
        while not self._stopping:
            try:
                await self.registry.register(self.instance)
            except RegistryUnavailable as exc:
                logger.warning("registry unreachable, retrying in %.1fs: %s", delay, exc)
            else:
                self.registered = True
                return
            delay = await _backoff(delay)

    async def _heartbeat_until_done(self) -> None:
        delay = RETRY_FIRST
        while not self._stopping:
            try:
                if await self.registry.heartbeat(self.instance.instance_id):
                    return
                if self._stopping:  # deregistered meanwhile: forgotten on purpose
                    return
                logger.warning("registry forgot %s; registering again", self.instance.instance_id)
                await self.registry.register(self.instance)
                return
            except RegistryUnavailable as exc:
                logger.warning("registry unreachable, retrying in %.1fs: %s", delay, exc)
            except RegistryError as exc:
                # Refused (e.g. an ACL change): log it; the next heartbeat tries again.
                logger.error("heartbeat for %s refused: %s", self.instance.instance_id, exc)
                return
            delay = await _backoff(delay)

    async def deregister(self) -> None:
        """Remove the instance and stop ``run``; idempotent, and bounded in time.

        An unreachable registry is logged, not raised: shutdown goes on, and the TTL check
        expires and DeregisterCriticalServiceAfter removes the instance later.
        """
        self._stopping = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.deregister_timeout):
            try:
                await self.registry.deregister(self.instance.instance_id)
            except RegistryUnavailable as exc:
                logger.warning("could not deregister %s: %s", self.instance.instance_id, exc)
        self.registered = False


async def _backoff(delay: float) -> float:
    """Sleep a jittered ``delay``; return the next, doubled up to RETRY_MAX."""
    await anyio.sleep(random.uniform(delay / 2, delay))
    return min(delay * 2, RETRY_MAX)
