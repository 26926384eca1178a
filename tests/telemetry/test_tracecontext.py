"""W3C Trace Context, rule by rule: the parser's tables (the spec's own examples first),
what meshkit writes read back by the same rules, and requests over real mTLS."""

from __future__ import annotations

import http.client
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from meshkit.ca.x509 import LocalAuthority
from meshkit.middleware.telemetry import TelemetryMiddleware
from meshkit.telemetry.metrics import MeshMetrics
from meshkit.telemetry.propagation import append_span_headers, extract_context, inject_context
from meshkit.telemetry.tracecontext import (
    MAX_MEMBERS,
    Member,
    TraceParent,
    format_traceparent,
    format_tracestate,
    parse_fields,
    parse_traceparent,
    parse_tracestate,
    parse_unsampled,
)
from tests.middleware.servers import connect, running

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
HARNESS_TRACE = "12345678901234567890123456789012"  # the W3C test suite's ids
HARNESS_PARENT = "1234567890123456"
SAMPLED = TraceParent(int(TRACE, 16), int(PARENT, 16), 0x01)


# -- traceparent -----------------------------------------------------------------------


VALID_TRACEPARENTS = [
    # The spec's examples: sampled and not sampled.
    (f"00-{TRACE}-{PARENT}-01", SAMPLED),
    (f"00-{TRACE}-{PARENT}-00", SAMPLED._replace(flags=0)),
    # OWS around the field value is not part of it.
    (f" 00-{TRACE}-{PARENT}-01", SAMPLED),
    (f"\t00-{TRACE}-{PARENT}-01", SAMPLED),
    (f"00-{TRACE}-{PARENT}-01 ", SAMPLED),
    (f"\t 00-{TRACE}-{PARENT}-01 \t", SAMPLED),
    # The random-trace-id flag is kept; undefined flags are cleared.
    (f"00-{TRACE}-{PARENT}-03", SAMPLED._replace(flags=0x03)),
    (f"00-{TRACE}-{PARENT}-ff", SAMPLED._replace(flags=0x03)),
    (f"00-{TRACE}-{PARENT}-04", SAMPLED._replace(flags=0)),
    # A higher version: the first three fields, then the end or a dash.
    (f"cc-{TRACE}-{PARENT}-01", SAMPLED),
    (f"cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like", SAMPLED),
    (f"01-{TRACE}-{PARENT}-09-extra", SAMPLED),
    (f"fe-{TRACE}-{PARENT}-01-", SAMPLED),
    # Every flags field keeps its known bits alone, in any version.
    *(
        (f"{version}-{TRACE}-{PARENT}-{flags:02x}", SAMPLED._replace(flags=flags & 0x03))
        for version in ("00", "cc")
        for flags in range(256)
    ),
    # Ids of one set bit at either end.
    (f"00-{1:032x}-{1:016x}-01", TraceParent(1, 1, 0x01)),
    (f"00-{1 << 127:032x}-{1 << 63:016x}-01", TraceParent(1 << 127, 1 << 63, 0x01)),
]


@pytest.mark.parametrize(("value", "parsed"), VALID_TRACEPARENTS)
def test_valid_traceparents(value: str, parsed: TraceParent) -> None:
    assert parse_traceparent(value) == parsed


