from __future__ import annotations

import inspect
import subprocess
import sys

import meshkit


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name in dir(meshkit)
        if not name.startswith("_") and not inspect.ismodule(getattr(meshkit, name))
    }
    assert public == set(meshkit.__all__)


def test_importing_a_module_loads_no_more_than_it_needs() -> None:
    # The certificate helper imports meshkit.ca.x509 alone: it must not load the mesh.
    code = "import sys, meshkit.ca.x509; print('meshkit.app' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_all_names_resolve() -> None:
    for name in meshkit.__all__:
        assert getattr(meshkit, name) is not None
