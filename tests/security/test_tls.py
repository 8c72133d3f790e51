"""``wss://`` with a custom CA file, against a certificate made in the test.

The CA and the server certificate for 127.0.0.1 come from ``trustme`` when it is installed and from the
``openssl`` command line otherwise; each test runs with every generator available (and is skipped, saying why,
when neither is). The server gets an ``ssl.SSLContext``; the agent gets a context that trusts the CA; the
manager gets the CA file, as a config entry's ``ca_file``.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from galaxy_trio import ConstellationDeviceManager, DeviceStatus, EventKind
from galaxy_trio.agent import DeviceAgent, RetriesExhausted
from galaxy_trio.config import load_config
from galaxy_trio.redact import url_with_token
from galaxy_trio.server import AIPServer, serve_aip
from galaxy_trio.transport import open_link

TOKEN = "tls-test-token"


@dataclass(frozen=True)
class Certificates:
    """A CA (``ca_file``, PEM) and a server context whose certificate it signed."""

    ca_file: Path
    server_context: ssl.SSLContext

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def _with_trustme(directory: Path, host: str) -> Certificates:
    trustme = pytest.importorskip("trustme", reason="trustme is not installed (the openssl variant still runs)")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(server_context)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return Certificates(ca_file, server_context)


def _with_openssl(directory: Path, host: str) -> Certificates:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed (the trustme variant still runs)")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=30)

    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=galaxy_trio test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={host}")
    san = f"IP:{host}" if host.replace(".", "").isdigit() else f"DNS:{host}"
    (directory / "server.ext").write_text(
        f"subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext")  # fmt: skip
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(directory / "server.pem", directory / "server.key")
    return Certificates(directory / "ca.pem", server_context)


GENERATORS = {"trustme": _with_trustme, "openssl": _with_openssl}


@pytest.fixture(params=sorted(GENERATORS))
def certificates(request: pytest.FixtureRequest, tmp_path: Path) -> Certificates:
    return GENERATORS[request.param](tmp_path, "127.0.0.1")


@pytest.fixture(params=sorted(GENERATORS))
def other_host_certificates(request: pytest.FixtureRequest, tmp_path: Path) -> Certificates:
    return GENERATORS[request.param](tmp_path, "example.test")


async def _tls_server(nursery: trio.Nursery, context: ssl.SSLContext) -> tuple[AIPServer, str]:
    server: AIPServer = await nursery.start(partial(serve_aip, port=0, token=TOKEN, ssl_context=context))
    return server, url_with_token(server.url, TOKEN)


async def test_wss_with_a_custom_ca_file_reaches_idle_and_runs_a_task(
    nursery: trio.Nursery, certificates: Certificates, tmp_path: Path
) -> None:
    server, url = await _tls_server(nursery, certificates.server_context)
    assert server.url.startswith("wss://127.0.0.1:")
    await nursery.start(DeviceAgent(url, "secure", ssl_context=certificates.client_context()).run)
    async with ConstellationDeviceManager(task_name="tls") as manager:
        assert await manager.register_device("secure", url, ca_file=str(certificates.ca_file))
        profile = manager.get_device_info("secure")
        assert profile is not None and profile.metadata["system_info"]["platform"]  # telemetry over TLS too
        echo = json.dumps({"tool_name": "echo", "parameters": {"text": "over tls"}})
        result = await manager.assign_task_to_device("t1", "secure", echo)
        assert result.ok and result.result[0]["result"] == "over tls"
    # The same through a config file, whose relative ca_file is taken from the file's directory.
    config = tmp_path / "devices.yaml"
    config.write_text(
        f"devices:\n  - device_id: secure\n    server_url: {url}\n    ca_file: {certificates.ca_file.name}\n"
    )
    loaded = load_config(config)
    async with ConstellationDeviceManager(task_name="tls2") as manager:
        manager.add_devices(loaded.devices)
        assert (await manager.wait_for_device("secure")).status is DeviceStatus.IDLE


async def _never_connects(manager: ConstellationDeviceManager, device_id: str, url: str, **options: Any) -> str:
    """Register ``device_id`` with 2 attempts; check no link ever opened (never CONNECTED); the failure reason."""
    with manager.subscribe() as events:
        assert not await manager.register_device(device_id, url, max_retries=2, **options)
        reached = {e.new_status for e in events.pending() if e.kind is EventKind.STATUS}
    assert DeviceStatus.CONNECTED not in reached and DeviceStatus.IDLE not in reached
    profile = manager.get_device_info(device_id)
    assert profile is not None and profile.status is DeviceStatus.FAILED and profile.failure_reason is not None
    return profile.failure_reason


async def test_without_the_ca_no_link_opens_and_nothing_crashes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, certificates: Certificates
) -> None:
    """The system CAs do not know the test CA: no link ever opens, the device ends FAILED after its attempts,
    the agent gives up too; nothing crashes, and the server keeps serving those who trust its CA.

    Both report the TLS error itself, and each attempt fails at once, not at the connect timeout.
    """
    server, url = await _tls_server(nursery, certificates.server_context)
    await nursery.start(DeviceAgent(url, "secure", ssl_context=certificates.client_context()).run)
    async with ConstellationDeviceManager(task_name="tls", connect_timeout=5.0) as manager:
        start = trio.current_time()
        reason = await _never_connects(manager, "secure", url)
        assert trio.current_time() - start < 5.0  # two attempts and one backoff delay (at most 1 s), no timeout
        assert reason.startswith("gave up after 2 consecutive failed attempts") and TOKEN not in reason
        assert "TLS handshake failed" in reason and "certificate verify failed" in reason
    start = trio.current_time()
    with pytest.raises(RetriesExhausted, match=r"TLS handshake failed .*certificate verify failed"):
        await DeviceAgent(url, "untrusting", max_retries=0, registration_timeout=5.0).run()
    assert trio.current_time() - start == 0
    async with ConstellationDeviceManager(task_name="tls") as manager:
        assert await manager.register_device("secure", url, ca_file=str(certificates.ca_file))
    assert set(server.online_clients()) == {"secure"}


async def test_a_certificate_for_another_host_never_yields_a_link(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, other_host_certificates: Certificates
) -> None:
    """A certificate signed by the trusted CA but issued to another host name does not pass for 127.0.0.1; the
    device's failure reason says so."""
    _, url = await _tls_server(nursery, other_host_certificates.server_context)
    async with ConstellationDeviceManager(task_name="tls", connect_timeout=5.0) as manager:
        reason = await _never_connects(manager, "dev", url, ca_file=str(other_host_certificates.ca_file))
        assert "TLS handshake failed" in reason and "certificate verify failed: IP address mismatch" in reason


async def test_plain_ws_to_a_tls_server_never_yields_a_link_and_the_server_goes_on(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, certificates: Certificates
) -> None:
    """A client speaking plain WebSocket to the TLS port gets nowhere, and is told at once: the server finishes
    the TLS handshake before the WebSocket one, and hangs up when it fails (it used to hold the socket, silent,
    until its handshake_deadline). The server is unaffected."""
    server, url = await _tls_server(nursery, certificates.server_context)
    async with ConstellationDeviceManager(task_name="tls", connect_timeout=5.0) as manager:
        start = trio.current_time()
        reason = await _never_connects(manager, "dev", url.replace("wss://", "ws://", 1))
        assert trio.current_time() - start < 5.0  # two attempts and one backoff delay, no connect timeout
        assert "timed out" not in reason
        assert "WebSocket handshake" in reason, reason
    async with open_link(url, ssl_context=certificates.client_context()) as link:
        assert not link.closed
    assert server.online_clients() == {}
