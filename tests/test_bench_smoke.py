"""Smoke tests of the benchmark scripts: each runs end to end, prints its table and writes well-formed JSON.

They run the scripts as a user would (subprocesses from the repository root, tiny iteration counts and fleets) and
check the shape of what comes out, never the timings themselves: machines are too noisy for timing assertions.
The pure helpers of the fleet benchmarks (process layout, percentiles, histograms) are also tested directly.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "benchmarks" / "bench_codec.py"
FRAMES = REPO_ROOT.parent / "shared" / "aip" / "frames"

EXPECTED_FRAMES = {
    "device REGISTER": ("device_registration.jsonl#1", 683),
    "constellation REGISTER": ("constellation_registration.jsonl#1", 470),
    "DEVICE_INFO response": ("device_info.jsonl#4", 622),
    "TASK": ("task_roundtrip.jsonl#3", 362),
    "TASK_END": ("task_roundtrip.jsonl#11", 403),
}


def _require_pydantic() -> None:
    pytest.importorskip("pydantic", reason="pydantic is only in the `bench` extra")


def _positive(value: object) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    _require_pydantic()
    if not FRAMES.is_dir():
        pytest.skip(f"golden frames not found at {FRAMES}")
    out = tmp_path_factory.mktemp("bench") / "codec.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--iterations", "20", "--repeats", "3", "--warmup", "5", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads(out.read_text(encoding="utf-8"))


def test_prints_markdown_table_with_every_frame(bench_run: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = bench_run
    lines = stdout.splitlines()
    header = next(line for line in lines if line.startswith("| frame"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "frame",
        "bytes",
        "decode µs ours",
        "decode µs pydantic",
        "ratio",
        "encode µs ours",
        "encode µs pydantic",
        "ratio",
    ]
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| frame")]
    assert [row.split("|")[1].strip() for row in rows] == list(EXPECTED_FRAMES)
    for row, (_, size) in zip(rows, EXPECTED_FRAMES.values(), strict=True):
        assert row.split("|")[2].strip() == str(size)
    summary = next(line for line in lines if line.startswith("Summary:"))
    assert "geometric-mean ratio" in summary
    assert "target >= 5x" in summary


def test_writes_json_with_positive_figures(bench_run: tuple[str, dict[str, Any]]) -> None:
    _, data = bench_run
    assert data["benchmark"] == "codec"
    assert (data["iterations"], data["repeats"], data["warmup"]) == (20, 3, 5)
    assert data["target_ratio"] == 5.0
    assert isinstance(data["meets_target"], bool)
    for key in ("geomean_ratio", "geomean_decode_ratio", "geomean_encode_ratio", "min_ratio"):
        assert _positive(data[key]), key

    frames = data["frames"]
    assert isinstance(frames, list)
    assert {frame["frame"]: (frame["source"], frame["bytes"]) for frame in frames} == EXPECTED_FRAMES
    for frame in frames:
        # Both implementations reproduce every golden frame byte for byte (checked by the script before timing).
        assert frame["roundtrip_identical"] == {"galaxy_trio": True, "pydantic": True}
        assert frame["pydantic_mismatch"] is None
        for op in ("decode", "encode", "encode_text"):
            figures = frame[f"{op}_us"]
            assert set(figures) == {"galaxy_trio", "pydantic"}
            assert all(_positive(v) for v in figures.values()), (frame["frame"], op, figures)
            assert frame[f"{op}_ratio"] == pytest.approx(figures["pydantic"] / figures["galaxy_trio"])
    # The envelope/payload split: present exactly for the frames whose payload field is not null.
    split = {frame["frame"]: frame["split"] for frame in frames}
    assert split["device REGISTER"]["payload_field"] == "metadata"
    assert split["DEVICE_INFO response"]["payload_field"] == "result"
    assert split["device REGISTER"]["payload_bytes"] < EXPECTED_FRAMES["device REGISTER"][1]
    for name, part in split.items():
        if part is None:
            continue
        for half in ("envelope", "payload"):
            figures = part[f"{half}_decode_us"]
            assert all(_positive(v) for v in figures.values()), (name, half, figures)
            assert part[f"{half}_decode_ratio"] == pytest.approx(figures["pydantic"] / figures["galaxy_trio"])


def test_rejects_nonsense_arguments() -> None:
    _require_pydantic()
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--iterations", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert "--iterations and --repeats must be at least 1" in completed.stderr


# --- the fleet benchmarks: bench_registration.py, bench_reconnect.py and their device side -----------------------

BENCHMARKS = REPO_ROOT / "benchmarks"
REGISTRATION = BENCHMARKS / "bench_registration.py"
RECONNECT = BENCHMARKS / "bench_reconnect.py"
DEVICE_SIDE = BENCHMARKS / "_device_side.py"
#: Bound on one smoke run as a subprocess: it normally takes a few seconds; this only stops a hang.
SMOKE_LIMIT_S = 180


def _bench_module(name: str) -> Any:
    """Import a benchmark module the way the scripts import each other (``benchmarks/`` on ``sys.path``)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _run(args: list[str], out: Path | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    completed = subprocess.run(
        [sys.executable, *args, *(["--out", str(out)] if out is not None else [])],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        stdin=subprocess.DEVNULL,
        timeout=SMOKE_LIMIT_S,
        check=False,
    )
    data = json.loads(out.read_text(encoding="utf-8")) if out is not None and out.exists() else {}
    return completed, data


def _table_rows(stdout: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header}"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return header, rows


@pytest.fixture(scope="module")
def registration_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench") / "registration.json"
    completed, data = _run(
        [str(REGISTRATION), "--devices", "2", "1", "--repeat", "2", "--single-repeat", "3"],
        out,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, data


@pytest.mark.slow
def test_registration_prints_a_row_per_fleet_size(registration_run: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = registration_run
    header, rows = _table_rows(stdout, "devices")
    assert header == [
        "devices",
        "layout",
        "runs",
        "to all IDLE",
        "target",
        "UFO",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "CPU s",
        "device side CPU s",
        "GC s",
        "peak RSS MiB",
        "KiB/device",
        "retries",
    ]
    # Sizes come out in ascending order, each with its layout and number of timed runs.
    assert [row[:3] for row in rows] == [["1", "1x(server+1)", "3"], ["2", "1x(server+2)", "2"]]
    one = rows[0]
    assert one[4].startswith("<= 3.00 ms (") and one[5] == "66.00 ms"  # the target and UFO's figure
    assert rows[1][4] == "-"  # no target for 2 devices
    assert "Layout: the manager runs alone in its own process" in stdout
    assert "Open files: soft limit raised to the hard limit" in stdout
    assert "machine load before the run:" in stdout


@pytest.mark.slow
def test_registration_writes_json_with_positive_figures(registration_run: tuple[str, dict[str, Any]]) -> None:
    _, data = registration_run
    assert data["benchmark"] == "registration"
    assert data["targets"]["to_all_idle_s"] == {"1": 0.003, "100": 0.15, "1000": 2.0, "10000": 25.0}
    assert data["targets"]["kib_per_idle_device"] == 30.0
    assert data["ufo_reference_s"] == {"1": 0.066, "100": 1.12}
    assert data["skipped"] == []
    assert data["nofile"]["soft"] == data["nofile"]["hard"]  # raised to the hard limit
    fleets = {fleet["devices"]: fleet for fleet in data["fleets"]}
    assert set(fleets) == {1, 2}
    for devices, fleet in fleets.items():
        runs = 3 if devices == 1 else 2
        assert fleet["runs"] == runs
        assert len(fleet["total_s_all"]) == runs
        assert fleet["failed_runs"] == 0
        assert fleet["statuses"] == [{"idle": devices}] * runs
        assert fleet["events_dropped"] == 0
        assert isinstance(fleet["retries"], int) and fleet["retries"] >= 0
        assert fleet["device_processes"] == 1 and fleet["agents_per_process"] == [devices]
        for key in ("total_s_median", "cpu_s_median", "close_s_median", "peak_rss_mib", "rss_before_mib"):
            assert _positive(fleet[key]), (devices, key)
        assert math.isfinite(fleet["rss_per_device_kib"])
        # The device side's CPU over each run, one figure per device-side process.
        assert [len(cpu) for cpu in fleet["device_cpu_s_by_process"]] == [1] * runs
        assert fleet["device_cpu_s_median"] >= 0
        per_device = fleet["per_device_ms"]
        assert per_device["samples"] == runs * devices  # every device of every run has a connect -> IDLE time
        assert all(_positive(per_device[p]) for p in ("p50", "p95", "p99", "max"))
        assert per_device["p50"] <= per_device["p95"] <= per_device["p99"] <= per_device["max"]
        assert [side["devices"] for side in fleet["device_side"]] == [devices]
        assert fleet["profile"] is None
    assert fleets[1]["target_s"] == 0.003 and isinstance(fleets[1]["meets_target"], bool)
    assert fleets[2]["target_s"] is None and fleets[2]["meets_target"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "0"], "every N must be at least 1"),
        (["--devices", "3", "--repeat", "0"], "--repeat and --single-repeat must be at least 1"),
    ],
)
def test_registration_rejects_nonsense_arguments(args: list[str], message: str) -> None:
    completed, _ = _run([str(REGISTRATION), *args])
    assert completed.returncode == 2
    assert message in completed.stderr


