"""Mutants of the Structs' own validation in ``galaxy_trio/config/model.py`` that the suite let live
(``tests/mutation.sh config_model``): a Struct built in code (not from YAML) is checked as strictly, and says what
was wrong, as one loaded from a file; a field already refused is not blamed a second time by a rule that compares
it with another field."""

from __future__ import annotations

from typing import Any

import pytest

from galaxy_trio.config import ConfigError, DeviceConfig, GalaxyConfig, ManagerSettings

DEVICE = DeviceConfig(device_id="dev1", server_url="ws://127.0.0.1:5005/ws")


def problems(build: Any, **fields: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build(**fields)
    return [str(problem) for problem in info.value.problems]


def test_an_integer_retry_interval_becomes_seconds_as_a_float() -> None:
    interval = ManagerSettings(failed_retry_interval=5).failed_retry_interval
    assert type(interval) is float
    assert interval == 5.0


def test_a_bad_backoff_cap_is_reported_once_not_also_compared_with_the_delay() -> None:
    assert problems(ManagerSettings, backoff_cap=-1.0) == [
        "backoff_cap: must be a positive number of seconds, got -1.0"
    ]
    assert problems(ManagerSettings, reconnect_delay=0.0, backoff_cap=0.0) == [
        "reconnect_delay: must be a positive number of seconds, got 0.0",
        "backoff_cap: must be a positive number of seconds, got 0.0",
    ]


def test_a_cap_below_the_delay_is_refused_naming_the_delay() -> None:
    assert problems(ManagerSettings, reconnect_delay=5.0, backoff_cap=4.0) == [
        "backoff_cap: must be >= reconnect_delay (5.0), got 4.0"
    ]
    assert ManagerSettings(reconnect_delay=5.0, backoff_cap=5.0).backoff_cap == 5.0


def test_a_ca_file_on_a_plain_url_is_refused_naming_the_device() -> None:
    assert problems(DeviceConfig, device_id="dev1", server_url="ws://h:1/ws", ca_file="ca.pem") == [
        "device 'dev1': ca_file: is only used with wss:// URLs, but server_url is not wss://"
    ]


def test_a_ca_file_is_not_compared_with_a_url_already_refused() -> None:
    assert problems(DeviceConfig, device_id="dev1", server_url="http://h:1/ws", ca_file="ca.pem") == [
        "device 'dev1': server_url: scheme must be ws or wss, got 'http'"
    ]


def test_an_empty_ca_file_is_reported_once() -> None:
    assert problems(DeviceConfig, device_id="dev1", server_url="ws://h:1/ws", ca_file="") == [
        "device 'dev1': ca_file: must not be empty"
    ]


def test_a_config_built_in_code_with_wrong_types_says_which_field_and_what_it_got() -> None:
    assert problems(GalaxyConfig, devices=(DEVICE,), local="yes", manager={}) == [
        "<string>: local: expected a boolean, got string",
        "<string>: manager: expected ManagerSettings, got dict",
    ]


def test_a_device_that_is_not_a_device_config_is_a_config_error_naming_its_index() -> None:
    """It raised AttributeError ('str' object has no attribute 'device_id') instead."""
    assert problems(GalaxyConfig, devices=(DEVICE, "dev2", {"device_id": "dev3"})) == [
        "<string>: devices[1]: expected DeviceConfig, got str",
        "<string>: devices[2]: expected DeviceConfig, got dict",
    ]
    assert problems(GalaxyConfig, devices=("dev0", DEVICE, DEVICE)) == [
        "<string>: devices[0]: expected DeviceConfig, got str",
        "<string>: device 'dev1': device_id: duplicate device_id 'dev1': already used by devices[1]",
    ]
