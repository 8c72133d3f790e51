"""The control plane of a running manager: HTTP API, Prometheus metrics, live events (SSE) and a web dashboard.

Library use::

    async with ConstellationDeviceManager() as manager:
        endpoint = await nursery.start(partial(serve_control, manager, port=0))
        print(endpoint.url)  # endpoint.token is the bearer token; show it once, never log it

Needs the ``control`` extra (Starlette, Hypercorn, prometheus_client, httpx).
"""

from .address import ControlAddressError, is_loopback, parse_hostport
from .auth import new_token
from .server import ControlEndpoint, ControlServeError, serve_control, serve_server_control

__all__ = [
    "ControlAddressError",
    "ControlEndpoint",
    "ControlServeError",
    "is_loopback",
    "new_token",
    "parse_hostport",
    "serve_control",
    "serve_server_control",
]
