"""The mesh side of one service instance (``MeshRuntime``), for any Starlette app.

``MeshRuntime.running()`` is a lifespan that owns the mesh resources, in the order
DESIGN.md gives: workload identity (certificate files or the CA) and the TLS contexts
made from it, then registration, then readiness; and in reverse on the way out. The
server (``meshkit.serving``) asks the runtime for the listening TLS context, reports
the bound ports, and flips readiness; the admin app answers ``/healthz``, ``/readyz``
and ``/metrics`` on the plaintext admin port.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Lifespan, Receive, Scope, Send

from meshkit._statedir import claimed_slot
from meshkit.ca.client import CAIdentity
from meshkit.client import ClientPolicy, MeshClient, MeshClientFactory
from meshkit.errors import (
    CertificateError,
    ConfigError,
    DeadlineExceeded,
    MeshError,
    PolicyDenied,
    RequestError,
    UpstreamFailed,
)
from meshkit.identity import SpiffeId
from meshkit.middleware.authz import Authorizer
from meshkit.middleware.idempotency import IdempotencyDefaults
from meshkit.middleware.telemetry import source_label
from meshkit.policy.consul_intentions import ConsulIntentions, intention_watcher
from meshkit.policy.idempotency import configured_store
from meshkit.policy.intentions import Intentions
from meshkit.registry import ConsulRegistry, InstanceRegistration, ServiceRegistration, WatchedCache
from meshkit.registry.routing_watch import WatchedRouting
from meshkit.settings import MeshSettings
from meshkit.telemetry.client import ClientTelemetry
from meshkit.telemetry.metrics import MeshMetrics
from meshkit.tls import FileIdentityWatcher, TLSContexts

logger = logging.getLogger("meshkit.app")


class MeshRuntime:
    """The mesh side of one service instance: identity, readiness, admin endpoints."""

    def __init__(
        self,
        settings: MeshSettings,
        *,
        client_policy: ClientPolicy | None = None,
        client_policies: Mapping[str, ClientPolicy] | None = None,
        metrics_registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.tracer_provider = tracer_provider
        self.client_policy = client_policy
        self.client_policies = client_policies
        self.port = settings.port
        self.admin_port = settings.admin_port
        self.tls: TLSContexts | None = None
        self.ready = False
        self.startup_error: MeshError | None = None
        self.metrics = MeshMetrics(metrics_registry)
        self.intentions = Intentions()
        self.consul_intentions = ConsulIntentions()  # in force with MESHKIT_INTENTIONS=consul
        self.instance_id = f"{settings.service}-{uuid.uuid4().hex[:12]}"
        self.registration: ServiceRegistration | None = None
        self.clients: MeshClientFactory | None = None
        self.authorizer = Authorizer.from_settings(
            settings,
            intentions=self.intentions,
            consul_intentions=self.consul_intentions,
            on_denial=self._count_denial,
        )
        self.admin_app = AdminApp(self)
        # Opens nothing yet (stores connect on first use); closed when ``running`` ends.
        self.idempotency_store = configured_store(settings)

    def _count_denial(self, caller: SpiffeId | None, route: str, reason: str) -> None:
        self.metrics.policy_denied(source_label(caller), route, reason)

    def configure(self, settings: MeshSettings) -> None:
        """New settings before serving (``app.run(port=...)``); the middleware that holds
        the authorizer keeps working, since the authorizer is updated in place."""
        self.settings = settings
        self.port, self.admin_port = settings.port, settings.admin_port
        authorizer = self.authorizer
        authorizer.service, authorizer.namespace = settings.service, settings.namespace
        authorizer.trust_domain = settings.trust_domain
        authorizer.default_policy = settings.default_policy
        consul = settings.intentions == "consul"
        authorizer.consul_intentions = self.consul_intentions if consul else None
        self.idempotency_store = configured_store(settings)

    def idempotency_defaults(self) -> IdempotencyDefaults:
        """What ``@idempotent`` routes use unless they say otherwise (asked for when the
        app builds its middleware, after the last ``configure``)."""
        return IdempotencyDefaults(
            service=self.settings.service,
            store=self.idempotency_store,
            in_flight=self.settings.idempotency_in_flight,
        )

    @property
    def spiffe_id(self) -> SpiffeId:
        return self.settings.spiffe_id

    @property
    def listening_context(self) -> ssl.SSLContext:
        if self.tls is None:
            raise ConfigError("the mesh runtime has no TLS identity (lifespan not started)")
        return self.tls.listening_context

    def check_identity_configured(self) -> None:
        settings = self.settings
        if settings.cert_file is None and settings.ca_url is None:
            raise ConfigError(
                "no workload identity: set MESHKIT_CERT_FILE, MESHKIT_KEY_FILE and "
                "MESHKIT_BUNDLE_FILE, or MESHKIT_CA_URL and MESHKIT_CA_FINGERPRINT"
            )

    def connection_refused(self, reason: str) -> None:
        """The server refused a connection before any request (see ``meshkit.serving``)."""
        self.metrics.connection_refused(reason)

    def bound(self, port: int, admin_port: int) -> None:
        """The server reports the ports it actually listens on (they may be ephemeral)."""
        self.port = port
        self.admin_port = admin_port

    def set_ready(self, ready: bool) -> None:
        self.ready = ready

    async def leave(self) -> None:
        """Step out of the mesh before draining: leave the registry, then give watchers
        time to drop this instance."""
        if self.registration is not None:
            await self.registration.deregister()
            await anyio.sleep(self.settings.deregister_delay)

    def client(self, service: str) -> MeshClient:
        if self.clients is None:
            raise ConfigError(
                f"cannot call {service!r}: the mesh client needs a workload identity and a "
                "registry (CONSUL_HTTP_ADDR), and the app's lifespan must be running"
            )
        return self.clients.client(service)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Own the mesh resources for the life of the app."""
        started = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                tg = await stack.enter_async_context(anyio.create_task_group())
                await self._start_identity(tg, stack)
                if self.settings.consul_http_addr:
                    await self._join_registry(stack, tg)
                started = True
                yield
                await self._close()
                tg.cancel_scope.cancel()
        except BaseException as exc:
            # A failure inside the task group arrives wrapped in an exception group: the
            # cause is told as one line (the server prints it), not as a traceback.
            error = first_mesh_error(exc)
            if error is None or started:
                raise
            self.startup_error = error
            logger.error("%s", error)
            raise error from None

    async def _join_registry(self, stack: contextlib.AsyncExitStack, tg: TaskGroup) -> None:
        registry = ConsulRegistry.from_settings(self.settings)
        cache = await stack.enter_async_context(WatchedCache(registry))
        self.metrics.watch_cache(cache)
        if self.tls is not None:
            routing = WatchedRouting(registry)  # Consul's resolver/splitter/router entries
            tg.start_soon(routing.run)
            self.clients = MeshClientFactory(
                cache,
                self.tls,
                self.settings,
                policy=self.client_policy,
                policies=self.client_policies,
                hooks=ClientTelemetry(self.metrics, tracer_provider=self.tracer_provider),
                routing=routing,
            )
            self.registration = ServiceRegistration(registry, self.instance())
            tg.start_soon(self.registration.run)
        client = registry.new_client()
        watcher = intention_watcher(self.settings, client, self.intentions, self.consul_intentions)
        tg.start_soon(watcher.run)

    async def _close(self) -> None:
        if self.registration is not None:
            await self.registration.deregister()
        if self.clients is not None:
            await self.clients.aclose()
        if self.idempotency_store is not None:
            await self.idempotency_store.aclose()

    def instance(self) -> InstanceRegistration:
        """What this instance publishes to the registry."""
        settings = self.settings
        return InstanceRegistration(
            service=settings.service,
            instance_id=self.instance_id,
            address=self.advertise_address,
            port=self.port,
            admin_port=self.admin_port,
            spiffe_id=str(settings.spiffe_id),
            version=settings.version,
            tags=(f"version={settings.version}",),
            meta={"namespace": settings.namespace},
        )

    @property
    def advertise_address(self) -> str:
        settings = self.settings
        if settings.advertise_address:
            return settings.advertise_address
        if settings.host in ("0.0.0.0", "::", ""):
            return socket.gethostbyname(socket.gethostname())
        return settings.host

    async def _start_identity(self, tg: TaskGroup, stack: contextlib.AsyncExitStack) -> None:
        """Certificate files when given ("bring your own PKI"), else the meshkit CA."""
        settings = self.settings
        require_client_cert = settings.tls_mode == "strict"
        if settings.cert_file and settings.key_file and settings.bundle_file:
            watcher = FileIdentityWatcher(
                settings.cert_file,
                settings.key_file,
                settings.bundle_file,
                interval=settings.cert_reload_interval,
            )
            try:
                material = watcher.load()
            except CertificateError as exc:
                raise CertificateError(
                    f"{exc} (MESHKIT_CERT_FILE, MESHKIT_KEY_FILE, MESHKIT_BUNDLE_FILE)"
                ) from exc
            self.tls = TLSContexts(material, require_client_cert=require_client_cert)
            tg.start_soon(_watch_files, watcher, self.tls)
        elif settings.ca_url:
            if settings.data_dir is None:
                slot = stack.enter_context(claimed_slot(settings.state_dir))
                settings = settings.replace(data_dir=slot)
            identity = CAIdentity(settings)
            self.tls = TLSContexts(await identity.obtain(), require_client_cert=require_client_cert)
            tg.start_soon(identity.renew_forever, self.tls)
        if self.tls is not None:
            self.metrics.watch_certificates(self.tls)


