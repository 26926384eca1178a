"""Running the dev registry's health checks: TTL timers, HTTP probes, script checks.

Each runner reports through one callback, ``update(check_id, status, output)``, so the
agent owns every state change. TTL checks are loop timers (thousands cost nothing while
idle); HTTP and script checks are tasks in the runner's task group, staggered over their
first interval as Consul staggers them. HTTP probes are httpx requests (through
meshkit/_httpx.py) set up as Consul sets up its Go ``http.Client`` for them.
"""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from meshkit._httpx import AsyncClient, HTTPError, InvalidURL, Response, Timeout
from meshkit.registry.dev.state import CRITICAL, PASSING, WARNING

OUTPUT_MAX = 4096  # Consul's default OutputMaxSize
MIN_INTERVAL = 1.0  # Consul raises shorter intervals to one second
DEFAULT_HTTP_TIMEOUT = 10.0
DEFAULT_SCRIPT_TIMEOUT = 30.0
USER_AGENT = "Consul Health Check"
ACCEPT = "text/plain, text/*, */*"
MAX_REDIRECTS = 10  # Go's http.Client follows at most ten
_AWAITING_HEADERS = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
UpdateFn = Callable[[str, str, str], None]


def truncate(output: str, limit: int = OUTPUT_MAX) -> str:
    encoded = output.encode()
    if len(encoded) <= limit:
        return output
    head = encoded[:limit].decode(errors="ignore")
    return f"{head} ... (captured {limit} of {len(encoded)} bytes)"


def ttl_expired_output(last_output: str) -> str:
    if not last_output:
        return "TTL expired"
    return f"TTL expired (last output before timeout follows): {last_output}"


@dataclass(frozen=True)
class HTTPProbe:
    url: str
    interval: float
    timeout: float = DEFAULT_HTTP_TIMEOUT
    method: str = "GET"
    header: Mapping[str, Sequence[str]] = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False
    output_max: int = OUTPUT_MAX


@dataclass(frozen=True)
class ScriptProbe:
    args: Sequence[str]
    interval: float
    timeout: float = DEFAULT_SCRIPT_TIMEOUT


class CheckRunner:
    """Owns the timers and probe tasks of every check the agent runs."""

    def __init__(self, update: UpdateFn) -> None:
        self._update = update
        self._ttl: dict[str, tuple[float, asyncio.TimerHandle | None]] = {}
        self._last_output: dict[str, str] = {}
        self._probes: dict[str, anyio.CancelScope] = {}
        self._task_group: TaskGroup | None = None

    def bind(self, task_group: TaskGroup) -> None:
        self._task_group = task_group

    # -- TTL ------------------------------------------------------------------------------

    def start_ttl(self, check_id: str, ttl: float) -> None:
        self.stop(check_id)
        self._ttl[check_id] = (ttl, None)
        self.reset_ttl(check_id, "")

    def has_ttl(self, check_id: str) -> bool:
        return check_id in self._ttl

    def reset_ttl(self, check_id: str, output: str) -> None:
        """A heartbeat: restart the countdown to ``TTL expired``."""
        ttl, handle = self._ttl[check_id]
        if handle is not None:
            handle.cancel()
        self._last_output[check_id] = output
        handle = asyncio.get_running_loop().call_later(ttl, self._expire, check_id)
        self._ttl[check_id] = (ttl, handle)

    def _expire(self, check_id: str) -> None:
        if check_id in self._ttl:
            self._update(check_id, CRITICAL, ttl_expired_output(self._last_output[check_id]))

    # -- probes ---------------------------------------------------------------------------

    def start_probe(self, check_id: str, probe: HTTPProbe | ScriptProbe) -> None:
        self.stop(check_id)
        assert self._task_group is not None, "CheckRunner.bind() was not called"
        scope = anyio.CancelScope()
        self._probes[check_id] = scope
        self._task_group.start_soon(self._probe_loop, check_id, probe, scope)

    async def _probe_loop(
        self, check_id: str, probe: HTTPProbe | ScriptProbe, scope: anyio.CancelScope
    ) -> None:
        interval = max(probe.interval, MIN_INTERVAL)
        with scope:
            await anyio.sleep(random.uniform(0, interval))
            while True:
                if isinstance(probe, HTTPProbe):
                    status, output = await run_http_probe(probe)
                else:
                    status, output = await run_script_probe(probe)
                self._update(check_id, status, output)
                await anyio.sleep(interval)

    def stop(self, check_id: str) -> None:
        ttl = self._ttl.pop(check_id, None)
        if ttl is not None and ttl[1] is not None:
            ttl[1].cancel()
        self._last_output.pop(check_id, None)
        scope = self._probes.pop(check_id, None)
        if scope is not None:
            scope.cancel()

    def stop_all(self) -> None:
        for check_id in list(self._ttl) + list(self._probes):
            self.stop(check_id)


