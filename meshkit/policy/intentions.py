"""Central intentions: mesh-wide allow/deny rules source -> destination, watched live.

Rules live in the registry's key/value store (Consul's KV API, which the dev registry
serves too), one key per rule::

    meshkit/intentions/<destination>/<source> = "allow" | "deny"

``*`` stands for any service on either side. As in Consul, the most specific rule
wins: exact destination and source, then exact destination with ``*`` source, then
``*`` destination with exact source, then ``* -> *``. Sources are service names in
the destination's trust domain and namespace; other callers match ``*`` rules only.

``IntentionWatcher`` keeps an ``Intentions`` table current with blocking queries
(``?index=&wait=``): a change reaches every service within one round trip. When the
registry is unreachable the last rules stay in force and the watcher retries with
backoff.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import consul
import requests
from anyio.abc import TaskStatus

from meshkit.errors import ConfigError, RegistryError, RegistryUnavailable
from meshkit.registry._threads import in_daemon_thread
from meshkit.registry.consul import ConsulRegistry
from meshkit.settings import MeshSettings

logger = logging.getLogger("meshkit.policy")

INTENTIONS_PREFIX = "meshkit/intentions/"
Action = Literal["allow", "deny"]
ACTIONS: tuple[Action, ...] = ("allow", "deny")
ANY = "*"
Rules = TypeVar("Rules")
Rules_co = TypeVar("Rules_co", covariant=True)
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Intention:
    """``source`` may (allow) or may not (deny) call ``destination``."""

    source: str
    destination: str
    action: Action

    def __post_init__(self) -> None:
        for side in ("source", "destination"):
            value = getattr(self, side)
            if value != ANY and not _NAME.fullmatch(value):
                raise ConfigError(f"intention {side} must be a service name or '*': {value!r}")
        if self.action not in ACTIONS:
            raise ConfigError(f"intention action must be allow or deny: {self.action!r}")

    @property
    def key(self) -> str:
        return intention_key(self.source, self.destination)

    def sort_key(self) -> tuple[str, str]:
        return (self.destination, self.source)


def intention_key(source: str, destination: str) -> str:
    return f"{INTENTIONS_PREFIX}{destination}/{source}"


class Intentions:
    """The rules in force, replaced whole on each change; ``version`` counts changes."""

    def __init__(self, rules: Iterable[Intention] = ()) -> None:
        self.version = 0
        self._table: dict[tuple[str, str], Action] = {}
        self.replace(rules)

    def replace(self, rules: Iterable[Intention]) -> None:
        # A new dict swapped in one assignment: readers never see half an update.
        self._table = {(rule.destination, rule.source): rule.action for rule in rules}
        self.version += 1

    def action(self, source: str | None, destination: str) -> Action | None:
        """The most specific rule for ``source`` (None: not a local service name)."""
        table = self._table
        if not table:
            return None
        sources = (source, ANY) if source is not None else (ANY,)
        for dest in (destination, ANY):
            for src in sources:
                found = table.get((dest, src))
                if found is not None:
                    return found
        return None

    def __iter__(self) -> Iterator[Intention]:
        rules = (Intention(s, d, a) for (d, s), a in self._table.items())
        return iter(sorted(rules, key=Intention.sort_key))

    def snapshot(self) -> list[Intention]:
        """The rules in force, as ``IntentionStore.fetch`` returns them."""
        return list(self)

    def __len__(self) -> int:
        return len(self._table)


def consul_client(settings: MeshSettings) -> consul.Consul:
    """A py-consul client for the settings' registry (CONSUL_HTTP_ADDR / _TOKEN)."""
    if not settings.consul_http_addr:
        raise ConfigError("consul_http_addr: no registry address (set CONSUL_HTTP_ADDR)")
    return ConsulRegistry.from_settings(settings).new_client()


