"""``meshkit new``: a new service project from the ``cookiecutter/`` template.

cookiecutter renders it without questions (``no_input``); the command's flags are the
template's variables. The project depends on the meshkit that rendered it, so its
documented install works on any machine that can run ``meshkit new``: an installed
release is pinned to its version; a checkout, a wheel file or a VCS install (what
``direct_url.json`` records, PEP 610) becomes a PEP 508 direct reference to it. The
rendered ``pyproject.toml`` says which, so the user can change it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from cookiecutter.exceptions import (  # type: ignore[import-untyped]
    CookiecutterException,
    OutputDirExistsException,
)
from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]

from meshkit.cli._args import namespace_name, service_name
from meshkit.errors import ConfigError, MeshError
from meshkit.settings import MeshSettings

_HERE = Path(__file__).resolve().parents[1]  # the meshkit package
#: Where the template may be: inside the package (a wheel that force-includes
#: ``cookiecutter/`` as ``meshkit/_template``), else next to it (a checkout).
TEMPLATE_DIRS = (_HERE / "_template", _HERE.parent / "cookiecutter")


#: What the rendered README tells the user to run first (tests check it says the same).
INSTALL_COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]'",
    ".venv/bin/pytest",
)


def template_dir() -> Path:
    for candidate in TEMPLATE_DIRS:
        if (candidate / "cookiecutter.json").is_file():
            return candidate
    raise MeshError("the service template is not installed with this meshkit")


def meshkit_requirement(requirement: str) -> str:
    """``requirement`` for pip; a path to a meshkit checkout becomes ``meshkit @ file://...``.

    Like pip, only text with a slash or a leading ``.``/``~`` is a path: ``meshkit`` is
    the package even where a ``meshkit/`` directory happens to be.
    """
    looks_like_path = "/" in requirement or requirement.startswith((".", "~"))
    if not looks_like_path or "@" in requirement or "://" in requirement:
        return requirement
    path = Path(requirement).expanduser()
    if path.is_dir():
        if not (path / "pyproject.toml").is_file():
            raise ConfigError(f"--meshkit-requirement {requirement}: no pyproject.toml there")
        return f"meshkit @ {path.resolve().as_uri()}"
    raise ConfigError(f"--meshkit-requirement {requirement}: not a directory")


@dataclass(frozen=True)
class Requirement:
    """A pip requirement for meshkit and, for the reader of the project, where it came from."""

    spec: str
    origin: str


def running_requirement() -> Requirement:
    """The meshkit running this command, as a requirement pip can install elsewhere."""
    try:
        distribution = metadata.distribution("meshkit")
    except metadata.PackageNotFoundError:
        # Imported from a checkout that was never installed: depend on that checkout.
        return Requirement(meshkit_requirement(str(_HERE.parent)), "the checkout running it")
    return requirement_of(distribution.version, distribution.read_text("direct_url.json"))


def requirement_of(version: str, direct_url: str | None) -> Requirement:
    """The requirement for an installed meshkit of ``version``; ``direct_url`` is its
    ``direct_url.json`` (PEP 610), present when it was installed from a URL or a path."""
    if direct_url is None:
        return Requirement(f"meshkit=={version}", f"release {version}, from a package index")
    try:
        record = json.loads(direct_url)
        url = str(record["url"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            "meshkit's direct_url.json is unreadable: give --meshkit-requirement"
        ) from exc
    if "vcs_info" in record:
        vcs = record["vcs_info"]
        return Requirement(
            f"meshkit @ {vcs['vcs']}+{url}@{vcs['commit_id']}", f"{vcs['vcs']} commit"
        )
    if "dir_info" in record:
        editable = "an editable checkout" if record["dir_info"].get("editable") else "a directory"
        return Requirement(f"meshkit @ {url}", f"{editable} (version {version})")
    return Requirement(f"meshkit @ {url}", f"an archive (version {version})")


def template_context(
    name: str,
    *,
    namespace: str = "default",
    allowed_caller: str = "web",
    upstream: str | None = None,
    requirement: str | None = None,
    description: str | None = None,
) -> dict[str, str]:
    """The template's variables, checked like the settings the service will run with.

    Without ``upstream`` the project calls no other service; without ``requirement`` it
    depends on the meshkit running this (``running_requirement``).
    """
    for service in (name, allowed_caller, upstream or name):
        MeshSettings(service=service, namespace=namespace)  # raises ConfigError if invalid
    if requirement is None:
        pinned = running_requirement()
    else:
        pinned = Requirement(meshkit_requirement(requirement), "--meshkit-requirement")
    return {
        "service_name": name,
        "description": description or "a service in the meshkit mesh",
        "namespace": namespace,
        "allowed_caller": allowed_caller,
        "upstream_service": upstream or "",
        "meshkit_requirement": pinned.spec,
        "meshkit_origin": pinned.origin,
    }


def render(context: dict[str, str], *, directory: Path, template: Path | None = None) -> Path:
    """Render the template into ``directory/<service name>``; return that path."""
    try:
        project = cookiecutter(
            str(template or template_dir()),
            no_input=True,
            extra_context=context,
            output_dir=str(directory),
        )
    except OutputDirExistsException as exc:
        raise ConfigError(f"{directory / context['service_name']} already exists") from exc
    except CookiecutterException as exc:
        raise MeshError(f"cannot render the service template: {exc}") from exc
    # pip byte-compiles the template's .py files when it installs the wheel, and
    # cookiecutter copies those caches along: drop them, they belong to the template.
    for cache in sorted(Path(project).rglob("__pycache__")):
        shutil.rmtree(cache)
    return Path(project)


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    new = subparsers.add_parser(
        "new",
        help="create a service project from the meshkit template",
        description="Create NAME/ with a ServiceApp, a policy, a mesh call, tests and a README.",
    )
    new.add_argument(
        "name", metavar="NAME", type=service_name, help="service name (a DNS label), e.g. payments"
    )
    new.add_argument("--dir", type=Path, default=Path("."), help="parent directory (default: .)")
    new.add_argument(
        "--namespace",
        default="default",
        type=namespace_name,
        help="namespace in the SPIFFE ID (default: default)",
    )
    new.add_argument(
        "--allow",
        default="web",
        metavar="SERVICE",
        type=service_name,
        help="the service that may call it (default: web)",
    )
    new.add_argument(
        "--calls",
        default=None,
        type=service_name,
        metavar="SERVICE",
        help="a service it calls by name, with a stub of it in the tests (default: none)",
    )
    new.add_argument(
        "--description",
        default=None,
        help="one line for the README and pyproject (default: a service in the meshkit mesh)",
    )
    new.add_argument(
        "--meshkit-requirement",
        default=None,
        metavar="REQ",
        help="pip requirement for meshkit, or the path of a meshkit checkout (default: the "
        "meshkit running this: its version, or its checkout, wheel or VCS URL)",
    )
    new.set_defaults(handler=_new_command)


def _new_command(args: argparse.Namespace) -> int:
    context = template_context(
        args.name,
        namespace=args.namespace,
        allowed_caller=args.allow,
        upstream=args.calls,
        requirement=args.meshkit_requirement,
        description=args.description,
    )
    project = render(context, directory=args.dir)
    print(f"created {project} (meshkit requirement: {context['meshkit_requirement']})")
    print(f"  cd {project}")
    for command in INSTALL_COMMANDS:
        print(f"  {command}")
    return 0