INVALID_TRACEPARENTS = [
    "",
    "garbage",
    # Version 00 is exact: nothing after the flags.
    f"00-{TRACE}-{PARENT}-01.",
    f"00-{TRACE}-{PARENT}-01-what-the-future-will-be-like",
    f"00-{TRACE}-{PARENT}",
    # Version ff is forbidden; a version is two lowercase hex characters and a dash.
    f"ff-{TRACE}-{PARENT}-01",
    f".0-{TRACE}-{PARENT}-01",
    f"0.-{TRACE}-{PARENT}-01",
    f"000-{TRACE}-{PARENT}-01",
    f"0000-{TRACE}-{PARENT}-01",
    f"0-{TRACE}-{PARENT}-01",
    f"CC-{TRACE}-{PARENT}-01",
    # All-zero ids are invalid, in any version.
    f"00-{'0' * 32}-{PARENT}-01",
    f"00-{TRACE}-{'0' * 16}-01",
    f"cc-{'0' * 32}-{PARENT}-01",
    f"cc-{TRACE}-{'0' * 16}-01",
    # trace-id: 32 lowercase hex characters.
    f"00-.{TRACE[1:]}-{PARENT}-01",
    f"00-{TRACE[:-1]}.-{PARENT}-01",
    f"00-{TRACE}3-{PARENT}-01",
    f"00-{TRACE[:-1]}-{PARENT}-01",
    f"00-{TRACE.upper()}-{PARENT}-01",
    # parent-id: 16 lowercase hex characters.
    f"00-{TRACE}-.{PARENT[1:]}-01",
    f"00-{TRACE}-{PARENT}7-01",
    f"00-{TRACE}-{PARENT[:-1]}-01",
    # trace-flags: 2 lowercase hex characters.
    f"00-{TRACE}-{PARENT}-.0",
    f"00-{TRACE}-{PARENT}-0.",
    f"00-{TRACE}-{PARENT}-001",
    f"00-{TRACE}-{PARENT}-1",
    # A higher version still needs its flags followed by the end or a dash.
    f"cc-{TRACE}-{PARENT}-01.what-the-future-will-be-like",
    f"cc-{TRACE}-{PARENT}-0",
    f"cc-{TRACE}-{PARENT}",
    # What int(..., 16) alone would read: uppercase, signs, "_", "0x", inner spaces.
    f"00-{TRACE}-{PARENT.upper()}-01",
    f"00-{TRACE}-{PARENT}-0A",
    f"00-+{TRACE[1:]}-{PARENT}-01",
    f"00-{TRACE}-+{PARENT[1:]}-01",
    f"00-{TRACE}-{PARENT}-+1",
    f"00-{TRACE[:8]}_{TRACE[9:]}-{PARENT}-01",
    f"00-{TRACE}-{PARENT[:8]}_{PARENT[9:]}-01",
    f"00-0x{TRACE[2:]}-{PARENT}-01",
    f"00-{TRACE}-0x{PARENT[2:]}-01",
    f"00- {TRACE[1:]}-{PARENT}-01",
    f"00-{TRACE}-{PARENT[:-1]} -01",
    f"00-{TRACE}-{PARENT}- 1",
    # Dashes only where the format puts them.
    f"00_{TRACE}-{PARENT}-01",
    f"00-{TRACE}_{PARENT}-01",
    f"00-{TRACE}-{PARENT}_01",
    f"00-{TRACE[:-1]}--{PARENT}-01",
    f"00-{TRACE}-{PARENT}--1",
    f"00--{TRACE[1:]}-{PARENT}-01",
    # Zero ids in the fields' exact length, both at once.
    f"00-{'0' * 32}-{'0' * 16}-01",
    f"01-{'0' * 32}-{'0' * 16}-01",
]


@pytest.mark.parametrize("value", INVALID_TRACEPARENTS)
def test_invalid_traceparents_start_a_new_trace(value: str) -> None:
    assert parse_traceparent(value) is None


def _fuzzed_traceparents(count: int) -> Iterator[str]:
    """Fields near the usual one: random ids (zero ones too) and flags, some with one
    character replaced, inserted or removed."""
    rng = random.Random(2126)
    alphabet = "0123456789abcdefABCDEF-_+x \t."
    for _ in range(count):
        trace_id = rng.choice((0, 1, rng.getrandbits(128)))
        parent_id = rng.choice((0, 1, rng.getrandbits(64)))
        value = f"00-{trace_id:032x}-{parent_id:016x}-{rng.getrandbits(8):02x}"
        at = rng.randrange(len(value) + 1)
        edit = rng.choice(("keep", "replace", "insert", "remove"))
        if edit == "replace":
            value = value[:at] + rng.choice(alphabet) + value[at + 1 :]
        elif edit == "insert":
            value = value[:at] + rng.choice(alphabet) + value[at:]
        elif edit == "remove":
            value = value[:at] + value[at + 1 :]
        yield value


