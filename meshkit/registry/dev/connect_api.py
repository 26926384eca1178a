"""The dev registry's Connect endpoints: CA roots and leaves, the CA configuration, and
the Connect-capable catalog, as Consul serves them (agent/agent_endpoint.go
AgentConnectCARoots and AgentConnectCALeafCert, agent/connect_ca_endpoint.go,
agent/catalog_endpoint.go and health_endpoint.go for ``/connect/``).

Roots and leaves are blocking queries: a leaf read with ``?index`` returns when the
agent renews the leaf (60-90% of its life) or the active root changes, whichever is
first; roots return when a root is added, rotated out or pruned.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from meshkit.ca.x509 import utcnow
from meshkit.registry.dev.agent import DevAgent
from meshkit.registry.dev.api import LEADER, DevRegistryApp
from meshkit.registry.dev.connect_ca import ROOTS_TOPIC, ConnectCA, Leaf, leaf_topic
from meshkit.registry.dev.http import Request, Response, json_response
from meshkit.registry.dev.query import parse_options
from meshkit.registry.dev.state import Service

#: Consul's defaults for the gRPC (xDS) ports of a dev agent; -1: this registry serves
#: no xDS (Envoy gets a static configuration from meshkit.testing instead).
_NO_PORT = -1
_ENVOY_VERSIONS = ["1.34.1", "1.33.2", "1.32.5", "1.31.8"]
CONNECT_PROXY = "connect-proxy"


class ConnectRegistryApp(DevRegistryApp):
    """The dev registry with Connect enabled, as a Consul dev agent has it."""

    def __init__(self, agent: DevAgent, *, ca: ConnectCA | None = None, **options: Any) -> None:
        super().__init__(agent, **options)  # the base app's own options, passed through
        self.ca = ca or ConnectCA(self.store.datacenter)
        if not self.ca.roots:
            self.ca.bootstrap(self.store.write_index)
            self.store.touch(ROOTS_TOPIC)
            self.store.commit()
        get, put = "GET", "PUT"
        self._exact |= {
            "/v1/agent/connect/ca/roots": {get: self.connect_roots},
            "/v1/connect/ca/roots": {get: self.connect_roots},
            "/v1/connect/ca/configuration": {get: self.ca_config, put: self.ca_config_update},
        }
        self._prefixes[:0] = [
            ("/v1/agent/connect/ca/leaf/", {get: self.connect_leaf}),
            ("/v1/catalog/connect/", {get: self.catalog_connect}),
            ("/v1/health/connect/", {get: self.health_connect}),
        ]

    # -- agent/self ------------------------------------------------------------------------

    async def agent_self(self, request: Request) -> Response:
        """Consul's Self: also DebugConfig (the sanitized runtime config), xDS, and the
        consul stats a client reads the leader and datacenters from."""
        response = await super().agent_self(request)
        body: dict[str, Any] = json.loads(response.body)
        config = body["Config"]
        body["DebugConfig"] = {
            "ConnectEnabled": True,
            "ConnectCAProvider": "consul",
            "Datacenter": config["Datacenter"],
            "PrimaryDatacenter": config["PrimaryDatacenter"],
            "NodeName": config["NodeName"],
            "NodeID": config["NodeID"],
            "ServerMode": True,
            "DevMode": True,
            "ACLsEnabled": False,
            "GRPCPort": _NO_PORT,
            "GRPCTLSPort": _NO_PORT,
            "Version": config["Version"],
        }
        body["xDS"] = {
            "SupportedProxies": {"envoy": _ENVOY_VERSIONS},
            "Port": _NO_PORT,
            "Ports": {"Plaintext": _NO_PORT, "TLS": _NO_PORT},
        }
        body["Stats"]["consul"] |= {
            "leader_addr": LEADER,
            "known_datacenters": "1",
            "acl": "disabled",
        }
        return json_response(body)

    # -- CA ----------------------------------------------------------------------------------

    async def connect_roots(self, request: Request) -> Response:
        """Both roots endpoints; ``/v1/connect/ca/roots?pem=true`` answers the PEM chain."""
        self._blocking_options(request)
        if request.path == "/v1/connect/ca/roots" and request.param("pem") in ("true", "1"):
            pem = self.ca.roots_pem().encode()
            return Response(200, pem, "application/pem-certificate-chain")

        def compute() -> tuple[int, Response]:
            if self.ca.prune(self.store.write_index):
                self._commit(ROOTS_TOPIC)
            return self.ca.roots_index(), json_response(self.ca.roots_json())

        return await self._blocking(request, [ROOTS_TOPIC], compute)

    async def ca_config(self, request: Request) -> Response:
        return json_response(self.ca.config_json())

    async def ca_config_update(self, request: Request) -> Response:
        self.ca.update_config(await self._json(request), self.store.write_index)
        self._commit(ROOTS_TOPIC)
        return Response()

    async def connect_leaf(self, request: Request) -> Response:
        """The service's leaf; blocking until the agent would hand out a new one."""
        self._blocking_options(request)
        service = request.rest
        min_index, wait = request.blocking.index, request.blocking.wait
        deadline = time.monotonic() + wait + random.uniform(0, wait / 16)
        leaf = self._leaf(service)
        while min_index and leaf.index <= min_index and not self.store.closing:
            now = time.monotonic()
            if now >= deadline:
                break
            renew_in = max(0.0, (leaf.renew_at - utcnow()).total_seconds())
            # Woken by a root change; else at renewal time (the agent's background refresh).
            until = min(deadline, now + renew_in + 0.001)
            await self.store.wait([leaf_topic(service), ROOTS_TOPIC], until)
            leaf = self._leaf(service)
        return json_response(leaf.to_json(), index=leaf.index)

    def _leaf(self, service: str) -> Leaf:
        leaf = self.ca.current_leaf(service)
        if leaf is None:
            leaf = self.ca.issue_leaf(service, self.store.write_index)
            self._commit(leaf_topic(service))
        return leaf

    def _commit(self, topic: str) -> None:
        self.store.touch(topic)
        self.store.commit()

    def _blocking_options(self, request: Request) -> None:
        request.blocking = parse_options(request.query, request.header(b"cache-control"))
        self._check_datacenter(request.param("dc"))

    # -- Connect-capable instances ---------------------------------------------------------------

    def connect_instances(self, name: str) -> list[Service]:
        """Instances that accept Connect traffic for ``name``: the service itself when it
        is Connect-native, and proxies whose destination it is."""
        found = [s for s in self.store.instances(name) if s.connect_native]
        for services in self.store.services.values():
            found.extend(
                s
                for s in services.values()
                if s.kind == CONNECT_PROXY and s.proxy.get("DestinationServiceName") == name
            )
        return sorted(found, key=lambda s: (s.node, s.id))

    def _connect_index(self, name: str) -> int:
        # A proxy is registered under its own name: any service change may concern us.
        return max(self.store.service_index(name), self.store.topic_index("services"))

    async def catalog_connect(self, request: Request) -> Response:
        name = request.rest

        def compute() -> tuple[int, Response]:
            entries = [
                s.catalog_json(self.store.nodes[s.node]) for s in self.connect_instances(name)
            ]
            return self._connect_index(name), json_response(entries)

        return await self._blocking(request, [f"svc:{name}", "services", "checks"], compute)

    async def health_connect(self, request: Request) -> Response:
        name = request.rest
        passing = request.has("passing") and request.param("passing") in ("", "1", "true")

        def compute() -> tuple[int, Response]:
            entries = self.health_entries_of(self.connect_instances(name), passing)
            index = max(self._connect_index(name), self.store.topic_index("checks"))
            return index, json_response(entries)

        return await self._blocking(request, [f"svc:{name}", "services", "checks"], compute)

    async def health_service(self, request: Request) -> Response:
        """``?peer=<name>``: instances imported from that cluster peer; this single-node
        registry has no peers, so none (Consul answers an unknown peer likewise)."""
        if request.param("peer"):
            return await self._blocking(
                request,
                ["services"],
                lambda: (self.store.topic_index("services"), json_response([])),
            )
        return await super().health_service(request)
