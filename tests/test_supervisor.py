"""Process groups: whatever a child spawned goes down with it, even if it ignores SIGTERM."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from meshkit._supervisor import Supervisor, group_alive
from meshkit.errors import MeshError

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


def _start(supervisor: Supervisor, tmp_path: Path, name: str, mode: str) -> tuple[int, int]:
    pid_file = tmp_path / f"{name}.pid"
    child = supervisor.start(name, [sys.executable, "-c", PARENT, str(pid_file), mode])
    supervisor.wait_until(child, pid_file.exists)
    supervisor.wait_until(child, lambda: "ready" in child.log.read_text())
    return child.pgid, int(pid_file.read_text())


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


def test_stop_all_takes_down_every_group(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", stop_timeout=1.0)
    with supervisor:
        polite, polite_grandchild = _start(supervisor, tmp_path, "polite", "polite")
        stubborn, stubborn_grandchild = _start(supervisor, tmp_path, "stubborn", "stubborn")
        # Each child leads its own group: a Ctrl-C to ours does not reach them.
        assert {polite, stubborn}.isdisjoint({os.getpgid(0)})
        assert group_alive(polite) and group_alive(stubborn)
    assert not group_alive(polite) and not group_alive(stubborn)
    assert _gone(polite_grandchild) and _gone(stubborn_grandchild)
    assert all(not child.running for child in supervisor.children)


def test_kill_is_immediate_and_leaves_the_others(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "logs", stop_timeout=1.0) as supervisor:
        victim, grandchild = _start(supervisor, tmp_path, "victim", "stubborn")
        survivor, _ = _start(supervisor, tmp_path, "survivor", "polite")
        started = time.monotonic()
        supervisor.kill(supervisor.children[0])
        assert time.monotonic() - started < 5
        assert not group_alive(victim) and _gone(grandchild)
        assert group_alive(survivor)


def test_a_child_that_dies_early_is_reported_with_its_output(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "logs") as supervisor:
        child = supervisor.start(
            "broken", [sys.executable, "-c", "print('bad config: port'); raise SystemExit(3)"]
        )
        with pytest.raises(MeshError, match=r"broken exited with 3:\nbad config: port"):
            supervisor.wait_until(child, lambda: False)


def test_a_child_that_never_gets_ready_times_out(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "logs", stop_timeout=1.0) as supervisor:
        child = supervisor.start("slow", [sys.executable, "-c", "import time; time.sleep(30)"])
        with pytest.raises(MeshError, match=r"slow was not ready after 0\.2s"):
            supervisor.wait_until(child, lambda: False, timeout=0.2)


def test_run_waits_for_a_command_and_forgets_it(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "logs") as supervisor:
        done = supervisor.run("init", [sys.executable, "-c", "print('created')"])
        assert "created" in done.log.read_text()
        assert supervisor.children == []
        with pytest.raises(MeshError, match=r"broken failed with 2:\nno such dir"):
            supervisor.run("broken", [sys.executable, "-c", "print('no such dir'); exit(2)"])
