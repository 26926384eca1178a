"""JSON bodies read the way Go's ``json.Decoder`` reads them, with Go's error texts.

Consul decodes every request body with Go's decoder, and Python's ``json`` module differs
from it where a hostile body can tell: it recurses (a deeply nested body is a
``RecursionError``, a 500), it accepts ``NaN`` and ``Infinity``, it turns ``1e400`` into
``inf``, and it refuses bytes that follow the first value. So bodies are read here,
iteratively: one value, at most 10,000 levels deep (Go's limit), number literals kept as
their text (``Number``) until a field's Go type decides whether they fit, strings with
invalid UTF-8 or lone surrogates repaired to U+FFFD as Go repairs them.

Well-formed bodies of ordinary depth take the standard library's C parser; only what it
refuses (or cannot reproduce Go on) is read again here, where Go's message is built.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from meshkit.registry.dev.errors import DecodeError

#: encoding/json's maxNestingDepth.
MAX_DEPTH = 10_000
_INT64 = 1 << 63

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"-?[0-9]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A \u escape of a surrogate: the standard parser would keep it unpaired, Go does not.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LITERALS: dict[str, tuple[str, Any]] = {
    "t": ("true", True),
    "f": ("false", False),
    "n": ("null", None),
}
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = {"\a": "a", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t", "\v": "v", "\\": "\\"}


class Number:
    """A JSON number as its literal text: Go decides per target type whether it fits."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Number({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Number) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def as_int(self) -> int | None:
        """strconv.ParseInt(text, 10, 64): None for a fraction, an exponent or overflow."""
        if not _INTEGER.fullmatch(self.text):
            return None
        value = int(self.text)
        return value if -_INT64 <= value < _INT64 else None

    def as_float(self) -> float | None:
        """strconv.ParseFloat(text, 64): None when the literal overflows a float64."""
        value = float(self.text)
        return value if math.isfinite(value) else None


class _NotStandard(Exception):
    """The standard parser met what Go reads differently (NaN, Infinity)."""


def _refuse_constant(name: str) -> NoReturn:
    raise _NotStandard(name)


def loads(body: bytes) -> Any:
    """Decode one JSON value from ``body`` as json.Decoder.Decode does, or raise
    ``DecodeError`` with Go's text ("EOF", "unexpected EOF", "invalid character ...")."""
    if not body.strip(b" \t\r\n"):
        raise DecodeError("EOF")
    if not _SURROGATE_ESCAPE.search(body):
        try:
            return json.loads(
                body.decode("utf-8", "replace"),
                parse_int=Number,
                parse_float=Number,
                parse_constant=_refuse_constant,
            )
        except (ValueError, RecursionError, _NotStandard):
            pass  # read again below, where Go's answer (a value or its error) is built
    return _Reader(body.decode("latin-1")).document()


