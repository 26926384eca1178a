"""Running a benchmark from the checkout, as its tests do."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def bench_figures(
    command: Sequence[str], *, timeout: float
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Run ``command`` from the checkout: it must exit 0; its last line is its figures."""
    done = subprocess.run([*command], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done
