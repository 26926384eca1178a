"""``Mesh``: meshes any Starlette or FastAPI app, without subclassing it.

    app = FastAPI()
    mesh = Mesh(app, service="orders")

``Mesh`` wires itself into the app when it is made, never on a live request: the app's
lifespan runs inside ``Mesh.running()``, which owns the mesh resources in the order
DESIGN.md gives (workload identity from certificate files or the CA and the TLS
contexts made from it, then registration, then readiness; the reverse on the way out);
one entry at the front of the app's middleware adds telemetry, deadlines, faults and
authorization when the app builds its stack; the mesh errors a handler lets escape get
JSON answers; and ``app.state.mesh`` is the mesh, for handlers, FastAPI dependencies
(``meshkit.fastapi``) and ``meshkit run``.

``MeshRuntime`` is the part the server (``meshkit.serving``) talks to: it asks for the
listening TLS context, reports the bound ports and flips readiness; ``AdminApp``
answers ``/healthz``, ``/readyz`` and ``/metrics`` on the plaintext admin port.
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
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Lifespan, Receive, Scope, Send

from meshkit._statedir import claimed_slot
from meshkit.ca.client import CAIdentity
from meshkit.client import (
    ClientPolicy,
    DeadlineExceeded,
    MeshCallError,
    MeshClient,
    MeshClientFactory,
    OutsideClient,
    UpstreamFailed,
)
from meshkit.errors import CertificateError, ConfigError, MeshError, PolicyDenied
from meshkit.identity import SpiffeId
from meshkit.middleware._starlette import ErrorAnswer, fast_stack, fits
from meshkit.middleware.authz import Authorizer, AuthzMiddleware
from meshkit.middleware.deadline import DeadlineMiddleware
from meshkit.middleware.faults import FaultMiddleware
from meshkit.middleware.idempotency import IdempotencyDefaults
from meshkit.middleware.telemetry import TelemetryMiddleware, namespace_label, source_label
from meshkit.policy.consul_intentions import (
    ConsulIntentions,
    intention_source,
    intention_watcher,
)
from meshkit.policy.idempotency import configured_store
from meshkit.policy.intentions import Intentions
from meshkit.registry import ConsulRegistry, InstanceRegistration, ServiceRegistration, WatchedCache
from meshkit.registry.connect import ConsulIdentity, identity_source
from meshkit.registry.routing_watch import WatchedRouting
from meshkit.serving.connections import TLSMode
from meshkit.serving.server import serve
from meshkit.settings import MeshSettings
from meshkit.telemetry.client import ClientTelemetry
from meshkit.telemetry.metrics import MeshMetrics
from meshkit.telemetry.tap import TapRing, tap_answer
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
        self._outside: OutsideClient | None = None
        self._outside_allowed = False  # while the lifespan runs
        self.authorizer = Authorizer.from_settings(
            settings,
            intentions=self.intentions,
            consul_intentions=self.consul_intentions,
            on_denial=self._count_denial,
        )
        self.tap = TapRing(settings.tap_size)
        self.admin_app = AdminApp(self)
        # Opens nothing yet (stores connect on first use); closed when ``running`` ends.
        self.idempotency_store = configured_store(settings)
        self._identity_source: str | None = None  # decided once (it may ask the agent)

    def _count_denial(self, caller: SpiffeId | None, route: str, reason: str) -> None:
        self.metrics.policy_denied(source_label(caller), route, reason, namespace_label(caller))

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

    @property
    def has_identity_source(self) -> bool:
        """Certificate files, a CA or Consul's Connect CA is configured (or detected)."""
        return self.identity_source() is not None

    @property
    def plaintext_only(self) -> bool:
        """Permissive mode without any identity: local hacking, plaintext and nothing more."""
        return self.settings.tls_mode == "permissive" and not self.has_identity_source

    @property
    def serving_mode(self) -> TLSMode:
        if self.plaintext_only:
            return "plain"
        return "permissive" if self.settings.tls_mode == "permissive" else "tls"

    def check_identity_configured(self) -> None:
        if self.plaintext_only:
            logger.warning(
                "permissive mode without a workload identity (no MESHKIT_CA_URL, no "
                "MESHKIT_CERT_FILE): serving PLAINTEXT only, every caller anonymous, not "
                "joining the registry, no mesh calls; for local development only"
            )
            return
        if not self.has_identity_source:
            raise ConfigError(
                "no workload identity: set MESHKIT_CERT_FILE, MESHKIT_KEY_FILE and "
                "MESHKIT_BUNDLE_FILE, or MESHKIT_CA_URL and MESHKIT_CA_FINGERPRINT, or "
                "MESHKIT_IDENTITY=consul (a Consul agent with Connect enabled); or "
                "MESHKIT_TLS_MODE=permissive to serve plaintext alone, for local hacking"
            )

    def identity_source(self) -> str | None:
        """files, ca, consul or None: ``settings.identity`` resolved, once."""
        if self._identity_source is None:
            self._identity_source = identity_source(self.settings) or ""
        return self._identity_source or None

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

    @property
    def outside(self) -> OutsideClient:
        """The client for URLs outside the mesh: ``await mesh.outside.get("https://...")``
        (trace context and client metrics, no mesh identity; see ``OutsideClient``)."""
        if not self._outside_allowed:
            raise ConfigError("the outside client exists while the app's lifespan runs")
        if self._outside is None:
            # Made on first use: its TLS context loads the system's roots (about 1 MiB
            # resident, bench/memory.py), which a service that calls no outside URL
            # should not carry.
            self._outside = OutsideClient(hooks=self.client_hooks())
        return self._outside

    async def _close_outside(self) -> None:
        self._outside_allowed = False
        if self._outside is not None:
            outside, self._outside = self._outside, None
            await outside.aclose()

    def client_hooks(self) -> ClientTelemetry:
        """What records this service's client calls: metrics and CLIENT spans."""
        return ClientTelemetry(self.metrics, tracer_provider=self.tracer_provider)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Own the mesh resources for the life of the app."""
        started = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                tg = await stack.enter_async_context(anyio.create_task_group())
                stack.push_async_callback(self._close_outside)
                self._outside_allowed = True
                await self._start_identity(tg, stack)
                if self.settings.consul_http_addr and not self.plaintext_only:
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
        connect = self.identity_source() == "consul"
        registry = ConsulRegistry.from_settings(self.settings, connect=connect)
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
                hooks=self.client_hooks(),
                routing=routing,
            )
            self.registration = ServiceRegistration(registry, self.instance())
            tg.start_soon(self.registration.run)
        client = registry.new_client()
        source = intention_source(self.settings, self.identity_source())
        consul = self.consul_intentions if source == "consul" else None
        self.authorizer.consul_intentions = consul
        watcher = intention_watcher(
            self.settings, source, client, self.intentions, self.consul_intentions
        )
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
            spiffe_id=str(self.tls.material.spiffe_id if self.tls else settings.spiffe_id),
            version=settings.version,
            tags=(f"version={settings.version}",),
            meta={"namespace": settings.namespace},
            connect_native=self.identity_source() == "consul",
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
        """Certificate files when given ("bring your own PKI"), else the meshkit CA, else
        Consul Connect's CA through the agent."""
        settings = self.settings
        require_client_cert = settings.tls_mode == "strict"
        source = await anyio.to_thread.run_sync(self.identity_source)
        if source == "consul":
            consul = ConsulIdentity.from_settings(settings)
            self.tls = TLSContexts(await consul.obtain(), require_client_cert=require_client_cert)
            self._adopt_trust_domain(consul.trust_domain)
            tg.start_soon(consul.watch_forever, self.tls)
        elif settings.cert_file and settings.key_file and settings.bundle_file:
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

    def _adopt_trust_domain(self, trust_domain: str) -> None:
        """Consul's CA decides the trust domain (``<cluster-id>.consul``): peers are expected
        and callers judged in it."""
        if trust_domain != self.settings.trust_domain:
            logger.info("trust domain %s (from the Consul Connect CA)", trust_domain)
            self.settings = self.settings.replace(trust_domain=trust_domain)
            self.authorizer.trust_domain = trust_domain


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
    """The plaintext admin port: ``/healthz``, ``/readyz``, ``/metrics`` and ``/tap``."""

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
        elif scope["path"] == "/tap":
            status, payload = tap_answer(self.runtime.tap, scope, self.runtime.settings.tap_remote)
            await _send(send, status, payload)
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
    assert isinstance(exc, MeshCallError)
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
    MeshCallError: _mesh_error,
    PolicyDenied: _policy_denied,
}


