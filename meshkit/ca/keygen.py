"""``python -m meshkit.ca.keygen [SPIFFE_ID]``: a new private key and its CSR, as JSON.

A service runs it at enrollment and at each renewal (``ca.client``), so that the
cryptography package, ~11 MiB resident per process (its Rust extension's pages and its
modules), lives in this short-lived process only. The key travels over the pipe to
its parent and nowhere else. Without a SPIFFE ID the CSR names nothing: the CA takes
the identity from the join token or the current certificate.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from meshkit.ca.x509 import build_csr, csr_pem, new_private_key, private_key_pem
from meshkit.identity import SpiffeId


def main(argv: Sequence[str]) -> int:
    named = SpiffeId.parse(argv[0]) if argv else None
    key = new_private_key()
    json.dump({"key": private_key_pem(key), "csr": csr_pem(build_csr(key, named))}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
