"""meshkit.deadline: the incoming headers' rules (budget, sent time, clock skew, start),
as pure functions."""

from __future__ import annotations

import pytest

from meshkit import deadline
from meshkit.errors import ConfigError
from meshkit.settings import MeshSettings

# A request whose head arrived at 50.0 on the monotonic clock, read at 50.0 (wall 100.0).
ARRIVED, NOW, WALL = 50.0, 50.0, 100.0


def bounds(
    budget: bytes | None, sent: bytes | None = None, start: bytes | None = None, **options: float
) -> tuple[float, float] | None:
    skew = options.pop("skew", 0.25)
    return deadline.incoming_bounds(budget, sent, start, ARRIVED, NOW, WALL, skew, **options)


def test_sent_time_is_written_in_whole_milliseconds_rounded_down() -> None:
    assert deadline.format_sent(1796904000.1239) == b"1796904000123"


@pytest.mark.parametrize("value", [b"", b"soon", b"1.5e12", b"0", b"-1796904000123"])
def test_a_sent_time_that_is_no_positive_number_is_ignored(value: bytes) -> None:
    assert bounds(b"2000", value) == (52.0, 52.0)


def test_time_unread_forgives_what_clock_skew_could_explain() -> None:
    # Sent 0.2 s before arrival by our clock: within a 0.25 s allowance, nothing counts.
    assert bounds(b"2000", b"99800") == (52.0, 52.0)


def test_time_unread_counts_the_wait_beyond_the_allowance() -> None:
    # 17 s unread in a paused process's socket buffer: all but the allowance counts.
    assert bounds(b"20000", b"83000") == pytest.approx((53.25, 53.25))


def test_the_wait_counts_from_the_arrival_not_from_now() -> None:
    # Read 1 s after the head arrived: sent 0.5 s before the arrival (wall 99.0).
    found = deadline.incoming_bounds(b"2000", b"98500", None, 49.0, NOW, WALL, 0.0)
    assert found == pytest.approx((50.5, 50.5))


def test_a_sent_time_in_our_future_counts_nothing() -> None:
    # The caller's clock runs ahead of ours: its timestamp never extends a budget.
    assert bounds(b"2000", b"200000") == (52.0, 52.0)


def test_no_allowance_trusts_the_clocks_fully() -> None:
    assert bounds(b"2000", b"99500", skew=0.0) == pytest.approx((51.5, 51.5))


@pytest.mark.parametrize("value", [None, b"", b"soon", b"1.5"])
def test_no_budget_is_unbounded_or_the_default(value: bytes | None) -> None:
    assert bounds(value, b"1", b"100") is None
    # The default ignores the sent and start times that came with no budget.
    assert bounds(value, b"1", b"100", default=3.0) == (53.0, 53.0)


def test_a_negative_budget_or_start_is_zero() -> None:
    assert bounds(b"-5") == (50.0, 50.0)
    assert bounds(b"2000", None, b"-5") == (50.0, 52.0)


def test_a_start_time_shorter_than_the_budget_bounds_the_start() -> None:
    assert bounds(b"2000", None, b"300") == (50.3, 52.0)
    assert bounds(b"2000", None, b"2000") == (52.0, 52.0)
    assert bounds(b"2000", None, b"soon") == (52.0, 52.0)


def test_max_clock_skew_setting_from_the_environment() -> None:
    assert MeshSettings().max_clock_skew == 0.25
    settings = MeshSettings.from_env({"MESHKIT_MAX_CLOCK_SKEW": "2"})
    assert settings.max_clock_skew == 2.0
    with pytest.raises(ConfigError, match="MESHKIT_MAX_CLOCK_SKEW"):
        MeshSettings.from_env({"MESHKIT_MAX_CLOCK_SKEW": "-1"})
