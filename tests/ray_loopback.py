"""`ray start` for a second Ray node on the same machine, kept on loopback (tests only).

Ray rewrites 127.0.0.1 in ``--address`` and ``--node-ip-address`` into the machine's network address
(``ray._private.services.resolve_ip_for_localhost``), and the switch that stops it
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) also refuses ``ray start --address``. So the second node
runs the official CLI with that rewrite turned off. Real clusters use real addresses and plain
``ray start``.
"""
import sys

import ray._private.services as services
from ray.scripts.scripts import main

services.resolve_ip_for_localhost = lambda host: host
sys.argv[0] = "ray"
sys.exit(main())