@pytest.mark.parametrize(
    "value",
    [
        *(value for value, _ in VALID_TRACEPARENTS),
        *INVALID_TRACEPARENTS,
        f"00-{1:032x}-{1:016x}-00",
        f"00-{1 << 127:032x}-{1 << 63:016x}-02",
    ],
)
def test_the_unsampled_fast_path_reads_as_the_parser(value: str) -> None:
    """``parse_unsampled`` reads the usual unsampled field (version 00, exactly as
    formatted) to what ``parse_traceparent`` reads, and declines every other field."""
    _reads_as_the_parser(value)


def test_the_unsampled_fast_path_reads_fuzzed_fields_as_the_parser() -> None:
    for value in _fuzzed_traceparents(3000):
        _reads_as_the_parser(value)


def _reads_as_the_parser(value: str) -> None:
    parsed = parse_traceparent(value)
    fast = parse_unsampled(value.encode("latin-1"))
    usual = value.startswith("00") and value.strip(" \t") == value
    if parsed is not None and usual and not parsed.flags & 0x01:
        assert fast == (parsed.trace_id, parsed.flags), value
    else:
        assert fast is None, value


# -- tracestate ------------------------------------------------------------------------

LONGEST_KEY = "z" * 256
LONGEST_TENANT_KEY = "t" * 241 + "@" + "v" * 14
ALL_KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
ALL_VALUE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")


@pytest.mark.parametrize(
    ("fields", "members"),
    [
        # The spec's examples.
        (["congo=t61rcWkgMzE"], [("congo", "t61rcWkgMzE")]),
        (
            ["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"],
            [("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")],
        ),
        (["fw529a3039@dt=x"], [("fw529a3039@dt", "x")]),
        # Several fields are one list, in order (RFC 9110 field order).
        (
            ["foo=1,bar=2", "rojo=1,congo=2", "baz=3"],
            [("foo", "1"), ("bar", "2"), ("rojo", "1"), ("congo", "2"), ("baz", "3")],
        ),
        # Empty fields and empty or whitespace-only members are allowed, and skipped.
        ([""], []),
        (["foo=1", ""], [("foo", "1")]),
        (["", "foo=1"], [("foo", "1")]),
        ([" , ,\t,"], []),
        (["foo=1,,bar=2,"], [("foo", "1"), ("bar", "2")]),
        # OWS around members is not part of them; a value's leading spaces are.
        (["foo=1 \t , \t bar=2, \t baz=3"], [("foo", "1"), ("bar", "2"), ("baz", "3")]),
        (["\t foo=1 \t"], [("foo", "1")]),
        (["foo=  1"], [("foo", "  1")]),
        # Keys: the simple form and the multi-tenant form, each at its longest.
        ([f"{LONGEST_KEY}=1"], [(LONGEST_KEY, "1")]),
        ([f"{LONGEST_TENANT_KEY}=1"], [(LONGEST_TENANT_KEY, "1")]),
        ([f"{ALL_KEY_CHARS}=1"], [(ALL_KEY_CHARS, "1")]),
        ([f"{ALL_KEY_CHARS}@a-z0-9_-*/=1"], [(f"{ALL_KEY_CHARS}@a-z0-9_-*/", "1")]),
        (["9tenant@dt=1"], [("9tenant@dt", "1")]),  # a tenant may start with a digit
        # Values: printable ASCII but "," and "=", up to 256 characters.
        ([f"foo={ALL_VALUE_CHARS}"], [("foo", ALL_VALUE_CHARS)]),
        ([f"foo={'v' * 256}"], [("foo", "v" * 256)]),
        # A duplicated key keeps its first (left-most) member; the rest stay.
        (["foo=1,foo=1"], [("foo", "1")]),
        (["foo=1,foo=2"], [("foo", "1")]),
        (["foo=1", "foo=2"], [("foo", "1")]),
        (["a=1,b=2,a=3,c=4"], [("a", "1"), ("b", "2"), ("c", "4")]),
    ],
)
def test_tracestate_members(fields: list[str], members: list[Member]) -> None:
    assert list(parse_tracestate(fields)) == members


