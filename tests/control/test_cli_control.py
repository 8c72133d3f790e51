"""``serve --control`` and ``run --local --control``, run as a newcomer runs them: in subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from galaxy_trio.agent import DeviceAgent

from ..net import free_port

REPO = Path(__file__).resolve().parents[2]
AIP_TOKEN = "cli-control-aip-token-0123"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALAXY_TRIO_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels`` (e.g. over several servers)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


class Lines:
    """The lines a process writes to a pipe, read as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self.seen: list[str] = []

    async def until(self, prefix: str) -> str:
        """The first line from now on that contains ``prefix``, from there on."""
        while True:
            while b"\n" not in self._buffer:
                chunk = await self._stream.receive_some(65536)
                assert chunk, f"the process ended before printing {prefix!r}: {self.seen}"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\n", 1)
            line = raw.decode()
            self.seen.append(line)
            if prefix in line:
                return line[line.index(prefix) + len(prefix) :].strip()

    async def rest(self) -> str:
        chunks = [self._buffer]
        while chunk := await self._stream.receive_some(65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()


async def test_serve_with_control_serves_the_servers_metrics_and_health() -> None:
    env = _env()
    env["GALAXY_TRIO_TOKEN"] = AIP_TOKEN
    command = [sys.executable, "-m", "galaxy_trio", "serve", "--port", "0", "--control", "127.0.0.1:0"]
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE, env=env)
    assert process.stderr is not None
    lines = Lines(process.stderr)
    try:
        with trio.fail_after(30):
            aip_url = await lines.until("AIP server listening on ")
            url = await lines.until("metrics and health: ")
            token = await lines.until("control token: ")
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/ws", aip_url) and url.startswith("http://127.0.0.1:")
        assert len(token) >= 40
        async with trio.open_nursery() as nursery, httpx.AsyncClient(base_url=url) as client:
            await nursery.start(DeviceAgent(f"{aip_url}?token={AIP_TOKEN}", "cli-dev").run)
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/metrics")).status_code == 401
            response = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            samples = _samples(response.text)
            assert samples[("galaxy_trio_server_clients", (("server", aip_url), ("type", "device")))] == 1
            # The agent's REGISTER in, the confirmation out (at least: an agent heartbeat may have crossed too).
            assert samples[("galaxy_trio_server_frames_total", (("direction", "in"), ("server", aip_url)))] >= 1
            assert samples[("galaxy_trio_server_frames_total", (("direction", "out"), ("server", aip_url)))] >= 1
            assert _total(samples, "galaxy_trio_server_frames_rejected_total") == 0
            nursery.cancel_scope.cancel()
    finally:
        process.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            rest = await lines.rest()
            await process.wait()
    assert process.returncode == 0, rest
    assert [line for line in lines.seen if token in line] == [f"control token: {token}"]  # once, in no log line
    assert token not in rest and AIP_TOKEN not in rest


def test_run_local_with_control_serves_the_local_servers_too(tmp_path: Path) -> None:
    """``--local`` on a config that does not ask for it: its servers and agents, the manager and the control
    server in one process; the printed dashboard URL serves the fleet, and /metrics the local servers' figures."""
    config = tmp_path / "devices.yaml"
    ports = (free_port(), free_port())
    config.write_text(
        "devices:\n"
        + "".join(f"  - device_id: l{n}\n    server_url: ws://127.0.0.1:{port}/ws\n" for n, port in enumerate(ports))
    )
    command = [sys.executable, "-m", "galaxy_trio", "run", str(config), "--local", "--control", "127.0.0.1:0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env())
    try:
        assert process.stderr is not None
        url = token = ""
        for line in process.stderr:
            if line.startswith("dashboard and control API: "):
                url = line.removeprefix("dashboard and control API: ").strip()
            elif line.startswith("control token: "):
                token = line.removeprefix("control token: ").strip()
                break
        assert url.startswith("http://127.0.0.1:") and url.endswith("/") and token
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            assert "<html" in client.get("/").text.lower()  # the dashboard is at the printed URL
            with client.stream("GET", "/api/events") as stream:  # re-read the devices at each event until both IDLE
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        states = {row["device_id"]: row["status"] for row in client.get("/api/devices").json()}
                        if states == {"l0": "idle", "l1": "idle"}:
                            break
            samples = _samples(client.get("/metrics").text)
    finally:
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=30)
    assert process.returncode == 0, rest
    assert samples[("galaxy_trio_devices", (("status", "idle"),))] == 2
    servers = {dict(labels)["server"] for name, labels in samples if name == "galaxy_trio_server_sessions_running"}
    assert servers == {f"ws://127.0.0.1:{port}/ws" for port in ports}
    assert _total(samples, "galaxy_trio_server_clients", type="device") == 2  # the local agents
    assert _total(samples, "galaxy_trio_server_clients", type="constellation") == 2  # the manager's two links
    # Each link: REGISTER and DEVICE_INFO from the manager, REGISTER from the agent, at least.
    assert _total(samples, "galaxy_trio_server_frames_total", direction="in") >= 6
    assert _total(samples, "galaxy_trio_server_frames_rejected_total") == 0
    assert ("galaxy_trio_heartbeats_sent_total", ()) in samples


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "galaxy_trio", *args], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=60
    )


def test_serve_refuses_a_remote_control_address_and_reports_one_in_use() -> None:
    remote = _run_cli("serve", "--port", "0", "--token", AIP_TOKEN, "--control", "0.0.0.0:0")
    assert remote.returncode == 2 and len(remote.stderr.splitlines()) == 1
    assert remote.stderr.startswith("error: --control: refusing to serve the control API on '0.0.0.0'")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = _run_cli("serve", "--port", "0", "--token", AIP_TOKEN, "--control", f"127.0.0.1:{port}")
    assert in_use.returncode == 1
    errors = [line for line in in_use.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: control address 127.0.0.1:{port} is already in use; choose another port (0: any free one)"
    ]
