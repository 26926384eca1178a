"""Service discovery: the Registry protocol, the Consul backend, the watched cache and the
embedded Consul-compatible dev registry."""
