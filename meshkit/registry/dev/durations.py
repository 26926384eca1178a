"""Go's ``time.Duration`` as Consul reads and prints it, in integer nanoseconds.

Consul parses check durations and ``?wait`` with ``time.ParseDuration`` and shows them
with ``Duration.String()``. Both are ported here exactly, overflow rules and error texts
included, on integers: a float could not hold ``2562047h47m16.854775807s`` (the largest
duration) to the nanosecond, and could not refuse ``9223372036854775808ns`` as Go does.
"""

from __future__ import annotations

from meshkit.registry.dev.errors import DecodeError

SECOND = 1_000_000_000
MIN_DURATION = -(1 << 63)
_LIMIT = 1 << 63  # Go accumulates magnitudes in a uint64 and refuses what passes 1<<63
_UNITS = {
    b"ns": 1,
    b"us": 1_000,
    "µs".encode(): 1_000,  # U+00B5 micro sign
    "μs".encode(): 1_000,  # U+03BC Greek mu
    b"ms": 1_000_000,
    b"s": SECOND,
    b"m": 60 * SECOND,
    b"h": 3600 * SECOND,
}


def parse_duration(text: str) -> int:
    """time.ParseDuration: "1m30s", "-1.5h", "300ms", "0" in nanoseconds, or DecodeError
    with Go's text (invalid duration, missing unit, unknown unit)."""
    rest = text.encode()
    negative = rest[:1] == b"-"
    if rest[:1] in (b"-", b"+"):
        rest = rest[1:]
    if rest == b"0":
        return 0
    if not rest:
        raise _invalid(text)
    total = 0
    while rest:
        value, rest = _component(text, rest)
        total += value
        if total > _LIMIT:
            raise _invalid(text)
    if negative:
        return -total
    if total > _LIMIT - 1:
        raise _invalid(text)
    return total


def _component(text: str, rest: bytes) -> tuple[int, bytes]:
    """One ``[0-9]*(.[0-9]*)?unit`` of a duration, in nanoseconds, and what follows it."""
    if not (rest[:1] == b"." or rest[:1].isdigit()):
        raise _invalid(text)
    whole, digits, rest = _leading_int(text, rest)
    fraction, scale, fraction_digits = 0, 1.0, 0
    if rest[:1] == b".":
        fraction, scale, fraction_digits, rest = _leading_fraction(rest[1:])
    if not digits and not fraction_digits:
        raise _invalid(text)  # no digits at all, e.g. ".s"
    length = 0
    while length < len(rest) and rest[length : length + 1] != b"." and not _digit(rest, length):
        length += 1
    if length == 0:
        raise DecodeError(f"time: missing unit in duration {_quote(text)}")
    unit = _UNITS.get(rest[:length])
    if unit is None:
        name = rest[:length].decode(errors="replace")
        raise DecodeError(f"time: unknown unit {_quote(name)} in duration {_quote(text)}")
    if whole > _LIMIT // unit:
        raise _invalid(text)
    value = whole * unit
    if fraction > 0:
        # Go multiplies in float64 here: nanosecond-exact for fractions of an hour.
        value += int(float(fraction) * (float(unit) / scale))
        if value > _LIMIT:
            raise _invalid(text)
    return value, rest[length:]


def _leading_int(text: str, rest: bytes) -> tuple[int, int, bytes]:
    value, index = 0, 0
    while _digit(rest, index):
        if value > _LIMIT // 10:
            raise _invalid(text)
        value = value * 10 + rest[index] - 48
        if value > _LIMIT:
            raise _invalid(text)
        index += 1
    return value, index, rest[index:]


def _leading_fraction(rest: bytes) -> tuple[int, float, int, bytes]:
    """Fraction digits: past int64 precision Go stops accumulating instead of failing."""
    value, scale, index, overflow = 0, 1.0, 0, False
    while _digit(rest, index):
        digit = rest[index] - 48
        index += 1
        if overflow or value > (_LIMIT - 1) // 10 or value * 10 + digit > _LIMIT:
            overflow = True
            continue
        value = value * 10 + digit
        scale *= 10
    return value, scale, index, rest[index:]


def _digit(rest: bytes, index: int) -> bool:
    return index < len(rest) and 48 <= rest[index] <= 57


def _invalid(text: str) -> DecodeError:
    return DecodeError(f"time: invalid duration {_quote(text)}")


def _quote(text: str) -> str:
    """time's quote(): bytes outside printable ASCII as \\x escapes, '"' and '\\' escaped."""
    shown: list[str] = []
    for char in text:
        if char < " " or char >= "\x80":
            shown.extend(f"\\x{byte:02x}" for byte in char.encode(errors="replace"))
        elif char in '"\\':
            shown.append("\\" + char)
        else:
            shown.append(char)
    return '"' + "".join(shown) + '"'


def from_float(nanoseconds: float) -> int:
    """``time.Duration(f)`` for a JSON number: truncated toward zero; out of int64 range
    it is what amd64 (where Consul runs) yields, the minimum duration, so negative."""
    if -_LIMIT <= nanoseconds < _LIMIT:
        return int(nanoseconds)
    return MIN_DURATION


def format_duration(nanoseconds: int) -> str:
    """Duration.String(): "10s", "1m0s", "1h0m0s", "1.5ms", "500µs", "0s"."""
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    magnitude = abs(nanoseconds)
    if magnitude < SECOND:
        for size, unit in ((1_000_000, "ms"), (1_000, "µs"), (1, "ns")):
            if magnitude >= size:
                return sign + _decimal(magnitude, size) + unit
    seconds, rest = divmod(magnitude, SECOND)
    text = _decimal((seconds % 60) * SECOND + rest, SECOND) + "s"
    minutes, hours = (seconds // 60) % 60, seconds // 3600
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if seconds >= 60:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _decimal(value: int, size: int) -> str:
    """``value / size`` with the fraction's trailing zeros (and a bare point) dropped."""
    whole, fraction = divmod(value, size)
    if not fraction:
        return str(whole)
    width = len(str(size)) - 1
    return f"{whole}.{fraction:0{width}d}".rstrip("0")
