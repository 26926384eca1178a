"""Builds meshkit's C speedups (``meshkit/_speedups.c``) into the wheel.

They are optional: without a C compiler (or the Python headers) the wheel is pure Python,
with a warning, and meshkit runs the same paths in Python. An editable install gets the
compiled module next to its source, where the install imports it from.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

EXTENSION = "meshkit._speedups"
SOURCE = "meshkit/_speedups.c"


class SpeedupsBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        self._scratch = tempfile.mkdtemp(prefix="meshkit-speedups-")
        try:
            built = compile_extension(Path(self.root), Path(self._scratch))
        except Exception as exc:  # any failure leaves a pure-Python wheel
            self.app.display_warning(f"meshkit: C speedups not built, Python only: {exc}")
            return
        target = f"meshkit/{built.name}"
        if version == "editable":
            shutil.copy2(built, Path(self.root, target))
        else:
            build_data["force_include"][str(built)] = target
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        scratch = getattr(self, "_scratch", None)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def compile_extension(root: Path, scratch: Path) -> Path:
    """Compile the extension with setuptools' build_ext (the platform's compiler and
    flags, as for any C extension); returns the built module's path."""
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    extension = Extension(EXTENSION, [str(root / SOURCE)], extra_compile_args=["-O2"])
    command = build_ext(Distribution({"name": "meshkit", "ext_modules": [extension]}))
    command.build_lib = str(scratch / "lib")
    command.build_temp = str(scratch / "temp")
    command.ensure_finalized()
    command.run()
    return Path(command.get_ext_fullpath(EXTENSION))
