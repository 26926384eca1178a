"""What /proc says about a process, independent of ``meshkit.testing.supervisor``'s own checks."""

from __future__ import annotations

from pathlib import Path


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie has: only its parent's bookkeeping is left)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state == "Z"


def rss_mb(pid: int) -> float:
    """The resident set of ``pid`` now (``VmRSS``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")