async def run_http_probe(probe: HTTPProbe) -> tuple[str, str]:
    """One HTTP check: 2xx passing, 429 warning, anything else critical (Consul's rules).

    As Consul's client: the check's timeout bounds the whole exchange, body included;
    once the status line has arrived, a failure while reading the body only cuts the
    output short (Consul logs it and still judges the status).
    """
    method = probe.method or "GET"
    answer = _Answer(probe.output_max)
    try:
        with anyio.fail_after(probe.timeout):
            await _exchange(probe, method, answer)
    except TimeoutError:
        if answer.status is None:
            return CRITICAL, _request_error(method, probe.url, _AWAITING_HEADERS)
    except (HTTPError, InvalidURL, ValueError) as exc:  # ValueError: a malformed definition
        if answer.status is None:
            return CRITICAL, _request_error(method, probe.url, str(exc) or type(exc).__name__)
    return _judge(method, probe.url, answer)


class _Answer:
    """The status line once received, and the last ``limit`` bytes of the body.

    Consul copies the body into a circular buffer of OutputMaxSize bytes: the output
    shows its end, and a body of any length costs bounded memory.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status: str | None = None
        self.code = 0
        self.tail = bytearray()

    def start(self, response: Response) -> None:
        self.code = response.status_code
        reason = response.reason_phrase
        self.status = f"{self.code} {reason}" if reason else str(self.code)

    def add(self, chunk: bytes) -> None:
        self.tail += chunk
        if len(self.tail) > self.limit:
            del self.tail[: len(self.tail) - self.limit]


async def _exchange(probe: HTTPProbe, method: str, answer: _Answer) -> None:
    async with (
        _client(probe.tls_skip_verify) as client,
        client.stream(
            method, probe.url, headers=_headers(probe), content=probe.body.encode()
        ) as response,
    ):
        answer.start(response)
        async for chunk in response.aiter_raw():
            answer.add(chunk)


def _client(tls_skip_verify: bool) -> AsyncClient:
    """Consul's check client: no keep-alive, redirects followed, no proxy for local checks.

    The body is asked for and read unencoded, so each chunk is bounded by the network
    read, never by a decompression ratio. The timeout is ``run_http_probe``'s, overall.
    """
    return AsyncClient(
        verify=_tls_context(tls_skip_verify),
        trust_env=False,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=Timeout(None),
        headers={"connection": "close", "accept-encoding": "identity"},
    )


@functools.cache
def _tls_context(skip_verify: bool) -> ssl.SSLContext:
    """The system's trust store and hostname checks, as a dev Consul agent without TLS
    settings verifies; ``TLSSkipVerify`` turns both off."""
    context = ssl.create_default_context()
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _headers(probe: HTTPProbe) -> list[tuple[bytes, bytes]]:
    """The check's own headers (every value, as UTF-8 bytes like Go sends them), then
    Consul's User-Agent and Accept unless the check set them."""
    headers = [(name, value) for name, values in probe.header.items() for value in values]
    given = {name.lower() for name, _ in headers}
    defaults = [("User-Agent", USER_AGENT), ("Accept", ACCEPT)]
    headers += [(name, value) for name, value in defaults if name.lower() not in given]
    return [(name.encode(), value.encode()) for name, value in headers]


def _request_error(method: str, url: str, reason: str) -> str:
    """A failed request as Go's ``url.Error`` prints it: ``Get "http://...": reason``."""
    return f'{method[:1]}{method[1:].lower()} "{url}": {reason}'


def _judge(method: str, url: str, answer: _Answer) -> tuple[str, str]:
    body = answer.tail.decode(errors="replace")
    output = f"HTTP {method} {url}: {answer.status} Output: {body}"
    if 200 <= answer.code < 300:
        return PASSING, output
    if answer.code == 429:
        return WARNING, output
    return CRITICAL, output


async def run_script_probe(probe: ScriptProbe) -> tuple[str, str]:
    """One script check: exit 0 passing, 1 warning, anything else critical."""
    try:
        with anyio.fail_after(probe.timeout):
            result = await anyio.run_process(
                list(probe.args), check=False, stderr=subprocess.STDOUT
            )
    except TimeoutError:
        return CRITICAL, f"Timed out ({probe.timeout:g}s) running check"
    except OSError as exc:
        return CRITICAL, str(exc)
    output = truncate(result.stdout.decode(errors="replace"))
    if result.returncode == 0:
        return PASSING, output
    if result.returncode == 1:
        return WARNING, output
    return CRITICAL, output
