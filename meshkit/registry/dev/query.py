"""A request's query string and options as Consul reads them (Go's net/url, strconv and
Consul's agent/http.go ``parse``), with Consul's refusals.

Go's ``url.ParseQuery`` refuses a whole query over one bad escape or a ``;`` (Consul then
answers an empty 500; here it is a 400 with Go's text). ``?index`` is a ``ParseUint``:
ASCII digits only, so ``?index=%C2%B2`` (a superscript two, which ``str.isdigit``
accepts) is "Invalid index". ``?wait`` is a Go duration, clamped to ten minutes when a
query blocks; zero or negative means the default five.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshkit.registry.dev.durations import SECOND, parse_duration
from meshkit.registry.dev.errors import AgentError, DecodeError, bad_request

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
_HEX = frozenset(b"0123456789abcdefABCDEF")
_UNSIGNED = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")
_GO_ESCAPES = {"\a": "a", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t", "\v": "v"}

Query = dict[str, list[str]]


def parse_query(raw: bytes) -> Query:
    """url.ParseQuery: "&"-separated ``key=value`` pairs, %XX escapes and "+" for space.
    Any bad pair refuses the query, with the error Go reports (its last ";" error, else
    its first escape error)."""
    query: Query = {}
    error: str | None = None
    for pair in raw.split(b"&"):
        if b";" in pair:
            error = "invalid semicolon separator in query"
            continue
        if not pair:
            continue
        key, _, value = pair.partition(b"=")
        try:
            query.setdefault(_unescape(key), []).append(_unescape(value))
        except DecodeError as exc:
            error = error or str(exc)
    if error is not None:
        raise bad_request(error)
    return query


def _unescape(raw: bytes) -> str:
    """url.QueryUnescape; the bytes as UTF-8, invalid sequences as U+FFFD (as Go's JSON
    encoder would show them)."""
    out = bytearray()
    index = 0
    while index < len(raw):
        byte = raw[index]
        if byte == 0x25:  # %
            digits = raw[index + 1 : index + 3]
            if len(digits) < 2 or not set(digits) <= _HEX:
                bad = raw[index : index + 3].decode("latin-1")
                raise DecodeError(f"invalid URL escape {go_quote(bad)}")
            out.append(int(digits, 16))
            index += 3
            continue
        out.append(0x20 if byte == 0x2B else byte)  # + is a space in a query
        index += 1
    return out.decode("utf-8", "replace")


def go_quote(text: str) -> str:
    """strconv.Quote, as Go's error texts show a value."""
    shown = []
    for char in text:
        if char in '"\\':
            shown.append("\\" + char)
        elif char in _GO_ESCAPES:
            shown.append("\\" + _GO_ESCAPES[char])
        elif char.isprintable():
            shown.append(char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            shown.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            shown.append(f"\\u{ord(char):04x}")
        else:
            shown.append(f"\\U{ord(char):08x}")
    return '"' + "".join(shown) + '"'


def parse_uint(text: str) -> int:
    """strconv.ParseUint(text, 10, 64), failing with Go's error text."""
    if not _UNSIGNED.fullmatch(text):
        raise DecodeError(f"strconv.ParseUint: parsing {go_quote(text)}: invalid syntax")
    value = int(text)
    if value >= 1 << 64:
        raise DecodeError(f"strconv.ParseUint: parsing {go_quote(text)}: value out of range")
    return value


def first(query: Mapping[str, Sequence[str]], name: str) -> str:
    """url.Values.Get: the first value, "" when absent."""
    values = query.get(name)
    return values[0] if values else ""


@dataclass(frozen=True)
class Blocking:
    """A read's blocking query: wait while the index is at most ``index`` (0: answer now),
    for at most ``wait`` seconds (plus Consul's jitter)."""

    index: int = 0
    wait: float = DEFAULT_WAIT


def parse_wait(query: Mapping[str, Sequence[str]]) -> Blocking:
    """Consul's parseWait: ``?wait`` then ``?index``; empty values are ignored."""
    wait = DEFAULT_WAIT
    if raw_wait := first(query, "wait"):
        try:
            nanoseconds = parse_duration(raw_wait)
        except DecodeError:
            raise bad_request("Invalid wait time") from None
        wait = min(nanoseconds / SECOND, MAX_WAIT) if nanoseconds > 0 else DEFAULT_WAIT
    index = 0
    if raw_index := first(query, "index"):
        try:
            index = parse_uint(raw_index)
        except DecodeError:
            raise bad_request("Invalid index") from None
    return Blocking(index, wait)


def parse_options(query: Mapping[str, Sequence[str]], cache_control: str) -> Blocking:
    """Consul's ``parse`` for catalog, health, KV and status reads: consistency modes that
    contradict each other, Cache-Control, then the blocking parameters."""
    stale = "stale" in query
    if raw := first(query, "max_stale"):
        try:
            stale = parse_duration(raw) > 0 or stale
        except DecodeError:
            raise bad_request(f"Invalid max_stale value {go_quote(raw)}") from None
    if stale and "consistent" in query:
        raise bad_request("Cannot specify ?stale with ?consistent, conflicting semantics.")
    if "cached" in query and "consistent" in query:
        raise bad_request("Cannot specify ?cached with ?consistent, conflicting semantics.")
    _check_cache_control(cache_control)
    return parse_wait(query)


def _check_cache_control(raw: str) -> None:
    """Consul reads max-age and stale-if-error as whole seconds (strconv.Atoi)."""
    for directive in raw.lower().split(","):
        directive = directive.strip()
        for prefix in ("max-age=", "stale-if-error="):
            if directive.startswith(prefix) and not _atoi(directive[len(prefix) :]):
                raise AgentError(400, "Invalid Cache-Control header.")


def _atoi(text: str) -> bool:
    return bool(_SIGNED.fullmatch(text)) and -(1 << 63) <= int(text) < 1 << 63
