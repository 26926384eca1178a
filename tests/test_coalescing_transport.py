"""CoalescingTransport: the writes of one loop iteration reach the socket as one."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from meshkit.serving.protocol import CoalescingTransport
from tests.middleware.servers import connect, get, running

LENGTH_2 = [(b"content-length", b"2")]


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return f"info:{name}"


@pytest.mark.anyio
async def test_one_write_per_iteration_in_order() -> None:
    real = Recorder()
    transport = CoalescingTransport(real)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert real.writes == []
    await asyncio.sleep(0)
    transport.write(b"more")
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]
    assert transport.get_extra_info("peercert") == "info:peercert"


@pytest.mark.anyio
async def test_held_bytes_wait_for_the_next_write_and_leave_with_it() -> None:
    real = Recorder()
    transport = CoalescingTransport(real)  # type: ignore[arg-type]
    transport.hold(b"head ")
    await asyncio.sleep(0)
    assert real.writes == []  # held: no flush arranged
    transport.write(b"chunk")
    await asyncio.sleep(0)
    assert real.writes == [b"head chunk"]
    transport.write(b"a ")
    transport.flush()  # called directly (a response completed) before the arranged one
    transport.hold(b"b")
    transport.flush()
    await asyncio.sleep(0)
    assert real.writes == [b"head chunk", b"a ", b"b"]


@pytest.mark.anyio
async def test_close_sends_what_is_pending_first() -> None:
    real = Recorder()
    transport = CoalescingTransport(real)  # type: ignore[arg-type]
    transport.write(b"last words")
    transport.close()
    assert real.writes == [b"last words"] and real.closed
    await asyncio.sleep(0)
    assert real.writes == [b"last words"]


def test_a_complete_response_leaves_before_the_app_returns() -> None:
    """The protocol flushes when a response completes: what the app does after its last
    ``send`` (here it holds the loop until the client has the response) does not hold
    the response back."""
    answered = threading.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": LENGTH_2})
        await send({"type": "http.response.body", "body": b"ok"})
        answered.wait(30)  # the loop held past the client's 10 s timeout

    with running(app) as port:
        connection = connect(port)
        try:
            assert get(connection, "/") == (200, b"ok")
        finally:
            answered.set()
            connection.close()
