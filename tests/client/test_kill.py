"""An instance SIGKILLed under steady load: no failed idempotent request."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from meshkit.ca.x509 import LocalAuthority
from meshkit.client import RetryScheduled
from tests.client.helpers import Recorder, StaticSource, endpoint, factory

pytestmark = pytest.mark.anyio


@pytest.fixture
def processes(
    authority: LocalAuthority, tmp_path: Path
) -> Iterator[dict[str, tuple[subprocess.Popen[str], int]]]:
    """Three 'payments' instances, each its own process; every one is stopped after."""
    authority.issue("payments").write(tmp_path)
    started: dict[str, tuple[subprocess.Popen[str], int]] = {}
    try:
        for name in ("p1", "p2", "p3"):
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.client.instance", str(tmp_path), name],
                stdout=subprocess.PIPE,
                text=True,
            )
            started[name] = (process, 0)
        for name, (process, _) in started.items():
            assert process.stdout is not None
            started[name] = (process, int(process.stdout.readline()))
        yield started
    finally:
        for process, _ in started.values():
            process.kill()
            process.wait(timeout=10)


class Progress:
    """Counts served requests; ``reach(n)`` waits until n were served."""

    def __init__(self) -> None:
        self.by_instance: Counter[str] = Counter()
        self.total = 0
        self._target = 0
        self._reached = anyio.Event()

    def served(self, instance: str) -> None:
        self.by_instance[instance] += 1
        self.total += 1
        if self.total >= self._target:
            self._reached.set()

    async def reach(self, target: int) -> None:
        self._target, self._reached = target, anyio.Event()
        if self.total < target:
            await self._reached.wait()


async def test_sigkill_under_load_loses_no_request(
    authority: LocalAuthority, processes: dict[str, tuple[subprocess.Popen[str], int]]
) -> None:
    endpoints = [endpoint("payments", port, name) for name, (_, port) in processes.items()]
    hooks = Recorder()
    mesh = factory(
        authority, StaticSource({"payments": endpoints}), hooks=hooks, breaker_min_calls=10**6
    )
    client = mesh.client("payments")
    progress = Progress()
    failures: list[object] = []
    stop = anyio.Event()

    async def worker() -> None:
        while not stop.is_set():
            try:
                response = await client.get("/work")
            except Exception as exc:
                failures.append(exc)
                continue
            if response.status_code != 200:
                failures.append(response.status_code)
            progress.served(response.text)

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(worker)
        await progress.reach(300)
        victim = processes["p2"][0]
        victim.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(victim.wait)
        before = progress.by_instance["p2"]
        await progress.reach(progress.total + 600)
        stop.set()
    await mesh.aclose()
    assert failures == []
    assert progress.by_instance["p2"] <= before + 8  # dead: at most replies already received
    assert progress.by_instance["p1"] > 0 and progress.by_instance["p3"] > 0
    assert hooks.of(RetryScheduled)  # the kill did hit requests, and they were retried
