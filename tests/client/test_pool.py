"""EndpointPool over a real socket: one connection, requests with different deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from meshkit import deadline as deadlines
from meshkit.client._pool import AttemptTimedOut, EndpointPool

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def slow_server() -> AsyncIterator[int]:
    """Answers ``GET /<ms>`` after that many milliseconds, on a keep-alive connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            await asyncio.sleep(int(head.split(b" ")[1][1:]) / 1000)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def get(milliseconds: int) -> bytes:
    return b"GET /%d HTTP/1.1\r\nHost: slow\r\n\r\n" % milliseconds


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_short_deadline_after_a_long_one_is_kept() -> None:
    async with slow_server() as port:
        pool = EndpointPool("127.0.0.1", port, destination="slow", ssl_context=None)
        try:
            await pool.request(get(0), head=False, deadline=deadlines.now() + 30)
            started = time.monotonic()
            with pytest.raises(AttemptTimedOut):
                await pool.request(get(5000), head=False, deadline=deadlines.now() + 0.2)
            assert time.monotonic() - started < 2  # not the first request's 30 s
        finally:
            pool.close()


async def test_a_long_deadline_after_a_short_one_is_not_cut_short() -> None:
    async with slow_server() as port:
        pool = EndpointPool("127.0.0.1", port, destination="slow", ssl_context=None)
        try:
            await pool.request(get(0), head=False, deadline=deadlines.now() + 0.1)
            # Answered after the first request's deadline passed, on the same connection.
            status, _, body = await pool.request(get(300), head=False, deadline=deadlines.now() + 5)
            assert (status, body, pool.connections) == (200, b"ok", 1)
        finally:
            pool.close()
