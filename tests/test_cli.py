"""The ``meshkit`` command as a newcomer meets it: its version, its help, its mistakes."""

from __future__ import annotations

import argparse
import importlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import meshkit
from meshkit.cli import _COMMANDS, build_parser, main
from tests.cli_reference import parsers


def test_every_flag_has_help_and_says_its_default() -> None:
    missing = []
    for parser in parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            name = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                missing.append(f"{name}: no help")
                continue
            shown = action.default not in (None, False, True, [], argparse.SUPPRESS)
            if action.option_strings and shown and "default" not in action.help:
                missing.append(f"{name}: default {action.default!r} not in its help")
    assert missing == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"meshkit {meshkit.__version__}\n"
    assert meshkit.__version__ == "0.1.0"  # pyproject.toml's, from the installed metadata


def test_each_command_comes_from_the_module_named_for_it() -> None:
    """``meshkit COMMAND`` loads only ``_COMMANDS[COMMAND]``: the table must say which
    module adds each command, and every command must be in it."""
    added: dict[str, str] = {}
    for module in dict.fromkeys(_COMMANDS.values()):
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).add_commands(subparsers)
        added |= dict.fromkeys(subparsers.choices, module)
    assert added == _COMMANDS


def test_a_service_process_loads_only_what_it_runs() -> None:
    """A service process (``meshkit run``) holds none of what ``meshkit new`` and the
    demo import (the template engine, the Envoy wheel), nor httpx's command-line client
    (rich, pygments), nor the protobuf runtime (meshkit encodes its OTLP spans itself),
    nor the idempotency stores its settings do not name (sqlite3, Consul KV), nor
    requests' charset detection (meshkit/_requests.py loads it when a body needs it)."""
    code = (
        "import contextlib, sys\n"
        "from meshkit.cli import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main(['run', '--help'])\n"
        "from meshkit import ServiceApp\n"
        "ServiceApp(service='probe')\n"
        "unwanted = {'cookiecutter', 'jinja2', 'yaml', 'envoy', 'rich', 'pygments', 'google',\n"
        "            'sqlite3', 'meshkit.policy.idempotency.consul', 'charset_normalizer'}\n"
        "print(sorted(unwanted & set(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "usage: meshkit run" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["run", "x:app", "--port", "abc"], "--port"),
        (["run", "x:app", "--admin-port", "70000"], "--admin-port"),
        (["run", "x:app", "--service", "Bad_Name"], "--service"),
        (["ca", "serve", "--dir", "x", "--port", "http"], "--port"),
        (["up", "--registry-port", "-1"], "--registry-port"),
        (["new", "Billing_Service"], "NAME"),
        (["new", "x", "--allow", "Web_App"], "--allow"),
        (["new", "x", "--namespace", "Shop"], "--namespace"),
        (["call", "x", "/", "--as", "A_B"], "--as"),
        (["call", "x", "https://example.org/"], "PATH"),
        (["cert", "issue", "--service", "a.b", "--out", "x"], "--service"),
    ],
)
def test_a_bad_flag_is_named_as_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert f"argument {flag}: " in error
    assert "MESHKIT_" not in error


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("json:missing", "json has no attribute missing"),
        ("json:dumps", "json:dumps is a function, not a meshed app"),
        ("no_such_module_here:app", "cannot import no_such_module_here"),
        ("json", "expected module:attribute"),
    ],
)
def test_run_says_what_is_wrong_with_the_target(
    target: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", target]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error, error


FREE_PORTS = ("--ca-port", "0", "--dashboard-port", "0")


def test_a_second_up_fails_on_the_busy_port_before_any_banner(tmp_path: Path) -> None:
    """A listening socket stands where the first `meshkit up`'s registry would be."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = subprocess.run(
            [sys.executable, "-m", "meshkit", "up", "--registry-port", str(port), *FREE_PORTS],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert up.returncode == 1
    assert up.stdout == ""
    assert up.stderr.startswith(f"meshkit: error: --registry-port {port}: ")
    assert "another `meshkit up`" in up.stderr and up.stderr.count("\n") == 1
    assert not (tmp_path / ".meshkit").exists()  # nothing was started
