from __future__ import annotations

import pytest

from meshkit.registry.dev.decode import (
    DecodeError,
    decode_check,
    decode_service,
    format_duration,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("0", 0.0), ("1h", 3600.0), ("1.5s", 1.5)],
)
def test_parse_duration_reads_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_fails_with_go_texts() -> None:
    with pytest.raises(DecodeError, match=r'^time: invalid duration "abc"$'):
        parse_duration("abc")
    with pytest.raises(DecodeError, match=r'^time: missing unit in duration "10"$'):
        parse_duration("10")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(10, "10s"), (60, "1m0s"), (3600, "1h0m0s"), (0.5, "500ms"), (0, "0s"), (90.5, "1m30.5s")],
)
def test_format_duration_matches_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_service_keys_are_case_insensitive_with_snake_case_aliases() -> None:
    definition = decode_service(
        {
            "name": "web",
            "ID": "web-1",
            "Check": {"ttl": "5s", "deregister_critical_service_after": "1m"},
            "checks": [{"HTTP": "http://x/healthz", "Interval": 1_000_000_000}],
        }
    )
    assert (definition.name, definition.id) == ("web", "web-1")
    assert definition.checks[0].ttl == 5.0
    assert definition.checks[0].deregister_after == 60.0
    assert definition.checks[1].interval == 1.0  # JSON numbers are nanoseconds
    assert definition.checks[1].type == "http"


def test_wrong_json_types_fail_like_go() -> None:
    with pytest.raises(DecodeError, match="cannot unmarshal string into Go struct field"):
        decode_service({"Name": "web", "Port": "80"})


def test_an_empty_check_object_is_ignored() -> None:
    assert decode_service({"Name": "web", "Check": {}}).checks == []


def test_check_validation_texts() -> None:
    assert decode_check({"HTTP": "http://x"}).validate() == (
        "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
    )
    assert decode_check({}).validate() == "TTL must be > 0 for TTL checks"
    assert decode_check({"TTL": "1s", "Interval": "1s"}).validate() == (
        "Interval and TTL cannot both be specified"
    )
