"""Operating a mesh: what the registry and each instance's admin port say about it."""
