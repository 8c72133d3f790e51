"""The control plane's I/O-free rules: addresses, the token check, SSE framing, failure classes."""

from __future__ import annotations

import pytest

from galaxy_trio.control import ControlAddressError, ControlEndpoint, is_loopback, parse_hostport
from galaxy_trio.control.address import check_bind
from galaxy_trio.control.auth import ControlToken, new_token
from galaxy_trio.control.reasons import reason_class
from galaxy_trio.control.sse import comment, frame


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8470", ("127.0.0.1", 8470)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:0", ("localhost", 0)),
        (":0", ("127.0.0.1", 0)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
    ],
)
def test_hostport_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("127.0.0.1", "has no port"),
        ("127.0.0.1:http", "is not a number"),
        ("127.0.0.1:70000", "is not 0-65535"),
        ("::1:80", "IPv6 host in brackets"),
    ],
)
def test_bad_hostports_say_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(ControlAddressError, match=needle):
        parse_hostport(text)


def test_only_loopback_binds_without_permission() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.9.9.9") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.com")
    check_bind("127.0.0.1", allow_remote=False)
    check_bind("0.0.0.0", allow_remote=True)
    with pytest.raises(ControlAddressError, match="not a loopback address"):
        check_bind("0.0.0.0", allow_remote=False)


def test_the_token_is_accepted_only_as_a_bearer_credential() -> None:
    token = ControlToken("s3cret-token")
    assert token.accepts("Bearer s3cret-token") and token.accepts("bearer s3cret-token")
    for header in (None, "", "Bearer", "Bearer s3cret", "Bearer s3cret-token2", "Basic s3cret-token", "s3cret-token"):
        assert not token.accepts(header), header
    assert not token.accepts("Bearer s3crét-token")  # non-ASCII: refused, not an error
    assert "s3cret" not in repr(token)
    assert "s3cret" not in repr(ControlEndpoint("http://127.0.0.1:1/", "s3cret-token"))
    with pytest.raises(ValueError, match="printable ASCII"):
        ControlToken("has space")
    assert new_token() != new_token() and len(new_token()) >= 40


def test_sse_frames() -> None:
    assert frame("status", b'{"a":1}', 7) == b'id: 7\nevent: status\ndata: {"a":1}\n\n'
    assert frame("snapshot", b"[]") == b"event: snapshot\ndata: []\n\n"
    assert comment("keepalive") == b": keepalive\n\n"
    with pytest.raises(ValueError, match="single line"):
        frame("x", b"a\nb")


@pytest.mark.parametrize(
    ("reason", "cls"),
    [
        ("connect timed out after 10s", "timeout"),
        ("HTTP 401 from server", "auth"),
        ("gave up after 5 consecutive failed attempts; last: connection refused", "refused"),
        ("Target device 'x' is not connected", "device_offline"),
        ("something new", "other"),
        ("client_id 'a@b' already registered", "duplicate"),
        ("link closed", "link_lost"),
        (None, "other"),
    ],
)
def test_failure_reasons_are_classed(reason: str | None, cls: str) -> None:
    assert reason_class(reason) == cls


def _row(device_id: str, status: str, reason: str | None = None) -> dict[str, object]:
    return {
        "device_id": device_id,
        "status": status,
        "phase": "active" if status == "idle" else None,
        "attempt": 0,
        "time_in_phase_s": 65.0,
        "heartbeat_age_s": 3.0 if status == "idle" else None,
        "queue_depth": 0,
        "current_task": None,
        "failure_reason": reason,
    }


def test_the_ctl_table_shows_failure_reasons_in_full_at_any_width() -> None:
    from galaxy_trio.control.ctl import devices_table

    reason = "gave up after 5 consecutive failed attempts; last: Target device 'kiosk' is not connected"
    rows = [_row("office", "idle"), _row("kiosk", "failed", reason)]
    narrow = devices_table(rows, 80).splitlines()  # type: ignore[arg-type]
    assert all(len(line) <= 80 for line in narrow[:3])
    assert "REASON" not in narrow[0] and f"kiosk: {reason}" in narrow
    assert narrow[1].split()[:6] == ["office", "idle", "active", "0", "1m", "3s"]
    wide = devices_table(rows, 200).splitlines()  # type: ignore[arg-type]
    assert wide[0].endswith("REASON") and wide[2].endswith(reason)
    assert wide[-1] == narrow[-1] == "1 failed, 1 idle"
