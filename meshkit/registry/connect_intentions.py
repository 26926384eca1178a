"""Consul's intention semantics: precedence, which intention applies, L7 permissions.

One intention says what a source (namespace/name, either may be ``*``) may do on a
destination: an L4 ``Action`` (allow/deny), or L7 ``Permissions`` evaluated per request.
Consul gives each a precedence from how exact its two sides are
(agent/structs/config_entry_intentions.go, computeIntentionPrecedence): 9 for an exact
destination and source, down to 1 for ``*/*`` on both sides; the highest-precedence
intention whose source matches the caller decides, and none matching means the ACL
default policy. Permissions are tried in order, the first whose HTTP match fits the
request gives the action; none fitting means the default. A permission whose regex
does not compile fails closed (``Intention.decide`` says why).

The dev registry computes and serves these (``/v1/connect/intentions/match``, ``check``,
``/v1/agent/connect/authorize``); meshkit evaluates the same objects per request. Both
read them from Consul's JSON (``Intention`` from an intentions list, ``SourceIntention``
inside a ``service-intentions`` entry).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

logger = logging.getLogger("meshkit.registry")

WILDCARD = "*"
DEFAULT_NAMESPACE = "default"
Action = Literal["allow", "deny"]


def count_exact(namespace: str, name: str) -> int:
    """Consul's intentionCountExact: ``*/*`` 0, ``ns/*`` 1, ``ns/name`` 2."""
    if namespace == WILDCARD:
        return 0
    return 1 if name == WILDCARD else 2


def precedence(
    destination_namespace: str, destination: str, source_namespace: str, source: str
) -> int:
    """Consul's computeIntentionPrecedence."""
    highest = {2: 9, 1: 6, 0: 3}[count_exact(destination_namespace, destination)]
    return highest - (2 - count_exact(source_namespace, source))


def name_matches(pattern_namespace: str, pattern: str, namespace: str, name: str) -> bool:
    """Whether ``namespace/name`` falls under an intention side (``*`` matches all)."""
    if pattern_namespace != WILDCARD and pattern_namespace != namespace:
        return False
    return pattern in (WILDCARD, name)


@dataclass(frozen=True)
class HeaderMatch:
    """One ``Header`` match of an HTTP permission (exactly one of its tests is set)."""

    name: str
    present: bool = False
    exact: str = ""
    prefix: str = ""
    suffix: str = ""
    regex: str = ""
    invert: bool = False

    def matches(self, headers: Mapping[str, str]) -> bool:
        value = headers.get(self.name.lower())
        if value is None:
            found = False
        elif self.present:
            found = True
        elif self.exact:
            found = value == self.exact
        elif self.prefix:
            found = value.startswith(self.prefix)
        elif self.suffix:
            found = value.endswith(self.suffix)
        else:
            found = _full_match(self.regex, value)
        return found != self.invert


