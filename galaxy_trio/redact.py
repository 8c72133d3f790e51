"""Keeping credentials out of logs, errors and reprs.

AIP carries its token in the URL's ``?token=`` query parameter, so every place that shows a URL must show the
redacted form. UFO leaked it in access logs and connection messages; galaxy_trio routes every URL it prints
through :func:`redact_url`.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "redact_url", "url_token", "url_with_token"]

REDACTED = "***"
_SECRET_KEYS = frozenset({"token", "api_key", "apikey", "key", "access_token", "password"})


def redact_url(url: str) -> str:
    """``url`` with the values of secret query parameters and any userinfo password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    if not parts.query:
        return urlunsplit(parts._replace(netloc=netloc))
    query = [
        (k, REDACTED if k.lower() in _SECRET_KEYS else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))


def url_token(url: str) -> str | None:
    """The ``token`` query parameter of ``url``, or ``None``."""
    for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if key == "token":
            return value
    return None


def url_with_token(url: str, token: str | None) -> str:
    """``url`` with its ``token`` query parameter set to ``token`` (unchanged when ``token`` is None)."""
    if token is None:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))
