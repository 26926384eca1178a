"""Run greeter and frontend with certificates made for the example, call through both."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from meshkit.ca.x509 import LocalAuthority
from meshkit.testing import Connection, ServiceProcess, context_for


def main() -> int:
    authority = LocalAuthority("meshkit.local")
    with tempfile.TemporaryDirectory(prefix="meshkit-hello-") as directory:
        certs = Path(directory)
        greeter = ServiceProcess(
            "examples.hello.greeter:app",
            service="greeter",
            identity=authority.issue("greeter"),
            identity_dir=certs,
        )
        with greeter:
            print(f"greeter  serving mTLS on 127.0.0.1:{greeter.port}")
            frontend = ServiceProcess(
                "examples.hello.frontend:app",
                service="frontend",
                identity=authority.issue("frontend"),
                identity_dir=certs,
                env={"GREETER_PORT": str(greeter.port)},
            )
            with frontend:
                print(f"frontend serving mTLS on 127.0.0.1:{frontend.port}")
                user = authority.issue("demo-user")
                connection = Connection(frontend.port, context_for(user, authority.bundle_pem))
                status, body = connection.get("/")
                connection.close()
                print(f"demo-user -> frontend -> greeter: {status} {json.dumps(body)}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
