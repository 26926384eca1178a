"""The one process manager (``meshkit.testing.supervisor``) over real processes: start, readiness,
output, stop (even of a child that ignores SIGTERM) and kill, with nothing it spawned
left behind. ``meshkit.testing``'s processes and ``meshkit demo`` both run on it."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshkit.errors import MeshError
from meshkit.testing.supervisor import Child, Supervisor, group_alive
from tests._procs import gone

pytestmark = pytest.mark.timeout(30)

# A child that starts a grandchild, writes its pid, and (optionally) ignores SIGTERM.
PARENT = """
import signal, subprocess, sys, time
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(grandchild.pid))
print("ready", flush=True)
time.sleep(60)
"""
READY = re.compile(r"^ready$", re.MULTILINE)


Spawn = Callable[..., Child]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Starts a ``Child`` (argv, name), output in an anonymous file; all killed after the test."""
    started: list[Child] = []

    def start(argv: list[str], name: str = "child") -> Child:
        started.append(Child.spawn(name, argv))
        return started[-1]

    yield start
    for child in started:
        child.kill()


def _parent(spawn: Spawn, tmp_path: Path, mode: str) -> tuple[Child, int]:
    """A PARENT child, ready; and its grandchild's pid."""
    pid_file = tmp_path / f"{mode}.pid"
    child = spawn([sys.executable, "-c", PARENT, str(pid_file), mode], mode)
    child.wait_for(READY)
    return child, int(pid_file.read_text())


def test_a_child_leads_its_own_group_and_its_output_is_kept(spawn: Spawn, tmp_path: Path) -> None:
    child, grandchild = _parent(spawn, tmp_path, "polite")
    # A Ctrl-C to our group does not reach it; its grandchild is in its group.
    assert child.pgid == child.process.pid != os.getpgid(0)
    assert os.getpgid(grandchild) == child.pgid
    assert child.text() == "ready\n"
    child.stop()
    assert child.text() == "ready\n"  # still there for an error message


def test_readiness_is_a_complete_line(spawn: Spawn) -> None:
    # Half a port number first: a match now would read port 12.
    script = "import time; print('port 12', end='', flush=True); time.sleep(0.5); print(345)"
    child = spawn([sys.executable, "-c", script])
    assert child.wait_for(re.compile(r"port (\d+)"))[1] == "12345"


def test_stop_asks_politely_and_returns_the_exit_code(spawn: Spawn, tmp_path: Path) -> None:
    child, grandchild = _parent(spawn, tmp_path, "polite")
    assert child.stop(timeout=10) == -signal.SIGTERM
    assert not group_alive(child.pgid) and gone(grandchild)


def test_stop_kills_a_child_that_ignores_sigterm_and_its_grandchild(
    spawn: Spawn, tmp_path: Path
) -> None:
    child, grandchild = _parent(spawn, tmp_path, "stubborn")
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert not group_alive(child.pgid) and gone(grandchild)
    assert child.stop() == -signal.SIGKILL  # a second stop is harmless


def test_kill_is_immediate_and_takes_the_grandchild(spawn: Spawn, tmp_path: Path) -> None:
    child, grandchild = _parent(spawn, tmp_path, "stubborn")
    assert child.kill() == -signal.SIGKILL
    assert not group_alive(child.pgid) and gone(grandchild)


def test_a_child_that_dies_early_is_reported_with_its_output(spawn: Spawn) -> None:
    child = spawn(
        [sys.executable, "-c", "print('bad config: port'); raise SystemExit(3)"], "broken"
    )
    with pytest.raises(MeshError, match=r"broken exited with 3:\nbad config: port"):
        child.wait_for(READY)


def test_a_child_that_never_gets_ready_times_out(spawn: Spawn) -> None:
    child = spawn([sys.executable, "-c", "import time; time.sleep(30)"], "slow")
    with pytest.raises(MeshError, match=r"slow was not ready after 0\.2s"):
        child.wait_until(lambda: False, timeout=0.2)


def test_stop_all_takes_down_every_group_into_log_files(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "logs", stop_timeout=1.0) as supervisor:
        children = {}
        for mode in ("polite", "stubborn"):
            pid_file = tmp_path / f"{mode}.pid"
            child = supervisor.start(mode, [sys.executable, "-c", PARENT, str(pid_file), mode])
            child.wait_for(READY)
            children[child] = int(pid_file.read_text())
        assert (tmp_path / "logs" / "stubborn.log").read_text() == "ready\n"
    for child, grandchild in children.items():
        assert not child.running and not group_alive(child.pgid) and gone(grandchild)


def test_one_kill_leaves_the_others(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "logs", stop_timeout=1.0) as supervisor:
        argv = [sys.executable, "-c", PARENT, str(tmp_path / "pid"), "stubborn"]
        victim, survivor = supervisor.start("victim", argv), supervisor.start("survivor", argv)
        victim.wait_for(READY)
        assert victim.kill() == -signal.SIGKILL  # straight away: no SIGTERM to ignore first
        assert not group_alive(victim.pgid)
        assert survivor.running and group_alive(survivor.pgid)


def test_run_waits_for_a_command_and_forgets_it(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "logs") as supervisor:
        done = supervisor.run("init", [sys.executable, "-c", "print('created')"])
        assert done.text() == "created\n"
        assert supervisor.children == []
        with pytest.raises(MeshError, match=r"broken failed with 2:\nno such dir"):
            supervisor.run("broken", [sys.executable, "-c", "print('no such dir'); exit(2)"])
