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

from types import TracebackType
from typing import Any

from meshkit import deadline as deadlines
from meshkit._httpx import AsyncClient, Request, Response, http2_available
from meshkit.client._hooks import CallRecorder, ClientHooks, recorder_for


class OutsideClient(AsyncClient):
    """``await client.get("https://api.example.com/v1/rates")``; ``options`` are
    ``httpx.AsyncClient``'s (``timeout=``, ``proxy=``, ``follow_redirects=``, ...)."""

    def __init__(self, *, hooks: ClientHooks | None = None, **options: Any) -> None:
        options.setdefault("follow_redirects", False)
        options.setdefault("http2", http2_available())
        super().__init__(**options)
        self._recorder = recorder_for(hooks)

    async def send(self, request: Request, **options: Any) -> Response:
        """httpx's ``send``, reported to the hooks (every request method ends here)."""
        if self._recorder is None:
            return await super().send(request, **options)
        with _Reported(self._recorder, request) as report:
            response = await super().send(request, **options)
            report.status = response.status_code
        return response


class _Reported:
    """One outside call reported as the mesh client reports a call: one call of one
    attempt, the attempt's headers (the trace context) added to the request."""

    def __init__(self, recorder: CallRecorder, request: Request) -> None:
        self._recorder = recorder
        url = request.url
        self._call_state = recorder.call_started(url.host, request.method, url, "")
        headers: list[tuple[str, str]] = []
        self._attempt_state = recorder.attempt_started(self._call_state, 1, None, headers)
        request.headers.update(headers)
        self.status: int | None = None
        self._started = deadlines.now()

    def __enter__(self) -> _Reported:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        took = deadlines.now() - self._started
        self._recorder.attempt_ended(self._attempt_state, self.status, took, error)
        self._recorder.call_ended(self._call_state, self.status, took, 1, error)
