"""ServiceApp: a Starlette application meshed from the start (Starlette + ``Mesh``).

A convenience over ``Mesh(app, ...)`` (``meshkit.mesh``): the mesh owns identity,
registration and readiness in the app's lifespan and the middleware around the routes
(telemetry, deadlines, faults, authorization); ``app.client(name)`` calls other
services and ``app.outside`` calls URLs outside the mesh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import Lifespan

from meshkit.client import ClientPolicy, MeshClient, OutsideClient
from meshkit.mesh import Mesh
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
        super().__init__(
            debug=debug,
            routes=routes,
            middleware=middleware,
            exception_handlers=exception_handlers,
            lifespan=lifespan,
        )
        self.mesh = Mesh(
            self,
            service=service,
            settings=settings,
            client_policy=client_policy,
            client_policies=client_policies,
            metrics_registry=metrics_registry,
            tracer_provider=tracer_provider,
        )

    @property
    def settings(self) -> MeshSettings:
        return self.mesh.settings

    @property
    def tracer_provider(self) -> TracerProvider | None:
        return self.mesh.tracer_provider

    def client(self, service: str) -> MeshClient:
        """The mesh client bound to ``service``: ``await app.client("payments").get("/")``."""
        return self.mesh.client(service)

    @property
    def outside(self) -> OutsideClient:
        """The client for URLs outside the mesh (``mesh.outside``)."""
        return self.mesh.outside

    def run(self, **overrides: Any) -> None:
        """Serve this app (``meshkit run`` does the same); ``overrides`` are MeshSettings."""
        self.mesh.run(**overrides)
