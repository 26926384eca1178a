"""The embedded single-node registry: a faithful subset of Consul's HTTP API, in memory.

What ``consul agent -dev`` answers for the agent, health, catalog, status and KV endpoints
the mesh and py-consul use, with blocking queries. Nothing in meshkit depends on it being
this server rather than a real Consul agent.
"""
