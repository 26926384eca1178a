"""The architecture, checked: what import-linter cannot see.

``.importlinter`` holds the layers (run by ``make lint``). Here: no import hidden in a
function (the way cycles were hidden before), third-party private names only inside
the one adapter module of their library, the middleware on the OpenTelemetry API
only, and a docstring that says what each package is for.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit import _httpx, _requests
from meshkit.telemetry import _otel_sdk

PACKAGE = Path(__file__).resolve().parent.parent / "meshkit"
#: The one module per library allowed to use that library's private names.
ADAPTERS = {
    "telemetry/_otel_sdk.py": ("opentelemetry",),
    "_httpx.py": ("httpx", "httpcore"),
    "middleware/_starlette.py": ("starlette",),
    "serving/cycle.py": ("uvicorn",),
}
#: The standard library's own underscored public names (argparse documents no other
#: type for ``add_subparsers()``'s result; a NamedTuple's methods start with ``_``).
STDLIB_NAMES = {"_SubParsersAction", "_asdict", "_replace", "_fields"}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("_template/"):
            continue
        yield relative, ast.parse(path.read_text(), filename=str(path))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _nested_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports anywhere but at module level (``if TYPE_CHECKING:`` blocks count as it)."""
    top_level: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If | ast.Try):
            top_level.update(id(n) for n in ast.walk(node))
        top_level.add(id(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top_level:
            yield node


def test_no_import_hides_in_a_function() -> None:
    found = [f"{name}:{node.lineno}" for name, tree in modules() for node in _nested_imports(tree)]
    assert found == []


def _imported_private_names(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "meshkit":
                continue
            if any(_private(part) for part in node.module.split(".")):
                yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names if _private(a.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] != "meshkit" and any(_private(p) for p in parts):
                    yield alias.name


def _defined_private_names(tree: ast.Module) -> Iterator[str]:
    """Private names a module defines itself: attributes it assigns, class fields,
    functions, classes and ``__slots__`` entries."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            yield node.attr
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value  # __slots__ entries, getattr/setattr names, dict keys


def _used_private_attributes(tree: ast.Module) -> Iterator[tuple[str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            yield node.attr, node.lineno


def test_third_party_private_names_live_only_in_their_adapter() -> None:
    parsed = [(name, tree) for name, tree in modules() if name not in ADAPTERS]
    ours = {d for _, tree in parsed for d in _defined_private_names(tree)}
    found = []
    for name, tree in parsed:
        found += [f"{name}: imports {n}" for n in _imported_private_names(tree)]
        found += [
            f"{name}:{line}: .{attr}"
            for attr, line in _used_private_attributes(tree)
            if attr not in ours and attr not in STDLIB_NAMES
        ]
    assert found == []


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_each_adapter_exists(adapter: str) -> None:
    assert (PACKAGE / adapter).is_file()


def test_the_middleware_uses_the_opentelemetry_api_only() -> None:
    sdk = ("opentelemetry.sdk", "opentelemetry.exporter")
    found = [
        f"{name}: {node.module}"
        for name, tree in modules()
        if name.startswith(("middleware/", "client/")) or name in ("mesh.py", "app.py")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(sdk)
    ]
    assert found == []


def test_every_package_says_what_it_is_for() -> None:
    for init in sorted(PACKAGE.rglob("__init__.py")):
        if "_template" in init.parts:
            continue
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring) > 80, init.relative_to(PACKAGE)


def test_the_adapters_take_their_fast_paths_with_these_releases() -> None:
    """With the installed releases, each adapter's check passes. ``make test-latest``
    runs this against the newest ones: a release that breaks a check fails here the day
    it lands, though users only get the stock path and a warning."""
    assert _httpx.fast_paths_problem() is None
    assert _otel_sdk.usable()
    assert _requests.lazy()
