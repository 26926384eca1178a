"""``meshkit new``: a new service project from the ``cookiecutter/`` template.

cookiecutter renders it without questions (``no_input``); the command's flags are the
template's variables. A meshkit requirement that is a local path (a checkout of
meshkit) becomes a PEP 508 direct reference, so the project installs with pip as is.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from cookiecutter.exceptions import (  # type: ignore[import-untyped]
    CookiecutterException,
    OutputDirExistsException,
)
from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]

from meshkit.errors import ConfigError, MeshError
from meshkit.settings import MeshSettings

_HERE = Path(__file__).resolve().parents[1]  # the meshkit package
#: Where the template may be: inside the package (a wheel that force-includes
#: ``cookiecutter/`` as ``meshkit/_template``), else next to it (a checkout).
TEMPLATE_DIRS = (_HERE / "_template", _HERE.parent / "cookiecutter")


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


def template_context(
    name: str,
    *,
    namespace: str = "default",
    allowed_caller: str = "web",
    upstream: str = "inventory",
    requirement: str = "meshkit",
    description: str | None = None,
) -> dict[str, str]:
    """The template's variables, checked like the settings the service will run with."""
    for service in (name, allowed_caller, upstream):
        MeshSettings(service=service, namespace=namespace)  # raises ConfigError if invalid
    return {
        "service_name": name,
        "description": description or "a service in the meshkit mesh",
        "namespace": namespace,
        "allowed_caller": allowed_caller,
        "upstream_service": upstream,
        "meshkit_requirement": meshkit_requirement(requirement),
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
    new.add_argument("name", metavar="NAME", help="service name (a DNS label), e.g. payments")
    new.add_argument("--dir", type=Path, default=Path("."), help="parent directory (default: .)")
    new.add_argument("--namespace", default="default", help="namespace in the SPIFFE ID")
    new.add_argument("--allow", default="web", metavar="SERVICE", help="who may call it")
    new.add_argument("--calls", default="inventory", metavar="SERVICE", help="the service it calls")
    new.add_argument("--description", default=None)
    new.add_argument(
        "--meshkit-requirement",
        default="meshkit",
        metavar="REQ",
        help="pip requirement for meshkit, or the path of a meshkit checkout",
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
    print(f"created {project}")
    print(f"  cd {project} && python -m venv .venv && .venv/bin/pip install -e '.[test]'")
    print("  .venv/bin/pytest")
    return 0