@dataclass(frozen=True)
class HTTPMatch:
    """The HTTP part of a permission: path (at most one form), methods, headers."""

    path_exact: str = ""
    path_prefix: str = ""
    path_regex: str = ""
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()

    def matches(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        if self.path_exact and path != self.path_exact:
            return False
        if self.path_prefix and not path.startswith(self.path_prefix):
            return False
        if self.path_regex and not _full_match(self.path_regex, path):
            return False
        if self.methods and method.upper() not in self.methods:
            return False
        return all(header.matches(headers) for header in self.headers)

    @cached_property
    def broken_regex(self) -> str | None:
        """The first of its patterns (PathRegex, a Header's Regex) that does not compile;
        computed once per match, since permissions are evaluated on every request."""
        patterns = (self.path_regex, *(header.regex for header in self.headers))
        return next((p for p in patterns if p and _compiled(p) is None), None)


@dataclass(frozen=True)
class Permission:
    action: Action
    http: HTTPMatch


@dataclass(frozen=True)
class Intention:
    """One source's intention on one destination, as Consul evaluates it."""

    source_namespace: str
    source: str
    destination_namespace: str
    destination: str
    action: Action | None  # None when ``permissions`` decide
    permissions: tuple[Permission, ...] = ()
    precedence: int = field(default=0, compare=False)

    def applies_to(self, namespace: str, name: str) -> bool:
        """Whether a caller ``namespace/name`` is this intention's source."""
        return name_matches(self.source_namespace, self.source, namespace, name)

    def decide(self, method: str, path: str, headers: Mapping[str, str]) -> Action | None:
        """The action for one request; None: no permission fits (the default applies).

        A permission with a regex that does not compile fails closed: an allow never
        matches, a deny always does. Consul stores such a permission (its Validate counts
        PathRegex among the path forms and compiles nothing), and Envoy, given the RBAC
        filter Consul generates from it, rejects the config for its invalid RE2: the
        listener does not take the bad rule, so nothing gets in by it. Treating the
        pattern as merely not matching would fail open wherever the match is inverted
        (``Invert`` on a Header) or the permission is a deny.
        """
        if not self.permissions:
            return self.action
        for permission in self.permissions:
            broken = permission.http.broken_regex
            if broken is not None:
                self._warn_broken(permission, broken)
                if permission.action == "deny":
                    return "deny"
            elif permission.http.matches(method, path, headers):
                return permission.action
        return None

    def _warn_broken(self, permission: Permission, pattern: str) -> None:
        source = f"{self.source_namespace}/{self.source}"
        destination = f"{self.destination_namespace}/{self.destination}"
        warn_once(
            (source, destination, pattern),
            "intention %s -> %s: regex %r does not compile; its %s permission %s",
            source,
            destination,
            pattern,
            permission.action,
            "denies every request" if permission.action == "deny" else "matches none",
        )

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Intention:
        """An intention as ``/v1/connect/intentions`` (and ``/match``) shows it."""
        return cls(
            source_namespace=raw.get("SourceNS") or DEFAULT_NAMESPACE,
            source=raw["SourceName"],
            destination_namespace=raw.get("DestinationNS") or DEFAULT_NAMESPACE,
            destination=raw["DestinationName"],
            action=_action(raw.get("Action")),
            permissions=tuple(permission_from_json(p) for p in raw.get("Permissions") or ()),
            precedence=int(raw.get("Precedence") or 0),
        )


def permission_from_json(raw: Mapping[str, Any]) -> Permission:
    http = raw.get("HTTP") or {}
    headers = tuple(
        HeaderMatch(
            name=h["Name"],
            present=bool(h.get("Present")),
            exact=h.get("Exact") or "",
            prefix=h.get("Prefix") or "",
            suffix=h.get("Suffix") or "",
            regex=h.get("Regex") or "",
            invert=bool(h.get("Invert")),
        )
        for h in http.get("Header") or ()
    )
    match = HTTPMatch(
        path_exact=http.get("PathExact") or "",
        path_prefix=http.get("PathPrefix") or "",
        path_regex=http.get("PathRegex") or "",
        methods=tuple(m.upper() for m in http.get("Methods") or ()),
        headers=headers,
    )
    action = _action(raw.get("Action"))
    if action is None:
        raise ValueError(f"permission action must be allow or deny: {raw.get('Action')!r}")
    return Permission(action, match)


def _action(raw: object) -> Action | None:
    if raw == "allow":
        return "allow"
    if raw == "deny":
        return "deny"
    return None


def sort_key(intention: Intention) -> tuple[int, str, str, str, str]:
    """Consul's evaluation order: highest precedence first, ties by the names."""
    return (
        -intention.precedence,
        intention.source_namespace,
        intention.source,
        intention.destination_namespace,
        intention.destination,
    )


def matching(
    intentions: Iterable[Intention], namespace: str, name: str, *, by: str = "destination"
) -> list[Intention]:
    """The intentions whose ``by`` side covers ``namespace/name``, in evaluation order."""
    found = [
        ixn
        for ixn in intentions
        if (
            name_matches(ixn.destination_namespace, ixn.destination, namespace, name)
            if by == "destination"
            else ixn.applies_to(namespace, name)
        )
    ]
    return sorted(found, key=sort_key)


def first_for_source(ordered: Sequence[Intention], namespace: str, name: str) -> Intention | None:
    """The intention that decides for a caller: the first (highest) whose source fits."""
    return next((ixn for ixn in ordered if ixn.applies_to(namespace, name)), None)


_REGEX_CACHE: dict[str, re.Pattern[str] | None] = {}


def _compiled(pattern: str) -> re.Pattern[str] | None:
    """``pattern`` compiled, None when it does not compile (cached either way)."""
    compiled = _REGEX_CACHE.get(pattern, ...)
    if compiled is ...:
        try:
            compiled = re.compile(pattern)
        except re.error:
            compiled = None
        if len(_REGEX_CACHE) < 1024:  # patterns come from the registry: few, but bounded
            _REGEX_CACHE[pattern] = compiled
    return compiled


def _full_match(pattern: str, value: str) -> bool:
    """Envoy's safe_regex (RE2) matches the whole value. An invalid pattern matches none
    here; callers that must fail closed check ``HTTPMatch.broken_regex`` first."""
    compiled = _compiled(pattern)
    return compiled is not None and compiled.fullmatch(value) is not None


_WARNED: set[tuple[object, ...]] = set()


def warn_once(key: tuple[object, ...], message: str, *args: object) -> None:
    """Log a warning once per ``key`` in this process: rules are re-read and re-evaluated
    on every change and request, and a bad one would otherwise flood the log."""
    if key in _WARNED:
        return
    if len(_WARNED) < 256:  # keys come from the registry: few, but bounded
        _WARNED.add(key)
    logger.warning(message, *args)
