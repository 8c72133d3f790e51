"""Mutants of ``galaxy_trio/server/rules.py`` that the suite let live (``tests/mutation.sh rules``): the exact
Rejection (text, code, close reason) of every refused REGISTER, and the edges of ``shown``, the id length limit
and ``agent_name``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from galaxy_trio.aip import ClientMessage, ClientMessageType, ClientType, TaskStatus
from galaxy_trio.server import rules
from galaxy_trio.server.rules import Registration, Rejection

_BAD_FIRST = "first frame must be a valid REGISTER"


@dataclass(frozen=True)
class _Client:
    client_id: str
    role: ClientType
    target_id: str | None = None
    system_info: dict[str, Any] | None = None


def _register(raw: str, clients: dict[str, _Client] | None = None, limit: int = 8) -> Registration | Rejection:
    return rules.check_register(raw, clients or {}, max_client_id_length=limit)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (
            '{"type":"heartbeat","status":"ok","client_id":"d"}',
            "First frame must be a REGISTER message, got 'heartbeat'",
        ),
        ('{"type":"register","status":"ok","client_id":""}', "REGISTER requires a non-empty client_id"),
        (
            '{"type":"register","status":"ok","client_id":"d","metadata":{"platform":""}}',
            "REGISTER metadata.platform must be a non-empty string",
        ),
        (
            '{"type":"register","status":"ok","client_id":"d","metadata":{"system_info":"x"}}',
            "REGISTER metadata.system_info must be an object",
        ),
        (
            '{"type":"register","status":"ok","client_id":"123456789"}',
            "client_id is too long (9 characters; the limit is 8)",
        ),
    ],
)
def test_each_bad_first_frame_is_refused_with_its_text_1008_and_one_close_reason(raw: str, error: str) -> None:
    assert _register(raw) == Rejection(error, 1008, _BAD_FIRST)


def test_an_undecodable_first_frame_names_the_decode_error() -> None:
    decision = _register("not json")
    assert isinstance(decision, Rejection)
    assert decision.error.startswith("First frame must be a REGISTER message: invalid ClientMessage at $: ")
    assert (decision.close_code, decision.close_reason) == (1008, _BAD_FIRST)


def test_a_client_id_of_exactly_the_limit_is_accepted() -> None:
    decision = _register('{"type":"register","status":"ok","client_type":"device","client_id":"12345678"}')
    assert decision == Registration("12345678", ClientType.DEVICE, None, "windows", None)


def test_a_duplicate_is_refused_with_close_1000_and_its_reason() -> None:
    holder = _Client("d", ClientType.DEVICE)
    decision = _register('{"type":"register","status":"ok","client_id":"d"}', {"d": holder})
    assert decision == Rejection(rules.duplicate_client("d"), 1000, "duplicate client_id")


def test_shown_keeps_exactly_128_characters_and_cuts_the_129th() -> None:
    assert rules.shown("x" * 128) == "x" * 128
    assert rules.shown("x" * 129) == "x" * 128 + "…"


def test_a_platform_without_letters_or_digits_gets_device_agent() -> None:
    assert rules.agent_name("--") == "DeviceAgent"
    assert rules.agent_name("free bsd") == "FreeBsdAgent"


def test_device_info_without_any_target_says_what_is_missing() -> None:
    unscoped = _Client("boss", ClientType.CONSTELLATION)
    request = ClientMessage(ClientMessageType.DEVICE_INFO_REQUEST, TaskStatus.OK, ClientType.CONSTELLATION)
    assert rules.check_device_info(request, unscoped, {}) == (
        "DEVICE_INFO_REQUEST requires target_id (the device to describe)"
    )
