"""Query strings and options read as Go's net/url and Consul's parse read them."""

from __future__ import annotations

import pytest

from meshkit.registry.dev.errors import AgentError, DecodeError
from meshkit.registry.dev.query import (
    DEFAULT_WAIT,
    MAX_WAIT,
    go_quote,
    parse_options,
    parse_query,
    parse_uint,
    parse_wait,
)


def test_parse_query_reads_pairs_escapes_and_plus() -> None:
    assert parse_query(b"a=1&a=2&b=x+y%21&flag&&c=") == {
        "a": ["1", "2"],
        "b": ["x y!"],
        "flag": [""],
        "c": [""],
    }
    assert parse_query(b"tag=%FF") == {"tag": ["\ufffd"]}


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"a=%zz", 'invalid URL escape "%zz"'),
        (b"a=%4", 'invalid URL escape "%4"'),
        (b"a=1;b=2", "invalid semicolon separator in query"),
    ],
)
def test_parse_query_refuses_the_whole_query(raw: bytes, text: str) -> None:
    with pytest.raises(AgentError) as raised:
        parse_query(raw)
    assert (raised.value.status, raised.value.reason) == (400, text)


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ({"index": ["\u00b2"]}, "Invalid index"),  # a superscript two: str.isdigit says yes
        ({"index": ["-1"]}, "Invalid index"),
        ({"index": ["18446744073709551616"]}, "Invalid index"),
        ({"wait": ["soon"]}, "Invalid wait time"),
        ({"wait": ["10"]}, "Invalid wait time"),
    ],
)
def test_blocking_parameters_are_strict(query: dict[str, list[str]], text: str) -> None:
    with pytest.raises(AgentError, match=f"^{text}$"):
        parse_wait(query)


def test_wait_is_clamped_and_defaults_like_consul() -> None:
    assert parse_wait({"index": ["18446744073709551615"], "wait": ["1h"]}).wait == MAX_WAIT
    assert parse_wait({"wait": ["-5s"]}).wait == DEFAULT_WAIT
    assert parse_wait({"wait": ["0s"]}).wait == DEFAULT_WAIT
    assert parse_wait({"wait": ["1.5s"], "index": [""]}).wait == 1.5


@pytest.mark.parametrize(
    ("query", "cache_control", "text"),
    [
        (
            {"stale": [""], "consistent": [""]},
            "",
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
        (
            {"max_stale": ["5s"], "consistent": [""]},
            "",
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
        ({"max_stale": ["x"]}, "", 'Invalid max_stale value "x"'),
        (
            {"cached": [""], "consistent": [""]},
            "",
            "Cannot specify ?cached with ?consistent, conflicting semantics.",
        ),
        ({}, "max-age=soon", "Invalid Cache-Control header."),
    ],
)
def test_conflicting_options_are_refused(
    query: dict[str, list[str]], cache_control: str, text: str
) -> None:
    with pytest.raises(AgentError) as raised:
        parse_options(query, cache_control)
    assert raised.value.reason == text


def test_parse_uint_and_go_quote() -> None:
    assert parse_uint("18446744073709551615") == (1 << 64) - 1
    with pytest.raises(DecodeError, match=r'^strconv.ParseUint: parsing "1e3": invalid syntax$'):
        parse_uint("1e3")
    with pytest.raises(DecodeError, match="value out of range"):
        parse_uint("18446744073709551616")
    assert go_quote('a"\\\n\x01\u0085é') == '"a\\"\\\\\\n\\x01\\u0085é"'
