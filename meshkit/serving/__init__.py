"""Serving: one uvicorn setup and one listen path for every port meshkit serves.

``protocol`` is the HTTP protocol (peer identity in the ASGI scope, coalesced writes);
``server`` runs a mesh member's service and admin ports with ordered shutdown. The
service port, the admin port, the CA and the dev registry all listen through here.
"""