@pytest.mark.slow
def test_registration_reports_a_run_that_does_not_settle() -> None:
    # A run limit no real run can meet: the worker says where the devices stood, and the script fails cleanly.
    completed, _ = _run([str(REGISTRATION), "--devices", "2", "--repeat", "1", "--timeout", "0.001"])
    assert completed.returncode == 1
    assert "run 'warmup' did not settle; devices by status: {'connecting (phase" in completed.stderr
    assert "a run did not bring every device to IDLE within 0.001 s (--timeout)" in completed.stderr
    assert "FAILED: the manager worker for 2 devices exited with 1" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert "| devices" not in completed.stdout  # no figures from a failed run


def test_registration_plan_fits_processes_under_the_open_files_limit() -> None:
    bench = _bench_module("bench_registration")
    small = bench.plan(100, 20000, 28232)
    assert (small.shard_counts, small.layout, small.skipped) == ((100,), "1x(server+100)", None)
    # From 1,000 devices on, two device-side processes (two cores); 10,000 fits 20,000 fds as 2 x 5,000.
    assert bench.plan(1000, 20000, 28232).shard_counts == (500, 500)
    assert bench.plan(10000, 20000, 28232).shard_counts == (5000, 5000)
    # A tighter limit splits further: 3 fds per device + overhead must fit in each process.
    tight = bench.plan(3001, 4000, 28232)
    assert sum(tight.shard_counts) == 3001 and max(tight.shard_counts) * 3 + 128 <= 4000
    assert tight.layout == f"{len(tight.shard_counts)}x(server+{'/'.join(map(str, tight.shard_counts))})"
    # So does a narrow ephemeral port range: each server port takes 2 links per device from 127.0.0.1.
    assert bench.plan(6000, 20000, 4000).shard_counts == (2000, 2000, 2000)
    # The manager holds one fd per device and cannot be split: then the size is skipped, saying why.
    skipped = bench.plan(10000, 10000, 28232)
    assert skipped.shard_counts == () and "hard limit is 10000" in (skipped.skipped or "")
    # --device-processes asks for more processes (never more than devices), and still splits further if needed.
    assert bench.plan(10000, 20000, 28232, 4).shard_counts == (2500, 2500, 2500, 2500)
    assert bench.plan(3, 20000, 28232, 8).shard_counts == (1, 1, 1)
    assert bench.plan(10000, 20000, 28232, 1).shard_counts == (5000, 5000)  # 1 x 10,000 would need 30,128 fds