async def _watch_files(watcher: FileIdentityWatcher, contexts: TLSContexts) -> None:
    while True:
        await anyio.sleep(watcher.interval)
        watcher.reload_if_changed(contexts)


def first_mesh_error(exc: BaseException) -> MeshError | None:
    """``exc`` if it is a MeshError, else the first one inside an exception group."""
    if isinstance(exc, MeshError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_mesh_error(inner)
            if found is not None:
                return found
    return None


class AdminApp:
    """The plaintext admin port: ``/healthz``, ``/readyz`` and ``/metrics``, nothing else."""

    def __init__(self, runtime: MeshRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, {"error": "method not allowed"})
        elif scope["path"] == "/healthz":
            await _send(send, 200, {"status": "ok"})
        elif scope["path"] == "/readyz":
            ready = self.runtime.ready
            await _send(send, 200 if ready else 503, {"ready": ready})
        elif scope["path"] == "/metrics":
            await self.runtime.metrics.asgi_app(scope, receive, send)
        else:
            await _send(send, 404, {"error": "not found"})


async def _send(send: Send, status: int, payload: dict[str, Any]) -> None:
    await _send_raw(send, status, json.dumps(payload).encode(), b"application/json")


async def _send_raw(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _mesh_error(request: Request, exc: Exception) -> Response:
    """A mesh call failed inside a handler: answer for it instead of a bare 500."""
    assert isinstance(exc, RequestError)
    if isinstance(exc, DeadlineExceeded):
        status = 504
    else:
        status = 502 if isinstance(exc, UpstreamFailed) else 503
    code = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
    body = {"error": code, "destination": exc.destination, "detail": str(exc)}
    return JSONResponse(body, status_code=status)


async def _policy_denied(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "denied", "detail": str(exc)}, status_code=403)


MESH_ERROR_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    RequestError: _mesh_error,
    PolicyDenied: _policy_denied,
}


def with_mesh(user_lifespan: Lifespan[Any] | None) -> Callable[[Any], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with app.mesh.running():
            if user_lifespan is None:
                yield None
            else:
                async with user_lifespan(app) as state:
                    yield state

    return lifespan
