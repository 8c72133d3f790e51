"""Mutants of ``galaxy_trio/aip/codec.py`` that the suite let live (``tests/mutation.sh codec``): error texts of
both decoders, the excerpt bound at its edge, ``new_id``, ``encode_text`` and ``json_error``."""

from __future__ import annotations

import pytest

from galaxy_trio.aip import (
    AIPDecodeError,
    ClientType,
    builders,
    decode_client_message,
    decode_server_message,
    encode,
    encode_text,
    json_error,
    new_id,
)

_PREFIX = "Invalid enum value '"  # msgspec's text for a bad enum value, then the value and a closing quote


def _client_error(type_value: str) -> AIPDecodeError:
    with pytest.raises(AIPDecodeError) as caught:
        decode_client_message('{"type":"' + type_value + '","client_id":"x"}')
    return caught.value


def test_an_error_without_a_path_is_about_the_whole_frame() -> None:
    assert AIPDecodeError("bad").path == "$"


def test_the_path_is_the_last_at_clause_even_when_the_value_contains_one() -> None:
    error = _client_error("a - at `b")
    assert error.path == "$.type"
    assert str(error) == "invalid ClientMessage at $.type: Invalid enum value 'a - at `b'"


def test_an_excerpt_of_exactly_the_bound_is_kept_whole_and_one_more_character_is_cut() -> None:
    value = "v" * (160 - len(_PREFIX) - 1)
    assert str(_client_error(value)) == f"invalid ClientMessage at $.type: {_PREFIX}{value}'"
    longer = value + "w"
    cut = f"{_PREFIX}{longer}'"[:160]
    assert str(_client_error(longer)) == f"invalid ClientMessage at $.type: {cut}…"


def test_server_frames_name_their_kind_and_path() -> None:
    with pytest.raises(AIPDecodeError) as caught:
        decode_server_message('{"type":"heartbeat","status":7}')
    assert caught.value.path == "$.status"
    assert str(caught.value).startswith("invalid ServerMessage at $.status: ")


@pytest.mark.parametrize(
    ("decode", "kind"), [(decode_client_message, "ClientMessage"), (decode_server_message, "ServerMessage")]
)
def test_frames_nested_too_deeply_name_their_kind(decode: object, kind: str) -> None:
    depth = 100_000
    frame = '{"type":"heartbeat","metadata":' + '{"a":' * depth + "1" + "}" * depth + "}"
    with pytest.raises(AIPDecodeError) as caught:
        decode(frame)  # type: ignore[operator]
    assert str(caught.value) == f"invalid {kind} at $: JSON nested too deeply"
    assert caught.value.path == "$"


def test_new_ids_are_fresh_lower_case_uuid4_strings() -> None:
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100
    for value in ids:
        assert len(value) == 36 and value == value.lower() and value[14] == "4" and value.count("-") == 4


def test_encode_text_is_the_utf8_text_of_encode() -> None:
    message = builders.heartbeat("dévice", ClientType.DEVICE)
    assert encode_text(message) == encode(message).decode("utf-8")
    assert isinstance(encode_text(message), str)


def test_json_error_says_why_a_value_cannot_be_sent() -> None:
    assert json_error({"a": [1, 2.5, None, "x"]}) is None
    assert json_error(object()) == "Encoding objects of type object is unsupported"  # msgspec's text, as is
    loop: list[object] = []
    loop.append(loop)
    assert (json_error(loop) or "").startswith("RecursionError: ")
