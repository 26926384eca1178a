"""The ``mesh`` pytest fixture, registered through the ``pytest11`` entry point.

Installing meshkit makes it available in every test suite; it lives apart from
``meshkit.testing`` so that module needs no pytest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit.testing import Mesh


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    """A test CA, a dev registry and the services a test starts; all stopped after it.

    ``mesh.start("pkg.app:app", "payments", instances=2)`` returns registered, passing
    instances; ``mesh.connect(instance, as_="web")`` calls one as ``web``;
    ``mesh.kill(instance)`` crashes one; ``faults="delay=0.5"`` slows one down.
    """
    with Mesh(tmp_path / "mesh") as test_mesh:
        yield test_mesh
