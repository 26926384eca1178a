"""Drop the upstream stub when the service calls no other service (no ``--calls``)."""

from pathlib import Path

if not "{{ cookiecutter.upstream_service }}":
    Path("tests", "upstream_stub.py").unlink()