@pytest.mark.parametrize(
    "invalid",
    [
        "foo =1",  # a key has no spaces
        "FOO=1",  # nor capitals
        "foo.bar=1",
        "9simple=1",  # a simple key starts with a letter
        "@foo=1",
        "foo@=1",  # a tenant key needs a system id...
        "foo@@bar=1",
        "foo@bar@baz=1",
        "t@9dt=1",  # ...that starts with a letter
        f"{'z' * 257}=1",  # keys: 256 characters at most
        f"{'t' * 242}@v=1",  # tenant ids: 241
        f"t@{'v' * 15}=1",  # system ids: 14
        "foo=bar=baz",  # no "=" in a value
        "foo=",  # a value is never empty
        "foo",
        "=1",
        "foo=a\tb",  # no control characters
        "foo=caf\xe9",  # nor anything past ASCII
        f"foo={'v' * 257}",
    ],
)
def test_an_invalid_member_is_dropped_alone(invalid: str) -> None:
    assert list(parse_tracestate([f"{invalid},bar=2"])) == [("bar", "2")]
    assert list(parse_tracestate(["bar=2", invalid])) == [("bar", "2")]


def test_at_most_32_members_the_right_most_dropped() -> None:
    members = [(f"bar{i:02}", f"{i:02}") for i in range(1, 34)]
    fields = [format_tracestate(members[i : i + 10]) for i in range(0, 33, 10)]
    assert len(fields) == 4  # bar01..bar10, ..., bar31..bar33
    assert list(parse_tracestate(fields)) == members[:MAX_MEMBERS]
    # Members skipped as empty, invalid or duplicated do not count.
    skipped = ["", "x=", *fields[:3], "bar01=9,", "bar31=31,bar32=32,bar33=33"]
    assert list(parse_tracestate(skipped)) == members[:MAX_MEMBERS]


# -- both headers ----------------------------------------------------------------------


def test_one_valid_traceparent_is_needed_for_a_parent_and_its_tracestate() -> None:
    valid = f"00-{TRACE}-{PARENT}-01"
    assert parse_fields([valid], ["a=1", "b=2"]) == (SAMPLED, (("a", "1"), ("b", "2")))
    assert parse_fields([valid], []) == (SAMPLED, ())
    assert parse_fields([], ["a=1"]) is None  # tracestate alone is discarded
    assert parse_fields([f"00-{TRACE}-{'0' * 16}-01"], ["a=1"]) is None
    assert parse_fields([valid, valid], ["a=1"]) is None  # two traceparents: a new trace
    assert parse_fields([valid, f"00-{TRACE}-{'1' * 16}-00"], []) is None


def test_extract_context_follows_the_same_rules() -> None:
    valid = f"00-{TRACE}-{PARENT}-ff".encode()
    context = extract_context(
        [(b"tracestate", b"rojo=1,"), (b"traceparent", valid), (b"tracestate", b"x=,congo=2")]
    )
    parent = trace.get_current_span(context).get_span_context()
    assert (parent.trace_id, parent.span_id, parent.trace_flags) == (SAMPLED[0], SAMPLED[1], 3)
    assert parent.is_remote
    assert list(parent.trace_state.items()) == [("rojo", "1"), ("congo", "2")]
    twice = [(b"traceparent", valid), (b"traceparent", valid), (b"tracestate", b"a=1")]
    assert not trace.get_current_span(extract_context(twice)).get_span_context().is_valid


# -- what meshkit writes ---------------------------------------------------------------

EDGE_MEMBERS = ((LONGEST_KEY, "v" * 256), (LONGEST_TENANT_KEY, " x"), ("congo", "t61rcWkgMzE"))


