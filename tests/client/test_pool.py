"""EndpointPool over a real socket: one connection, requests with different deadlines;
attempts abandoned mid-request over TLS."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream

from meshkit import deadline as deadlines
from meshkit.ca.x509 import LocalAuthority
from meshkit.client._pool import AttemptTimedOut, EndpointPool
from meshkit.tls import client_context, server_context
from tests._mtls import material
from tests.client.helpers import raw_server

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


# -- attempts abandoned mid-request (issue #16: memory bounded under overload) ---------

TLS_LOOPS = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]


async def stuck(stream: ByteStream) -> None:
    """A peer stuck in its handler: it reads the request, then neither answers nor reads,
    so a TLS close_notify sent to it is never answered either."""
    await stream.receive()
    await anyio.sleep_forever()


def tls_protocols() -> int:
    """Live TLS protocol objects of the running loop (asyncio's or uvloop's): each holds a
    connection's OpenSSL state and buffers (and, in uvloop, a 256 KiB read buffer)."""
    return sum(1 for item in gc.get_objects() if type(item).__name__ == "SSLProtocol")


@contextmanager
def cyclic_gc_off() -> Iterator[None]:
    """Only reference counting frees objects inside: what a cycle holds stays held, as it
    does in a busy process between the collector's passes."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def timed_out(pool: EndpointPool) -> None:
    with pytest.raises(AttemptTimedOut):  # a second: time to connect on a busy host
        await pool.request(get(0), head=False, deadline=deadlines.now() + 1.0)


async def cancelled(pool: EndpointPool) -> None:
    """The caller gives up (its own timeout, a cancelled handler): no attempt deadline."""
    with anyio.move_on_after(1.0) as scope:
        await pool.request(get(0), head=False, deadline=None)
    assert scope.cancelled_caught


@pytest.mark.parametrize("abandon", [timed_out, cancelled])
@pytest.mark.parametrize("anyio_backend", TLS_LOOPS)
async def test_attempts_abandoned_mid_request_keep_no_tls_state(
    authority: LocalAuthority, anyio_backend: object, abandon: Callable[[EndpointPool], Any]
) -> None:
    # Each abandoned attempt leaves its connection unusable. Its socket and TLS state must
    # go at once: neither wait for a close_notify the stuck peer never sends (up to the
    # loop's 30 s TLS shutdown timeout), nor stay referenced by what outlives the socket
    # (the connection object, its parser and the attempt's traceback form cycles).
    server, client = material(authority, "stuck"), material(authority, "caller")
    async with raw_server(stuck, tls=server_context(server, require_client_cert=False)) as port:
        pool = EndpointPool(
            "127.0.0.1", port, destination="stuck", ssl_context=lambda: client_context(client)
        )

        async def abandoned() -> None:
            await abandon(pool)

        with cyclic_gc_off():
            before = tls_protocols()
            async with anyio.create_task_group() as attempts:
                for _ in range(20):
                    attempts.start_soon(abandoned)
            with anyio.fail_after(2):
                while tls_protocols() > before:  # noqa: ASYNC110 (no event to wait on)
                    await anyio.sleep(0.01)
        assert pool.connections == 0
        pool.close()
