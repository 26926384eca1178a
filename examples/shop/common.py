"""HTTP helpers shared by the shop's services: JSON errors, bodies, upstream answers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from examples.shop._mesh import ServiceResponse
from meshkit import MeshCallError


class HTTPProblem(Exception):
    """Answer the request with ``status`` and a JSON error body."""

    def __init__(self, status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.details = {"error": message, **details}


class UpstreamError(HTTPProblem):
    """Another service answered with a status this one did not expect."""

    def __init__(self, service: str, response: ServiceResponse) -> None:
        super().__init__(
            502, f"{service} answered {response.status_code}", upstream=_body(response)
        )
        self.service = service
        self.upstream_status = response.status_code


def _body(response: ServiceResponse) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def expect(service: str, response: ServiceResponse, *statuses: int) -> Any:
    """The JSON body of ``response`` if its status is one of ``statuses``."""
    if response.status_code not in statuses:
        raise UpstreamError(service, response)
    return response.json()


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise HTTPProblem(400, "body is not JSON") from None
    if not isinstance(body, dict):
        raise HTTPProblem(400, "body must be a JSON object")
    return body


def positive_int(body: Mapping[str, Any], name: str, *, default: int | None = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HTTPProblem(400, f"{name} must be a positive integer")
    return value


def text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise HTTPProblem(400, f"{name} is required")
    return value.strip()


async def problem_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPProblem)
    return JSONResponse(exc.details, status_code=exc.status)


async def mesh_failure_response(request: Request, exc: Exception) -> JSONResponse:
    # The mesh client already retried what was safe; the caller may try again later.
    return JSONResponse({"error": str(exc)}, status_code=503)


JSON_ERROR_HANDLERS: dict[Any, Any] = {
    HTTPProblem: problem_response,
    MeshCallError: mesh_failure_response,
}
