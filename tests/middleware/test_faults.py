"""Faults: the MESHKIT_FAULTS spec, FaultMiddleware in-process, and zero cost when unset."""

from __future__ import annotations

import pytest

from meshkit import MeshSettings, ServiceApp
from meshkit.errors import ConfigError
from meshkit.middleware.faults import FaultMiddleware
from meshkit.settings import Faults
from tests.middleware._asgi_call import Handler, call

pytestmark = pytest.mark.anyio


def test_the_spec_parses_into_faults() -> None:
    spec = " delay=0.25, abort=503 ,percent=50,path=/orders "
    assert Faults.parse(spec) == Faults(delay=0.25, abort=503, percent=50, path="/orders")
    assert Faults.parse("abort=500") == Faults(abort=500)
    settings = MeshSettings.from_env({"MESHKIT_FAULTS": "delay=1"})
    assert settings.faults == Faults(delay=1.0)
    assert MeshSettings.from_env({"MESHKIT_FAULTS": ""}).faults is None
    assert MeshSettings().faults is None


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("abort=200", "abort must be an HTTP error status 400-599, got 200"),
        ("abort=x", "abort='x' is not a number"),
        ("delay=-1", "delay must not be negative, got -1.0"),
        ("percent=150,abort=503", "percent must be within 0-100, got 150.0"),
        ("path=orders,abort=503", "path must start with '/', got 'orders'"),
        ("percent=50", "give delay=SECONDS and/or abort=STATUS"),
        ("status=503", "'status=503': expected delay=, abort=, percent= or path="),
        ("abort=503,abort=500", "abort is given twice"),
    ],
)
def test_a_bad_spec_names_the_variable(spec: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MeshSettings.from_env({"MESHKIT_FAULTS": spec})
    assert str(caught.value) == f"MESHKIT_FAULTS={spec!r}: {problem}"


def test_faults_given_as_a_value_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"^faults: percent must be within 0-100"):
        Faults(abort=503, percent=-1)


async def test_abort_answers_instead_of_the_handler() -> None:
    handler = Handler()
    app = FaultMiddleware(handler, faults=Faults(abort=503))
    answer = await call(app, path="/orders")
    assert answer.status == 503
    assert answer.headers["content-type"] == "application/json"
    assert b'"fault_injected"' in answer.body
    assert handler.calls == 0


async def test_only_the_path_prefix_and_the_percentage_are_faulted() -> None:
    handler = Handler()
    outside = FaultMiddleware(handler, faults=Faults(abort=503, path="/orders"))
    assert (await call(outside, path="/items")).status == 200
    never = FaultMiddleware(handler, faults=Faults(abort=503, percent=0))
    assert (await call(never, path="/orders")).status == 200
    assert handler.calls == 2


async def test_a_delay_alone_still_reaches_the_handler() -> None:
    handler = Handler()
    app = FaultMiddleware(handler, faults=Faults(delay=0.01))
    assert (await call(app)).status == 200
    assert handler.calls == 1


def _layers(app: ServiceApp) -> list[type]:
    layers, current = [], app.build_middleware_stack()
    while hasattr(current, "app"):
        layers.append(type(current))
        current = current.app
    return layers


def test_the_middleware_is_installed_only_when_asked_for() -> None:
    plain = ServiceApp(settings=MeshSettings(service="orders"))
    assert FaultMiddleware not in _layers(plain)
    faulty = ServiceApp(settings=MeshSettings(service="orders", faults=Faults(delay=1)))
    names = [layer.__name__ for layer in _layers(faulty)]
    # Inside telemetry and the deadline, outside authorization.
    assert names.index("TelemetryMiddleware") < names.index("DeadlineMiddleware")
    assert names.index("DeadlineMiddleware") < names.index("FaultMiddleware")
    assert names.index("FaultMiddleware") < names.index("AuthzMiddleware")
