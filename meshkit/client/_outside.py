"""OutsideClient: calls to URLs outside the mesh (a third-party API), seen like mesh calls.

A stock ``httpx.AsyncClient``, with httpx's own transport: proxies from the standard
environment variables, HTTP/2 when the ``h2`` package is installed, TLS verified
against the system's roots, no client certificate (no mesh identity needed).
Redirects are off unless asked for, as in the mesh client: following one is a new
call to a place the code did not name. Each call is reported to the client hooks as
one call of one attempt, with the URL's host as the destination, so telemetry adds
the W3C trace context to the request and records the client metrics and spans.
"""

from __future__ import annotations

from typing import Any

from meshkit import deadline as deadlines
from meshkit._httpx import AsyncClient, Request, Response, http2_available
from meshkit.client._hooks import AttemptEnded, AttemptStarted, CallEnded, CallStarted, ClientHooks


class OutsideClient(AsyncClient):
    """``await client.get("https://api.example.com/v1/rates")``; ``options`` are
    ``httpx.AsyncClient``'s (``timeout=``, ``proxy=``, ``follow_redirects=``, ...)."""

    def __init__(self, *, hooks: ClientHooks | None = None, **options: Any) -> None:
        options.setdefault("follow_redirects", False)
        options.setdefault("http2", http2_available())
        super().__init__(**options)
        self._hooks = hooks

    async def send(self, request: Request, **options: Any) -> Response:
        """httpx's ``send``, reported to the hooks (every request method ends here)."""
        hooks = self._hooks
        if hooks is None:
            return await super().send(request, **options)
        destination, method, path = request.url.host, request.method, request.url.path
        call_state = hooks.on_call_start(CallStarted(destination, method, path))
        headers: list[tuple[str, str]] = []
        attempt = AttemptStarted(destination, method, 1, None, headers)
        attempt_state = hooks.on_attempt_start(attempt)
        for name, value in headers:  # the trace context of the attempt's span
            request.headers[name] = value
        started = deadlines.now()
        status: int | None = None
        error: BaseException | None = None
        try:
            response = await super().send(request, **options)
            status = response.status_code
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            took = deadlines.now() - started
            ended = AttemptEnded(destination, method, 1, None, status, took, error, attempt_state)
            hooks.on_attempt_end(ended)
            hooks.on_call_end(
                CallEnded(destination, method, path, status, took, 1, error, call_state)
            )
