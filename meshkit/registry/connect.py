"""Workload identity from Consul Connect's CA, as a Connect-native application gets it.

The local agent hands out the service's leaf certificate and key
(``/v1/agent/connect/ca/leaf/<service>``) and the trusted roots
(``/v1/agent/connect/ca/roots``). Both are watched with blocking queries, each in its
own loop: the agent answers a leaf query when it renews the leaf (before expiry) or the
active root changes, and a roots query when a root is added or retired. Each answer
becomes new ``TLSMaterial`` installed into ``TLSContexts``, which serves it to new
handshakes only, so open connections keep working across every change.

py-consul's wrappers for both endpoints (``agent.connect.ca.roots``/``leaf``) take no
``index`` or ``wait`` and drop ``X-Consul-Index``, so every read goes through py-consul's
own HTTP client (``client.http.get``): candidates to contribute upstream.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from consul.callback import CB

from meshkit.errors import CertificateError, MeshError, RegistryError
from meshkit.registry.consul import ConsulRegistry
from meshkit.settings import MeshSettings
from meshkit.tls import TLSContexts, TLSMaterial

logger = logging.getLogger("meshkit.identity")

LEAF_PATH = "/v1/agent/connect/ca/leaf/"
ROOTS_PATH = "/v1/agent/connect/ca/roots"
#: How long one blocking query is held; the agent answers sooner on any change.
WATCH_WAIT = "5m"
#: After a failed watch (agent restarting, network), wait this long before the next try,
#: doubling up to the maximum; the current material keeps serving meanwhile.
RETRY_MIN, RETRY_MAX = 0.2, 10.0
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Roots:
    """The trusted roots (structs.IndexedCARoots) as the mesh uses them."""

    trust_domain: str
    bundle_pem: str
    active_id: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Roots:
        roots = body.get("Roots") or []
        pems = [str(root.get("RootCert", "")) for root in roots if root.get("RootCert")]
        if not pems or not body.get("TrustDomain"):
            raise CertificateError("the Consul agent reports no Connect CA roots")
        bundle = "".join(pem if pem.endswith("\n") else pem + "\n" for pem in pems)
        return cls(str(body["TrustDomain"]), bundle, str(body.get("ActiveRootID", "")))


@dataclass(frozen=True)
class Leaf:
    """A service's leaf (structs.IssuedCert): the chain (leaf first) and its key."""

    cert_pem: str
    key_pem: str
    service_uri: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any] | None) -> Leaf:
        if not body or not body.get("CertPEM") or not body.get("PrivateKeyPEM"):
            raise CertificateError("the Consul agent returned no leaf certificate")
        return cls(str(body["CertPEM"]), str(body["PrivateKeyPEM"]), str(body.get("ServiceURI")))


def connect_enabled(agent_self: Mapping[str, Any] | None) -> bool:
    """Whether an agent's ``/v1/agent/self`` says Connect is enabled."""
    debug = (agent_self or {}).get("DebugConfig") or {}
    return bool(debug.get("ConnectEnabled"))


def identity_source(settings: MeshSettings) -> str | None:
    """Where the workload identity comes from (``settings.identity`` resolved), or None.

    ``auto``: certificate files, else the meshkit CA, else Consul Connect when the agent
    at CONSUL_HTTP_ADDR reports Connect enabled (one short, synchronous question: an
    agent that cannot answer means no Consul identity).
    """
    if settings.identity != "auto":
        return settings.identity
    if settings.cert_file:
        return "files"
    if settings.ca_url:
        return "ca"
    if settings.consul_http_addr and _agent_has_connect(settings):
        return "consul"
    return None


def _agent_has_connect(settings: MeshSettings) -> bool:
    registry = ConsulRegistry(
        address=settings.consul_http_addr or "", token=settings.consul_token, timeout=2.0
    )
    try:
        return connect_enabled(registry.new_client().agent.self())
    except Exception:
        return False


class ConsulIdentity:
    """The service's identity from the Consul agent, kept current by two watches."""

    def __init__(self, registry: ConsulRegistry, settings: MeshSettings) -> None:
        self.registry = registry
        self.service = settings.service
        self.namespace = settings.namespace
        self.roots: Roots | None = None
        self.leaf: Leaf | None = None
        self._indexes = {"roots": 0, "leaf": 0}

    @classmethod
    def from_settings(cls, settings: MeshSettings) -> ConsulIdentity:
        return cls(ConsulRegistry.from_settings(settings), settings)

    @property
    def trust_domain(self) -> str:
        if self.roots is None:
            raise CertificateError("no Connect CA roots yet (call obtain first)")
        return self.roots.trust_domain

    async def obtain(self) -> TLSMaterial:
        """Roots and leaf now (no blocking), checked; raises ``CertificateError``."""
        self._roots_answer(*await self.registry.call(self._read_roots))
        self._leaf_answer(*await self.registry.call(self._read_leaf))
        return self.material()

    def material(self) -> TLSMaterial:
        assert self.roots is not None and self.leaf is not None
        material = TLSMaterial(self.leaf.cert_pem, self.leaf.key_pem, self.roots.bundle_pem)
        material.validate()
        return material

    async def watch_forever(self, contexts: TLSContexts) -> None:
        """Both watches until cancelled; each change is installed in ``contexts``."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, "roots", self._read_roots, self._roots_answer, contexts)
            tg.start_soon(self._watch, "leaf", self._read_leaf, self._leaf_answer, contexts)

    async def _watch(self, what: str, read: Any, answer: Any, contexts: TLSContexts) -> None:
        delay = RETRY_MIN
        while True:
            index = self._indexes[what]
            try:
                result = await self.registry.call(
                    functools.partial(read, index=index), long_poll=True
                )
                changed = answer(*result)
                if changed:
                    contexts.update(self.material())
                    logger.info("Consul Connect %s changed: in use for new connections", what)
                delay = RETRY_MIN
            except MeshError as exc:
                logger.warning("watching the Consul Connect %s failed: %s", what, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    # -- the two reads, on a py-consul client (in a thread) ----------------------------------

    def _read_roots(self, client: Any, index: int = 0) -> tuple[int, Any]:
        return _get(client, ROOTS_PATH, index)

    def _read_leaf(self, client: Any, index: int = 0) -> tuple[int, Any]:
        params = [] if self.namespace == DEFAULT_NAMESPACE else [("ns", self.namespace)]
        return _get(client, LEAF_PATH + self.service, index, params)

    # -- answers: True when they change what we serve -----------------------------------------

    def _roots_answer(self, index: int, body: Any) -> bool:
        roots = Roots.from_json(body or {})
        self._indexes["roots"] = index or self._indexes["roots"]
        if roots == self.roots:
            return False
        self.roots = roots
        return True

    def _leaf_answer(self, index: int, body: Any) -> bool:
        leaf = Leaf.from_json(body)
        self._indexes["leaf"] = index or self._indexes["leaf"]
        if leaf == self.leaf:
            return False
        self.leaf = leaf
        return True


def _get(
    client: Any, path: str, index: int, params: list[tuple[str, str]] | None = None
) -> tuple[int, Any]:
    """A read, blocking when ``index`` is given, through py-consul's own HTTP client: its
    wrappers for these endpoints take no ``index`` and return none."""
    query = [*(params or []), ("index", str(index)), ("wait", WATCH_WAIT)] if index else params
    raw_index, body = client.http.get(
        CB.json(index=True), path, params=query, headers=client.prepare_headers()
    )
    if body is None:
        raise RegistryError(f"the Consul agent has no {path}")
    return int(raw_index or 0), body
