"""JSON read as Go's json.Decoder reads a body: Go's syntax errors, any depth without
recursion, NaN and Infinity refused, number literals kept, one value read."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.registry.dev.errors import DecodeError
from meshkit.registry.dev.gojson import MAX_DEPTH, Number, loads, quote_char


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"", "EOF"),
        (b" \n", "EOF"),
        (b"{", "unexpected EOF"),
        (b'{"a":', "unexpected EOF"),
        (b'{"a":NaN}', "invalid character 'N' looking for beginning of value"),
        (b'{"a":Infinity}', "invalid character 'I' looking for beginning of value"),
        (b'{"a":-Infinity}', "invalid character 'I' in numeric literal"),
        (b'{"a":01}', "invalid character '1' after object key:value pair"),
        (b'{"a":1.}', "invalid character '}' after decimal point in numeric literal"),
        (b'{"a":1e}', "invalid character '}' in exponent of numeric literal"),
        (b'{"a":tru}', "invalid character '}' in literal true (expecting 'e')"),
        (b'{"a" 1}', "invalid character '1' after object key"),
        (b"[1 2]", "invalid character '2' after array element"),
        (b"[1,]", "invalid character ']' looking for beginning of value"),
        (b'{"a":1,}', "invalid character '}' looking for beginning of object key string"),
        (b"{1:2}", "invalid character '1' looking for beginning of object key string"),
        (b'{"a":"\\x"}', "invalid character 'x' in string escape code"),
        (b'{"a":"\\u12g4"}', "invalid character 'g' in \\u hexadecimal character escape"),
        (b'{"a":"x\ny"}', "invalid character '\\n' in string literal"),
        (b"5x", "invalid character 'x' after top-level value"),
        (b"\xef\xbb\xbf{}", "invalid character '\u00ef' looking for beginning of value"),
        (b"[" * (MAX_DEPTH + 1), "invalid character '[' exceeded max depth"),
        (b'{"a":' * (MAX_DEPTH + 1), "invalid character '{' exceeded max depth"),
    ],
)
def test_syntax_errors_are_gos(body: bytes, text: str) -> None:
    with pytest.raises(DecodeError) as raised:
        loads(body)
    assert str(raised.value) == text


def test_any_depth_up_to_gos_limit_decodes_without_recursion() -> None:
    value: Any = loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    depth = 0
    while value:
        value, depth = value[0], depth + 1
    assert depth == MAX_DEPTH - 1  # the innermost list is empty


def test_numbers_keep_their_literal() -> None:
    value = loads(b'{"a": 1e400, "b": -0, "c": 9223372036854775808}')
    assert value == {"a": Number("1e400"), "b": Number("-0"), "c": Number("9223372036854775808")}
    assert value["a"].as_float() is None and value["b"].as_int() == 0
    assert value["c"].as_int() is None  # past int64, as strconv.ParseInt says
    assert Number("1.5").as_int() is None and Number("1.5").as_float() == 1.5


def test_one_value_is_read_and_what_follows_it_is_left() -> None:
    assert loads(b'{"a": 1} trailing') == {"a": Number("1")}
    assert loads(b"5 x") == Number("5")


def test_the_iterative_reader_builds_what_the_standard_parser_builds() -> None:
    """Bytes after the value send a body to the iterative reader (the standard parser
    refuses them): every kind of value comes out as the fast path makes it."""
    document = b'{"a": [true, false, null, "x\\u00e9\\n", -1.5e3, 7, {}, []], "b": {"c": {}}}'
    assert loads(document) == {
        "a": [True, False, None, "x\u00e9\n", Number("-1.5e3"), Number("7"), {}, []],
        "b": {"c": {}},
    }
    assert loads(document + b" trailing") == loads(document)


def test_strings_are_repaired_as_go_repairs_them() -> None:
    assert loads(b'["\\ud800", "\\ud83d\\ude00", "\xff"]') == ["\ufffd", "\U0001f600", "\ufffd"]


def test_quote_char_matches_go() -> None:
    assert [quote_char(c) for c in ("'", '"', "\\", "\x01", "\x7f", "\x85", "a")] == [
        "'\\''",
        "'\"'",
        "'\\\\'",
        "'\\x01'",
        "'\\x7f'",
        "'\\u0085'",
        "'a'",
    ]
