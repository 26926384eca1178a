"""Run a README's ``sh`` blocks as a user would, each block a terminal.

Servers (``meshkit up``, ``meshkit run``) stay in the background until they print that
they are ready; other blocks run to the end, each line with the exit status the README
gives it (0, or ``# ... (exits N)``). A block that sources nothing first (``. FILE``)
goes on in the terminal of the block before. ``meshkit up`` is moved to free ports, as
tests bind only ephemeral ones.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from meshkit.demo.run import free_port
from meshkit.testing.supervisor import Supervisor

#: Commands that serve until stopped, and the output line that says they are ready.
SERVERS = {"meshkit up": r"Ctrl-C stops everything", "meshkit run": r" serving mTLS"}


@dataclass
class Terminal:
    """One ``sh`` block: the commands a user types in one terminal."""

    lines: list[str]

    @property
    def server(self) -> str | None:
        """The ready-line pattern when the block ends by starting a server."""
        last = self.lines[-1]
        return next((ready for cmd, ready in SERVERS.items() if cmd in last), None)


def terminals(text: str) -> Iterator[Terminal]:
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


def up_on_free_ports(text: str) -> str:
    ports = " ".join(f"--{name}-port {free_port()}" for name in ("registry", "ca", "dashboard"))
    return text.replace("meshkit up\n", f"meshkit up {ports}\n")


def clean_environment() -> dict[str, str]:
    """This process's environment without what would point a command at another mesh
    or virtualenv than the walkthrough's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHKIT_", "CONSUL_"))}
    env.pop("VIRTUAL_ENV", None)
    return env


def run_terminals(
    blocks: list[Terminal], directory: Path, env: Mapping[str, str], *, timeout: float = 300
) -> None:
    """Each block in its terminal, started in ``directory``; servers stopped at the end,
    which must exit 0 (as after Ctrl-C); AssertionError or MeshError otherwise."""
    with Supervisor(directory / "terminals", stop_timeout=20) as supervisor:
        for number, block in enumerate(blocks, 1):
            name = f"terminal-{number}"
            script = f"cd {shlex.quote(str(directory))}\n"
            if block.server is None:
                argv = ["bash", "-c", script + checked(block.lines)]
                supervisor.run(name, argv, env=env, timeout=timeout)
                continue
            # The server replaces the shell, so stopping the terminal stops it alone.
            *steps, server = block.lines[-1].split(" && ")
            script += f"{checked([*block.lines[:-1], *steps])}\nexec {server}"
            child = supervisor.start(name, ["bash", "-c", script], env=env)
            child.wait_for(re.compile(block.server), timeout=60)
        supervisor.stop_all()
        assert all(child.process.returncode == 0 for child in supervisor.children), [
            (child.name, child.process.returncode, child.log_tail())
            for child in supervisor.children
        ]
