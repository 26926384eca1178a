"""The go-bexpr subset of resolver subset filters, on endpoints (pure logic)."""

from __future__ import annotations

import pytest

from meshkit.registry.base import Endpoint
from meshkit.registry.bexpr import FilterError, compile_filter

V2 = Endpoint(
    "inventory-2", "inventory", "10.0.0.2", 8443, meta={"version": "2.0.0"}, tags=("canary", "eu")
)
V1 = Endpoint("inventory-1", "inventory", "10.0.0.1", 8443, meta={"version": "1.0.0"}, tags=())


@pytest.mark.parametrize(
    ("expression", "v1", "v2"),
    [
        ("Service.Meta.version == 2.0.0", False, True),
        ('Service.Meta.version == "2.0.0"', False, True),
        ("Service.Meta.version != `2.0.0`", True, False),
        ('"canary" in Service.Tags', False, True),
        ('"canary" not in Service.Tags', True, False),
        ("Service.Tags contains eu", False, True),
        ("Service.Tags is empty", True, False),
        ("Service.Tags is not empty", False, True),
        ('Service.Meta.version matches "^2\\\\."', False, True),
        ('Service.ID == inventory-1 or "eu" in Service.Tags', True, True),
        ("not (Service.Meta.version == 1.0.0 and Service.Port == 8443)", False, True),
        ("Service.Address contains 10.0.0", True, True),
        ("Service.Meta.zone == a", False, False),  # a selector an instance lacks: no match
        ("Node.Meta.rack == r1", False, False),  # not the service's: no match
    ],
)
def test_filters(expression: str, v1: bool, v2: bool) -> None:
    match = compile_filter(expression)
    assert (match(V1), match(V2)) == (v1, v2)


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "Service.Meta.version ==",
        "Service.Meta.version = 1",
        "(Service.ID == a",
        '"x" in',
        "a b",
    ],
)
def test_invalid_expressions_are_refused(expression: str) -> None:
    with pytest.raises(FilterError):
        compile_filter(expression)
