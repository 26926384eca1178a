"""Go's time.ParseDuration and Duration.String, ported to the nanosecond."""

from __future__ import annotations

import pytest

from meshkit.registry.dev.durations import MIN_DURATION, format_duration, from_float, parse_duration
from meshkit.registry.dev.errors import DecodeError

MAX = (1 << 63) - 1


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("10s", 10_000_000_000),
        ("1m30s", 90_000_000_000),
        ("500ms", 500_000_000),
        ("0", 0),
        ("-0", 0),
        ("1.5h", 5_400_000_000_000),
        ("-1.5h", -5_400_000_000_000),
        ("10µs", 10_000),
        ("1.s", 1_000_000_000),
        ("2562047h47m16.854775807s", MAX),
        ("-2562047h47m16.854775808s", MIN_DURATION),
    ],
)
def test_parse_duration_reads_go_durations(text: str, nanoseconds: int) -> None:
    assert parse_duration(text) == nanoseconds


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("abc", 'time: invalid duration "abc"'),
        ("10", 'time: missing unit in duration "10"'),
        ("1x", 'time: unknown unit "x" in duration "1x"'),
        ("1e3s", 'time: unknown unit "e" in duration "1e3s"'),
        ("", 'time: invalid duration ""'),
        (".s", 'time: invalid duration ".s"'),
        ("Infinity", 'time: invalid duration "Infinity"'),
        ("2562047h47m16.854775808s", 'time: invalid duration "2562047h47m16.854775808s"'),
        ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
        ("é", 'time: invalid duration "\\xc3\\xa9"'),
    ],
)
def test_parse_duration_fails_with_go_texts(text: str, error: str) -> None:
    with pytest.raises(DecodeError) as raised:
        parse_duration(text)
    assert str(raised.value) == error


@pytest.mark.parametrize(
    ("nanoseconds", "text"),
    [
        (10_000_000_000, "10s"),
        (60_000_000_000, "1m0s"),
        (3_600_000_000_000, "1h0m0s"),
        (500_000_000, "500ms"),
        (1_500_000, "1.5ms"),
        (1_000, "1µs"),
        (0, "0s"),
        (90_500_000_000, "1m30.5s"),
        (MAX, "2562047h47m16.854775807s"),
        (MIN_DURATION, "-2562047h47m16.854775808s"),
    ],
)
def test_format_duration_matches_go(nanoseconds: int, text: str) -> None:
    assert format_duration(nanoseconds) == text


def test_a_float_becomes_a_duration_as_on_amd64() -> None:
    assert from_float(1.9) == 1 and from_float(-1.9) == -1
    assert from_float(1e300) == MIN_DURATION and from_float(-1e300) == MIN_DURATION
