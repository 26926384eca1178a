"""The part of hashicorp/go-bexpr a ``service-resolver`` subset ``Filter`` uses.

Consul selects a subset's instances with a boolean expression over each health entry,
e.g. ``Service.Meta.version == v2`` or ``"canary" in Service.Tags and not
Service.Meta.zone == b``. This parses go-bexpr's grammar (``and``/``or``/``not``,
parentheses, ``==``, ``!=``, ``is [not] empty``, ``[not] in``, ``[not] contains``,
``[not] matches``; values quoted with ``"`` or backquotes, or bare) and evaluates it
against an endpoint's ``Service`` fields: ``ID``, ``Service``, ``Address``, ``Port``,
``Tags`` and ``Meta.<key>``. A selector an endpoint lacks matches nothing, so a typo
selects no instance rather than all of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from meshkit.registry.base import Endpoint

_TOKEN = re.compile(
    r"""\s*(?:(?P<quoted>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<op>==|!=|\(|\))"""
    r"""|(?P<word>[A-Za-z0-9_\-./:\[\]]+))"""
)
_KEYWORDS = frozenset({"and", "or", "not", "in", "contains", "matches", "is", "empty"})

Match = Callable[[Endpoint], bool]


class FilterError(ValueError):
    """Not a valid expression; the text says where, as go-bexpr's parser does."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "value", "op", "word"
    text: str


def _tokens(expression: str) -> list[_Token]:
    tokens, position = [], 0
    stripped = expression.rstrip()
    while position < len(stripped):
        found = _TOKEN.match(stripped, position)
        if found is None or found.end() == position:
            raise FilterError(f"1:{position + 1}: unexpected character in {expression!r}")
        position = found.end()
        if found["quoted"] is not None:
            tokens.append(_Token("value", _unquote(found["quoted"], expression)))
        elif found["raw"] is not None:
            tokens.append(_Token("value", found["raw"][1:-1]))
        elif found["op"] is not None:
            tokens.append(_Token("op", found["op"]))
        else:
            tokens.append(_Token("word", found["word"]))
    return tokens


def _unquote(quoted: str, expression: str) -> str:
    try:
        return str(json.loads(quoted))
    except ValueError:
        raise FilterError(f"invalid quoted value {quoted} in {expression!r}") from None


class _Parser:
    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens = _tokens(expression)
        self.at = 0

    def parse(self) -> Match:
        if not self.tokens:
            raise FilterError("1:1: no match found, expected an expression")
        match = self._or()
        if self.at != len(self.tokens):
            raise FilterError(f"unexpected {self.tokens[self.at].text!r} in {self.expression!r}")
        return match

    def _peek(self, text: str) -> bool:
        return self.at < len(self.tokens) and self.tokens[self.at].text == text

    def _take(self) -> _Token:
        if self.at >= len(self.tokens):
            raise FilterError(f"unexpected end of expression {self.expression!r}")
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _or(self) -> Match:
        left = self._and()
        while self._peek("or"):
            self.at += 1
            left = _either(left, self._and())
        return left

    def _and(self) -> Match:
        left = self._not()
        while self._peek("and"):
            self.at += 1
            left = _both(left, self._not())
        return left

    def _not(self) -> Match:
        if self._peek("not"):
            self.at += 1
            inner = self._not()
            return lambda endpoint: not inner(endpoint)
        if self._peek("("):
            self.at += 1
            inner = self._or()
            if self._take().text != ")":
                raise FilterError(f"missing ')' in {self.expression!r}")
            return inner
        return self._match()

    def _match(self) -> Match:
        first = self._take()
        if first.kind == "value" or (first.kind == "word" and self._value_first()):
            return self._membership(first.text)
        selector = _selector(first)
        operator = self._take().text
        negate = operator == "not"
        if negate:
            operator = self._take().text
        if operator in ("==", "!="):
            value = self._value()
            equal = operator == "=="
            return lambda endpoint: (_scalar(endpoint, selector) == value) == equal
        if operator == "is":
            negate = self._peek("not")
            self.at += negate
            if self._take().text != "empty":
                raise FilterError(f"expected 'empty' in {self.expression!r}")
            return _negated(lambda endpoint: not _values(endpoint, selector), negate)
        if operator == "contains":
            value = self._value()
            return _negated(lambda endpoint: _contains(endpoint, selector, value), negate)
        if operator == "matches":
            pattern = _regex(self._value(), self.expression)
            return _negated(
                lambda endpoint: any(pattern.search(v) for v in _values(endpoint, selector)),
                negate,
            )
        raise FilterError(f"unknown operator {operator!r} in {self.expression!r}")

    def _value_first(self) -> bool:
        """``value [not] in selector``: the word is a value when ``in`` follows it."""
        return self._peek("in") or (
            self._peek("not")
            and self.at + 1 < len(self.tokens)
            and self.tokens[self.at + 1].text == "in"
        )

    def _membership(self, value: str) -> Match:
        negate = self._peek("not")
        self.at += negate
        if self._take().text != "in":
            raise FilterError(f"expected 'in' after {value!r} in {self.expression!r}")
        selector = _selector(self._take())
        return _negated(lambda endpoint: value in _values(endpoint, selector), negate)

    def _value(self) -> str:
        token = self._take()
        if token.kind == "op" or (token.kind == "word" and token.text in _KEYWORDS):
            raise FilterError(f"expected a value, got {token.text!r} in {self.expression!r}")
        return token.text


def _selector(token: _Token) -> tuple[str, ...]:
    if token.kind != "word" or token.text in _KEYWORDS:
        raise FilterError(f"expected a selector, got {token.text!r}")
    return tuple(token.text.split("."))


def _regex(pattern: str, expression: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise FilterError(f"invalid regex {pattern!r} in {expression!r}: {exc}") from None


def _either(left: Match, right: Match) -> Match:
    return lambda endpoint: left(endpoint) or right(endpoint)


def _both(left: Match, right: Match) -> Match:
    return lambda endpoint: left(endpoint) and right(endpoint)


def _negated(match: Match, negate: bool) -> Match:
    return (lambda endpoint: not match(endpoint)) if negate else match


Field = str | Sequence[str] | Mapping[str, str] | None


def _field(endpoint: Endpoint, selector: tuple[str, ...]) -> Field:
    if len(selector) < 2 or selector[0] != "Service":
        return None
    name, rest = selector[1], selector[2:]
    if name == "Meta":
        return endpoint.meta.get(".".join(rest)) if rest else endpoint.meta
    if rest:
        return None
    fields: dict[str, str | Sequence[str]] = {
        "ID": endpoint.instance_id,
        "Service": endpoint.service,
        "Address": endpoint.address,
        "Port": str(endpoint.port),
        "Tags": endpoint.tags,
    }
    return fields.get(name)


def _scalar(endpoint: Endpoint, selector: tuple[str, ...]) -> str | None:
    value = _field(endpoint, selector)
    return value if isinstance(value, str) else None


def _contains(endpoint: Endpoint, selector: tuple[str, ...], value: str) -> bool:
    """A list holds the value; a string holds it as a substring (as go-bexpr)."""
    found = _field(endpoint, selector)
    if isinstance(found, str):
        return value in found
    return found is not None and value in found


def _values(endpoint: Endpoint, selector: tuple[str, ...]) -> Sequence[str]:
    value = _field(endpoint, selector)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    return list(value)


def compile_filter(expression: str) -> Match:
    """The predicate of a subset ``Filter``; raises FilterError when it does not parse."""
    return _Parser(expression).parse()
