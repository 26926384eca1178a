"""Config entry bodies decoded as Consul decodes them: ``mapstructure``, weakly typed.

Consul reads ``PUT /v1/config`` into a ``map[string]interface{}`` and then decodes that
into the kind's struct with ``mapstructure`` (``structs.DecodeConfigEntry``): keys match
a field exactly or case-insensitively, the snake_case aliases Consul declares are
translated first (``path_exact`` is ``PathExact``), values are converted weakly (``"8"``
fits an int, ``1`` fits a bool, a lone value fits a list, a one-element list fits a
value), and every key no field takes is refused, with its full path (``Sources[0].Nme``).

A kind describes its struct as a ``Struct`` of ``(name, spec)`` pairs; decoding gives
plain Python values keyed by the canonical field names, only for keys that were present.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshkit.registry.dev.decode import json_kind
from meshkit.registry.dev.gojson import Number

_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


class Spec:
    """A Go type a value decodes into."""

    go_type = "interface {}"

    def decode(self, value: Any, path: str, errors: list[str], unused: list[str]) -> Any:
        return _plain(value)


class _Refused(ValueError):
    """A value a scalar field cannot take; the message is mapstructure's."""


class _Scalar(Spec):
    """A string, int or bool field: null (or an empty list) is the zero value."""

    zero: Any = None

    def decode(self, value: Any, path: str, errors: list[str], unused: list[str]) -> Any:
        value = _from_slice(value)
        if value is None:
            return self.zero
        try:
            return self.convert(value, path)
        except _Refused as exc:
            errors.append(str(exc))
            return self.zero

    def convert(self, value: Any, path: str) -> Any:
        raise NotImplementedError


class _Str(_Scalar):
    go_type, zero = "string", ""

    def convert(self, value: Any, path: str) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, Number):
            return value.text
        raise _Refused(_unconvertible(path, self.go_type, value))


class _Int(_Scalar):
    go_type, zero = "int", 0

    def convert(self, value: Any, path: str) -> Any:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, Number):
            as_int = value.as_int()
            return as_int if as_int is not None else int(value.as_float() or 0)
        if not isinstance(value, str):
            raise _Refused(_unconvertible(path, self.go_type, value))
        try:
            return int(value, 0) if value else 0
        except ValueError:
            raise _Refused(_unparsable(path, "int", "ParseInt", value)) from None


class _Bool(_Scalar):
    go_type, zero = "bool", False

    def convert(self, value: Any, path: str) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, Number):
            return (value.as_float() or 0) != 0
        if not isinstance(value, str):
            raise _Refused(_unconvertible(path, self.go_type, value))
        parsed = _PARSE_BOOL.get(value)
        if value and parsed is None:
            raise _Refused(_unparsable(path, "bool", "ParseBool", value))
        return bool(parsed)


def _unparsable(path: str, go_type: str, parser: str, value: str) -> str:
    return (
        f"cannot parse '{path}' as {go_type}: strconv.{parser}: parsing \"{value}\": invalid syntax"
    )


_PARSE_BOOL = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}

STRING: Spec = _Str()
INT: Spec = _Int()
BOOL: Spec = _Bool()
ANY: Spec = Spec()


@dataclass(frozen=True)
class ListOf(Spec):
    element: Spec

    def decode(self, value: Any, path: str, errors: list[str], unused: list[str]) -> Any:
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]  # weak: a lone value fits
        return [
            self.element.decode(item, f"{path}[{index}]", errors, unused)
            for index, item in enumerate(items)
        ]


@dataclass(frozen=True)
class MapOf(Spec):
    element: Spec

    def decode(self, value: Any, path: str, errors: list[str], unused: list[str]) -> Any:
        value = _a_map(value, path, errors)
        return {
            key: self.element.decode(item, f"{path}[{key}]", errors, unused)
            for key, item in value.items()
        }


@dataclass(frozen=True)
class Struct(Spec):
    """A struct's fields in Go order; the snake_case of each name is its alias."""

    fields: Sequence[tuple[str, Spec]]
    _by_name: dict[str, tuple[str, Spec]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, tuple[str, Spec]] = {}
        for name, spec in self.fields:
            by_name[name.lower()] = (name, spec)
            by_name.setdefault(_SNAKE.sub("_", name).lower(), (name, spec))
        object.__setattr__(self, "_by_name", by_name)

    def decode(self, value: Any, path: str, errors: list[str], unused: list[str]) -> Any:
        value = _a_map(value, path, errors)
        out: dict[str, Any] = {}
        for key, item in value.items():
            known = self._by_name.get(key.lower())
            where = f"{path}.{key}" if path else key
            if known is None:
                unused.append(where)
                continue
            name, spec = known
            if name in out and key != name:
                continue  # the canonical key wins over its alias
            out[name] = spec.decode(item, f"{path}.{name}" if path else name, errors, unused)
        return out


def _a_map(value: Any, path: str, errors: list[str]) -> dict[str, Any]:
    """The object a map or struct decodes from ({} for null, or when it is not one)."""
    value = _from_slice(value)
    if value is not None and not isinstance(value, dict):
        errors.append(f"'{path}' expected a map, got '{_go_kind(value)}'")
    return value if isinstance(value, dict) else {}


def _from_slice(value: Any) -> Any:
    """Consul's HookWeakDecodeFromSlice: HCL gives a one-element list for a block."""
    if isinstance(value, list) and len(value) <= 1:
        return value[0] if value else None
    return value


def _plain(value: Any) -> Any:
    """An ``interface{}`` value as JSON would show it again (numbers as float64)."""
    if isinstance(value, Number):
        as_int = value.as_int()
        return as_int if as_int is not None else value.as_float()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _go_kind(value: Any) -> str:
    """reflect.Kind of a value decoded into ``interface{}``."""
    kind = json_kind(value)
    return {"number": "float64", "array": "slice", "object": "map"}.get(kind, kind)


def _unconvertible(path: str, go_type: str, value: Any) -> str:
    shown = {"map": "map[string]interface {}", "slice": "[]interface {}"}.get(
        _go_kind(value), _go_kind(value)
    )
    return f"'{path}' expected type '{go_type}', got unconvertible type '{shown}'"


def multierror(errors: Sequence[str]) -> str:
    """hashicorp/go-multierror's text, as Consul's messages carry it."""
    listed = "\n\t".join(f"* {error}" for error in errors)
    noun = "error" if len(errors) == 1 else "errors"
    return f"{len(errors)} {noun} occurred:\n\t{listed}\n\n"


def mapstructure_errors(errors: Sequence[str]) -> str:
    """mapstructure.Error's text: every decoding error of one body."""
    listed = "\n".join(f"* {error}" for error in errors)
    return f"{len(errors)} error(s) decoding:\n\n{listed}"


def decode_struct(
    raw: Mapping[str, Any], spec: Struct
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The struct's fields, the decoding errors and the keys no field took."""
    errors: list[str] = []
    unused: list[str] = []
    out = spec.decode(dict(raw), "", errors, unused)
    return out, errors, unused
