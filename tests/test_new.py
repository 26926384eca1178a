"""``meshkit new``: render the template, and (slow) install it and run its own tests."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from meshkit.cli import main
from meshkit.cli.new import INSTALL_COMMANDS, meshkit_requirement, requirement_of
from meshkit.errors import MeshError
from tests import walkthrough

REPO = Path(__file__).resolve().parent.parent


def test_renders_a_project_with_the_flags_as_variables(tmp_path: Path) -> None:
    argv = ["new", "billing", "--dir", str(tmp_path), "--namespace", "shop"]
    argv += ["--allow", "cart", "--calls", "ledger", "--meshkit-requirement", str(REPO)]
    assert main(argv) == 0
    project = tmp_path / "billing"
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == [
        ".gitignore",
        "README.md",
        "billing/__init__.py",
        "billing/app.py",
        "pyproject.toml",
        "tests/__init__.py",
        "tests/conftest.py",
        "tests/test_app.py",
        "tests/upstream_stub.py",
    ]
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "billing"
    assert pyproject["project"]["dependencies"] == [f"meshkit @ {REPO.as_uri()}"]
    app = (project / "billing" / "app.py").read_text()
    assert '@allow("cart")' in app
    assert 'UPSTREAM = "ledger"' in app
    assert 'NAMESPACE = "shop"' in app
    assert "request.app.client(UPSTREAM)" in app
    conftest = (project / "tests" / "conftest.py").read_text()
    assert 'NAMESPACE = "shop"' in conftest
    assert "mesh.start(APP, SERVICE, namespace=NAMESPACE)" in conftest  # meshkit's fixture
    for source in project.rglob("*.py"):
        compile(source.read_text(), str(source), "exec")


def test_a_hyphenated_name_makes_an_underscored_package(tmp_path: Path) -> None:
    assert main(["new", "order-history", "--dir", str(tmp_path)]) == 0
    project = tmp_path / "order-history"
    assert (project / "order_history" / "app.py").is_file()
    assert "meshkit run order_history.app:app" in (project / "README.md").read_text()


def test_by_default_it_depends_on_the_meshkit_running_it_and_says_so(tmp_path: Path) -> None:
    """This checkout is installed editable (``make``): the project depends on it, by path,
    with a comment saying where it came from, so its install works with no index."""
    assert main(["new", "greeter", "--dir", str(tmp_path)]) == 0
    text = (tmp_path / "greeter" / "pyproject.toml").read_text()
    assert tomllib.loads(text)["project"]["dependencies"] == [f"meshkit @ {REPO.as_uri()}"]
    assert "# The meshkit that rendered this project: an editable checkout" in text


def test_without_calls_the_project_calls_no_other_service(tmp_path: Path) -> None:
    assert main(["new", "greeter", "--dir", str(tmp_path)]) == 0
    project = tmp_path / "greeter"
    assert not (project / "tests" / "upstream_stub.py").exists()
    for path in ("greeter/app.py", "tests/test_app.py", "README.md"):
        text = (project / path).read_text()
        assert "upstream" not in text.lower(), path
        assert "inventory" not in text, path
    for source in project.rglob("*.py"):
        compile(source.read_text(), str(source), "exec")


@pytest.mark.parametrize(
    ("direct_url", "expected"),
    [
        (None, "meshkit==1.2.0"),
        (
            {"url": "file:///src/meshkit", "dir_info": {"editable": True}},
            "meshkit @ file:///src/meshkit",
        ),
        ({"url": "file:///src/meshkit", "dir_info": {}}, "meshkit @ file:///src/meshkit"),
        (
            {"url": "file:///w/meshkit-1.2.0-py3-none-any.whl", "archive_info": {}},
            "meshkit @ file:///w/meshkit-1.2.0-py3-none-any.whl",
        ),
        (
            {"url": "https://g.example/m.git", "vcs_info": {"vcs": "git", "commit_id": "ab12"}},
            "meshkit @ git+https://g.example/m.git@ab12",
        ),
    ],
)
def test_the_running_meshkit_as_a_requirement(direct_url: object, expected: str) -> None:
    """Each way PEP 610 records an install, as the requirement that installs it again."""
    record = None if direct_url is None else json.dumps(direct_url)
    assert requirement_of("1.2.0", record).spec == expected


def test_an_unreadable_direct_url_asks_for_the_flag() -> None:
    with pytest.raises(MeshError, match="--meshkit-requirement"):
        requirement_of("1.2.0", "{not json")


def test_refuses_an_existing_project_and_bad_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new", "billing", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["new", "billing", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().endswith("billing already exists")


def test_requirements_pass_through_unless_they_are_a_checkout(tmp_path: Path) -> None:
    assert meshkit_requirement("meshkit>=0.1") == "meshkit>=0.1"
    direct = "meshkit @ https://example.org/meshkit-0.1.tar.gz"
    assert meshkit_requirement(direct) == direct
    assert meshkit_requirement(str(REPO)) == f"meshkit @ {REPO.as_uri()}"
    assert main(["new", "x", "--dir", str(tmp_path), "--meshkit-requirement", str(tmp_path)]) == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_rendered_readme_runs_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a user does after `meshkit new`: the commands its README (and the command
    itself) print, in the project: install and test it in a fresh virtualenv, then run
    it in a mesh and call it (``tests.walkthrough``); then `meshkit new` from that venv."""
    assert main(["new", "billing", "--dir", str(tmp_path), "--calls", "ledger"]) == 0
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()[2:]]
    project = tmp_path / "billing"
    blocks = list(
        walkthrough.terminals(walkthrough.up_on_free_ports((project / "README.md").read_text()))
    )
    assert blocks[0].lines == list(INSTALL_COMMANDS) == printed
    assert [block.server for block in blocks[1:3]] == [
        walkthrough.SERVERS["meshkit up"],
        walkthrough.SERVERS["meshkit run"],
    ]
    assert "meshkit call billing /hello --as web" in blocks[3].lines[-1]
    env = walkthrough.clean_environment()
    # As on a fresh machine: pip caches the wheels it builds from a path with a '-' in it
    # (it takes it for a versioned archive), so it would install a meshkit built from
    # this checkout by an earlier run instead of the checkout as it is.
    env["PIP_CACHE_DIR"] = str(tmp_path / "pip-cache")
    walkthrough.run_terminals(blocks, project, env)
    # `meshkit new` from the installed meshkit, away from any checkout: the template is
    # in the wheel, and the new project depends on what that venv has.
    elsewhere = tmp_path / "elsewhere"
    again = subprocess.run(
        [str(project / ".venv" / "bin" / "meshkit"), "new", "ledger", "--dir", str(elsewhere)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr
    assert (elsewhere / "ledger" / "ledger" / "app.py").is_file()
    assert not list(elsewhere.rglob("__pycache__"))  # pip's caches of the template stay behind
    pyproject = tomllib.loads((elsewhere / "ledger" / "pyproject.toml").read_text())
    assert pyproject["project"]["dependencies"] == [f"meshkit @ {REPO.as_uri()}"]


def test_a_missing_template_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("meshkit.cli.new.TEMPLATE_DIRS", (tmp_path / "nowhere",))
    assert main(["new", "billing", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "meshkit: error: the service template is not installed with this meshkit\n"
    )


@pytest.mark.parametrize("calls", [[], ["--calls", "ledger"]])
def test_the_rendered_code_has_no_unused_or_undefined_names(
    calls: list[str], tmp_path: Path
) -> None:
    """Each variant of the template's conditionals renders code pyflakes finds clean."""
    assert main(["new", "billing", "--dir", str(tmp_path), *calls]) == 0
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "F,E9", "."],
        cwd=tmp_path / "billing",
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout
