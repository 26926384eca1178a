"""The README's CLI reference, generated from the ``meshkit`` command's argparse parsers.

    python -m tests.cli_reference --write README.md    # (``make readme``) regenerate it

``tests/test_readme.py`` fails when the README and the parsers differ. It lives with the
tests because it reads argparse's private structure, which meshkit's own code may not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from meshkit.cli import build_parser

START = "<!-- cli-reference: generated from the parsers by `make readme`; do not edit -->"
END = "<!-- /cli-reference -->"


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand's parser under it."""
    yield parser
    for sub in subcommands(parser):
        yield from parsers(sub[1])


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, help) of each subcommand, in the order they were added."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, sub, helps.get(name, "")) for name, sub in action.choices.items()]
    return found


def commands(
    parser: argparse.ArgumentParser, path: str = "meshkit", help_text: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    """Every command that runs something (no subcommands of its own), with its path."""
    children = subcommands(parser)
    if not children and path != "meshkit":
        yield path, parser, help_text
    for name, sub, sub_help in children:
        yield from commands(sub, f"{path} {name}", sub_help)


def arguments(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            yield action


def argument_name(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest)
    flags = ", ".join(action.option_strings)
    if action.nargs == 0:
        return flags
    if action.choices is not None:
        return f"{flags} {{{','.join(map(str, action.choices))}}}"
    return f"{flags} {action.metavar or action.dest.upper()}"


def command_section(path: str, parser: argparse.ArgumentParser, help_text: str) -> str:
    lines = [f"### `{path}`", "", (parser.description or help_text).strip(), ""]
    rows = [(argument_name(a), a) for a in arguments(parser)]
    if rows:
        lines += ["| argument | |", "|---|---|"]
        for name, action in rows:
            required = " (required)" if action.required and action.option_strings else ""
            text = (action.help or "").replace("|", "\\|")
            lines.append(f"| `{name}` | {text}{required} |")
        lines.append("")
    return "\n".join(lines)


def reference() -> str:
    """The whole reference: the global flags, then one section per command."""
    root = build_parser()
    top = [f"| `{argument_name(a)}` | {a.help} |" for a in arguments(root) if a.option_strings]
    sections = [command_section(*command) for command in commands(root)]
    head = ["`meshkit` takes these before any command:", "", "| flag | |", "|---|---|", *top, ""]
    return "\n".join([*head, *sections]).rstrip() + "\n"


def in_readme(readme: str) -> str:
    """The part of ``readme`` between the markers."""
    start = readme.index(START) + len(START) + 1
    return readme[start : readme.index(END)]


def rewritten(readme: str) -> str:
    start = readme.index(START) + len(START) + 1
    return readme[:start] + reference() + readme[readme.index(END) :]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--write"] and len(argv) == 2:
        path = Path(argv[1])
        path.write_text(rewritten(path.read_text()))
        return 0
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
