"""Where the control server listens: ``HOST:PORT`` parsing and the loopback rule, free of I/O.

The control API can reconnect, disconnect and drive every device, so it listens on loopback unless the caller
says, explicitly, that it wants to be reachable from other machines.
"""

from __future__ import annotations

import ipaddress

from ..errors import GalaxyTrioError

__all__ = ["ControlAddressError", "check_bind", "format_host", "is_loopback", "parse_hostport"]


class ControlAddressError(GalaxyTrioError, ValueError):
    """A ``--control`` address that is malformed, or not loopback without an explicit permission."""


def parse_hostport(text: str) -> tuple[str, int]:
    """``127.0.0.1:8080``, ``[::1]:0``, ``localhost:0`` or ``:0`` (loopback) → (host, port)."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ControlAddressError(f"control address {text!r} has no port; give HOST:PORT, e.g. 127.0.0.1:8470")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ControlAddressError(f"control address {text!r}: write an IPv6 host in brackets, e.g. [::1]:8470")
    host = host or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ControlAddressError(f"control address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ControlAddressError(f"control address {text!r}: port {port} is not 0-65535 (0: any free port)")
    return host, port


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (names are not resolved: only that one)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, allow_remote: bool) -> None:
    """Refuse a non-loopback bind unless ``allow_remote``: the API steers the whole fleet."""
    if not allow_remote and not is_loopback(host):
        raise ControlAddressError(
            f"refusing to serve the control API on {host!r}, which is not a loopback address: anyone who reaches it"
            " with the token steers the fleet. Bind 127.0.0.1 (and tunnel), or pass allow_remote=True"
            " (--control-allow-remote) if you mean it"
        )


def format_host(host: str) -> str:
    """``host`` as it appears in a URL or a bind string (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host
