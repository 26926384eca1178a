"""Bodies decoded as Consul's Go structs: field matching, Go's types and error paths,
Consul's check durations and metadata limits."""

from __future__ import annotations

from typing import Any

import pytest

from meshkit.registry.dev.decode import (
    decode_check,
    decode_service,
    port_problem,
    validate_meta,
)
from meshkit.registry.dev.durations import MIN_DURATION, SECOND
from meshkit.registry.dev.errors import DecodeError
from meshkit.registry.dev.gojson import loads


def service(body: str) -> Any:
    return decode_service(loads(body.encode()))


def test_service_keys_are_case_insensitive_with_consuls_snake_case_aliases() -> None:
    definition = service(
        '{"name": "web", "ID": "web-1", "enable_tag_override": true,'
        ' "Check": {"ttl": "5s", "deregister_critical_service_after": "1m"},'
        ' "checks": [{"HTTP": "http://x/healthz", "Interval": 1000000000}]}'
    )
    assert (definition.name, definition.id, definition.enable_tag_override) == (
        "web",
        "web-1",
        True,
    )
    assert definition.checks[0].ttl == 5 * SECOND
    assert definition.checks[0].deregister_after == 60 * SECOND
    assert definition.checks[1].interval == SECOND  # JSON numbers are nanoseconds
    assert definition.checks[1].type == "http"


def unmarshal(value: str, field: str, go_type: str) -> str:
    """encoding/json's text for a value that does not fit its field."""
    return f"json: cannot unmarshal {value} into Go struct field {field} of type {go_type}"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ('{"Port": "80"}', unmarshal("string", ".Alias.Port", "int")),
        ('{"Port": 80.5}', unmarshal("number 80.5", ".Alias.Port", "int")),
        ('{"Port": 1e300}', unmarshal("number 1e300", ".Alias.Port", "int")),
        (
            '{"Port": 9223372036854775808}',
            unmarshal("number 9223372036854775808", ".Alias.Port", "int"),
        ),
        ('{"Tags": ["a", 1]}', unmarshal("number", ".Alias.Tags", "string")),
        ('{"Meta": {"a": 1}}', unmarshal("number", ".Alias.Meta", "string")),
        ('{"Meta": []}', unmarshal("array", ".Alias.Meta", "map[string]string")),
        (
            '{"Weights": {"Passing": "1"}}',
            unmarshal("string", "Weights.Alias.Weights.Passing", "int"),
        ),
        (
            '{"TaggedAddresses": {"lan": {"Port": true}}}',
            unmarshal("bool", "ServiceAddress.Alias.TaggedAddresses.Port", "int"),
        ),
        ('{"Check": {"Name": 5}}', unmarshal("number", ".Alias.Check.Alias.Name", "string")),
        ('{"Checks": [{"TTL": 1e400}]}', unmarshal("number 1e400", ".Alias.Checks.TTL", "float64")),
        ("[1]", "json: cannot unmarshal array into Go value of type structs.ServiceDefinition"),
        ('{"Check": {"TTL": "soon"}}', 'time: invalid duration "soon"'),
    ],
)
def test_wrong_types_fail_with_gos_text(body: str, text: str) -> None:
    with pytest.raises(DecodeError) as raised:
        service(body)
    assert str(raised.value) == text


def test_the_first_error_in_the_body_wins_but_a_checks_type_error_ends_it() -> None:
    with pytest.raises(DecodeError, match=r"\.Alias\.Port"):
        service('{"Port": "x", "Check": {"TTL": "soon"}}')
    with pytest.raises(DecodeError, match="soon"):
        service('{"Check": {"TTL": "soon"}, "Port": "x"}')
    with pytest.raises(DecodeError, match=r"\.Alias\.Check\.Alias\.Notes"):
        service('{"Port": "x", "Check": {"Notes": 1}}')  # Go returns it at once


def test_null_leaves_a_field_unset_and_unknown_keys_are_skipped() -> None:
    definition = service(
        '{"Name": "web", "Port": null, "Meta": null, "Unknown": [[]], "Checks": [null]}'
    )
    assert (definition.port, definition.meta, definition.checks) == (0, {}, [])


