"""A callee instance paused (SIGSTOP) with requests unread in its socket buffer.

The finding (#16): a keyed POST reached an instance just before it was paused; the
caller timed out, retried on another instance and got its 200; when the paused
instance resumed it read the request and ran it again, 17 s later, because a relative
deadline does not count time spent unread. Here, with real processes (a registry, a
caller ``front`` and two ``books`` instances): the caller holds pooled connections to
both; one instance is paused; a burst of POSTs, half of them keyed, goes out (the
keyed ones are retried on the other instance, the others get an error: a POST without
a key is not retried once sent); every caller has its answer; then the instance
resumes, past the clock-skew allowance. It must run none of them. Nothing but the
deadline stands in its way: the handler keeps no idempotency store.

This module is also the services' code (``meshkit run tests.chaos.test_paused_instance:books``).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import ClientPolicy, MeshSettings, ServiceApp
from meshkit.errors import MeshError
from meshkit.testing import Mesh, ServiceProcess, admin_get

PER_TRY_TIMEOUT = 0.3
CALL_TIMEOUT = 2.0
BURST = 16  # concurrent POSTs: the balancer spreads them over both instances
EXECUTIONS = "CHAOS_EXECUTIONS"  # the file each execution of the handler is appended to

# -- the services ----------------------------------------------------------------------


def record(request: Request) -> JSONResponse:
    """The side effect: one line per execution, written before anything else happens."""
    with Path(os.environ[EXECUTIONS]).open("a") as executions:
        executions.write(f"{request.path_params['id']} {os.getpid()}\n")
    return JSONResponse({"pid": os.getpid()})


async def pid(request: Request) -> JSONResponse:
    return JSONResponse({"pid": os.getpid()})


books = ServiceApp(
    service="books",
    routes=[Route("/record/{id}", record, methods=["POST"]), Route("/pid", pid)],
)


async def warm(request: Request) -> JSONResponse:
    """Open pooled connections to every instance: the paused one's requests are then
    written to connections it accepted before the pause, and sit unread."""
    seen: set[int] = set()

    async def one() -> None:
        seen.add((await request.app.client("books").get("/pid")).json()["pid"])

    for _ in range(3):
        async with anyio.create_task_group() as group:
            for _ in range(BURST):
                group.start_soon(one)
    return JSONResponse(sorted(seen))


async def burst(request: Request) -> JSONResponse:
    """BURST concurrent POSTs, keyed and not by pairs (the balancer alternates between
    the two instances: each gets both kinds); what each caller got, once all have."""
    answers: list[dict[str, Any]] = []

    async def one(index: int) -> None:
        headers = {"Idempotency-Key": f"key-{index}"} if index % 4 < 2 else {}
        started = time.monotonic()
        try:
            response = await request.app.client("books").post(
                f"/record/{index}", json={"index": index}, headers=headers
            )
            outcome: Any = response.status_code
        except MeshError as exc:
            outcome = type(exc).__name__
        elapsed = time.monotonic() - started
        answers.append({"id": index, "keyed": bool(headers), "outcome": outcome, "s": elapsed})

    async with anyio.create_task_group() as group:
        for index in range(BURST):
            group.start_soon(one, index)
    return JSONResponse(answers)


front = ServiceApp(
    service="front",
    routes=[Route("/warm", warm), Route("/burst", burst)],
    client_policy=ClientPolicy(
        per_try_timeout=PER_TRY_TIMEOUT, timeout=CALL_TIMEOUT, backoff_base=0.01
    ),
)

# -- the test --------------------------------------------------------------------------

_TARGET = "tests.chaos.test_paused_instance"


def test_resumed_instance_runs_no_request_whose_caller_has_its_answer(
    mesh: Mesh, tmp_path: Path
) -> None:
    executions = tmp_path / "executions"
    executions.touch()
    paused, other = mesh.start(
        f"{_TARGET}:books", "books", instances=2, env={EXECUTIONS: str(executions)}
    )
    (caller,) = mesh.start(f"{_TARGET}:front", "front")
    connection = mesh.connect(caller, timeout=30)
    assert connection.get("/warm") == (200, sorted([paused.process.pid, other.process.pid]))

    paused.signal(signal.SIGSTOP)
    try:
        status, answers = connection.get("/burst")
        unread = unread_bytes(paused.port)  # what the paused instance holds, unread
        time.sleep(MeshSettings.max_clock_skew + 0.25)  # past the allowance for skew
    finally:
        paused.signal(signal.SIGCONT)
    wait_until_serving(mesh, paused)

    ran_there = executed_by(executions, paused.process.pid)
    assert status == 200 and len(answers) == BURST
    assert ran_there == set(), f"the resumed instance ran {ran_there}; callers got {answers}"
    # The scenario happened: requests were written to the paused instance and sat
    # unread; keyed ones were retried on the other instance and got their 200, at least
    # one of them after its first attempt had waited out the per-try timeout there.
    assert unread > 0
    keyed = [answer for answer in answers if answer["keyed"]]
    assert all(answer["outcome"] == 200 for answer in keyed), answers
    assert any(answer["s"] >= PER_TRY_TIMEOUT for answer in keyed), answers
    assert refused_after_resuming(paused) > 0


def unread_bytes(port: int) -> int:
    """Bytes received but not yet read on the TCP sockets of local ``port`` (Linux)."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[1].rpartition(":")[2], 16) == port:
                    total += int(fields[4].partition(":")[2], 16)
    return total


def wait_until_serving(mesh: Mesh, process: ServiceProcess) -> None:
    """Once it answers a new connection it has read what was queued before; a moment
    more lets any handler it started on those requests finish."""
    mesh.connect(process, as_="front", timeout=30).get("/pid")
    time.sleep(0.5)


def executed_by(executions: Path, pid: int) -> set[str]:
    lines = (line.split() for line in executions.read_text().splitlines())
    return {index for index, executor in lines if int(executor) == pid}


def refused_after_resuming(process: ServiceProcess) -> int:
    """How many POSTs the instance answered 504 (its metrics), never running them."""
    status, body = admin_get(process.admin_port, "/metrics")
    assert status == 200
    pattern = re.compile(
        r'^http_server_request_duration_seconds_count\{(?=[^}]*http_response_status_code="504")'
        r'(?=[^}]*http_request_method="POST")[^}]*\} (\S+)$',
        re.MULTILINE,
    )
    return int(sum(float(count) for count in pattern.findall(body.decode())))
