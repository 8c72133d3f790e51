"""AgentProfile status transitions and the Phase-4 merge, with the flow document's own example."""

from __future__ import annotations

import itertools

import pytest

from galaxy_trio.manager import AgentProfile, DeviceStatus, IllegalTransition, merge_system_info
from galaxy_trio.manager.profile import check_transition

S = DeviceStatus
LEGAL = {
    (S.DISCONNECTED, S.CONNECTING),
    (S.DISCONNECTED, S.FAILED),
    (S.CONNECTING, S.CONNECTED),
    (S.CONNECTING, S.DISCONNECTED),
    (S.CONNECTING, S.FAILED),
    (S.CONNECTED, S.REGISTERING),
    (S.CONNECTED, S.DISCONNECTED),
    (S.CONNECTED, S.FAILED),
    (S.REGISTERING, S.IDLE),
    (S.REGISTERING, S.DISCONNECTED),
    (S.REGISTERING, S.FAILED),
    (S.IDLE, S.BUSY),
    (S.IDLE, S.DISCONNECTED),
    (S.IDLE, S.FAILED),
    (S.BUSY, S.IDLE),
    (S.BUSY, S.DISCONNECTED),
    (S.BUSY, S.FAILED),
    (S.FAILED, S.CONNECTING),
    (S.FAILED, S.DISCONNECTED),
}


@pytest.mark.parametrize(("old", "new"), list(itertools.product(S, S)))
def test_only_the_planned_transitions_are_legal(old: DeviceStatus, new: DeviceStatus) -> None:
    if old is new or (old, new) in LEGAL:
        check_transition("d", old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
            check_transition("d", old, new)


def test_status_values_are_ufos() -> None:
    assert [s.value for s in S] == [
        "disconnected",
        "connecting",
        "connected",
        "registering",
        "idle",
        "busy",
        "failed",
    ]


def test_a_new_profile_is_version_1_of_the_flow_document() -> None:
    profile = AgentProfile(device_id="windowsagent", server_url="ws://localhost:5005/ws", max_retries=5)
    assert profile.status is S.DISCONNECTED
    assert (profile.last_heartbeat, profile.connection_attempts, profile.current_task_id) == (None, 0, None)


def test_the_flow_documents_before_and_after_merge_example() -> None:
    # "Before Telemetry (AgentProfile v2)" and "After Telemetry (AgentProfile v3 - Complete)".
    profile = AgentProfile(
        device_id="windowsagent",
        server_url="ws://localhost:5005/ws",
        os="windows",
        capabilities=["web_browsing", "office_applications", "file_management"],
        metadata={"location": "office_desktop", "performance": "high"},
    )
    system_info = {
        "platform": "windows",
        "os_version": "10.0.22631",
        "cpu_count": 16,
        "memory_total_gb": 32.0,
        "hostname": "DESKTOP-DEV01",
        "ip_address": "192.168.1.100",
        "supported_features": ["gui", "cli", "browser", "file_system", "office", "windows_apps"],
        "platform_type": "computer",
        "schema_version": "1.0",
    }
    merge_system_info(profile, system_info)
    assert profile.os == "windows"
    assert profile.capabilities == [
        "web_browsing",
        "office_applications",
        "file_management",
        "gui",
        "cli",
        "browser",
        "file_system",
        "office",
        "windows_apps",
    ]
    assert profile.metadata == {
        "location": "office_desktop",
        "performance": "high",
        "system_info": {
            "platform": "windows",
            "os_version": "10.0.22631",
            "cpu_count": 16,
            "memory_total_gb": 32.0,
            "hostname": "DESKTOP-DEV01",
            "ip_address": "192.168.1.100",
            "platform_type": "computer",
            "schema_version": "1.0",
        },
    }


def test_merge_dedups_keeps_configured_first_and_copies_custom_metadata_and_tags() -> None:
    profile = AgentProfile(device_id="d", server_url="ws://h/ws", os="windows", capabilities=["cli", "x"])
    merge_system_info(
        profile,
        {
            "platform": "linux",
            "supported_features": ["gui", "cli", "gui"],
            "custom_metadata": {"rack": 4},
            "tags": ["prod"],
        },
    )
    assert profile.os == "linux"
    assert profile.capabilities == ["cli", "x", "gui"]
    assert profile.metadata["custom_metadata"] == {"rack": 4}
    assert profile.metadata["tags"] == ["prod"]
    assert profile.metadata["system_info"]["os_version"] is None  # absent keys read as None, as in the document


def test_snapshots_are_independent_of_the_live_profile() -> None:
    profile = AgentProfile(device_id="d", server_url="ws://h/ws", capabilities=["a"], metadata={"k": {"n": 1}})
    copy = profile.snapshot()
    copy.capabilities.append("b")
    copy.metadata["k"]["n"] = 2
    assert profile.capabilities == ["a"] and profile.metadata == {"k": {"n": 1}}
