"""Authorization from Consul's intentions (``MESHKIT_INTENTIONS=consul``).

The intentions that apply to this service come from Consul's
``/v1/connect/intentions/match?by=destination&name=<ns>/<service>``: every intention
whose destination is this service or a wildcard over it, already in Consul's evaluation
order, L7 permissions included; the same blocking query tells the ACL default policy
(``X-Consul-Default-Acl-Policy``), which decides when no intention applies. The
generic ``IntentionWatcher`` keeps them current (a change is in force within one
blocking-query round trip).

Per request, as Consul's proxies evaluate it: the first intention whose source covers
the caller's namespace and service decides; an L4 one by its action, an L7 one by its
first permission matching the request's method, path and headers. No intention, or an
L7 intention with no matching permission, means the default. The decorators combine
with this as with meshkit's own intentions (``middleware.authz``: a deny anywhere wins).

py-consul's ``connect.intentions.match`` takes no ``index``/``wait``, so the query goes
through py-consul's own HTTP client (``client.http.get``) with a callback that also
reads the default-policy header.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import consul

from meshkit.errors import RegistryError
from meshkit.identity import SpiffeId
from meshkit.policy.intentions import (
    Intentions,
    IntentionStore,
    IntentionWatcher,
    registry_call,
)
from meshkit.registry.connect_intentions import (
    DEFAULT_NAMESPACE,
    Action,
    Intention,
    first_for_source,
)
from meshkit.settings import MeshSettings

MATCH_PATH = "/v1/connect/intentions/match"
_MAX_CACHED_CALLERS = 4096

Scope = Mapping[str, Any]


@dataclass(frozen=True)
class ConsulRules:
    """What Consul says about this destination: its intentions in evaluation order, and
    whether the ACL default allows when none applies."""

    intentions: tuple[Intention, ...] = ()
    default_allow: bool = True


@dataclass(frozen=True, slots=True)
class Verdict:
    """One request's decision by intentions: ``action`` from an intention, or None when
    the default decides (``default_allow``)."""

    action: Action | None
    default_allow: bool


class ConsulIntentions:
    """The rules in force for this service, replaced whole on each change."""

    def __init__(self, rules: ConsulRules | None = None) -> None:
        self.version = 0
        # Until Consul has answered, nothing is known to be allowed: fail closed.
        self._rules = ConsulRules(default_allow=False)
        self._by_caller: dict[tuple[str, str], Intention | None] = {}
        if rules is not None:
            self.replace(rules)

    def replace(self, rules: ConsulRules) -> None:
        self._rules, self._by_caller = rules, {}
        self.version += 1

    def snapshot(self) -> ConsulRules:
        return self._rules

    def __len__(self) -> int:
        return len(self._rules.intentions)

    def verdict(self, caller: SpiffeId, scope: Scope) -> Verdict:
        """The decision of Consul's intentions on one request from ``caller``."""
        rules, cache = self._rules, self._by_caller  # one version for the whole decision
        if caller.namespace is None or caller.service is None:
            return Verdict(None, rules.default_allow)  # not a service: no intention names it
        key = (caller.namespace, caller.service)
        if key in cache:
            intention = cache[key]
        else:
            intention = first_for_source(rules.intentions, *key)
            if len(cache) >= _MAX_CACHED_CALLERS:
                cache.clear()
            cache[key] = intention
        if intention is None:
            return Verdict(None, rules.default_allow)
        if not intention.permissions:
            return Verdict(intention.action, rules.default_allow)
        return Verdict(_decide_l7(intention, scope), rules.default_allow)


def _decide_l7(intention: Intention, scope: Scope) -> Action | None:
    method = scope.get("method", "GET")  # a websocket handshake is a GET
    # Headers are gathered only for an intention that looks at them.
    wanted = any(permission.http.headers for permission in intention.permissions)
    return intention.decide(method, scope["path"], _headers(scope) if wanted else {})