class IntentionStore:
    """Intentions in the registry's KV store: the one boundary to py-consul errors."""

    def __init__(self, client: consul.Consul) -> None:
        self._client = client

    def set(self, intention: Intention) -> None:
        self._call(self._client.kv.put, intention.key, intention.action)

    def delete(self, source: str, destination: str) -> None:
        Intention(source, destination, "deny")  # validates both names
        self._call(self._client.kv.delete, intention_key(source, destination))

    def rules(self) -> list[Intention]:
        return self.fetch()[1]

    def fetch(self, index: int = 0, wait: str | None = None) -> tuple[int, list[Intention]]:
        """The rules and the KV index; with ``index``, block up to ``wait`` for a change."""
        raw_index, items = self._call(
            self._client.kv.get, INTENTIONS_PREFIX, index=index or None, wait=wait, recurse=True
        )
        return int(raw_index), sorted(_parse_items(items or ()), key=Intention.sort_key)

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        return registry_call(self._client, method, *args, **kwargs)


def registry_call(client: consul.Consul, method: Any, *args: Any, **kwargs: Any) -> Any:
    """``method(*args, **kwargs)`` of a py-consul client, its errors translated."""
    try:
        return method(*args, **kwargs)
    except requests.RequestException as exc:
        where = getattr(client.http, "base_uri", "")
        raise RegistryUnavailable(
            f"registry unreachable at {where} ({type(exc).__name__})"
        ) from exc
    except consul.ConsulException as exc:
        raise RegistryError(f"registry refused an intentions request: {exc}") from exc


def _parse_items(items: Iterable[dict[str, Any]]) -> Iterator[Intention]:
    for item in items:
        key: str = item["Key"]
        value = (item.get("Value") or b"").decode(errors="replace").strip().lower()
        destination, _, source = key[len(INTENTIONS_PREFIX) :].partition("/")
        try:
            yield Intention(source, destination, value)  # type: ignore[arg-type]
        except ConfigError as exc:
            logger.warning("ignoring intention key %s: %s", key, exc)


class RuleSource(Protocol[Rules_co]):
    """Where rules are read from: with ``index``, blocking up to ``wait`` for a change."""

    def fetch(self, index: int = 0, wait: str | None = None) -> tuple[int, Rules_co]: ...


class RuleTable(Protocol[Rules]):
    """The rules in force, replaced whole on each change."""

    def replace(self, rules: Rules) -> None: ...

    def snapshot(self) -> Rules: ...

    def __len__(self) -> int: ...


class IntentionWatcher(Generic[Rules]):
    """Keeps ``intentions`` equal to the registry's rules, by blocking queries (meshkit's
    KV rules, or Consul's intentions: ``policy.consul_intentions``).

    Run ``run`` in the service's task group (``await tg.start(watcher.run)`` returns once
    the first load succeeded or failed); cancel the group to stop it.
    """

    def __init__(
        self,
        store: RuleSource[Rules],
        intentions: RuleTable[Rules],
        *,
        wait: float = 10.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.store = store
        self.intentions = intentions
        self._wait = f"{max(1, round(wait))}s"
        self._max_backoff = max_backoff

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        index, failures, started = 0, 0, False
        while True:
            began, blocking = time.monotonic(), index != 0
            try:
                new_index, rules = await in_daemon_thread(
                    name="meshkit-intentions",
                    call=functools.partial(self.store.fetch, index, self._wait),
                )
                index, failures = self._apply(index, new_index, rules), 0
            except RegistryError as exc:
                index, failures = 0, failures + 1
                logger.warning("intentions: %s (keeping %d rules)", exc, len(self.intentions))
            if not started:
                task_status.started()
                started = True
            await anyio.sleep(self._pause(failures, blocking and time.monotonic() - began < 0.01))

    def _pause(self, failures: int, answered_at_once: bool) -> float:
        if failures:
            return _backoff(failures, self._max_backoff)
        # A registry that answers a blocking query at once must not make us spin.
        return 0.05 if answered_at_once else 0.0

    def _apply(self, old_index: int, new_index: int, rules: Rules) -> int:
        if (new_index != old_index or old_index == 0) and rules != self.intentions.snapshot():
            self.intentions.replace(rules)
            logger.info("intentions: %d rules in force (index %d)", len(self.intentions), new_index)
        # Consul: an index that went backwards (a restored store) means start over.
        return 0 if new_index < old_index else max(new_index, 1)


def _backoff(failures: int, ceiling: float) -> float:
    return random.uniform(0.5, 1.0) * min(ceiling, 0.5 * 2.0 ** min(failures, 10))