@pytest.mark.slow
def test_registration_runs_over_the_device_processes_asked_for(tmp_path: Path) -> None:
    completed, data = _run(
        [str(REGISTRATION), "--devices", "3", "--repeat", "1", "--device-processes", "3"], tmp_path / "r.json"
    )
    assert completed.returncode == 0, completed.stderr
    (fleet,) = data["fleets"]
    assert fleet["layout"] == "3x(server+1)" and fleet["agents_per_process"] == [1, 1, 1]
    assert [len(cpu) for cpu in fleet["device_cpu_s_by_process"]] == [3]
    assert fleet["statuses"] == [{"idle": 3}]


@pytest.mark.slow
def test_registration_holds_the_fleet_and_reports_what_it_cost(tmp_path: Path) -> None:
    completed, data = _run(
        [str(REGISTRATION), "--devices", "3", "--repeat", "1", "--hold", "1.5", "--heartbeat-interval", "0.5"],
        tmp_path / "h.json",
    )
    assert completed.returncode == 0, completed.stderr
    (fleet,) = data["fleets"]
    (hold,) = fleet["holds"]
    assert hold["seconds"] == 1.5 and hold["idle_at_end"] == 3
    assert hold["left_idle"] == 0 and hold["reconnects"] == 0  # heartbeats every 0.5 s, all answered
    assert _positive(hold["cpu_ms_per_device_minute"]) and _positive(hold["rss_at_end_bytes"])
    assert "Held 3 devices IDLE for 1.5 s: 3 IDLE at the end, 0 left IDLE, 0 reconnects" in completed.stdout


