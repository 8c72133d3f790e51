"""``serve_aip``: the AIP WebSocket server, in trio's ``serve_*`` style.

Start it with ``server = await nursery.start(partial(serve_aip, token=..., port=0))``; it runs until its nursery
is cancelled. The HTTP upgrade is where the token is checked (in constant time, before any WebSocket exists) and
where unknown paths are refused, so an unauthenticated peer never reaches AIP at all.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
from collections.abc import Mapping
from functools import partial
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlsplit

import trio

from ..aip import ClientType
from ..errors import LinkClosed
from ..transport import DEFAULT_MAX_FRAME, LinkRequest, serve_links
from .clients import ClientInfo, ClientRegistry, DeviceLoad
from .connection import ServerContext, handle_connection
from .drivers import default_driver
from .keepalive import Keepalive
from .rules import shown
from .sessions import SessionDriver
from .settings import ServerSettings
from .stats import ServerStats

__all__ = ["AIP_PATH", "AIPServer", "serve_aip"]

logger = logging.getLogger("galaxy_trio.server")

#: The single WebSocket endpoint (PROTOCOL.md §2).
AIP_PATH = "/ws"

_REJECT_NOT_FOUND = b"Not Found: the AIP endpoint is /ws\n"
_REJECT_FORBIDDEN = b"Forbidden: missing or wrong token\n"


class AIPServer:
    """A running AIP server: where it listens, and a read-only view of who is connected.

    Returned by ``nursery.start(serve_aip, ...)``. ``url`` never contains the token; add it with
    :func:`galaxy_trio.redact.url_with_token` when connecting.
    """

    __slots__ = ("_ctx", "_token_digest", "host", "port", "settings", "url")

    def __init__(
        self,
        *,
        host: str,
        token: str,
        driver: SessionDriver,
        settings: ServerSettings,
        keepalive: Keepalive | None = None,
    ) -> None:
        self.host = host
        self.port = 0
        self.url = ""
        self.settings = settings
        self._ctx = ServerContext(ClientRegistry(), settings, driver, keepalive=keepalive)
        # Only a digest is kept: the token itself cannot end up in a repr, a log or a traceback from here.
        self._token_digest = _digest(token)

    def __repr__(self) -> str:
        return f"<AIPServer {self.url or 'not listening'} clients={len(self._ctx.registry.clients)}>"

    # --- inspection (read-only snapshots) -----------------------------------------------------------------------

    def online_clients(self) -> dict[str, ClientType]:
        """Every registered client id with its role, devices and constellations alike."""
        return {client_id: record.role for client_id, record in self._ctx.registry.clients.items()}

    def client_info(self, client_id: str) -> ClientInfo | None:
        record = self._ctx.registry.get(client_id)
        return record.info() if record is not None else None

    def system_info(self, device_id: str) -> Mapping[str, Any] | None:
        """The system_info a connected device sent in its REGISTER (None if unknown or not sent)."""
        record = self._ctx.registry.get(device_id)
        if record is None or record.role is not ClientType.DEVICE:
            return None
        return record.system_info

    def device_load(self, device_id: str) -> DeviceLoad | None:
        """Active (never above 1), peak and queued sessions of a connected device."""
        record = self._ctx.registry.get(device_id)
        if record is None or record.role is not ClientType.DEVICE:
            return None
        return self._ctx.registry.load(record)

    @property
    def stats(self) -> ServerStats:
        """Frames in and out, and frames refused by rule, since the server started (read-only use)."""
        return self._ctx.stats

    def running_sessions(self) -> dict[str, str]:
        """session_id → the device it runs (or waits) on, for every session not yet ended."""
        return {sid: s.device.client_id for sid, s in self._ctx.registry.sessions.items()}

    # --- the HTTP upgrade ---------------------------------------------------------------------------------------

    def _token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(_digest(candidate), self._token_digest)

    async def handle_request(self, request: LinkRequest) -> None:
        """Answer one upgrade and serve its connection. Nothing a peer does may raise out of here: that would
        only cost the peer its connection, but a bug would hide behind it."""
        remote = request.remote
        try:
            target = urlsplit(request.target)
            if target.path != AIP_PATH:
                logger.info("refused %s: unknown path %s (HTTP 404)", remote, shown(target.path))
                await request.reject(404, _REJECT_NOT_FOUND)
                return
            tokens = [value for key, value in parse_qsl(target.query, keep_blank_values=True) if key == "token"]
            if len(tokens) != 1 or not self._token_ok(tokens[0]):
                logger.warning("refused %s on %s: missing or wrong token (HTTP 403)", remote, AIP_PATH)
                await request.reject(403, _REJECT_FORBIDDEN)
                return
            link = await request.accept()
        except LinkClosed:
            logger.debug("%s went away during the handshake", remote)
            return
        except Exception:
            logger.exception("internal error during the handshake with %s", remote)
            return
        logger.debug("accepted %s on %s", remote, AIP_PATH)
        try:
            await handle_connection(self._ctx, link, remote)
        except Exception:
            logger.exception("internal error on the connection from %s", remote)

    def listening(self, port: int, *, tls: bool) -> None:
        """Record where the server listens (``port`` as bound), once it does."""
        self.port = port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'wss' if tls else 'ws'}://{host}:{self.port}{AIP_PATH}"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


async def serve_aip(
    *,
    host: str = "127.0.0.1",
    port: int = 5005,
    token: str,
    driver: SessionDriver = default_driver,
    max_frame_size: int = DEFAULT_MAX_FRAME,
    ssl_context: ssl.SSLContext | None = None,
    settings: ServerSettings | None = None,
    task_status: trio.TaskStatus[AIPServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve AIP on ``ws://host:port/ws`` (``wss://`` with ``ssl_context``) until cancelled.

    ``token`` is the shared key clients put in ``?token=``; a missing or wrong one gets HTTP 403 at the upgrade.
    ``port=0`` picks a free port (read it from the returned :class:`AIPServer`). ``max_frame_size`` bounds one
    incoming frame (a bigger one closes the connection with 1009). ``driver`` runs each task session; see
    :mod:`galaxy_trio.server.sessions`. ``settings`` holds the server's deadlines and limits.
    """
    if not token:
        raise ValueError("serve_aip needs a non-empty token")
    if max_frame_size <= 0:
        raise ValueError(f"max_frame_size must be positive, got {max_frame_size}")
    settings = settings if settings is not None else ServerSettings()
    keepalive = Keepalive(settings.ping_interval, settings.ping_timeout) if settings.ping_interval is not None else None
    server = AIPServer(host=host, token=token, driver=driver, settings=settings, keepalive=keepalive)
    async with trio.open_nursery() as nursery:
        if keepalive is not None:
            nursery.start_soon(keepalive.run)  # one task watches every connection (.keepalive)
        bound_port: int = await nursery.start(
            partial(
                serve_links,
                server.handle_request,
                host,
                port,
                ssl_context=ssl_context,
                max_message_size=max_frame_size,
                handshake_deadline=settings.handshake_deadline,
            )
        )
        server.listening(bound_port, tls=ssl_context is not None)
        logger.info("AIP server listening on %s", server.url)
        task_status.started(server)
    raise RuntimeError("the link server stopped serving")  # serve_links only ends by cancellation