def _headers(scope: Scope) -> dict[str, str]:
    """Request headers by lower-case name; repeated ones joined with "," (as Envoy)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


class ConsulIntentionStore:
    """Reads the intentions matching one destination from Consul (py-consul)."""

    def __init__(self, client: consul.Consul, *, service: str, namespace: str) -> None:
        self._client = client
        # Consul CE knows only the default namespace; name it only when it is another.
        self._name = service if namespace == DEFAULT_NAMESPACE else f"{namespace}/{service}"

    def fetch(self, index: int = 0, wait: str | None = None) -> tuple[int, ConsulRules]:
        params: list[tuple[str, Any]] = [("by", "destination"), ("name", self._name)]
        if index:
            params += [("index", index), ("wait", wait or "10s")]
        raw_index, body, default = registry_call(
            self._client, self._client.http.get, _answer, MATCH_PATH, params=params
        )
        try:
            intentions = tuple(Intention.from_json(raw) for raw in body.get(self._name) or ())
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"Consul answered intentions meshkit cannot read: {exc}") from exc
        return raw_index, ConsulRules(intentions, default != "deny")


def _answer(response: Any) -> tuple[int, Any, str]:
    """py-consul callback: the index, the JSON body and the ACL default policy."""
    if response.code != 200:
        raise consul.ConsulException(f"{response.code} {response.body}")
    headers = response.headers
    index = int(headers.get("X-Consul-Index") or 0)
    try:
        body = json.loads(response.body)
    except ValueError as exc:
        raise consul.ConsulException(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise consul.ConsulException("intentions match: expected an object")
    return index, body, headers.get("X-Consul-Default-Acl-Policy") or "allow"


def intention_source(settings: MeshSettings, identity: str | None) -> str:
    """``settings.intentions`` resolved: ``auto`` follows the workload identity, so a
    member of Consul's mesh (``identity`` "consul") obeys Consul's intentions."""
    if settings.intentions != "auto":
        return settings.intentions
    return "consul" if identity == "consul" else "meshkit"


def intention_watcher(
    settings: MeshSettings,
    source: str,
    client: consul.Consul,
    intentions: Intentions,
    consul_intentions: ConsulIntentions,
) -> IntentionWatcher[Any]:
    """The watcher of ``source``'s intentions: Consul's, or meshkit's KV rules."""
    if source == "consul":
        store = ConsulIntentionStore(client, service=settings.service, namespace=settings.namespace)
        return IntentionWatcher(store, consul_intentions)
    return IntentionWatcher(IntentionStore(client), intentions)


@dataclass(frozen=True)
class ListedIntention:
    """One of Consul's intentions as ``meshkit intentions list`` shows it."""

    source: str
    destination: str
    action: str  # allow, deny, or "L7" when permissions decide
    permissions: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "source": self.source,
            "destination": self.destination,
            "action": self.action,
        }
        if self.permissions:
            shown["permissions"] = list(self.permissions)
        return shown


class ConsulIntentionAdmin:
    """Consul's intentions read and written by name (``/v1/connect/intentions/exact``),
    for ``meshkit intentions`` when Consul is the source."""

    def __init__(self, client: consul.Consul) -> None:
        self._client = client

    def set(self, source: str, destination: str, action: Action) -> None:
        intentions = self._client.connect.intentions
        registry_call(self._client, intentions.upsert, source, destination, action=action)

    def delete(self, source: str, destination: str) -> None:
        intentions = self._client.connect.intentions
        registry_call(self._client, intentions.delete, source, destination)

    def rules(self) -> list[ListedIntention]:
        listed = registry_call(self._client, self._client.connect.intentions.list) or []
        return [_listed(raw) for raw in listed]


def _listed(raw: Mapping[str, Any]) -> ListedIntention:
    permissions = tuple(raw.get("Permissions") or ())
    return ListedIntention(
        source=_qualified(raw.get("SourceNS"), raw.get("SourceName", "")),
        destination=_qualified(raw.get("DestinationNS"), raw.get("DestinationName", "")),
        action="L7" if permissions else str(raw.get("Action", "")),
        permissions=permissions,
    )


def _qualified(namespace: str | None, name: str) -> str:
    """``name`` in the default namespace, else ``namespace/name`` (Consul's own form)."""
    return name if namespace in (None, "", DEFAULT_NAMESPACE) else f"{namespace}/{name}"
