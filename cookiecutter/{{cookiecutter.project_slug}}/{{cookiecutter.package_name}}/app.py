"""{{ cookiecutter.service_name }}: {{ cookiecutter.description }}.

Serve it with ``meshkit run {{ cookiecutter.package_name }}.app:app``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshkit import {% if cookiecutter.upstream_service %}MeshCallError, {% endif %}MeshSettings, ServiceApp, peer_identity
from meshkit.policy import allow

SERVICE = "{{ cookiecutter.service_name }}"
NAMESPACE = "{{ cookiecutter.namespace }}"
{%- if cookiecutter.upstream_service %}
UPSTREAM = "{{ cookiecutter.upstream_service }}"
{%- endif %}


@allow("{{ cookiecutter.allowed_caller }}")
async def hello(request: Request) -> JSONResponse:
    # The caller was verified by mutual TLS and the policy before we got here.
    caller = peer_identity(request)
    return JSONResponse({"service": SERVICE, "caller": caller.service if caller else None})
{%- if cookiecutter.upstream_service %}


@allow("{{ cookiecutter.allowed_caller }}")
async def upstream(request: Request) -> JSONResponse:
    # A call by service name: the mesh client finds a healthy instance, checks its
    # identity over mTLS, applies timeouts and retries, and records metrics.
    try:
        response = await request.app.client(UPSTREAM).get("/hello")
    except MeshCallError as exc:
        # The client already retried what was safe to retry: the dependency is down.
        return JSONResponse({"error": str(exc)}, status_code=503)
    return JSONResponse({"upstream": response.json()}, status_code=response.status_code)
{%- endif %}


app = ServiceApp(
    # Code defaults; MESHKIT_* variables and `meshkit run` flags override them.
    settings=MeshSettings.from_env(base=MeshSettings(service=SERVICE, namespace=NAMESPACE)),
{%- if cookiecutter.upstream_service %}
    routes=[Route("/hello", hello), Route("/upstream", upstream)],
{%- else %}
    routes=[Route("/hello", hello)],
{%- endif %}
)
