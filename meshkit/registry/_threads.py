"""Blocking calls that may be abandoned: long polls against the registry."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

T = TypeVar("T")


async def in_daemon_thread(call: Callable[[], T], *, name: str = "meshkit-blocking") -> T:
    """``call()`` in a daemon thread of its own, awaited; cancelling abandons it.

    Not ``anyio.to_thread``: its workers are joined at interpreter exit, so an abandoned
    blocking query would hold up a stopping process for its whole wait, and long-held
    queries would starve the shared worker pool that heartbeats need.
    """
    token = anyio.lowlevel.current_token()
    done = anyio.Event()
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:
            outcome.append((False, exc))
        # The event loop is gone: nobody is waiting any more.
        with contextlib.suppress(RuntimeError, anyio.RunFinishedError):
            anyio.from_thread.run_sync(done.set, token=token)

    threading.Thread(target=target, name=name, daemon=True).start()
    await done.wait()
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value  # type: ignore[no-any-return]
