"""Two services, one calling the other over mTLS: ``python -m examples.hello``."""
