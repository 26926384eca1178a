"""meshkit.deadline: the sent-time header and the clock-skew rule, as pure functions."""

from __future__ import annotations

import pytest

from meshkit import deadline
from meshkit.errors import ConfigError
from meshkit.settings import MeshSettings


def test_sent_time_round_trips_in_whole_milliseconds_rounded_down() -> None:
    value = deadline.format_sent(1796904000.1239)
    assert value == b"1796904000123"
    assert deadline.parse_sent(value) == 1796904000.123


@pytest.mark.parametrize("value", [b"", b"soon", b"1.5e12", b"0", b"-1796904000123"])
def test_a_sent_time_that_is_no_positive_number_is_ignored(value: bytes) -> None:
    assert deadline.parse_sent(value) is None


def test_time_unread_forgives_what_clock_skew_could_explain() -> None:
    # Sent 0.2 s before arrival by our clock: within a 0.25 s allowance, nothing counts.
    assert deadline.time_unread(100.0, 100.2, 0.25) == 0.0


def test_time_unread_counts_the_wait_beyond_the_allowance() -> None:
    # 17 s unread in a paused process's socket buffer: all but the allowance counts.
    assert deadline.time_unread(100.0, 117.0, 0.25) == pytest.approx(16.75)


def test_a_sent_time_in_our_future_counts_nothing() -> None:
    # The caller's clock runs ahead of ours: its timestamp never extends a budget.
    assert deadline.time_unread(200.0, 100.0, 0.25) == 0.0


def test_no_allowance_trusts_the_clocks_fully() -> None:
    assert deadline.time_unread(100.0, 100.5, 0.0) == pytest.approx(0.5)


def test_max_clock_skew_setting_from_the_environment() -> None:
    assert MeshSettings().max_clock_skew == 0.25
    settings = MeshSettings.from_env({"MESHKIT_MAX_CLOCK_SKEW": "2"})
    assert settings.max_clock_skew == 2.0
    with pytest.raises(ConfigError, match="MESHKIT_MAX_CLOCK_SKEW"):
        MeshSettings.from_env({"MESHKIT_MAX_CLOCK_SKEW": "-1"})
