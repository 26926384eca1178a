"""The requests adapter: requests without its charset detection until a body needs it.

py-consul (``import consul``) and the OTLP exporter import requests, and requests
imports charset_normalizer with itself, only to guess the charset of a body that
declares none (``Response.apparent_encoding``, read by ``Response.text``). Consul and
an OTLP collector answer JSON (UTF-8 by its media type) or nothing, so a service never
guesses, yet charset_normalizer's tables, its compiled modules and the unicodedata
pages it reads at import stay resident in every service (3.3 MiB, bench/memory.py).

Here requests is imported with charset_normalizer hidden, then given a detector that
imports charset_normalizer the first time a body is guessed: the same answers, paid
for only by a process that guesses. ``meshkit/__init__`` imports this module first, so
it runs before any other meshkit module imports requests. If requests is imported
already (the app imported it before meshkit), or is not in the shape checked here,
requests is left as it is, or given charset_normalizer itself, with one warning
naming what differs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

DETECTOR = "charset_normalizer"
#: Where requests keeps the detector it found at import (None when it found none).
_HOLDERS = ("requests.compat", "requests.models")


class LazyDetector:
    """Stands in for the ``charset_normalizer`` module where requests calls it
    (``chardet.detect(content)``): each attribute is the module's, loaded on first use."""

    __name__ = DETECTOR

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(DETECTOR), name)


@contextlib.contextmanager
def _detector_hidden() -> Iterator[None]:
    sys.modules[DETECTOR] = None  # type: ignore[assignment]  # imports of it fail
    try:
        with warnings.catch_warnings():
            # requests warns that it found no detector: it gets one below.
            warnings.filterwarnings("ignore", message="Unable to find acceptable character")
            yield
    finally:
        del sys.modules[DETECTOR]


def _import_requests() -> bool:
    """requests imported now, without charset_normalizer; False if it was imported
    already (or charset_normalizer was)."""
    if "requests" in sys.modules or DETECTOR in sys.modules:
        return False
    with _detector_hidden():
        importlib.import_module("requests")
    return True


def _holders() -> list[ModuleType] | None:
    """requests' modules that hold the detector, if each holds None (no detector)."""
    modules = [sys.modules.get(name) for name in _HOLDERS]
    if all(module is not None and getattr(module, "chardet", 0) is None for module in modules):
        return [module for module in modules if module is not None]
    return None


def install() -> str | None:
    """Import requests with the lazy detector; what differs from the expected shape, if
    anything (then requests keeps, or is given, charset_normalizer itself)."""
    if not _import_requests():
        return None
    holders = _holders()
    detector: Any = LazyDetector() if holders is not None else importlib.import_module(DETECTOR)
    for name in _HOLDERS:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "chardet"):
            setattr(module, "chardet", detector)  # noqa: B010 - a ModuleType, typed without it
    if holders is None:
        return f"{' and '.join(_HOLDERS)} do not hold requests' charset detector as 'chardet'"
    return None


_PROBLEM = install()
if _PROBLEM is not None:
    logger.warning("requests loads its charset detection at once: %s", _PROBLEM)


def lazy() -> bool:
    """Whether requests got the lazy detector (its check passed)."""
    models = sys.modules.get("requests.models")
    return isinstance(getattr(models, "chardet", None), LazyDetector)
