"""The README as a newcomer reads it: its CLI reference is the parsers', its walkthrough
runs as written, and it tells no internal history."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from meshkit.client import ClientPolicy
from meshkit.demo.run import free_port
from meshkit.settings import _ENVIRONMENT
from tests.cli_reference import in_readme, reference
from tests.walkthrough import (
    SERVERS,
    clean_environment,
    run_terminals,
    terminals,
    up_on_free_ports,
)

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
WALKTHROUGH = README[README.index("<!-- walkthrough:") : README.index("<!-- /walkthrough -->")]
#: The walkthrough's fixed admin ports: the test runs it on free ones.
ADMIN_PORTS = ("9101", "9102")


def test_the_cli_reference_is_the_parsers() -> None:
    assert in_readme(README) == reference(), "run `make readme`"


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README[README.index("## Configuration") : README.index("### Connection policy")]
    missing = [name for name, _ in _ENVIRONMENT.values() if f"`{name}`" not in table]
    assert not missing, missing


def test_every_client_policy_knob_is_named() -> None:
    sections = README[README.index("## Mesh client") : README.index("## Service registry")]
    fields = dataclasses.fields(ClientPolicy)
    missing = [field.name for field in fields if not re.search(rf"\b{field.name}\b", sections)]
    assert not missing, missing


def test_no_issue_numbers_or_internal_history() -> None:
    for path in (REPO / "README.md", REPO / "bench" / "README.md"):
        text = path.read_text()
        assert not re.search(r"(?i)\bissue\s*#?\d|(?<![\w/])#\d+\b", text), path


def test_a_trust_domain_the_ca_is_made_for_is_one_services_are_told() -> None:
    """A CA made for another trust domain than the default needs MESHKIT_TRUST_DOMAIN in
    the services that join it: the README must say so wherever it makes one."""
    for domain in re.findall(r"meshkit ca init .*--trust-domain (\S+)", README):
        assert f"MESHKIT_TRUST_DOMAIN={domain}" in README, domain


def on_free_ports(text: str) -> str:
    """The walkthrough with its fixed ports replaced by free ones."""
    text = up_on_free_ports(text)
    for fixed in ADMIN_PORTS:
        text = text.replace(fixed, str(free_port()))
    return text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Each sh block a terminal (``tests.walkthrough``), run from a directory that looks
    like the checkout (its ``.venv``)."""
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    blocks = list(terminals(on_free_ports(WALKTHROUGH)))
    assert [b.server for b in blocks].count(SERVERS["meshkit run"]) == 2
    run_terminals(blocks, tmp_path, clean_environment())
    assert not (tmp_path / ".meshkit" / "control-plane" / "env").exists()
