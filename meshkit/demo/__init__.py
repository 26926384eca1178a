"""The demo: the online shop of ``examples/shop`` run as a real mesh.

``run`` starts the control plane and the shop under a supervisor, ``traffic`` drives
user journeys through it; ``meshkit.observe.golden`` reads each instance's ``/metrics``
into the golden signals per edge. ``meshkit demo`` and ``meshkit up``
(``meshkit.cli.demo``) call it.
"""
