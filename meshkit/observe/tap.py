"""``meshkit tap SERVICE``: the requests a service's instances serve, as they happen.

Each instance keeps its last requests in a ring on its admin port (``/tap``, see
``meshkit.telemetry.tap``); this polls every instance of the service the registry lists,
each from where it left off, and hands on the new entries oldest first. The instance
list is refreshed every few polls, so instances that start or stop mid-tap join or
leave it.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from meshkit.errors import RegistryError
from meshkit.observe.scrape import Target, discover
from meshkit.registry.consul import ConsulRegistry

#: Seconds between two polls of every instance.
INTERVAL = 0.5
#: Polls between two refreshes of the instance list.
REDISCOVER_EVERY = 6
TIMEOUT = 2.0
#: The largest /tap answer read (a full ring of long routes and IDs fits).
MAX_ANSWER = 4 * 1024 * 1024
#: A cursor past any instance's newest entry: the first read starts from now.
FROM_NOW = 2**53


@dataclass(frozen=True, kw_only=True)
class TapQuery:
    service: str
    route: str = ""
    caller: str = ""
    count: int | None = None  # stop after this many records


@dataclass
class _Instance:
    target: Target
    cursor: int = FROM_NOW
    warned: bool = False


@dataclass
class Tap:
    """Polls the service's instances; ``emit`` gets each record (with ``instance``)
    and ``warn`` each instance that cannot be tapped (once per instance)."""

    registry: ConsulRegistry
    query: TapQuery
    emit: Callable[[dict[str, Any]], None]
    warn: Callable[[str], None]
    instances: dict[str, _Instance] = field(default_factory=dict)
    emitted: int = 0

    async def run(self) -> None:
        await self.discover(first=True)
        polls = 0
        while self.query.count is None or self.emitted < self.query.count:
            await anyio.sleep(INTERVAL)
            polls += 1
            if polls % REDISCOVER_EVERY == 0:
                await self.discover()
            await self.poll()

    async def discover(self, *, first: bool = False) -> None:
        try:
            targets = await discover(self.registry)
        except RegistryError as exc:
            if first:
                raise
            self.warn(f"registry: {exc} (tapping the instances known so far)")
            return
        found = {t.instance_id: t for t in targets if t.service == self.query.service}
        if first and not found:
            raise RegistryError(f"no instance of {self.query.service!r} at {self.registry.address}")
        for instance_id in self.instances.keys() - found.keys():
            del self.instances[instance_id]
        for instance_id, target in found.items():
            self.instances.setdefault(instance_id, _Instance(target))
        if first:
            await self.poll()  # sets every cursor to "now"
            self.warn(f"tapping {len(self.instances)} instance(s) of {self.query.service}")

    async def poll(self) -> None:
        answers: list[tuple[_Instance, dict[str, Any] | str]] = []

        async def one(instance: _Instance) -> None:
            answers.append((instance, await anyio.to_thread.run_sync(self._read, instance)))

        async with anyio.create_task_group() as tasks:
            for instance in list(self.instances.values()):
                tasks.start_soon(one, instance)
        records: list[dict[str, Any]] = []
        for instance, answer in answers:
            if isinstance(answer, str):
                if not instance.warned:
                    self.warn(f"{instance.target.instance_id}: {answer}")
                    instance.warned = True
                continue
            instance.cursor = int(answer["next"])
            name = instance.target.instance_id
            records.extend({**record, "instance": name} for record in answer["records"])
        for record in sorted(records, key=lambda r: str(r["time"])):
            if self.query.count is not None and self.emitted >= self.query.count:
                return
            self.emit(record)
            self.emitted += 1

    def _read(self, instance: _Instance) -> dict[str, Any] | str:
        """The instance's answer, or why there is none (a string)."""
        target = instance.target
        if target.admin_port is None:
            return "no admin_port in its registration"
        params = {
            "since": str(instance.cursor),
            "route": self.query.route,
            "caller": self.query.caller,
        }
        path = "/tap?" + urllib.parse.urlencode({k: v for k, v in params.items() if v})
        connection = http.client.HTTPConnection(
            target.admin_host, target.admin_port, timeout=TIMEOUT
        )
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = json.loads(response.read(MAX_ANSWER))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return f"admin port {target.admin_host}:{target.admin_port} unreachable ({exc})"
        finally:
            connection.close()
        if response.status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else body
            return f"/tap answered {response.status}: {error}"
        return body


def format_record(record: dict[str, Any]) -> str:
    """One line: time, instance, caller, method and route, status, latency, trace ID."""
    clock = str(record["time"]).partition("T")[2].rstrip("Z")
    return "  ".join(
        [
            clock,
            str(record["instance"]),
            f"src={record['caller'] or 'unknown'}",
            f"{record['method']} {record['route']}",
            f"status={record['status']}",
            f"latency={record['duration_ms']}ms",
            f"trace={record['trace_id'] or '-'}",
        ]
    )
