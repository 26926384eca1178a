"""The Consul backend of ``Registry``, on py-consul.

Only Consul's documented HTTP API is used (agent registration, TTL check updates, health
blocking queries, catalog listing), so the same code talks to a Consul cluster and to the
embedded dev registry. py-consul is synchronous (requests): registration calls run in
anyio's worker threads; health watches (blocking queries, which may hold a connection for
``wait`` seconds) run in daemon threads, so an abandoned long poll never holds up
cancellation or process exit, nor starves the worker threads heartbeats need.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import consul

from meshkit.errors import ConfigError, RegistryError, RegistryUnavailable
from meshkit.registry._threads import in_daemon_thread
from meshkit.registry.base import (
    CheckState,
    Endpoint,
    InstanceHealth,
    InstanceRegistration,
    ServiceSummary,
)
from meshkit.settings import MeshSettings

T = TypeVar("T")
DEFAULT_ADDRESS = "127.0.0.1:8500"


def parse_address(address: str) -> tuple[str, str, int]:
    """CONSUL_HTTP_ADDR forms ``host:port``, ``host`` or ``http(s)://host:port``."""
    text = address.strip()
    parsed = urlsplit(text if "://" in text else f"http://{text}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(
            f"CONSUL_HTTP_ADDR={address!r}: expected host:port or http(s)://host:port"
        )
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 8500)
    except ValueError:
        raise ConfigError(f"CONSUL_HTTP_ADDR={address!r}: invalid port") from None
    return parsed.scheme, parsed.hostname, port


def check_ids(instance_id: str) -> tuple[str, str]:
    """The IDs of an instance's TTL check and HTTP check."""
    return f"service:{instance_id}:ttl", f"service:{instance_id}:healthz"


def _go_duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


class ConsulRegistry:
    """``Registry`` over Consul's HTTP API.

    ``token`` is sent as X-Consul-Token (CONSUL_HTTP_TOKEN); ``timeout`` bounds every call
    except the wait of a blocking query.
    """

    def __init__(
        self,
        *,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
        connect: bool = False,
    ) -> None:
        self.scheme, self.host, self.port = parse_address(address)
        # Connect mode (Consul Connect identity): a destination's endpoints are its
        # Connect-capable instances, /v1/health/connect: Connect-native instances and the
        # Envoy sidecars of the others, whose plaintext application ports are not dialled.
        self.connect = connect
        self.address = f"{self.scheme}://{self.host}:{self.port}"
        self._token = token
        self._timeout = timeout
        self._verify = verify
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    @classmethod
    def from_settings(cls, settings: MeshSettings, *, connect: bool = False) -> ConsulRegistry:
        return cls(
            address=settings.consul_http_addr or DEFAULT_ADDRESS,
            token=settings.consul_token,
            connect=connect,
        )

    def __repr__(self) -> str:
        return f"ConsulRegistry(address={self.address!r})"

    def new_client(self) -> Any:
        """A py-consul client for this registry; settings, not the environment, decide."""
        client = consul.Consul(
            host=self.host,
            port=self.port,
            scheme=self.scheme,
            verify=self._verify,
            connections_timeout=self._timeout,
        )
        # py-consul lets CONSUL_HTTP_TOKEN override the argument; settings decide here.
        client.token = self._token
        return client

    @contextlib.contextmanager
    def _client(self) -> Iterator[Any]:
        """Lend a py-consul client to one thread at a time (a requests.Session is not
        thread-safe); returned clients keep their connections for the next call."""
        try:
            client = self._idle.get_nowait()
        except queue.Empty:
            client = self.new_client()
        try:
            yield client
        finally:
            self._idle.put(client)

    async def _call(self, operation: Callable[[Any], T], *, abandon: bool = False) -> T:
        """Run one py-consul call in a worker thread; ``abandon``: cancellable mid-call."""
        return await anyio.to_thread.run_sync(
            self._translated, operation, abandon_on_cancel=abandon
        )

    async def call(self, operation: Callable[[Any], T], *, long_poll: bool = False) -> T:
        """``operation(client)`` on a pooled py-consul client, off the event loop, with its
        errors translated: for code beside the registry that keeps state in Consul's KV.

        ``long_poll``: a blocking query, run in a daemon thread of its own (see
        ``healthy_endpoints``); otherwise a worker thread that finishes the call even
        if the caller is cancelled.
        """
        if long_poll:
            return await in_daemon_thread(
                lambda: self._translated(operation), name="meshkit-consul-watch"
            )
        return await self._call(operation)

    def _translated(self, operation: Callable[[Any], T]) -> T:
        try:
            with self._client() as client:
                return operation(client)
        except OSError as exc:  # requests' errors are OSErrors
            raise RegistryUnavailable(
                f"consul at {self.address} (CONSUL_HTTP_ADDR) is unreachable ({type(exc).__name__})"
            ) from exc
        except consul.ACLPermissionDenied as exc:
            raise RegistryError(
                f"consul at {self.address} denied the request (check CONSUL_HTTP_TOKEN): {exc}"
            ) from exc
        except consul.ConsulException as exc:
            raise _from_consul(self.address, exc) from exc

    # -- registration ----------------------------------------------------------------------

    async def register(self, instance: InstanceRegistration) -> None:
        ttl_check, http_check = self.checks_for(instance)
        tags = [*instance.tags]
        if f"version={instance.version}" not in tags:
            tags.append(f"version={instance.version}")
        meta = {
            **instance.meta,
            "spiffe_id": instance.spiffe_id,
            "admin_port": str(instance.admin_port),
            "version": instance.version,
        }

        def register(client: Any) -> bool:
            return bool(
                client.agent.service.register(
                    instance.service,
                    service_id=instance.instance_id,
                    address=instance.address,
                    port=instance.port,
                    tags=tags,
                    meta=meta,
                    check=ttl_check,
                    extra_checks=[http_check],
                    replace_existing_checks=True,
                    # Consul's catalog, UI and sidecars then treat it as a mesh member.
                    connect={"Native": True} if instance.connect_native else None,
                )
            )

        await self._call(register)

    @staticmethod
    def checks_for(instance: InstanceRegistration) -> tuple[dict[str, Any], dict[str, Any]]:
        """The TTL check the instance heartbeats and the HTTP check on its admin /healthz.

        Both start passing: an instance registers only once it serves, and a fresh
        critical HTTP check would hide it for up to one interval.
        """
        ttl_id, http_id = check_ids(instance.instance_id)
        deregister_after = _go_duration(instance.deregister_critical_after)
        ttl_check = {
            "CheckID": ttl_id,
            "Name": "meshkit heartbeat",
            "TTL": _go_duration(instance.ttl),
            "Status": "passing",
            "DeregisterCriticalServiceAfter": deregister_after,
        }
        host = f"[{instance.address}]" if ":" in instance.address else instance.address
        http_check = {
            "CheckID": http_id,
            "Name": "admin /healthz",
            "HTTP": f"http://{host}:{instance.admin_port}/healthz",
            "Interval": _go_duration(instance.check_interval),
            "Timeout": _go_duration(min(instance.check_interval, 5.0)),
            "Status": "passing",
            "DeregisterCriticalServiceAfter": deregister_after,
        }
        return ttl_check, http_check

    async def heartbeat(self, instance_id: str) -> bool:
        ttl_id, _ = check_ids(instance_id)
        return await self._call(lambda client: bool(client.agent.check.ttl_pass(ttl_id)))

    async def deregister(self, instance_id: str) -> None:
        # An unknown ID answers 404, which py-consul reports as False: already gone is fine.
        await self._call(lambda client: client.agent.service.deregister(instance_id), abandon=True)

    # -- discovery -----------------------------------------------------------------------

    async def healthy_endpoints(
        self, service: str, *, index: int = 0, wait: float = 30.0
    ) -> tuple[int, Sequence[Endpoint]]:
        def query(client: Any) -> tuple[int, list[Endpoint]]:
            read = client.health.connect if self.connect else client.health.service
            raw_index, entries = read(
                service, index=index or None, wait=_go_duration(wait), passing=True
            )
            return int(raw_index), [endpoint_from_entry(e) for e in entries or ()]

        # Watches run here; a daemon thread each keeps them off the worker-thread pool
        # that registration and heartbeats share, even when the registry hangs.
        return await self.call(query, long_poll=True)

    async def services(self) -> Sequence[ServiceSummary]:
        def listing(client: Any) -> list[ServiceSummary]:
            _, names = client.catalog.services()
            summaries = []
            for name in sorted(names or {}):
                _, entries = client.health.service(name)
                healthy = sum(1 for e in entries if _entry_status(e) == "passing")
                summaries.append(ServiceSummary(name, healthy, len(entries)))
            return summaries

        return await self._call(listing)

    async def instances(self, service: str) -> Sequence[InstanceHealth]:
        def listing(client: Any) -> list[InstanceHealth]:
            _, entries = client.health.service(service)
            return [instance_from_entry(e) for e in entries or ()]

        return await self._call(listing)


