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
