"""ConstellationDeviceManager(settings=..., **overrides): one source of truth, validated by ManagerSettings."""

from __future__ import annotations

import pytest

from galaxy_trio import ConfigError, ConstellationDeviceManager, ManagerSettings


def test_overrides_apply_on_top_of_the_given_settings() -> None:
    base = ManagerSettings(task_name="base", heartbeat_interval=3.0, max_concurrent_tasks=4)
    manager = ConstellationDeviceManager(settings=base, reconnect_delay=2.0, failed_retry_interval=60.0)
    assert manager.settings == ManagerSettings(
        task_name="base", heartbeat_interval=3.0, max_concurrent_tasks=4, reconnect_delay=2.0, failed_retry_interval=60
    )
    assert manager.task_name == "base"
    assert base.reconnect_delay == 1.0  # the caller's settings are not changed


def test_task_name_positionally_or_by_keyword_and_defaults_otherwise() -> None:
    assert ConstellationDeviceManager("office").settings == ManagerSettings(task_name="office")
    assert ConstellationDeviceManager(task_name="office").task_name == "office"
    assert ConstellationDeviceManager().settings == ManagerSettings()
    # None is a real value for the optional settings, not "leave it"
    limited = ConstellationDeviceManager(settings=ManagerSettings(max_concurrent_tasks=2), max_concurrent_tasks=None)
    assert limited.settings.max_concurrent_tasks is None


def test_a_misspelt_setting_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        ConstellationDeviceManager(hearbeat_interval=5.0, colour="red")
    assert [p.field for p in caught.value.problems] == ["colour", "hearbeat_interval"]
    assert "did you mean 'heartbeat_interval'?" in str(caught.value)
    assert "known: task_name, heartbeat_interval" in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"heartbeat_interval": "5"}, "heartbeat_interval", "expected a number, got string"),
        ({"connect_timeout": -1.0}, "connect_timeout", "positive number of seconds"),
        ({"task_name": "a@b"}, "task_name", "must not contain '@'"),
        ({"max_concurrent_tasks": 0}, "max_concurrent_tasks", "must be >= 1"),
        ({"task_queue_size": 1.5}, "task_queue_size", "integer"),
    ],
)
def test_bad_values_are_refused_by_the_struct_naming_the_field(
    overrides: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        ConstellationDeviceManager(**overrides)
    assert [p.field for p in caught.value.problems] == [field]
    assert words in str(caught.value)
