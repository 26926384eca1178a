"""Operating the mesh: what is running, how it is doing, and where it hurts.

Tools for operators, outside the request path: they read the registry (every instance,
healthy or not, with the admin port it published) and scrape each instance's admin
``/metrics``. ``golden`` turns expositions into the golden signals per edge (requests/s,
success, p50/p99); ``scrape`` discovers and scrapes instances and keeps a sliding window
of what each round added; ``dashboard`` serves the live web page (``meshkit
dashboard``), ``top`` the live terminal table (``meshkit top``), ``tap`` streams the
recent requests each instance's admin port keeps (``meshkit tap``), ``check`` is the
doctor (``meshkit check``), ``prometheus_config`` and ``grafana/`` set up Prometheus and
Grafana over the same metrics. The commands themselves live in ``meshkit.cli``.
"""