def test_registration_rejects_zero_device_processes() -> None:
    completed, _ = _run([str(REGISTRATION), "--devices", "3", "--device-processes", "0"])
    assert completed.returncode == 2 and "--device-processes must be at least 1" in completed.stderr


# --- bench_floor.py, bench_server.py, spy_summary.py ------------------------------------------------------------


@pytest.mark.slow
def test_floor_reports_both_clients_and_their_ratio(tmp_path: Path) -> None:
    completed, data = _run([str(BENCHMARKS / "bench_floor.py"), "--devices", "3", "--repeat", "1"], tmp_path / "f.json")
    assert completed.returncode == 0, completed.stderr
    header, rows = _table_rows(completed.stdout, "client")
    assert header[0] == "client" and [row[0] for row in rows] == ["minimal", "manager"]
    assert "manager CPU per device / minimal client's:" in completed.stdout
    summary = data["summary"]
    assert _positive(summary["cpu_ratio"]) and len(summary["cpu_ratio_pairs"]) == 1
    assert {run["kind"] for run in data["runs"]} == {"minimal", "manager"}
    assert all(run["ready"] == 3 for run in data["runs"])


@pytest.mark.slow
def test_server_compares_checkouts_in_one_run(tmp_path: Path) -> None:
    # This checkout serves as its own baseline and as a further step (--also): the machinery runs end to end.
    completed, data = _run(
        [
            str(BENCHMARKS / "bench_server.py"),
            *("--devices", "3", "--repeat", "2", "--baseline", str(REPO_ROOT), "--also", f"step={REPO_ROOT}"),
        ],
        tmp_path / "s.json",
    )
    assert completed.returncode == 0, completed.stderr
    _header, rows = _table_rows(completed.stdout, "server")
    assert [row[0] for row in rows] == ["baseline", "step", "ours"] and all(row[1] == "3" for row in rows)
    assert "registrations per server CPU second, ours / baseline:" in completed.stdout
    assert "step / baseline:" in completed.stdout
    summary = data["summary"]
    assert len(summary["rate_ratio_pairs"]) == 2 and _positive(summary["rate_ratio"])
    assert set(summary["rate_ratios"]) == {"ours", "step"} and all(map(_positive, summary["rate_ratios"].values()))
    for name in ("baseline", "step", "ours"):
        assert _positive(summary[name]["server_cpu_ms_per_registration"])
    # Every side once per round, the order reversed in the second round.
    assert [(run["repeat"], run["server"]) for run in data["runs"]] == [
        (0, "ours"),
        (0, "baseline"),
        (0, "step"),
        (1, "step"),
        (1, "baseline"),
        (1, "ours"),
    ]


