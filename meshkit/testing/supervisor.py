"""Child processes that are always stopped: each in its own process group.

The one place meshkit starts, waits for, and stops a process: ``meshkit demo`` /
``meshkit up`` through ``Supervisor``, ``meshkit.testing`` through ``Child`` itself.

A child is started in a new session, so a Ctrl-C in the terminal reaches only the
supervising program, which then stops the children in order; and stopping a child
signals its whole group, so nothing it spawned is left behind: SIGTERM, a grace
period, then SIGKILL for what is left. Both of its streams go to one file.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from meshkit.errors import MeshError

_POLL = 0.05
#: How long a SIGKILLed group may take to vanish (delivery is asynchronous).
_KILL_WAIT = 10.0


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


@dataclass(eq=False)
class Child:
    """One process leading its own group; ``output`` holds what it wrote to stdout and stderr."""

    name: str
    process: subprocess.Popen[bytes]
    output: BinaryIO

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        output: BinaryIO | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``argv`` in a new session writing to ``output``, a file open for reading
        (by default an anonymous one: nothing to clean up)."""
        output = output or tempfile.TemporaryFile()  # noqa: SIM115 - closed with the Child
        process = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = cls(name, process, output)
        # The output stays readable after the process ends (for its last words).
        weakref.finalize(child, output.close)
        return child

    @property
    def pgid(self) -> int:
        # The child leads its own session, so its group id is its pid.
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def text(self) -> str:
        """Everything it wrote so far."""
        # pread: the child shares this file's offset, which a seek would move.
        fd = self.output.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def search(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        """The first match of ``pattern`` in the complete lines written so far."""
        text = self.text()
        # Whole lines only: a port number still being written would match short.
        return pattern.search(text, 0, text.rfind("\n") + 1)

    def wait_until(self, ready: Callable[[], bool], *, timeout: float = 30.0) -> None:
        """Poll ``ready`` until it is true; fail with the child's last words if it exits."""
        deadline = time.monotonic() + timeout
        while not ready():
            if not self.running:
                raise MeshError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise MeshError(f"{self.name} was not ready after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(_POLL)

    def wait_for(self, pattern: re.Pattern[str], *, timeout: float = 30.0) -> re.Match[str]:
        """Wait until a complete line matches ``pattern``; the first match."""
        self.wait_until(lambda: self.search(pattern) is not None, timeout=timeout)
        match = self.search(pattern)
        assert match is not None  # complete lines are never taken back
        return match

    def terminate(self) -> None:
        """SIGTERM the group: ask everything in it to finish."""
        _signal_group(self.pgid, signal.SIGTERM)

    def finish(self, deadline: float) -> int:
        """After ``terminate``: wait for the group until ``deadline``, then SIGKILL what is
        left. Returns the child's exit code."""
        if not self._wait_gone(deadline):
            return self.kill()
        return self.process.wait()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the group, SIGKILL it after ``timeout``; the child's exit code."""
        self.terminate()
        return self.finish(time.monotonic() + timeout)

    def kill(self) -> int:
        """SIGKILL the group: a crash, no goodbye. Returns once the group is gone."""
        _signal_group(self.pgid, signal.SIGKILL)
        code = self.process.wait()
        # The rest of the group may still run for a moment after the leader was reaped.
        self._wait_gone(time.monotonic() + _KILL_WAIT)
        return code

    def _wait_gone(self, deadline: float) -> bool:
        while group_alive(self.pgid):
            self.process.poll()  # reap the leader as soon as it exits
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL)
        return True


class Supervisor:
    """Owns the processes it starts, each logged to ``log_dir/<name>.log``;
    ``with Supervisor(...)`` stops them all on the way out."""

    def __init__(self, log_dir: Path, *, stop_timeout: float = 10.0) -> None:
        self.log_dir = log_dir
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("w+b")
        child = Child.spawn(name, argv, output=log, env=env)
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

    def stop_all(self) -> None:
        """SIGTERM every group (newest first), then give them ``stop_timeout`` together."""
        for child in reversed(self.children):
            child.terminate()
        deadline = time.monotonic() + self.stop_timeout
        for child in reversed(self.children):
            child.finish(deadline)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()