def test_formatting_reads_back_as_it_was() -> None:
    parent = TraceParent(1, 2, 0xFF)
    assert format_traceparent(parent) == f"00-{1:032x}-{2:016x}-03"
    assert parse_traceparent(format_traceparent(parent)) == parent._replace(flags=3)
    assert parse_tracestate([format_tracestate(EDGE_MEMBERS)]) == EDGE_MEMBERS


@pytest.mark.parametrize("writer", ["append_span_headers", "inject_context"])
def test_what_meshkit_sends_on_is_valid_w3c_trace_context(writer: str) -> None:
    """A child of an extracted parent is sent on with the parent's trace id, known flags
    only (random kept) and the trace state as received, all valid by the same rules."""
    members = [(f"k{i}", str(i)) for i in range(MAX_MEMBERS - len(EDGE_MEMBERS))]
    incoming = [
        (b"traceparent", f"00-{TRACE}-{PARENT}-ff".encode()),
        (b"tracestate", format_tracestate(EDGE_MEMBERS).encode()),
        (b"tracestate", format_tracestate(members).encode()),
    ]
    span = TracerProvider().get_tracer("test").start_span("call", extract_context(incoming))
    headers: list[tuple[str, str]] = []
    if writer == "append_span_headers":
        append_span_headers(headers, span)
    else:
        carrier: dict[str, str] = {}
        inject_context(carrier, trace.set_span_in_context(span))
        headers = list(carrier.items())
    assert [name for name, _ in headers] == ["traceparent", "tracestate"]
    parsed = parse_fields([headers[0][1]], [headers[1][1]])
    assert parsed is not None
    sent_parent, sent_members = parsed
    assert format_traceparent(sent_parent) == headers[0][1]
    assert sent_parent == TraceParent(int(TRACE, 16), span.get_span_context().span_id, 0x03)
    assert sent_members == (*EDGE_MEMBERS, *members)
    assert format_tracestate(sent_members) == headers[1][1]


# -- over real mTLS --------------------------------------------------------------------


async def echo_context(request: Request) -> JSONResponse:
    """What a mesh call made from this handler would send on."""
    headers: dict[str, str] = {}
    inject_context(headers)
    return JSONResponse(headers)


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _get(connection: http.client.HTTPConnection, fields: list[tuple[str, str]]) -> dict[str, str]:
    """GET with ``fields`` sent as given: repeated names stay separate header fields."""
    connection.putrequest("GET", "/echo")
    for name, value in fields:
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 200
    body: dict[str, str] = json.loads(response.read())
    return body


