"""Redis URLs for fleet mode: parsed and checked without a Redis client, so the CLI can refuse a bad ``--redis``
before it knows whether valkey-glide is installed."""

from __future__ import annotations

from typing import Final, NamedTuple
from urllib.parse import unquote, urlsplit

from ..redact import redact_url

__all__ = ["RedisTarget", "parse_redis_url"]

_SCHEMES: Final = {"redis": False, "valkey": False, "rediss": True, "valkeys": True}


class RedisTarget(NamedTuple):
    """Where a Redis URL points. ``display`` is the URL with any password redacted."""

    host: str
    port: int
    database: int
    username: str | None
    password: str | None
    tls: bool
    display: str


def parse_redis_url(url: str) -> RedisTarget:
    """``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS; ``valkey(s)://`` too).

    Raises ``ValueError`` naming what is wrong, never quoting the password.
    """
    display = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid Redis URL {display}: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"invalid Redis URL {display}: scheme must be one of {', '.join(_SCHEMES)}")
    if not parts.hostname:
        raise ValueError(f"invalid Redis URL {display}: no host")
    if parts.query or parts.fragment:
        raise ValueError(f"invalid Redis URL {display}: query strings and fragments are not supported")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"invalid Redis URL {display}: the path must be a database number, got {path!r}")
    return RedisTarget(
        host=parts.hostname,
        port=6379 if port is None else port,
        database=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=_SCHEMES[parts.scheme],
        display=display,
    )
