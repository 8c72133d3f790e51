"""galaxy_trio's AIP server: the device-side hub that UFO devices and constellations (UFO Galaxy, our manager)
connect to, wire-compatible with UFO's ``ufo.server.app`` and free of its defects (PROTOCOL.md §11).

Public API:

- :func:`serve_aip` — run the server (``server = await nursery.start(partial(serve_aip, token=..., port=0))``);
- :class:`AIPServer` — what ``serve_aip`` hands back: ``port``, ``url`` (without token), and read-only views of
  online clients, stored system_info and per-device session load;
- :class:`ServerSettings` — the server's deadlines and limits;
- :data:`SessionDriver`, :class:`SessionHandle`, :class:`TaskFailed` — the seam where a planner (an LLM, a script)
  decides which tools a task runs; :func:`default_driver` runs the one tool a request names.
"""

from .app import AIP_PATH, AIPServer, serve_aip
from .clients import ClientInfo, DeviceLoad
from .drivers import ToolCall, default_driver, parse_tool_request
from .sessions import DeviceDisconnected, SessionDriver, SessionHandle, TaskFailed
from .settings import ServerSettings

__all__ = [
    "AIP_PATH",
    "AIPServer",
    "ClientInfo",
    "DeviceDisconnected",
    "DeviceLoad",
    "ServerSettings",
    "SessionDriver",
    "SessionHandle",
    "TaskFailed",
    "ToolCall",
    "default_driver",
    "parse_tool_request",
    "serve_aip",
]
