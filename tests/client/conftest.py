from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshkit import _httpx


@pytest.fixture(params=["fast", "stock"])
def httpx_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test on the httpx adapter's fast path, then again on httpx's stock path (what
    a newer httpx that fails the adapter's check at import gets)."""
    fast = _httpx.use_fast_paths(request.param == "fast")
    assert fast == (request.param == "fast")
    try:
        yield request.param
    finally:
        _httpx.use_fast_paths()
