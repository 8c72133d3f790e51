"""The device side of AIP: an agent that registers with a server as a device and runs the tools it is asked for.

Built on ``galaxy_trio.aip`` and the shared transport/backoff/redaction helpers only; it never imports the manager
or the server. Start one with ``agent = await nursery.start(serve_device_agent, url, device_id)`` or
``await nursery.start(DeviceAgent(url, device_id).run)``.
"""

from .agent import AgentState, AgentStats, DeviceAgent, serve_device_agent
from .device_info import DeviceInfoProvider, SystemProbes, detect_ip_address, minimal_system_info, supported_features
from .errors import (
    AgentStopped,
    AuthenticationRejected,
    LinkDead,
    ProtocolViolation,
    RegistrationRejected,
    RegistrationTimeout,
    RetriesExhausted,
    ServerUnusable,
)
from .signature import ParameterError
from .tools import (
    NO_ACTION_RESULT,
    Tool,
    ToolError,
    ToolExecutor,
    ToolRegistry,
    add_builtin_tools,
    default_tools,
)

__all__ = [
    "NO_ACTION_RESULT",
    "AgentState",
    "AgentStats",
    "AgentStopped",
    "AuthenticationRejected",
    "DeviceAgent",
    "DeviceInfoProvider",
    "LinkDead",
    "ParameterError",
    "ProtocolViolation",
    "RegistrationRejected",
    "RegistrationTimeout",
    "RetriesExhausted",
    "ServerUnusable",
    "SystemProbes",
    "Tool",
    "ToolError",
    "ToolExecutor",
    "ToolRegistry",
    "add_builtin_tools",
    "default_tools",
    "detect_ip_address",
    "minimal_system_info",
    "serve_device_agent",
    "supported_features",
]
