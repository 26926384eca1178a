from __future__ import annotations

import inspect

import meshkit


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(meshkit).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(meshkit.__all__)


def test_all_names_resolve() -> None:
    for name in meshkit.__all__:
        assert getattr(meshkit, name) is not None
