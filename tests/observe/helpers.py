"""What the observe tests share: steady background traffic over a real connection."""

from __future__ import annotations

import threading

from meshkit.testing import Connection


class Traffic:
    """Calls ``/call`` on one connection in a thread until stopped; counts statuses."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.stopped = threading.Event()
        self.statuses: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(0.02):
            try:
                self.statuses.append(self.connection.get("/call")[0])
            except OSError:
                self.statuses.append(0)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=15)
