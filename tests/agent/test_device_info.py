"""DeviceInfoProvider: the system_info a device registers with (PROTOCOL.md §5.3) and its graceful degradation."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import platform as stdlib_platform
import socket
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from galaxy_trio.agent import device_info
from galaxy_trio.agent.device_info import (
    DeviceInfoProvider,
    SystemProbes,
    detect_ip_address,
    minimal_system_info,
    supported_features,
)
from galaxy_trio.aip import builders, decode_client_message, encode_text

from ..frames import raw as recorded_raw

KEYS = [
    "device_id",
    "platform",
    "os_version",
    "cpu_count",
    "memory_total_gb",
    "hostname",
    "ip_address",
    "supported_features",
    "platform_type",
    "schema_version",
    "custom_metadata",
]

#: Probes that answer with the host data of the recording (hostname "vm", 23.54 GiB…).
RECORDED_HOST = SystemProbes(
    platform=lambda: "linux",
    os_version=lambda: "#1 SMP PREEMPT_DYNAMIC @0",
    cpu_count=lambda: 2,
    memory_total_bytes=lambda: int(23.54 * 1024**3),
    hostname=lambda: "vm",
    ip_address=lambda: "192.0.2.2",
)


def _boom() -> Any:
    raise OSError("probe exploded")


def test_real_collection_has_every_key_in_order_with_the_right_types() -> None:
    info = DeviceInfoProvider().collect("dev-1")

    assert list(info) == KEYS
    assert info["device_id"] == "dev-1"
    assert info["platform"] == stdlib_platform.system().lower()
    assert info["os_version"] == stdlib_platform.version()
    assert type(info["cpu_count"]) is int and info["cpu_count"] == os.cpu_count()
    assert type(info["memory_total_gb"]) is float
    assert info["memory_total_gb"] == round(psutil.virtual_memory().total / 1024**3, 2)
    assert info["hostname"] == socket.gethostname()
    ipaddress.IPv4Address(info["ip_address"])  # a real dotted quad
    assert info["supported_features"][:5] == ["gui", "cli", "browser", "file_system", "office"]
    assert info["supported_features"] == supported_features(info["platform"])
    assert info["platform_type"] == "computer"
    assert info["schema_version"] == "1.0"
    assert info["custom_metadata"] == {}


def test_recorded_host_data_gives_the_recorded_system_info_byte_for_byte() -> None:
    recorded = decode_client_message(recorded_raw("device_registration", 1))
    assert recorded.metadata is not None

    info = DeviceInfoProvider(probes=RECORDED_HOST).collect("capdev")

    assert json.dumps(info) == json.dumps(recorded.metadata["system_info"])


def test_register_with_collected_info_reencodes_byte_identically_and_matches_the_recording() -> None:
    raw = recorded_raw("device_registration", 1)
    recorded = decode_client_message(raw)
    assert recorded.metadata is not None
    info = DeviceInfoProvider(probes=RECORDED_HOST).collect("capdev")

    register = builders.device_register("capdev", platform=info["platform"], system_info=info)
    text = encode_text(register)

    assert encode_text(decode_client_message(text)) == text
    # Same frame as UFO's device once the two timestamps (fresh per run) are the recorded ones.
    register.timestamp = recorded.timestamp
    assert register.metadata is not None
    register.metadata["registration_time"] = recorded.metadata["registration_time"]
    assert encode_text(register) == raw


def test_real_info_inside_register_reencodes_byte_identically() -> None:
    info = DeviceInfoProvider().collect("dev-1", custom_metadata={"room": "lab é", "rack": 3, "tags": ["a"]})
    text = encode_text(builders.device_register("dev-1", platform=info["platform"], system_info=info))

    assert encode_text(decode_client_message(text)) == text


@pytest.mark.parametrize(
    ("probe", "field", "fallback"),
    [
        ("os_version", "os_version", "unknown"),
        ("cpu_count", "cpu_count", 0),
        ("memory_total_bytes", "memory_total_gb", 0.0),
        ("hostname", "hostname", "unknown"),
        ("ip_address", "ip_address", "unknown"),
    ],
)
def test_a_failing_probe_costs_only_its_own_field(
    probe: str, field: str, fallback: Any, caplog: pytest.LogCaptureFixture
) -> None:
    healthy = DeviceInfoProvider(probes=RECORDED_HOST).collect("d")
    probes = dataclasses.replace(RECORDED_HOST, **{probe: _boom})

    with caplog.at_level(logging.WARNING, logger="galaxy_trio.agent"):
        info = DeviceInfoProvider(probes=probes).collect("d")

    assert info == {**healthy, field: fallback}
    assert list(info) == KEYS
    assert type(info[field]) is type(fallback)
    assert any(repr(field) in record.getMessage() and "OSError" in record.getMessage() for record in caplog.records)


def test_a_failing_platform_probe_reports_an_unknown_platform_without_features() -> None:
    info = DeviceInfoProvider(probes=dataclasses.replace(RECORDED_HOST, platform=_boom)).collect("d")

    assert info["platform"] == "unknown"
    assert info["supported_features"] == []
    assert info["platform_type"] == "unknown"
    assert info["hostname"] == "vm"  # the other fields survive


@pytest.mark.parametrize(
    ("probe", "bad_value", "field", "fallback"),
    [
        ("cpu_count", None, "cpu_count", 0),
        ("cpu_count", True, "cpu_count", 0),
        ("cpu_count", "2", "cpu_count", 0),
        ("memory_total_bytes", 1.5e9, "memory_total_gb", 0.0),
        ("hostname", "", "hostname", "unknown"),
        ("os_version", 10, "os_version", "unknown"),
    ],
)
def test_a_wrong_typed_probe_answer_degrades_too(probe: str, bad_value: Any, field: str, fallback: Any) -> None:
    probes = dataclasses.replace(RECORDED_HOST, **{probe: lambda: bad_value})

    info = DeviceInfoProvider(probes=probes).collect("d")

    assert info[field] == fallback and type(info[field]) is type(fallback)


def test_every_probe_failing_gives_the_minimal_info() -> None:
    probes = SystemProbes(*([_boom] * len(dataclasses.fields(SystemProbes))))

    info = DeviceInfoProvider(probes=probes).collect("dev-x")

    assert info == minimal_system_info("dev-x")
    assert info == {
        "device_id": "dev-x",
        "platform": "unknown",
        "os_version": "unknown",
        "cpu_count": 0,
        "memory_total_gb": 0.0,
        "hostname": "unknown",
        "ip_address": "unknown",
        "supported_features": [],
        "platform_type": "unknown",
        "schema_version": "1.0",
        "custom_metadata": {},
    }
    assert list(info) == KEYS


def test_an_unexpected_failure_while_assembling_gives_the_minimal_info(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(platform: str) -> list[str]:
        raise RuntimeError("feature table corrupt")

    monkeypatch.setattr(device_info, "supported_features", broken)

    with caplog.at_level(logging.ERROR, logger="galaxy_trio.agent"):
        info = DeviceInfoProvider(probes=RECORDED_HOST).collect("dev-x", custom_metadata={"k": 1})

    assert info == minimal_system_info("dev-x", {"k": 1})
    assert info["custom_metadata"] == {"k": 1}
    assert any("minimal info" in record.getMessage() for record in caplog.records)


def test_unreadable_custom_metadata_degrades_to_an_empty_object() -> None:
    class Unreadable(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise KeyError(key)

        def __iter__(self) -> Iterator[str]:
            raise RuntimeError("cannot iterate")

        def __len__(self) -> int:
            return 1

    info = DeviceInfoProvider(probes=RECORDED_HOST).collect("d", custom_metadata=Unreadable())

    assert info["custom_metadata"] == {}
    assert info["hostname"] == "vm"


def test_custom_metadata_is_copied() -> None:
    mine: dict[str, Any] = {"room": "lab"}
    info = DeviceInfoProvider(probes=RECORDED_HOST).collect("d", custom_metadata=mine)
    mine["room"] = "changed"

    assert info["custom_metadata"] == {"room": "lab"}


@pytest.mark.parametrize(
    ("platform", "features"),
    [
        ("Windows", ["gui", "cli", "browser", "file_system", "office", "windows_apps"]),
        ("linux", ["gui", "cli", "browser", "file_system", "office", "linux_apps"]),
        ("darwin", ["gui", "cli", "browser", "file_system", "office", "macos_apps"]),
        ("freebsd", ["gui", "cli", "browser", "file_system", "office"]),
    ],
)
def test_platform_override_sets_platform_and_features(platform: str, features: list[str]) -> None:
    info = DeviceInfoProvider(probes=RECORDED_HOST, platform=platform).collect("d")

    assert info["platform"] == platform.lower()
    assert info["supported_features"] == features
    assert info["platform_type"] == "computer"


def test_probe_platform_is_lower_cased() -> None:
    info = DeviceInfoProvider(probes=dataclasses.replace(RECORDED_HOST, platform=lambda: "Darwin")).collect("d")

    assert info["platform"] == "darwin"
    assert info["supported_features"][-1] == "macos_apps"


def _nic(address: str, family: socket.AddressFamily = socket.AF_INET) -> SimpleNamespace:
    return SimpleNamespace(family=family, address=address)


def _interfaces(monkeypatch: pytest.MonkeyPatch, addrs: dict[str, list[SimpleNamespace]], up: set[str]) -> None:
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: addrs)
    monkeypatch.setattr(psutil, "net_if_stats", lambda: {name: SimpleNamespace(isup=name in up) for name in addrs})


def test_ip_address_is_the_first_ipv4_of_an_up_interface_and_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    _interfaces(
        monkeypatch,
        {
            "lo": [_nic("127.0.0.1")],
            "down0": [_nic("10.9.9.9")],
            "ll0": [_nic("169.254.3.4")],
            "v6only": [_nic("fd00::5", socket.AF_INET6)],
            "eth0": [_nic("fe80::1", socket.AF_INET6), _nic("192.0.2.7")],
            "eth1": [_nic("198.51.100.1")],
        },
        up={"lo", "ll0", "v6only", "eth0", "eth1"},
    )

    def no_sockets(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("detect_ip_address must not open a socket")

    monkeypatch.setattr(socket, "socket", no_sockets)

    assert detect_ip_address() == "192.0.2.7"


def test_ip_address_falls_back_to_link_local_then_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    _interfaces(monkeypatch, {"lo": [_nic("127.0.0.1")], "ll0": [_nic("169.254.3.4")]}, up={"lo", "ll0"})
    assert detect_ip_address() == "169.254.3.4"

    _interfaces(monkeypatch, {"lo": [_nic("127.0.0.1")], "eth0": [_nic("192.0.2.7")]}, up={"lo"})
    assert detect_ip_address() == "127.0.0.1"


def test_a_failing_interface_table_degrades_ip_address_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "net_if_addrs", _boom)

    info = DeviceInfoProvider(probes=dataclasses.replace(RECORDED_HOST, ip_address=detect_ip_address)).collect("d")

    assert info["ip_address"] == "unknown"
    assert info["hostname"] == "vm"