def _from_consul(address: str, exc: Exception) -> RegistryError:
    text = str(exc)
    code = text[:3]
    if code in ("502", "503", "504") or "No cluster leader" in text:
        return RegistryUnavailable(f"consul at {address} cannot serve: {text}")
    return RegistryError(f"consul at {address} refused the request: {text}")


def _service_address(entry: Mapping[str, Any]) -> str:
    service = entry.get("Service") or {}
    node = entry.get("Node") or {}
    return str(service.get("Address") or node.get("Address") or "")


def _version(service: Mapping[str, Any]) -> str | None:
    meta = service.get("Meta") or {}
    if meta.get("version"):
        return str(meta["version"])
    for tag in service.get("Tags") or ():
        if tag.startswith("version="):
            return str(tag.partition("=")[2])
    return None


def endpoint_from_entry(entry: Mapping[str, Any]) -> Endpoint:
    """An Endpoint from one /v1/health/service entry."""
    service = entry.get("Service") or {}
    meta = {str(k): str(v) for k, v in (service.get("Meta") or {}).items()}
    return Endpoint(
        instance_id=str(service.get("ID", "")),
        service=str(service.get("Service", "")),
        address=_service_address(entry),
        port=int(service.get("Port") or 0),
        spiffe_id=meta.get("spiffe_id"),
        version=_version(service),
        meta=meta,
        tags=tuple(str(tag) for tag in service.get("Tags") or ()),
    )


def instance_from_entry(entry: Mapping[str, Any]) -> InstanceHealth:
    service = entry.get("Service") or {}
    checks = tuple(
        CheckState(str(c.get("Name", "")), str(c.get("Status", "")), str(c.get("Output", "")))
        for c in entry.get("Checks") or ()
    )
    return InstanceHealth(
        instance_id=str(service.get("ID", "")),
        service=str(service.get("Service", "")),
        address=_service_address(entry),
        port=int(service.get("Port") or 0),
        version=_version(service),
        checks=checks,
    )


def _entry_status(entry: Mapping[str, Any]) -> str:
    return instance_from_entry(entry).status
