"""Registry behaviour that is about processes: the CLI server as a real process, and an
instance whose process is SIGKILLed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import consul
import pytest

from meshkit.registry.cache import WatchedCache
from meshkit.registry.consul import ConsulRegistry, check_ids
from tests.registry.conftest import ThreadedRegistry, eventually

ROOT = Path(__file__).resolve().parents[2]


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = _spawn("-m", "meshkit", "registry", "serve", "--port", "0")
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"http://(127\.0\.0\.1):(\d+)", line)
        assert match, f"no address printed: {line!r}"
        yield process, f"{match.group(1)}:{match.group(2)}"
    finally:
        _stop(process)


def test_cli_serves_the_consul_api_and_stops_on_sigterm(
    served: tuple[subprocess.Popen[str], str],
) -> None:
    process, address = served
    host, port = address.split(":")
    client = consul.Consul(host=host, port=int(port))
    assert client.status.leader() == "127.0.0.1:8300"
    assert client.agent.service.register("web", service_id="web-1", check=consul.Check.ttl("5s"))
    assert client.agent.checks()["service:web-1"]["Status"] == "critical"
    process.send_signal(signal.SIGTERM)
    # uvicorn stops gracefully, then re-raises the signal it caught.
    assert process.wait(timeout=10) in (0, -signal.SIGTERM)


@pytest.mark.anyio
async def test_sigkilled_instance_goes_critical_and_watchers_drop_it(
    registry: ThreadedRegistry,
) -> None:
    ttl = 1.0
    process = _spawn("-m", "tests.registry._registrant", registry.address, str(ttl))
    try:
        assert process.stdout is not None
        line = await anyio.to_thread.run_sync(process.stdout.readline)
        assert line.strip() == "registered", process.stderr.read() if process.stderr else ""
        async with WatchedCache(ConsulRegistry(address=registry.address), wait=10) as cache:
            primed = await cache.prime("doomed")
            assert [e.instance_id for e in primed] == ["doomed-1"]
            process.kill()
            # The TTL is 1 s; allow generous slack for a loaded machine.
            await eventually(lambda: not cache.endpoints("doomed"), within=ttl + 4)

        def ttl_check() -> dict[str, str]:
            return registry.client().agent.checks()[check_ids("doomed-1")[0]]  # type: ignore[no-any-return]

        # The HTTP check may have failed first and dropped the instance; the TTL check
        # still expires within its TTL.
        await eventually(
            lambda: ttl_check()["Status"] == "critical", within=ttl + 4, in_thread=True
        )
        assert ttl_check()["Output"].startswith("TTL expired")
    finally:
        _stop(process)
