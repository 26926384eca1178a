"""The dev registry under hostile clients: a real ``meshkit registry serve`` process,
attacked as issue #15 found it could be. Each attack gets the 4xx Consul would give (its
text where Consul has one), nothing is stored, and the registry keeps serving.

py-consul, unchanged, sends what it can send (it serializes ``float("nan")`` as ``NaN``,
as Python's json does); raw sockets send the rest.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import consul
import consul.exceptions
import pytest

from meshkit.testing import RegistryProcess
from tests._procs import rss_mb
from tests.registry.dev.helpers import raw

pytestmark = pytest.mark.timeout(180)

MIB = 1024 * 1024
DECODE_FAILED = "Request decode failed: "
BEGINNING = "looking for beginning of value"
BAD_META = "Invalid Service Meta: Couldn't load metadata pair"
INTERVAL_CHECKS = "Script, HTTP, H2PING, TCP, UDP or OSService checks"
KV_TOO_LARGE = (
    "Request body({size} bytes) too large, max size: 524288 bytes. "
    "See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
)


@pytest.fixture(scope="module")
def registry() -> Iterator[RegistryProcess]:
    """One registry for the validation attacks: each leaves it empty, or fails."""
    with RegistryProcess() as process:
        yield process
    assert not [line for line in process.lines if "Traceback" in line]


@pytest.fixture
def client(registry: RegistryProcess) -> Iterator[Any]:
    host, port = registry.address.rsplit(":", 1)
    client = consul.Consul(host=host, port=int(port))
    yield client
    assert_nothing_stored(client)


def assert_nothing_stored(client: Any) -> None:
    """Only what a fresh registry holds: its own node, the consul service, no KV."""
    assert client.agent.services() == {}
    assert client.agent.checks() == {}
    _, nodes = client.catalog.nodes()
    assert len(nodes) == 1
    _, services = client.catalog.services()
    assert services == {"consul": []}
    assert client.kv.get("", recurse=True)[1] is None


def unmarshal(value: str, field: str, go_type: str) -> str:
    """Consul's 400 for a value Go's decoder cannot put in its field."""
    return (
        f"{DECODE_FAILED}json: cannot unmarshal {value} into Go struct field {field} "
        f"of type {go_type}"
    )


def refusal(client: Any, **registration: Any) -> str:
    """What the registry answers py-consul registering ``web`` with ``registration``
    (a 400, as py-consul's BadRequest shows it)."""
    with pytest.raises(consul.exceptions.BadRequest) as raised:
        client.agent.service.register("web", **registration)
    return str(raised.value)


def register(registry: RegistryProcess, body: bytes) -> tuple[int, str]:
    return raw(registry, "PUT", "/v1/agent/service/register", body)


# -- the findings of #15, one by one ------------------------------------------------------


def test_port_nan_is_a_syntax_error_not_a_500(client: Any) -> None:
    text = f"{DECODE_FAILED}invalid character 'N' {BEGINNING}"
    assert refusal(client, port=float("nan")) == f"400 {text}"


@pytest.mark.parametrize(
    ("port", "text"),
    [
        (1e300, unmarshal("number 1e+300", ".Alias.Port", "int")),
        (80.5, unmarshal("number 80.5", ".Alias.Port", "int")),
        (-1, "Invalid Port: -1 is not a port number (0-65535)"),
        (65536, "Invalid Port: 65536 is not a port number (0-65535)"),
    ],
)  # fmt: skip
def test_ports_are_integers_from_0_to_65535(client: Any, port: float, text: str) -> None:
    assert refusal(client, port=port) == f"400 {text}"


@pytest.mark.parametrize("depth", [5_000, 10_001, 200_000])
def test_deeply_nested_json_is_a_400(registry: RegistryProcess, client: Any, depth: int) -> None:
    """Go's decoder stops at 10,000 levels; below that the value is just the wrong type."""
    nested = b"[" * depth + b"]" * depth
    status, text = register(registry, b'{"Name": "web", "Meta": ' + nested + b"}")
    if depth > 10_000:
        expected = f"{DECODE_FAILED}invalid character '[' exceeded max depth"
    else:
        expected = unmarshal("array", ".Alias.Meta", "map[string]string")
    assert (status, text) == (400, expected)


def test_a_unicode_digit_in_index_is_invalid_not_a_500(
    registry: RegistryProcess, client: Any
) -> None:
    assert raw(registry, "GET", "/v1/health/service/web?index=%C2%B2") == (400, "Invalid index")
    with pytest.raises(consul.exceptions.BadRequest, match="Invalid index"):
        client.health.service("web", index="\u00b2")


@pytest.mark.parametrize(
    ("check", "text"),
    [
        ({"TTL": "Infinity"}, DECODE_FAILED + 'time: invalid duration "Infinity"'),
        ({"TTL": float("inf")}, f"{DECODE_FAILED}invalid character 'I' {BEGINNING}"),
        ({"TTL": 1e300}, "Invalid check: TTL must be > 0 for TTL checks"),  # Go: minimum duration
        ({"TTL": "-10s"}, "Invalid check: TTL must be > 0 for TTL checks"),
        ({"TTL": "3000000h"}, DECODE_FAILED + 'time: invalid duration "3000000h"'),
        ({"HTTP": "http://127.0.0.1:9/", "Interval": "-1s"},
         f"Invalid check: Interval must be > 0 for {INTERVAL_CHECKS}"),
        ({"TTL": "10s", "DeregisterCriticalServiceAfter": "NaN"},
         DECODE_FAILED + 'time: invalid duration "NaN"'),
    ],
)  # fmt: skip
def test_durations_are_finite_go_durations(client: Any, check: dict[str, Any], text: str) -> None:
    assert refusal(client, check=check) == f"400 {text}"


@pytest.mark.parametrize(
    ("meta", "text"),
    [
        ({"k": 1}, unmarshal("number", ".Alias.Meta", "string")),
        ({"k": {"nested": "x"}}, unmarshal("object", ".Alias.Meta", "string")),
        ({"consul-x": "v"}, f"{BAD_META} ('consul-x', 'v'): "
         "Key prefix 'consul-' is reserved for internal use"),
        ({"k": "v" * 513}, f"{BAD_META} ('k', '{'v' * 513}'): "
         "Value is too long (limit: 512 characters)"),
    ],
)  # fmt: skip
def test_service_meta_is_strings_within_consuls_limits(
    client: Any, meta: dict[str, Any], text: str
) -> None:
    assert refusal(client, meta=meta) == f"400 {text}"


@pytest.mark.parametrize(
    ("node_meta", "text"),
    [
        ({"rack": 5}, unmarshal("number", "RegisterRequest.NodeMeta", "string")),
        ({"rack": None, "row": [1]}, unmarshal("array", "RegisterRequest.NodeMeta", "string")),
        ({f"k{i}": "v" for i in range(65)},
         "Invalid NodeMeta: Node metadata cannot contain more than 64 key/value pairs"),
    ],
)  # fmt: skip
def test_node_meta_is_strings_within_consuls_limits(
    registry: RegistryProcess, client: Any, node_meta: dict[str, Any], text: str
) -> None:
    body = {"Node": "ext", "Address": "10.0.0.1", "NodeMeta": node_meta}
    assert raw(registry, "PUT", "/v1/catalog/register", json.dumps(body).encode()) == (400, text)


def test_kv_values_over_512_kib_are_refused_as_consul_refuses_them(
    registry: RegistryProcess, client: Any
) -> None:
    size = 512 * 1024 + 1
    with pytest.raises(consul.exceptions.ClientError) as raised:
        client.kv.put("big", b"x" * size)
    assert str(raised.value) == "413 " + KV_TOO_LARGE.format(size=size)


def test_a_streamed_kv_value_stops_being_read_at_the_limit(
    registry: RegistryProcess, client: Any
) -> None:
    """No Content-Length to refuse up front: the value is counted as it arrives."""
    host, port = registry.address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = iter([b"x" * 65536] * 12)  # 768 KiB, chunked
    connection.request("PUT", "/v1/kv/streamed", body=chunks, encode_chunked=True)
    response = connection.getresponse()
    assert (response.status, response.read().decode()) == (
        413,
        "Request body too large, max size: 524288 bytes. "
        "See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
    )
    connection.close()


@pytest.mark.parametrize(
    ("target", "text"),
    [
        ("/v1/catalog/services?dc=elsewhere", "No path to datacenter"),
        ("/v1/kv/k?wait=forever", "Invalid wait time"),
        ("/v1/kv/k?index=-1", "Invalid index"),
        ("/v1/kv/k?a=%zz", 'invalid URL escape "%zz"'),
        (
            "/v1/kv/k?stale&consistent",
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
        ("/v1/kv/a/..%2fb", "URL path contains invalid or encoded traversal sequence"),
    ],
)
def test_query_parameters_are_strict(
    registry: RegistryProcess, client: Any, target: str, text: str
) -> None:
    assert raw(registry, "GET", target) == (400, text)


def test_wrong_json_types_and_bodies_are_400s(registry: RegistryProcess, client: Any) -> None:
    for body, text in (
        (b"", DECODE_FAILED + "EOF"),
        (b'{"Name": "web"', DECODE_FAILED + "unexpected EOF"),
        (b"[]", f"{DECODE_FAILED}json: cannot unmarshal array into Go value of type "
         "structs.ServiceDefinition"),
        (b'{"Name": ["web"]}', unmarshal("array", ".Alias.Name", "string")),
        (b'{"Name": "web", "Checks": [{"Interval": 1e400}]}',
         unmarshal("number 1e400", ".Alias.Checks.Interval", "float64")),
        (b'{"Name": "web", "Weights": {"Passing": 1.5}}',
         unmarshal("number 1.5", "Weights.Alias.Weights.Passing", "int")),
    ):  # fmt: skip
        assert register(registry, body) == (400, text)


# -- memory: bodies are refused before they are buffered ------------------------------------


def _big_put(address: str, *, chunked: bool, answers: list[str]) -> None:
    """Start a 300 MiB KV PUT and stall after what the server would take."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 314572800"
        sock.sendall(b"PUT /v1/kv/big HTTP/1.1\r\nHost: registry\r\n" + framing + b"\r\n\r\n")
        chunk = (b"10000\r\n" + b"x" * 65536 + b"\r\n") if chunked else b"x" * 65536
        with contextlib.suppress(OSError):
            for _ in range(300 * 16):  # up to 300 MiB, as long as the server reads it
                sock.sendall(chunk)
        with contextlib.suppress(OSError):
            answers.append(sock.recv(256).decode(errors="replace"))


def test_big_bodies_are_refused_without_memory_growth(dev_registry: RegistryProcess) -> None:
    """Four clients each start a 300 MiB PUT (declared, then streamed chunked): the
    connection policy answers 413 before buffering, and the registry's RSS barely moves."""
    pid = dev_registry.process.pid
    before = rss_mb(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(rss_mb(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    answers: list[str] = []
    clients = [
        threading.Thread(
            target=_big_put,
            args=(dev_registry.address,),
            kwargs={"chunked": chunked, "answers": answers},
        )
        for chunked in (False, False, False, False, True, True, True, True)
    ]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    done.set()
    sampler.join()
    growth = max(peak) - before
    print(f"registry RSS {before:.1f} MiB, peak {max(peak):.1f} MiB, growth {growth:.1f} MiB")
    assert len(answers) == 8 and all(a.startswith("HTTP/1.1 413 ") for a in answers), answers
    assert growth < 64
    host, port = dev_registry.address.rsplit(":", 1)
    client = consul.Consul(host=host, port=int(port))
    assert client.status.leader() == "127.0.0.1:8300"
    assert client.kv.get("big")[1] is None


def test_hostile_json_bodies_do_not_stall_other_clients(
    registry: RegistryProcess, client: Any
) -> None:
    """Near-1 MiB bodies that only the slow, iterative reader can refuse (500k numbers,
    then NaN) decode in a worker thread, one at a time: other clients keep answers."""
    body = b'{"Name": "web", "Meta": [' + b"1," * 450_000 + b"NaN]}"
    answers: list[tuple[int, str]] = []
    attackers = [
        threading.Thread(target=lambda: answers.append(register(registry, body))) for _ in range(4)
    ]
    for thread in attackers:
        thread.start()
    time.sleep(0.3)
    slowest = 0.0
    while any(thread.is_alive() for thread in attackers):
        started = time.monotonic()
        assert client.status.leader() == "127.0.0.1:8300"
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    for thread in attackers:
        thread.join()
    print(f"slowest status read while decoding hostile bodies: {slowest * 1000:.0f} ms")
    assert answers == [(400, f"{DECODE_FAILED}invalid character 'N' {BEGINNING}")] * 4
    assert slowest < 1.0
