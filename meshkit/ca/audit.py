"""The CA's audit log: one JSON line per issuance, renewal and refusal.

Lines are appended to a file opened once (``O_APPEND``, so replicas sharing the file
never interleave within a line) and flushed per record: an issuance the CA answered is
on disk before the next request is read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any


class AuditLog:
    """Appends JSON records to ``path`` (created 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = open(fd, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def record(self, **fields: Any) -> None:
        line = {"time": dt.datetime.now(dt.UTC).isoformat(), **fields}
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