def test_repeated_headers_over_mtls(
    authority: LocalAuthority,
    tmp_path: Path,
    exporter: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Two traceparent fields start a new trace; one traceparent with two tracestate
    fields makes a child span whose trace state is the two combined, sent on as one."""
    provider, spans = exporter
    app = Starlette(routes=[Route("/echo", echo_context)])
    served = TelemetryMiddleware(
        app, service="orders", metrics=MeshMetrics(), tracer_provider=provider
    )
    first = f"00-{HARNESS_TRACE}-{HARNESS_PARENT}-01"
    second = f"00-{HARNESS_TRACE[:-1]}1-{HARNESS_PARENT}-01"
    with running(served, identity=authority.issue("orders"), directory=tmp_path) as port:
        connection = connect(port, authority.issue("web"))
        restarted = _get(connection, [("traceparent", first), ("traceparent", second)])
        continued = _get(
            connection,
            [
                ("traceparent", f"00-{TRACE}-{PARENT}-01"),
                ("tracestate", "rojo=00f067aa0ba902b7"),
                ("tracestate", "congo=t61rcWkgMzE"),
            ],
        )
        connection.close()
    new_trace, child = spans.get_finished_spans()
    assert new_trace.kind is SpanKind.SERVER and new_trace.parent is None
    assert f"{new_trace.context.trace_id:032x}" not in (HARNESS_TRACE, second[3:35])
    assert restarted["traceparent"].split("-")[1] == f"{new_trace.context.trace_id:032x}"
    assert "tracestate" not in restarted
    assert child.parent is not None and child.parent.is_remote
    assert (child.parent.trace_id, child.parent.span_id) == (int(TRACE, 16), int(PARENT, 16))
    combined = [("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")]
    assert list(child.context.trace_state.items()) == combined
    assert continued["traceparent"] == f"00-{TRACE}-{child.context.span_id:016x}-01"
    assert continued["tracestate"] == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


def _echo_following_callers() -> tuple[TracerProvider, InMemorySpanExporter, ASGIApp]:
    """The echo app under the telemetry middleware, with a provider whose sampler follows
    the caller and drops roots, and what that provider exports."""
    exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exported))
    app = Starlette(routes=[Route("/echo", echo_context)])
    served = TelemetryMiddleware(
        app, service="orders", metrics=MeshMetrics(), tracer_provider=provider
    )
    return provider, exported, served


def test_unsampled_callers_over_mtls(authority: LocalAuthority, tmp_path: Path) -> None:
    """An unsampled caller's trace goes on from the handler, whether its field takes the
    fast path or the parser's (OWS, a higher version); a malformed one starts a new trace.
    Nothing is recorded: the sampler follows the caller, and drops roots too."""
    provider, exported, served = _echo_following_callers()
    continued = {
        f"00-{TRACE}-{PARENT}-00": "00",
        f"00-{TRACE}-{PARENT}-02": "02",
        f"00-{TRACE}-{PARENT}-fe": "02",
        f" 00-{TRACE}-{PARENT}-02\t": "02",
        f"cc-{TRACE}-{PARENT}-00-future": "00",
    }
    malformed = [
        f"00-{TRACE.upper()}-{PARENT}-00",
        f"00-{TRACE}-{'0' * 16}-02",
        f"00-{TRACE}-{PARENT}-0A",
        f"00-{TRACE}-{PARENT}-00-future",
    ]
    with running(served, identity=authority.issue("orders"), directory=tmp_path) as port:
        connection = connect(port, authority.issue("web"))
        sent = {field: _get(connection, [("traceparent", field)]) for field in continued}
        restarted = [_get(connection, [("traceparent", field)]) for field in malformed]
        connection.close()
    for field, flags in continued.items():
        version, trace_id, span_id, sent_flags = sent[field]["traceparent"].split("-")
        assert (version, trace_id, sent_flags) == ("00", TRACE, flags), field
        assert span_id != PARENT
    for headers in restarted:
        assert headers["traceparent"].split("-")[1] != TRACE.lower()
    provider.shutdown()
    assert exported.get_finished_spans() == ()


def test_sampled_callers_over_mtls(authority: LocalAuthority, tmp_path: Path) -> None:
    """A sampled caller's SERVER span is recorded, whatever the sampler would decide for
    a root, as the child of the caller's span (remote, its known flags), and the
    handler's calls go on from it with the sampled and random-trace-id flags kept."""
    provider, exported, served = _echo_following_callers()
    fields = {
        f"00-{TRACE}-{PARENT}-01": 0x01,
        f"00-{TRACE}-{PARENT}-ff": 0x03,
        f"\t00-{TRACE}-{PARENT}-03 ": 0x03,
        f"cc-{TRACE}-{PARENT}-01-future": 0x01,
    }
    with running(served, identity=authority.issue("orders"), directory=tmp_path) as port:
        connection = connect(port, authority.issue("web"))
        sent = [_get(connection, [("traceparent", field)]) for field in fields]
        connection.close()
    spans = exported.get_finished_spans()
    assert len(spans) == len(fields)
    for span, headers, flags in zip(spans, sent, fields.values(), strict=True):
        assert span.kind is SpanKind.SERVER and span.parent is not None
        assert span.parent.is_remote and span.parent.trace_flags == flags
        assert (span.parent.trace_id, span.parent.span_id) == (int(TRACE, 16), int(PARENT, 16))
        assert span.context.trace_id == int(TRACE, 16)
        outgoing = f"00-{TRACE}-{span.context.span_id:016x}-{flags:02x}"
        assert headers["traceparent"] == outgoing
    provider.shutdown()
