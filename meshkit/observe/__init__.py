"""Operating a mesh from outside it: what the registry and each instance's admin port say.

``check`` (``meshkit check``) diagnoses the registry, the CA, the local identity and each
service; ``tap`` streams the requests an instance serves; ``prometheus`` writes the
scrape configuration; ``grafana/`` holds the dashboards; ``instances`` lists every
registered instance with its admin port.
"""
