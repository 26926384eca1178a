"""The README as a newcomer reads it: its CLI reference is the parsers', its walkthrough
runs as written, and it tells no internal history."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshkit.demo.run import free_port
from meshkit.testing.supervisor import Supervisor
from tests.cli_reference import in_readme, reference

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
WALKTHROUGH = README[README.index("<!-- walkthrough:") : README.index("<!-- /walkthrough -->")]
#: Commands that serve until stopped, and the output line that says they are ready.
SERVERS = {"meshkit up": r"Ctrl-C stops everything", "meshkit run": r" serving mTLS"}
#: The walkthrough's fixed ports (Consul's and the CA's defaults, two admin ports): the
#: test runs it on free ones, as the brief for tests asks.
FIXED_PORTS = ("8500", "8443", "9101", "9102")


def test_the_cli_reference_is_the_parsers() -> None:
    assert in_readme(README) == reference(), "run `make readme`"


def test_no_issue_numbers_or_internal_history() -> None:
    for path in (REPO / "README.md", REPO / "bench" / "README.md"):
        text = path.read_text()
        assert not re.search(r"(?i)\bissue\s*#?\d|(?<![\w/])#\d+\b", text), path


def test_a_trust_domain_the_ca_is_made_for_is_one_services_are_told() -> None:
    """A CA made for another trust domain than the default needs MESHKIT_TRUST_DOMAIN in
    the services that join it: the README must say so wherever it makes one."""
    for domain in re.findall(r"meshkit ca init .*--trust-domain (\S+)", README):
        assert f"MESHKIT_TRUST_DOMAIN={domain}" in README, domain


@dataclass
class Terminal:
    """One ``sh`` block of the walkthrough: the commands a user types in one terminal."""

    lines: list[str]

    @property
    def server(self) -> str | None:
        """The ready-line pattern when the block ends by starting a server."""
        last = self.lines[-1]
        return next((ready for cmd, ready in SERVERS.items() if cmd in last), None)


def terminals(text: str) -> Iterator[Terminal]:
    """A block that sources nothing first goes on in the terminal of the block before."""
    sourced: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        lines = [line for line in block.splitlines() if line.strip()]
        if lines[0].startswith("make "):
            continue  # `make demo`: tests/test_demo.py runs the demo (60 s as written)
        if lines[0].startswith(". "):
            sourced = [lines[0]]
        else:
            lines = [*sourced, *lines]
        yield Terminal(lines)


def expected_status(line: str) -> int:
    """0, or what the line's comment says it exits with."""
    found = re.search(r"#.*\(exits (\d+)\)", line)
    return int(found[1]) if found else 0


def checked(lines: list[str]) -> str:
    """A bash script that runs ``lines`` in order and stops at the first unexpected exit."""
    script = []
    for number, line in enumerate(lines, 1):
        expected = expected_status(line)
        script += [
            line,
            f'rc=$?; [ "$rc" -eq {expected} ] || '
            f'{{ echo "line {number} exited $rc, not {expected}: "{shlex.quote(line)} >&2; '
            "exit 1; }",
        ]
    return "\n".join(script)


def on_free_ports(text: str, ports: dict[str, str]) -> str:
    """The walkthrough with its fixed ports replaced; `meshkit up` told the free ones."""
    text = text.replace(
        "meshkit up\n", f"meshkit up --registry-port {ports['8500']} --ca-port {ports['8443']}\n"
    )
    for fixed in FIXED_PORTS[2:]:
        text = text.replace(fixed, ports[fixed])
    return text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Each sh block is a terminal, run from a directory that looks like the checkout
    (its ``.venv``): servers in the background until they say they are ready, the other
    commands one after the other, each with the exit status the README gives it."""
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    ports = {fixed: str(free_port()) for fixed in FIXED_PORTS}
    blocks = list(terminals(on_free_ports(WALKTHROUGH, ports)))
    assert [b.server for b in blocks].count(SERVERS["meshkit run"]) == 2
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHKIT_", "CONSUL_"))}
    env.pop("VIRTUAL_ENV", None)
    with Supervisor(tmp_path / "logs", stop_timeout=20) as supervisor:
        for number, block in enumerate(blocks, 1):
            script = f"cd {shlex.quote(str(tmp_path))}\n"
            if block.server is None:
                supervisor.run(f"terminal-{number}", ["bash", "-c", script + checked(block.lines)],
                               env=env, timeout=300)  # fmt: skip
                continue
            # The server replaces the shell, so stopping the terminal stops it alone.
            *steps, server = block.lines[-1].split(" && ")
            script += f"{checked([*block.lines[:-1], *steps])}\nexec {server}"
            child = supervisor.start(f"terminal-{number}", ["bash", "-c", script], env=env)
            child.wait_for(re.compile(block.server), timeout=60)
        supervisor.stop_all()
        assert all(child.process.returncode == 0 for child in supervisor.children), [
            (child.name, child.process.returncode, child.log_tail())
            for child in supervisor.children
        ]
    assert not (tmp_path / ".meshkit" / "control-plane" / "env").exists()
