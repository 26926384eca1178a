"""Running the dev registry's health checks: TTL timers, HTTP probes, script checks.

Each runner reports through one callback, ``update(check_id, status, output)``, so the
agent owns every state change. TTL checks are loop timers (thousands cost nothing while
idle); HTTP and script checks are tasks in the runner's task group, staggered over their
first interval as Consul staggers them.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup

from meshkit.registry.dev.state import CRITICAL, PASSING, WARNING

OUTPUT_MAX = 4096  # Consul's default OutputMaxSize
MIN_INTERVAL = 1.0  # Consul raises shorter intervals to one second
DEFAULT_HTTP_TIMEOUT = 10.0
DEFAULT_SCRIPT_TIMEOUT = 30.0
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
                self._update(check_id, status, truncate(output))
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
    """One HTTP check: 2xx passing, 429 warning, anything else critical (Consul's rules)."""
    method = probe.method or "GET"
    try:
        with anyio.fail_after(probe.timeout):
            code, reason, body = await _http_request(probe, method)
    except TimeoutError:
        return CRITICAL, (
            f'{method} "{probe.url}": context deadline exceeded '
            "(Client.Timeout exceeded while awaiting headers)"
        )
    except (OSError, ValueError, anyio.BrokenResourceError, ssl.SSLError) as exc:
        return CRITICAL, f'{method} "{probe.url}": {exc}'
    output = f"HTTP {method} {probe.url}: {code} {reason} Output: {body}"
    if 200 <= code < 300:
        return PASSING, output
    if code == 429:
        return WARNING, output
    return CRITICAL, output


async def _http_request(probe: HTTPProbe, method: str) -> tuple[int, str, str]:
    url = urlsplit(probe.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"unsupported protocol scheme {url.scheme!r}")
    tls = url.scheme == "https"
    context = None
    if tls:
        context = ssl.create_default_context()
        if probe.tls_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    port = url.port or (443 if tls else 80)
    target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    headers = {
        "Host": url.netloc,
        "User-Agent": "Consul Health Check",
        "Accept": "text/plain, text/*, */*",
        "Connection": "close",
    }
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"{k}: {v}" for k, values in probe.header.items() for v in values]
    body = probe.body.encode()
    if body:
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    stream: anyio.abc.ByteStream
    if context is not None:
        stream = await anyio.connect_tcp(
            url.hostname, port, ssl_context=context, tls_standard_compatible=False
        )
    else:
        stream = await anyio.connect_tcp(url.hostname, port)
    async with stream:
        await stream.send(request)
        raw = await _read_all(stream)
    return _parse_response(raw)


async def _read_all(stream: anyio.abc.ByteStream, limit: int = 64 * 1024) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            chunk = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _parse_response(raw: bytes) -> tuple[int, str, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError("malformed HTTP response")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif "content-length" in headers and headers["content-length"].isdigit():
        body = body[: int(headers["content-length"])]
    reason = parts[2] if len(parts) > 2 else ""
    return int(parts[1]), reason, body[:OUTPUT_MAX].decode(errors="replace")


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


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
    output = result.stdout.decode(errors="replace")
    if result.returncode == 0:
        return PASSING, output
    if result.returncode == 1:
        return WARNING, output
    return CRITICAL, output
