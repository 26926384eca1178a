"""ServiceApp: a Starlette application that is a member of the mesh.

The mesh (``meshkit.mesh.MeshRuntime``) owns identity, registration and readiness in
the app's lifespan; the middleware around the routes adds telemetry, deadlines,
faults and authorization; ``app.client(name)`` calls other services.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Lifespan

from meshkit.client import ClientPolicy, MeshClient
from meshkit.mesh import MESH_ERROR_HANDLERS, MeshRuntime, with_mesh
from meshkit.middleware.authz import AuthzMiddleware
from meshkit.middleware.deadline import DeadlineMiddleware
from meshkit.middleware.faults import fault_middleware
from meshkit.middleware.telemetry import TelemetryMiddleware
from meshkit.serving.server import serve
from meshkit.settings import MeshSettings


class ServiceApp(Starlette):
    """A Starlette app that registers in the mesh, serves mTLS and calls others by name.

    Settings come from ``settings=`` when given; otherwise from the environment
    (``MeshSettings.from_env``) over ``service=`` as the code's default name.
    """

    def __init__(
        self,
        *,
        service: str | None = None,
        settings: MeshSettings | None = None,
        routes: Sequence[BaseRoute] | None = None,
        middleware: Sequence[Middleware] | None = None,
        lifespan: Lifespan[Any] | None = None,
        exception_handlers: dict[Any, Any] | None = None,
        client_policy: ClientPolicy | None = None,
        client_policies: Mapping[str, ClientPolicy] | None = None,
        metrics_registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        debug: bool = False,
    ) -> None:
        if settings is None:
            base = MeshSettings(service=service) if service else None
            settings = MeshSettings.from_env(base=base)
        self.settings = settings
        self.tracer_provider = tracer_provider
        self.mesh = MeshRuntime(
            settings,
            client_policy=client_policy,
            client_policies=client_policies,
            metrics_registry=metrics_registry,
            tracer_provider=tracer_provider,
        )
        super().__init__(
            debug=debug,
            routes=routes,
            middleware=middleware,
            exception_handlers=exception_handlers,
            lifespan=with_mesh(lifespan),
        )
        # Outermost first: the caller's deadline bounds everything, authorization included.
        # AuthzMiddleware gates this app's own copies of its routes when the stack is built.
        self.user_middleware[:0] = [
            Middleware(DeadlineMiddleware, max_clock_skew=settings.max_clock_skew),
            *fault_middleware(settings.faults),
            Middleware(
                AuthzMiddleware,
                routes=self.router.routes,
                authorizer=self.mesh.authorizer,
                idempotency=self.mesh.idempotency_defaults,
            ),
        ]
        for error, handler in MESH_ERROR_HANDLERS.items():
            self.exception_handlers.setdefault(error, handler)

    def build_middleware_stack(self) -> ASGIApp:
        # Telemetry outermost: it measures what the caller experiences, 500s included.
        return TelemetryMiddleware(
            super().build_middleware_stack(),
            service=self.settings.service,
            metrics=self.mesh.metrics,
            tracer_provider=self.tracer_provider,
            access_log=self.settings.access_log,
            tap=self.mesh.tap,
        )

    def client(self, service: str) -> MeshClient:
        """The mesh client bound to ``service``: ``await app.client("payments").get("/")``."""
        return self.mesh.client(service)

    def run(self, **overrides: Any) -> None:
        """Serve this app (``meshkit run`` does the same); ``overrides`` are MeshSettings."""
        if overrides:
            self.settings = self.settings.replace(**overrides)
            self.mesh.configure(self.settings)
        serve(self)
