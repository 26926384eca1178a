"""A dev registry, greeter and frontend with certificates made for the example; a call
from a demo user through frontend to greeter, found by name through the registry."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from meshkit.ca.x509 import LocalAuthority
from meshkit.testing import Connection, RegistryProcess, ServiceProcess, context_for


def main() -> int:
    authority = LocalAuthority("meshkit.local")
    with (
        tempfile.TemporaryDirectory(prefix="meshkit-hello-") as directory,
        RegistryProcess() as registry,
    ):
        print(f"registry serving on {registry.address}")
        certs = Path(directory)
        services = [
            ServiceProcess(
                f"examples.hello.{name}:app",
                service=name,
                identity=authority.issue(name),
                identity_dir=certs,
                registry=registry.address,
            )
            for name in ("greeter", "frontend")
        ]
        try:
            for service in services:
                service.start()
                print(f"{service.service:<9} serving mTLS on 127.0.0.1:{service.port}")
            user = authority.issue("demo-user")
            connection = Connection(services[1].port, context_for(user, authority.bundle_pem))
            status, body = connection.get("/")
            connection.close()
            print(f"demo-user -> frontend -> greeter: {status} {json.dumps(body)}")
        finally:
            for service in reversed(services):
                service.stop()
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
