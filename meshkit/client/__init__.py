"""The resilient mesh client: httpx transports that wrap each other."""
