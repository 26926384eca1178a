"""meshkit/_requests.py: requests guesses a body's charset as it always did, over a real
socket, loading charset_normalizer only when it first has to guess; and a process that
imported requests before meshkit keeps requests' own detection.

Each case runs in a fresh interpreter: which modules are loaded is process state.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# A server on 127.0.0.1 answering a body in cp1252 with no charset and no media type,
# then a GET through requests: what requests guessed, the text, and what was loaded.
_CLIENT = """
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
{first}
import requests

TEXT = "Caf\\u00e9 cr\\u00e8me br\\u00fbl\\u00e9e, na\\u00efve fa\\u00e7ade"
BODY = (TEXT + " \\u00e0 la carte. ").encode("cp1252") * 4

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
loaded_before = "charset_normalizer" in sys.modules
response = requests.get(f"http://127.0.0.1:{{server.server_address[1]}}/", timeout=10)
print(json.dumps({{
    "loaded_before": loaded_before,
    "encoding": response.apparent_encoding,
    "text": response.text,
    "loaded_after": "charset_normalizer" in sys.modules,
}}))
server.shutdown()
"""


def _run(first: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT.format(first=first)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "RequestsDependencyWarning" not in done.stderr
    return dict(json.loads(done.stdout.splitlines()[-1]))


@pytest.fixture(scope="module")
def stock() -> dict[str, object]:
    """requests imported before meshkit: requests' own path, untouched."""
    return _run("import requests\nimport meshkit")


def test_a_body_without_a_charset_is_guessed_as_requests_guesses_it(
    stock: dict[str, object],
) -> None:
    meshed = _run("import meshkit")
    assert (meshed["encoding"], meshed["text"]) == (stock["encoding"], stock["text"])
    assert meshed["loaded_before"] is False and meshed["loaded_after"] is True


def test_requests_imported_first_keeps_its_own_detection(stock: dict[str, object]) -> None:
    # A guess by charset_normalizer (a single-byte code page), not requests' UTF-8
    # fallback for a process with no detector.
    assert stock["loaded_before"] is True
    assert stock["encoding"] not in (None, "utf-8") and str(stock["text"]).startswith("Caf")
