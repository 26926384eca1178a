"""Child processes that are always stopped: each in its own process group.

A child is started in a new session, so a Ctrl-C in the terminal reaches only the
supervising program, which then stops the children in order; and stopping a child
signals its whole group, so nothing it spawned is left behind. ``stop_all`` sends
SIGTERM to every group, waits, then SIGKILLs what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from meshkit.errors import MeshError

_POLL = 0.05


def _stat(entry: Path) -> tuple[str, int] | None:
    """(state, process group) from ``/proc/<pid>/stat``; None if the process is gone."""
    try:
        fields = (entry / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[2])


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs.

    Zombies do not count: a grandchild orphaned into a container whose init never
    reaps would otherwise look alive forever.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: a signal 0 is the best test there is
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = _stat(entry)
            if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
                return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    # The group may be gone already: that is the goal, not an error.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pgid(self) -> int:
        # The child leads its own session, so its group id is its pid.
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Supervisor:
    """Owns the processes it starts; ``with Supervisor(...)`` stops them all on the way out."""

    def __init__(self, log_dir: Path, *, stop_timeout: float = 10.0) -> None:
        self.log_dir = log_dir
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                list(argv),
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Child:
        """Run a command to completion (in its own group, logged); MeshError if it fails."""
        child = self.start(name, argv, env=env)
        try:
            code = child.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise MeshError(f"{name} did not finish in {timeout:g}s") from None  # stop_all kills
        if code != 0:
            raise MeshError(f"{name} failed with {code}:\n{child.log_tail()}")
        self.children.remove(child)  # done: not one of the processes to watch and stop
        return child

    def wait_until(self, child: Child, ready: Callable[[], bool], *, timeout: float = 30.0) -> None:
        """Poll ``ready`` until it is true; fail with the child's last words if it exits."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not child.running:
                raise MeshError(
                    f"{child.name} exited with {child.process.returncode}:\n{child.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise MeshError(
                    f"{child.name} was not ready after {timeout:g}s:\n{child.log_tail()}"
                )
            time.sleep(_POLL)

    def kill(self, child: Child) -> None:
        """SIGKILL the child's group: a crash, no goodbye."""
        _signal_group(child.pgid, signal.SIGKILL)
        child.process.wait()
        # SIGKILL is delivered asynchronously: the rest of the group may still be
        # running for a moment after the leader has been reaped.
        deadline = time.monotonic() + self.stop_timeout
        while group_alive(child.pgid) and time.monotonic() < deadline:
            time.sleep(_POLL)

    def stop_all(self) -> None:
        """SIGTERM every group (newest first), wait, then SIGKILL the stragglers."""
        for child in reversed(self.children):
            _signal_group(child.pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in reversed(self.children):
            while group_alive(child.pgid) and time.monotonic() < deadline:
                child.process.poll()  # reap the leader as soon as it exits
                time.sleep(_POLL)
            _signal_group(child.pgid, signal.SIGKILL)
            child.process.wait()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()