def test_check_durations_follow_consuls_check_type() -> None:
    assert service('{"Check": {"TTL": 1e300}}').checks[0].ttl == MIN_DURATION  # as on amd64
    assert service('{"Check": {"TTL": -5, "Notes": "n"}}').checks[0].ttl == -5
    assert service('{"Check": {"TTL": true, "Notes": "n"}}').checks[0].ttl == 0  # ignored
    assert service('{"Check": {"TTL": "1.5s"}}').checks[0].ttl == 1_500_000_000
    with pytest.raises(DecodeError, match=r'^time: invalid duration "Infinity"$'):
        service('{"Check": {"TTL": "Infinity"}}')


def test_an_empty_check_object_is_ignored_as_consul_ignores_it() -> None:
    assert service('{"Name": "web", "Check": {}}').checks == []
    assert service('{"Name": "web", "Check": {"TTL": "0s", "Status": ""}}').checks == []


def test_check_validation_texts() -> None:
    def problem(body: str) -> str | None:
        return decode_check(loads(body.encode())).validate()

    assert problem('{"HTTP": "http://x"}') == (
        "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
    )
    assert problem("{}") == "TTL must be > 0 for TTL checks"
    assert problem('{"TTL": "-1s"}') == "TTL must be > 0 for TTL checks"
    assert problem('{"TTL": "1s", "Interval": "1s"}') == "Interval and TTL cannot both be specified"
    assert problem('{"TTL": "1s", "FailuresBeforeWarning": 2}') == (
        "FailuresBeforeWarning can't be higher than FailuresBeforeCritical"
    )


def test_check_definition_names_its_own_fields() -> None:
    check = decode_check(loads(b'{"name": "disk", "id": "d1", "serviceid": "web-1", "ttl": "5s"}'))
    assert (check.name, check.check_id, check.service_id, check.ttl) == (
        "disk",
        "d1",
        "web-1",
        5 * SECOND,
    )
    with pytest.raises(DecodeError, match=r"Go struct field \.Alias\.ID of type types\.CheckID"):
        decode_check(loads(b'{"ID": 5}'))


PAIR = "Couldn't load metadata pair"


@pytest.mark.parametrize(
    ("meta", "text"),
    [
        (
            {f"k{i}": "v" for i in range(65)},
            "Node metadata cannot contain more than 64 key/value pairs",
        ),
        ({"": "v"}, f"{PAIR} ('', 'v'): Key cannot be blank"),
        ({"a b": "v"}, f"{PAIR} ('a b', 'v'): Key contains invalid characters"),
        ({"é": "v"}, f"{PAIR} ('é', 'v'): Key contains invalid characters"),
        (
            {"k" * 129: "v"},
            f"{PAIR} ('{'k' * 129}', 'v'): Key is too long (limit: 128 characters)",
        ),
        (
            {"consul-x": "v"},
            f"{PAIR} ('consul-x', 'v'): Key prefix 'consul-' is reserved for internal use",
        ),
        (
            {"k": "é" * 257},
            f"{PAIR} ('k', '{'é' * 257}'): Value is too long (limit: 512 characters)",
        ),
    ],
)
def test_metadata_limits_are_consuls(meta: dict[str, str], text: str) -> None:
    assert validate_meta(meta) == text


def test_metadata_within_limits_passes() -> None:
    meta = {f"k{i}": "v" * 512 for i in range(64)} | {"k" * 128: ""}
    meta.pop("k0")
    assert validate_meta(meta) is None
    assert validate_meta({"consul-version": "1"}, allow_consul_prefix=True) is None


def test_ports_are_0_to_65535() -> None:
    assert port_problem(0) is None and port_problem(65535) is None
    assert port_problem(65536) == "Invalid Port: 65536 is not a port number (0-65535)"
    assert port_problem(-1) == "Invalid Port: -1 is not a port number (0-65535)"
