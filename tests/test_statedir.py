from __future__ import annotations

from pathlib import Path

from meshkit._statedir import claimed_slot


def test_running_instances_never_share_a_slot_and_restarts_reuse_it(tmp_path: Path) -> None:
    base = tmp_path / ".meshkit" / "cart"
    with claimed_slot(base) as first:
        with claimed_slot(base) as second:
            assert (first, second) == (base / "0", base / "1")
        with claimed_slot(base) as again:
            assert again == base / "1"  # slot 1 was released; 0 is still held
    with claimed_slot(base) as restarted:
        assert restarted == base / "0"
    assert oct(first.stat().st_mode & 0o777) == "0o700"
