"""The control API's bearer token: generated, checked in constant time, never shown in a ``repr``.

Free of I/O so that the rules are tested without a server. The token itself is only ever compared and printed
once by whoever started the server (the CLI); it never reaches a log line.
"""

from __future__ import annotations

import hmac
import secrets

__all__ = ["ControlToken", "new_token"]


def new_token() -> str:
    """A fresh random token (32 bytes of entropy, URL-safe)."""
    return secrets.token_urlsafe(32)


class ControlToken:
    """The one token the control server accepts, as ``Authorization: Bearer <token>``."""

    __slots__ = ("_expected",)

    def __init__(self, token: str) -> None:
        if not token or token != token.strip() or any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
            raise ValueError("the control token must be non-empty printable ASCII without spaces")
        self._expected = token.encode("ascii")

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries the token (scheme case-insensitive, as RFC 6750)."""
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        try:
            offered = credentials.strip().encode("ascii")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(offered, self._expected)

    def __repr__(self) -> str:
        return "ControlToken(<redacted>)"
