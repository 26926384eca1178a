"""The meshkit certificate authority (``meshkit ca serve``).

``x509`` builds SPIFFE X.509-SVIDs with every extension explicit; ``authority`` signs
CSRs for the identity a caller proved (a join token or its current certificate),
never for names a CSR asks for; ``store`` keeps the CA's keys and state on disk;
``tokens`` are the one-time join tokens; ``server`` is the HTTP API; ``client``
bootstraps trust pinned by the root's fingerprint, obtains and renews a workload's
certificate. The CA never imports the mesh client or the registry.
"""

from __future__ import annotations

#: Namespace and service of the CA's own server certificate (its clients check it);
#: never issued to workloads.
CA_NAMESPACE = "meshkit"
CA_SERVICE = "ca"
