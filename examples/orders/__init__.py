"""A FastAPI app in the mesh without subclassing anything: ``Mesh(app, service="orders")``."""