class Mesh(MeshRuntime):
    """Meshes a Starlette or FastAPI app: ``mesh = Mesh(app, service="orders")``.

    Settings come from ``settings=`` when given; otherwise from the environment
    (``MeshSettings.from_env``) over ``service=`` as the code's default name. Mesh the
    app before it serves and after its middleware is added (middleware added later
    runs outside the mesh's, so telemetry would not time it). Routes may be added until
    the app starts: authorization wires its gates when the app builds its stack.
    """

    def __init__(
        self,
        app: Starlette,
        *,
        service: str | None = None,
        settings: MeshSettings | None = None,
        client_policy: ClientPolicy | None = None,
        client_policies: Mapping[str, ClientPolicy] | None = None,
        metrics_registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if app.middleware_stack is not None:
            raise ConfigError("Mesh(app) must come before the app serves its first request")
        super().__init__(
            resolve_settings(service, settings),
            client_policy=client_policy,
            client_policies=client_policies,
            metrics_registry=metrics_registry,
            tracer_provider=tracer_provider,
        )
        self.app = app
        app.state.mesh = self
        app.router.lifespan_context = self.lifespan(app.router.lifespan_context)
        # Outermost of the app's own middleware, built when the app builds its stack.
        self._entry = Middleware(self.wrap)
        app.user_middleware.insert(0, self._entry)
        if fits(app):  # Starlette's error layers folded into the mesh's (middleware/_starlette.py)
            app.build_middleware_stack = self._build_stack  # type: ignore[method-assign]
        for error, handler in MESH_ERROR_HANDLERS.items():
            app.exception_handlers.setdefault(error, handler)

    def lifespan(self, inner: Lifespan[Any]) -> Callable[[Any], Any]:
        """``inner`` (the app's own lifespan) inside the mesh's: the mesh is up before the
        app's startup code runs and still up while its shutdown code runs."""

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            async with self.running(), inner(app) as state:
                yield state

        return lifespan

    def _build_stack(self) -> ASGIApp:
        return fast_stack(self.app, self._entry, self.wrap)

    def wrap(self, app: ASGIApp, on_error: ErrorAnswer | None = None) -> ASGIApp:
        """The mesh middleware around ``app``, from the settings in force when the app
        builds its stack (``run(port=...)`` may change them before); ``on_error``
        answers what the app raises when no ServerErrorMiddleware is outside."""
        settings = self.settings
        inner: ASGIApp = AuthzMiddleware(
            app,
            routes=self.app.router.routes,
            authorizer=self.authorizer,
            idempotency=self.idempotency_defaults,
        )
        if settings.faults is not None:
            inner = FaultMiddleware(inner, faults=settings.faults)
        # The caller's deadline bounds everything, authorization included; telemetry
        # outermost measures what the caller experiences, 500s included.
        inner = DeadlineMiddleware(inner, max_clock_skew=settings.max_clock_skew)
        return TelemetryMiddleware(
            inner,
            service=settings.service,
            metrics=self.metrics,
            tracer_provider=self.tracer_provider,
            access_log=settings.access_log,
            tap=self.tap,
            on_error=on_error,
        )

    def run(self, **overrides: Any) -> None:
        """Serve the app (``meshkit run`` does the same); ``overrides`` are MeshSettings."""
        if overrides:
            self.configure(self.settings.replace(**overrides))
        serve(self.app, self)


def resolve_settings(service: str | None, settings: MeshSettings | None) -> MeshSettings:
    """``settings`` as given, else the environment's over ``service`` as the default name."""
    if settings is not None:
        return settings
    base = MeshSettings(service=service) if service else None
    return MeshSettings.from_env(base=base)


def mesh_of(app: Any) -> Mesh:
    """The ``Mesh`` of a meshed Starlette or FastAPI app (``app.state.mesh``)."""
    state = getattr(app, "state", None)
    mesh = getattr(state, "mesh", None)
    if not isinstance(mesh, Mesh):
        raise ConfigError(f"{type(app).__name__} is not meshed: no Mesh(app, ...) was made for it")
    return mesh
