"""CoalescingTransport: the writes of one loop iteration reach the socket as one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshkit.serving.protocol import CoalescingTransport


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
async def test_close_sends_what_is_pending_first() -> None:
    real = Recorder()
    transport = CoalescingTransport(real)  # type: ignore[arg-type]
    transport.write(b"last words")
    transport.close()
    assert real.writes == [b"last words"] and real.closed
    await asyncio.sleep(0)
    assert real.writes == [b"last words"]
