"""Running ``run_demo`` in a test: file identities, the test's dev registry, output kept."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

from meshkit.demo.run import DemoOptions, Display, LocalIdentities, run_demo
from meshkit.testing.supervisor import Supervisor


def run_local_demo(
    options: DemoOptions,
    supervisor: Supervisor,
    directory: Path,
    registry_env: Mapping[str, str],
) -> tuple[int, str]:
    """The demo's exit code and what it printed (not a terminal: no live redraws)."""
    out = io.StringIO()
    code = run_demo(
        options,
        supervisor,
        directory,
        Display(out, interactive=False),
        mesh=lambda s, d: (LocalIdentities(), dict(registry_env)),
    )
    return code, out.getvalue()
