"""``meshkit new``: render the template, and (slow) install it and run its own tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from meshkit.cli import main
from meshkit.cli.new import meshkit_requirement

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
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["dependencies"] == ["meshkit"]


def test_refuses_an_existing_project_and_bad_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new", "billing", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["new", "billing", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().endswith("billing already exists")
    assert main(["new", "Billing_Service", "--dir", str(tmp_path)]) == 1
    assert "must be a DNS label" in capsys.readouterr().err


def test_requirements_pass_through_unless_they_are_a_checkout(tmp_path: Path) -> None:
    assert meshkit_requirement("meshkit>=0.1") == "meshkit>=0.1"
    direct = "meshkit @ https://example.org/meshkit-0.1.tar.gz"
    assert meshkit_requirement(direct) == direct
    assert meshkit_requirement(str(REPO)) == f"meshkit @ {REPO.as_uri()}"
    assert main(["new", "x", "--dir", str(tmp_path), "--meshkit-requirement", str(tmp_path)]) == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_rendered_project_installs_and_its_tests_pass(tmp_path: Path) -> None:
    """What a user does after `meshkit new`: a fresh venv, pip install, pytest (with the
    ``mesh`` fixture from meshkit's pytest plugin); then `meshkit new` from that venv."""
    assert main(["new", "billing", "--dir", str(tmp_path), "--meshkit-requirement", str(REPO)]) == 0
    project = tmp_path / "billing"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{project}[test]"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert re.search(r"\b6 passed\b", tests.stdout), tests.stdout
    # `meshkit new` from the installed wheel, away from any checkout: the template is in it.
    elsewhere = tmp_path / "elsewhere"
    again = subprocess.run(
        [str(venv / "bin" / "meshkit"), "new", "ledger", "--dir", str(elsewhere)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr
    assert (elsewhere / "ledger" / "ledger" / "app.py").is_file()
    assert not list(elsewhere.rglob("__pycache__"))  # pip's caches of the template stay behind


def test_a_missing_template_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("meshkit.cli.new.TEMPLATE_DIRS", (tmp_path / "nowhere",))
    assert main(["new", "billing", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "meshkit: error: the service template is not installed with this meshkit\n"
    )