def quote_char(char: str) -> str:
    """encoding/json's quoteChar: how Go names an unexpected byte in its errors."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    code = ord(char)
    if char in _ESCAPES:
        shown = "\\" + _ESCAPES[char]
    elif code < 0x20 or code == 0x7F:
        shown = f"\\x{code:02x}"
    elif 0x80 <= code <= 0xA0 or code == 0xAD:
        shown = f"\\u{code:04x}"
    else:
        shown = char
    return f"'{shown}'"


class _Frame:
    """One open array or object: its container and, for an object, the pending key."""

    def __init__(self, opener: str) -> None:
        self.is_object = opener == "{"
        self.closer = "}" if self.is_object else "]"
        self.container: dict[str, Any] | list[Any] = {} if self.is_object else []
        self.key = ""

    def add(self, value: Any) -> None:
        if isinstance(self.container, dict):
            self.container[self.key] = value
        else:
            self.container.append(value)


class _Reader:
    """Go's scanner, a token at a time, over the body as latin-1 (one char per byte, so a
    bad byte is named as Go names it). No recursion: depth costs a list entry."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def document(self) -> Any:
        self.skip()
        frames: list[_Frame] = []
        value, opened = self.begin_value(frames)
        while True:
            if opened:
                value, opened = self.begin_value(frames)
                continue
            if not frames:
                self.end_of_top_level(value)
                return value
            value, opened = self.after_value(frames, value)

    def after_value(self, frames: list[_Frame], value: Any) -> tuple[Any, bool]:
        """Attach a finished value to its container; then the next element, or the
        container itself once closed. ``True``: a value is expected next."""
        frame = frames[-1]
        frame.add(value)
        self.skip()
        char = self.peek()
        if char == ",":
            self.pos += 1
            self.skip()
            if frame.is_object:
                frame.key = self.object_key("looking for beginning of object key string")
            return None, True
        if char == frame.closer:
            self.pos += 1
            frames.pop()
            return frame.container, False
        self.fail("after object key:value pair" if frame.is_object else "after array element")

    def begin_value(self, frames: list[_Frame]) -> tuple[Any, bool]:
        """A scalar, an empty container, or an opened one (``True``: read its first value)."""
        char = self.peek()
        if not char or char not in "{[":
            return self.scalar(), False
        if len(frames) >= MAX_DEPTH:
            self.fail("exceeded max depth")
        frame = _Frame(char)
        self.pos += 1
        self.skip()
        if self.peek() == frame.closer:
            self.pos += 1
            return frame.container, False
        if frame.is_object:
            frame.key = self.object_key("looking for beginning of object key string")
        frames.append(frame)
        return None, True

    def end_of_top_level(self, value: Any) -> None:
        """Go reads past a top-level scalar to its delimiter; after a container, nothing."""
        if isinstance(value, dict | list):
            return
        char = self.peek()
        if char and char not in " \t\r\n":
            self.fail("after top-level value")

    def object_key(self, context: str) -> str:
        if self.peek() != '"':
            self.fail(context)
        key = self.string()
        self.skip()
        if self.peek() != ":":
            self.fail("after object key")
        self.pos += 1
        self.skip()
        return key

    def scalar(self) -> Any:
        char = self.peek()
        if char == '"':
            return self.string()
        if char and char in "-0123456789":
            return self.number()
        literal = _LITERALS.get(char)
        if literal is None:
            self.fail("looking for beginning of value")
        return self.literal(*literal)

    def string(self) -> str:
        match = _STRING.match(self.text, self.pos)
        if match is None:
            self.string_error()
        self.pos = match.end()
        raw = match.group().encode("latin-1").decode("utf-8", "replace")
        return _SURROGATE.sub("\ufffd", json.loads(raw))

    def string_error(self) -> NoReturn:
        """Find the byte Go stops at in a string the pattern refused."""
        position = self.pos + 1
        while position < len(self.text):
            char = self.text[position]
            if char == "\\":
                position = self.escape_end(position)
            elif char < " ":
                self.pos = position
                self.fail("in string literal")
            else:
                position += 1
        self.pos = len(self.text)
        self.fail("")

    def escape_end(self, position: int) -> int:
        code = self.text[position + 1 : position + 2]
        if code == "u":
            for digit in range(position + 2, position + 6):
                self.pos = digit
                if self.peek() not in _HEX:
                    self.fail("in \\u hexadecimal character escape")
            return position + 6
        self.pos = position + 1
        if not code or code not in '"\\/bfnrt':
            self.fail("in string escape code")
        return position + 2

    def number(self) -> Number:
        match = _NUMBER.match(self.text, self.pos)
        if match is None:  # a minus sign and no digit
            self.pos += 1
            self.fail("in numeric literal")
        end = match.end()
        following = self.text[end : end + 1]
        if following == ".":
            self.pos = end + 1
            self.fail("after decimal point in numeric literal")
        if following in ("e", "E"):
            self.pos = end + 1
            if self.peek() in ("+", "-"):
                self.pos += 1
            self.fail("in exponent of numeric literal")
        self.pos = end
        return Number(match.group())

    def literal(self, word: str, value: Any) -> Any:
        for offset in range(1, len(word)):
            if self.text[self.pos + offset : self.pos + offset + 1] != word[offset]:
                self.pos += offset
                self.fail(f"in literal {word} (expecting {quote_char(word[offset])})")
        self.pos += len(word)
        return value

    def skip(self) -> None:
        match = _WHITESPACE.match(self.text, self.pos)
        assert match is not None  # the pattern matches the empty string
        self.pos = match.end()

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def fail(self, context: str) -> NoReturn:
        char = self.peek()
        if not char:
            raise DecodeError("unexpected EOF")
        raise DecodeError(f"invalid character {quote_char(char)} {context}")
