"""Which directory an instance keeps its key and certificate in, and how it writes them.

Several instances of one service on one machine must not share files (each renews
its own certificate), yet a restarted instance should find its certificate again.
Without an explicit ``MESHKIT_DATA_DIR``, an instance therefore claims the first free
numbered slot under ``.meshkit/<service>/`` with an exclusive ``flock`` it holds for
its lifetime: instance slots are reused across restarts, never shared while running.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from meshkit.errors import ConfigError

MAX_SLOTS = 64


def write_private(path: Path, text: str) -> None:
    """Write a secret with mode 0600 from the first byte (no window of wider access)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


@contextlib.contextmanager
def claimed_slot(base: Path) -> Iterator[Path]:
    """The first ``base/<n>`` no running instance holds, held until the block exits."""
    for slot in range(MAX_SLOTS):
        directory = base / str(slot)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield directory
        finally:
            os.close(fd)  # closing releases the lock
        return
    raise ConfigError(f"data_dir: all {MAX_SLOTS} instance slots under {base} are in use")