def test_server_rejects_a_baseline_that_is_not_a_checkout(tmp_path: Path) -> None:
    completed, _ = _run([str(BENCHMARKS / "bench_server.py"), "--baseline", str(tmp_path)])
    assert completed.returncode == 2 and "no benchmarks/_device_side.py there" in completed.stderr
    completed, _ = _run([str(BENCHMARKS / "bench_server.py"), "--also", f"ours={REPO_ROOT}"])
    assert completed.returncode == 2 and "expected NAME=DIR with a new NAME" in completed.stderr


def test_spy_summary_ranks_self_and_inclusive_samples(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(
        'process 1:"python";main (x.py:1);serve (galaxy_trio/transport/server.py:10);recv (trio/_socket.py:5) 6\n'
        'process 1:"python";main (x.py:1);serve (galaxy_trio/transport/server.py:10) 2\n'
        "main (x.py:1);other (y.py:3) 2\n",
        encoding="utf-8",
    )
    spy = _bench_module("spy_summary")
    total, own, inclusive = spy.summarise(raw.read_text(encoding="utf-8"))
    assert total == 10
    assert own.most_common(1) == [("recv (trio/_socket.py)", 6)]
    assert inclusive["serve (galaxy_trio/transport/server.py)"] == 8 and inclusive["main (x.py)"] == 10


def test_registration_percentile_is_nearest_rank() -> None:
    bench = _bench_module("bench_registration")
    values = [float(v) for v in range(1, 101)]
    assert [bench.percentile(values, p) for p in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert bench.percentile([7.0], 99) == 7.0
    assert math.isnan(bench.percentile([], 50))


@pytest.fixture(scope="module")
def reconnect_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench") / "reconnect.json"
    completed, data = _run(
        [str(RECONNECT), "--devices", "3", "--reconnect-delay", "0.1", "--backoff-cap", "0.5"],
        out,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, data


@pytest.mark.slow
def test_reconnect_prints_table_and_histogram(reconnect_run: tuple[str, dict[str, Any]]) -> None:
    stdout, data = reconnect_run
    header, rows = _table_rows(stdout, "devices")
    assert header == [
        "devices",
        "backoff",
        "downtime",
        "restart -> all IDLE",
        "target",
        "kill -> all IDLE",
        "attempts",
        "per device (med/max)",
        "busiest 250 ms",
        "manager CPU s",
    ]
    assert len(rows) == 1
    assert rows[0][:3] == ["3", "0.1..0.5 s", "0 s"]
    assert rows[0][4].startswith("<= 3.5 s (")  # backoff cap + 3 s
    histogram_lines = [line for line in stdout.splitlines() if re.match(r" *\d+\.\d\ds \|", line)]
    assert len(histogram_lines) == len(data["histogram"])
    assert "<- server killed" in histogram_lines[0]
    assert any("new server listening" in line for line in histogram_lines)
    assert any("all IDLE again" in line for line in histogram_lines)
    assert "machine load before the run:" in stdout


@pytest.mark.slow
def test_reconnect_writes_json_with_positive_figures(reconnect_run: tuple[str, dict[str, Any]]) -> None:
    _, data = reconnect_run
    assert data["benchmark"] == "reconnect"
    assert (data["devices"], data["reconnect_delay_s"], data["backoff_cap_s"]) == (3, 0.1, 0.5)
    assert data["recovered"] is True and data["devices_back"] == 3
    assert data["statuses_after"] == {"idle": 3}
    assert data["target_s"] == 3.5 and isinstance(data["meets_target"], bool)
    for key in ("restart_to_all_idle_s", "kill_to_all_idle_s", "kill_to_listening_s", "first_up_s"):
        assert _positive(data[key]), key
    # The restart comes after the kill, and every device is back after the restart.
    assert data["kill_to_all_idle_s"] > data["kill_to_listening_s"] > 0
    assert data["reconnect_attempts"] >= 3  # every device reconnected at least once
    assert sum(data["histogram"]) == data["reconnect_attempts"]
    assert data["attempts_per_device"]["min"] >= 1
    assert data["bucket_s"] == 0.25
    assert data["disconnect_reasons"]  # every device lost its link: the reasons are counted
    assert 0 < data["spread"]["busiest_bucket_share"] <= 1
    assert data["events_dropped"] == 0
    # Server, agents, restarted server: three device-side processes, the agents in their own.
    assert [(side["server"], side["devices"]) for side in data["device_side"]] == [(True, 0), (False, 3), (True, 0)]


def test_reconnect_histogram_buckets_and_marks() -> None:
    bench = _bench_module("bench_reconnect")
    counts = bench.histogram([0.0, 0.1, 0.26, 0.9, 5.0], bucket=0.25, end=1.0)
    assert counts == [2, 1, 0, 2]  # the last bucket also takes what lies past the end
    text = bench.ascii_histogram([2, 1, 0], bucket=0.25, marks={0.0: "server killed", 0.3: "back"})
    lines = text.splitlines()
    assert lines[0] == "  0.00s |" + "#" * bench.BAR_WIDTH + "|     2  <- server killed"
    assert lines[1].startswith("  0.25s |" + "#" * (bench.BAR_WIDTH // 2) + " ")
    assert lines[1].endswith("|     1  <- back")
    assert lines[2] == "  0.50s |" + " " * bench.BAR_WIDTH + "|     0"


def test_reconnect_rejects_nonsense_arguments() -> None:
    completed, _ = _run([str(RECONNECT), "--devices", "5", "--reconnect-delay", "2", "--backoff-cap", "1"])
    assert completed.returncode == 2
    assert "need 0 < --reconnect-delay <= --backoff-cap" in completed.stderr


@pytest.mark.slow
def test_device_side_announces_ready_and_stops_when_stdin_closes() -> None:
    token = "smoke-token-not-to-be-printed"
    process = subprocess.Popen(
        [sys.executable, str(DEVICE_SIDE), "--devices", "2", "--port", "0", "--prefix", "smoke-"],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GALAXY_TRIO_TOKEN": token},
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        line = process.stdout.readline()
        ready = json.loads(line)
        assert ready["event"] == "ready" and ready["server"] is True
        assert ready["devices"] == 2 and ready["prefix"] == "smoke-"
        assert ready["url"] == f"ws://127.0.0.1:{ready['port']}/ws" and ready["port"] > 0
        assert ready["nofile"]["soft"] == ready["nofile"]["hard"]
        assert token not in line
        process.stdin.close()  # the lifeline: the device side stops when its parent lets go
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        stderr = process.stderr.read()
        assert "stopping (stdin closed)" in stderr
        assert token not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_device_side_needs_a_token_and_a_server_for_agents_only() -> None:
    env = {key: value for key, value in os.environ.items() if key != "GALAXY_TRIO_TOKEN"}
    no_token = subprocess.run(
        [sys.executable, str(DEVICE_SIDE), "--devices", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=SMOKE_LIMIT_S,
        check=False,
    )
    assert no_token.returncode == 2 and "GALAXY_TRIO_TOKEN" in no_token.stderr
    no_server = subprocess.run(
        [sys.executable, str(DEVICE_SIDE), "--devices", "1", "--agents-only", "--token", "t"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_LIMIT_S,
        check=False,
    )
    assert no_server.returncode == 2 and "--agents-only needs --server-url" in no_server.stderr


# --- memory_breakdown.py -----------------------------------------------------------------------------------------


def test_memory_breakdown_attributes_per_device_memory(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "memory_breakdown.py"),
            "--devices",
            "5",
            "--top",
            "6",
            "--only",
            "galaxy_trio",
            "--out",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("Idle managed device, 5 devices: ")
    assert "By file:" in completed.stdout and "By line:" in completed.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["benchmark"] == "memory_breakdown" and data["devices"] == 5
    assert _positive(data["traced_kib_per_device"])
    assert 1 <= len(data["files"]) <= 6 and 1 <= len(data["lines"]) <= 6
    # --only keeps galaxy_trio's own allocation sites; the manager's per-device state is among them.
    assert all(row["site"].startswith("galaxy_trio/") for row in data["lines"])
    assert any(row["site"].startswith("galaxy_trio/manager/") for row in data["lines"])
    assert sum(row["bytes"] for row in data["files"]) > 0


def test_memory_breakdown_rejects_nonsense_arguments() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "memory_breakdown.py"), "--devices", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert "--devices and --top must be at least 1" in completed.stderr


# --- bench_fleet.py ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fleet_settles_takes_over_a_killed_member_and_reports_redis_rates(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (run .ci/redis.sh, or: apt-get install -y redis-server)")
    pytest.importorskip(
        "glide", reason="the Redis client valkey-glide is not installed: pip install 'galaxy_trio[fleet]'"
    )
    completed, data = _run(
        [str(BENCHMARKS / "bench_fleet.py"), "--devices", "20", "--members", "2", "--ttl", "1.5", "--steady", "1"],
        tmp_path / "fleet.json",
    )
    assert completed.returncode == 0, completed.stderr
    header, rows = _table_rows(completed.stdout, "phase")
    assert header[:4] == ["phase", "wall s", "Redis cmds/s per 1k dev", "requests/s per 1k dev"]
    assert [row[0] for row in rows] == ["to all IDLE", "steady 1 s", "takeover"]
    assert (data["benchmark"], data["devices"], data["members"], data["ttl_s"]) == ("fleet", 20, 2, 1.5)
    assert data["problems"] == [] and data["takeover_bound_s"] == 11.5
    # Settled: the members' shares cover the fleet, and Redis (what `status --redis` reads) agrees device by device.
    assert sum(data["to_all_idle"]["held"].values()) == 20
    assert data["redis_after_settle"]["not_idle"] == [] and data["redis_after_settle"]["devices"] == 20
    assert data["redis_after_settle"]["owners"] == data["to_all_idle"]["held"]
    # The killed member's devices are all IDLE under the survivor, which owns the whole fleet in Redis.
    takeover = data["takeover"]
    assert takeover["victim"] == "m0" and takeover["orphans"] == data["to_all_idle"]["held"]["m0"]
    assert takeover["taken_by"] == {"m1": takeover["orphans"]} and takeover["survivor_devices_left_idle"] == 0
    assert data["redis_after_takeover"]["owners"] == {"m1": 20} and data["redis_after_takeover"]["not_idle"] == []
    assert _positive(takeover["takeover_s"]) and isinstance(takeover["meets_bound"], bool)
    # Redis's rates: the steady fleet renews its leases (scripts' inner GET/PEXPIRE) and reads its mailboxes.
    steady = data["steady"]
    assert _positive(steady["commands_per_s_per_1000"]) and _positive(steady["requests_per_s_per_1000"])
    assert steady["commands_per_s_per_1000"] >= steady["requests_per_s_per_1000"]
    assert {"evalsha", "pexpire", "xread"} <= set(steady["calls"]) and "info" not in steady["calls"]
    assert set(steady["cpu_s"]) == {"redis", "device:0", "member:m0", "member:m1"}
    assert set(data["leave_s"]) == {"m1"}  # the survivor left gracefully (the killed one could not)
