"""Mutants of ``galaxy_trio/manager/profile.py`` that the suite let live (``tests/mutation.sh profile``)."""

from __future__ import annotations

import pytest

from galaxy_trio.manager.profile import DeviceStatus, IllegalTransition, check_transition


def test_an_illegal_transition_names_the_device_both_statuses_and_what_was_allowed() -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_transition("dev-1", DeviceStatus.IDLE, DeviceStatus.CONNECTING)
    error = caught.value
    assert str(error) == (
        "device 'dev-1': illegal status change idle -> connecting (allowed: busy, disconnected, failed)"
    )
    assert (error.device_id, error.old, error.new) == ("dev-1", DeviceStatus.IDLE, DeviceStatus.CONNECTING)


def test_the_same_status_is_not_a_change() -> None:
    for status in DeviceStatus:
        check_transition("dev-1", status, status)
