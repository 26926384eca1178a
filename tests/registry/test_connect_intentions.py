"""Consul's intention semantics as meshkit evaluates them (pure logic; the same rules
run over real processes in tests/test_consul_intentions.py)."""

from __future__ import annotations

import logging
import uuid

import pytest

from meshkit.registry.connect_intentions import (
    HeaderMatch,
    HTTPMatch,
    Intention,
    Permission,
    first_for_source,
    matching,
    precedence,
)


@pytest.mark.parametrize(
    ("destination", "source", "expected"),
    [
        (("default", "db"), ("default", "web"), 9),
        (("default", "db"), ("default", "*"), 8),
        (("default", "db"), ("*", "*"), 7),
        (("default", "*"), ("default", "web"), 6),
        (("default", "*"), ("default", "*"), 5),
        (("default", "*"), ("*", "*"), 4),
        (("*", "*"), ("default", "web"), 3),
        (("*", "*"), ("*", "*"), 1),
    ],
)
def test_precedence_is_consuls(
    destination: tuple[str, str], source: tuple[str, str], expected: int
) -> None:
    assert precedence(*destination, *source) == expected


def _ixn(src: str, dst: str, action: str = "deny", src_ns: str = "default") -> Intention:
    return Intention(
        src_ns,
        src,
        "default",
        dst,
        action,
        precedence=precedence("default", dst, src_ns, src),  # type: ignore[arg-type]
    )


def test_the_most_precise_intention_for_the_caller_decides() -> None:
    rules = [
        _ixn("*", "*", src_ns="*"),
        _ixn("web", "db", "allow"),
        _ixn("*", "db"),
        _ixn("cart", "*", "allow"),
    ]
    ordered = matching(rules, "default", "db")
    assert [(i.source, i.destination) for i in ordered] == [
        ("web", "db"),
        ("*", "db"),
        ("cart", "*"),
        ("*", "*"),
    ]
    assert first_for_source(ordered, "default", "web").action == "allow"  # type: ignore[union-attr]
    # An exact destination with a wildcard source beats a wildcard destination.
    assert first_for_source(ordered, "default", "cart").action == "deny"  # type: ignore[union-attr]
    # Another namespace meets only the */* intention.
    found = first_for_source(ordered, "team", "web")
    assert found is not None and found.source_namespace == "*"
    assert matching(rules, "team", "db") == []  # the rules name default's destinations


def test_l7_permissions_first_match_wins() -> None:
    intention = Intention(
        "default",
        "web",
        "default",
        "db",
        None,
        (
            Permission("deny", HTTPMatch(path_prefix="/admin")),
            Permission("allow", HTTPMatch(path_regex="/v[0-9]+/.*", methods=("GET",))),
            Permission(
                "allow", HTTPMatch(headers=(HeaderMatch("x-env", suffix="-prod", invert=True),))
            ),
        ),
    )
    assert intention.decide("GET", "/admin/x", {}) == "deny"
    assert intention.decide("GET", "/v2/items", {"x-env": "eu-prod"}) == "allow"
    assert intention.decide("POST", "/v2/items", {"x-env": "eu-prod"}) is None  # default
    assert intention.decide("POST", "/v2/items", {"x-env": "eu-dev"}) == "allow"  # inverted
    assert intention.decide("POST", "/v2/items", {}) == "allow"  # absent, inverted: matches


def test_regex_must_match_the_whole_value_and_a_bad_one_matches_nothing() -> None:
    assert HTTPMatch(path_regex="/a").matches("GET", "/a", {})
    assert not HTTPMatch(path_regex="/a").matches("GET", "/ab", {})
    assert not HTTPMatch(path_regex="([").matches("GET", "([", {})
    assert HeaderMatch("x", present=True).matches({"x": ""})
    assert not HeaderMatch("x", exact="1").matches({})


def test_a_permission_whose_regex_does_not_compile_fails_closed_and_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Consul stores such a permission and Envoy would refuse the listener's config: an
    allow with it never matches (an inverted header test does not let all in), a deny
    with it denies every request that reaches it."""
    source = f"web-{uuid.uuid4().hex[:8]}"  # "once" is per process: a name of this run's own
    inverted = HTTPMatch(headers=(HeaderMatch("x-env", regex="(", invert=True),))
    allow_broken = Intention(
        "default",
        source,
        "default",
        "db",
        None,
        (Permission("allow", inverted), Permission("deny", HTTPMatch(path_prefix="/admin"))),
    )
    deny_broken = Intention(
        "default",
        source,
        "default",
        "orders",
        None,
        (
            Permission("allow", HTTPMatch(path_exact="/health")),
            Permission("deny", HTTPMatch(path_regex="/items/(")),
            Permission("allow", HTTPMatch(path_prefix="/")),
        ),
    )
    with caplog.at_level(logging.WARNING, logger="meshkit.registry"):
        for _ in range(3):
            assert allow_broken.decide("GET", "/items", {}) is None  # the default decides
            assert allow_broken.decide("GET", "/items", {"x-env": "prod"}) is None
            assert allow_broken.decide("GET", "/admin/x", {}) == "deny"  # the next one
            assert deny_broken.decide("GET", "/health", {}) == "allow"  # first match wins
            assert deny_broken.decide("GET", "/other", {}) == "deny"
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        f"intention default/{source} -> default/db: regex '(' does not compile;"
        " its allow permission matches none",
        f"intention default/{source} -> default/orders: regex '/items/(' does not compile;"
        " its deny permission denies every request",
    ]
