"""``python -m galaxy_trio``: run a fleet, serve AIP, run a device agent, run one task, check a config.

The commands are thin: each loads what it needs, then hands over to the library (manager, server, agent, local
mode). Human output goes to stderr (a live table when stdout is a terminal), machine output (``--json``) to
stdout. Ctrl-C (or SIGTERM) shuts everything down cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import msgspec
import trio

from ._nursery import open_service_nursery
from .config import ConfigError, DeviceConfig, GalaxyConfig, load_config
from .errors import GalaxyTrioError
from .redact import redact_url, url_token
from .runtime import freeze_settled_objects, tune_gc

__all__ = ["main"]

logger = logging.getLogger("galaxy_trio.cli")

EXIT_OK = 0
EXIT_FAILED = 1  # a device or task did not succeed
EXIT_USAGE = 2  # bad arguments or a bad config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m galaxy_trio",
        description="Device-fleet registration and control over AIP (UFO Galaxy compatible), on trio.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="bring every device in CONFIG to IDLE and keep it there until Ctrl-C")
    run.add_argument("config", help="devices.yaml")
    run.add_argument(
        "--local",
        action="store_true",
        help="also start an AIP server and a device agent per device in this process (also: 'local: true')",
    )
    run.add_argument("--once", action="store_true", help="exit once every device is IDLE or FAILED (0: all IDLE)")
    run.add_argument("--json", action="store_true", help="print the final profiles as a JSON array on stdout")
    run.add_argument(
        "--redis",
        metavar="URL",
        help="fleet mode: join the managers sharing this Redis (redis://HOST:PORT/DB); needs the 'fleet' extra",
    )

    task = sub.add_parser("task", help="register one device, run one task on it, print the result")
    task.add_argument("config", help="devices.yaml")
    task.add_argument("--device", required=True, help="device_id from CONFIG")
    task.add_argument("request", help='the task text; the default driver runs {"tool_name": ..., "parameters": ...}')
    task.add_argument("--local", action="store_true", help="start the device's server and agent in this process")
    task.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    status = sub.add_parser("status", help="fleet mode: print every device of the fleet in Redis")
    status.add_argument("--redis", required=True, metavar="URL", help="the fleet's Redis (redis://HOST:PORT/DB)")
    status.add_argument("--json", action="store_true", help="print the fleet as a JSON array on stdout")

    check = sub.add_parser("check", help="validate CONFIG and print every problem")
    check.add_argument("config", help="devices.yaml")

    serve = sub.add_parser("serve", help="run an AIP server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=5005, help="port (default 5005; 0 picks a free one)")
    serve.add_argument(
        "--token",
        help="client token (default: $GALAXY_TRIO_TOKEN, else a random one, printed once)",
    )
    serve.add_argument("--max-frame", type=int, default=1 << 20, help="largest accepted frame in bytes (1 MiB)")

    agent = sub.add_parser("agent", help="run a device agent")
    agent.add_argument("--server", required=True, help="ws://HOST:PORT/ws?token=... of the AIP server")
    agent.add_argument("--device-id", required=True, help="the id to register under")
    agent.add_argument("--token-env", help="environment variable holding the token, if not in --server")
    agent.add_argument("--platform", help="override the detected platform (windows, linux, darwin…)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m galaxy_trio`` and the ``galaxy-trio`` script; returns the exit status."""
    args = _parser().parse_args(argv)
    # On a terminal, `run` draws a live table: INFO lines would scroll it away, so only warnings are logged then.
    live_table = args.command == "run" and not args.json and not args.redis and sys.stdout.isatty()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if live_table else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("trio-websocket").setLevel(logging.WARNING)
    commands: dict[str, Callable[[argparse.Namespace], Any]] = {
        "run": _run,
        "task": _task,
        "check": _check,
        "status": _status,
        "serve": _serve,
        "agent": _agent,
    }
    if args.command in ("run", "serve", "agent", "task"):
        tune_gc()  # long-running fleet processes: see galaxy_trio/runtime.py
    try:
        result = trio.run(_until_interrupted, partial(commands[args.command], args))
    except (ConfigError, GalaxyTrioError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    return int(result)


async def _until_interrupted(command: Callable[[], Any]) -> int:
    """Run ``command``; the first SIGINT/SIGTERM cancels it so that everything shuts down in order."""
    result = EXIT_OK
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # A service nursery: the command's own errors reach main() unwrapped, as themselves.
        async with open_service_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    logger.info("%s received; shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            result = int(await command())
    return result


# --- check -----------------------------------------------------------------------------------------------------


async def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {args.config}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{config.source}: ok, {len(config.devices)} device(s){', local mode' if config.local else ''}")
    for device in config.devices:
        print(f"  {device.device_id}: {device.display_url}")
    return EXIT_OK


# --- run ---------------------------------------------------------------------------------------------------------


@asynccontextmanager
async def _fleet(config: GalaxyConfig, devices: Sequence[DeviceConfig], local: bool) -> AsyncIterator[Any]:
    """The manager for ``devices``, with local servers and agents first when asked."""
    from .manager import ConstellationDeviceManager

    async with AsyncExitStack() as stack:
        if local:
            from .local import open_local_fleet

            fleet = await stack.enter_async_context(open_local_fleet(devices))
            devices = fleet.devices
        manager = await stack.enter_async_context(ConstellationDeviceManager(settings=config.manager))
        yield manager, devices


async def _run(args: argparse.Namespace) -> int:
    from .console import profiles_json

    config = load_config(args.config)
    local = args.local or config.local
    if args.redis and args.once:
        print("error: --once does not apply to --redis: a fleet member runs until stopped", file=sys.stderr)
        return EXIT_USAGE
    profiles: list[Any] = []
    status = EXIT_OK
    live = sys.stdout.isatty() and not args.json
    try:
        async with _fleet(config, config.devices, local) as (manager, devices):
            try:
                if args.redis:
                    status = await _run_fleet_member(manager, devices, args.redis)
                else:
                    status = await _bring_up(manager, devices, live=live, once=args.once)
            finally:
                # Snapshot before the manager closes (closing marks every device disconnected).
                profiles = list(manager.get_all_devices().values())
    finally:
        if args.json:
            sys.stdout.buffer.write(profiles_json(profiles) + b"\n")
            sys.stdout.flush()
    return status


async def _bring_up(manager: Any, devices: Sequence[DeviceConfig], *, live: bool, once: bool) -> int:
    from .console import FleetView, show_live_table

    events = manager.subscribe()
    async with trio.open_nursery() as display:
        if live:
            view = FleetView([d.device_id for d in devices], trio.current_time())
            display.start_soon(show_live_table, view, events, sys.stdout)
        manager.add_devices(devices)
        settled = await manager.wait_until_settled()
        idle = sum(1 for p in settled.values() if p.status.value == "idle")
        logger.info("%d of %d devices IDLE", idle, len(settled))
        if not once:
            freeze_settled_objects()  # a full collection: worth it only for a process that stays up
            await trio.sleep_forever()
        display.cancel_scope.cancel()
    events.close()
    return EXIT_OK if idle == len(settled) else EXIT_FAILED


async def _run_fleet_member(manager: Any, devices: Sequence[DeviceConfig], redis_url: str) -> int:
    """Fleet mode: this manager drives only the devices whose lease it holds in Redis."""
    from .fleet import open_fleet_member

    async with open_fleet_member(manager, redis_url, devices) as member:
        logger.info("joined the fleet at %s as %s", redact_url(redis_url), member.member_id)
        await trio.sleep_forever()
    return EXIT_OK


async def _status(args: argparse.Namespace) -> int:
    from .fleet import read_fleet_status, read_fleet_status_text

    if args.json:
        rows = await read_fleet_status(args.redis)
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(rows), indent=2) + b"\n")
    else:
        print(await read_fleet_status_text(args.redis))
    return EXIT_OK


# --- task --------------------------------------------------------------------------------------------------------


async def _task(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        device = config.device(args.device)
    except KeyError:
        ids = ", ".join(d.device_id for d in config.devices)
        print(f"error: no device {args.device!r} in {args.config}; devices: {ids}", file=sys.stderr)
        return EXIT_USAGE
    async with _fleet(config, [device], args.local or config.local) as (manager, devices):
        manager.add_devices(devices)
        profile = await manager.wait_for_device(device.device_id)
        if profile.status.value != "idle":
            reason = profile.failure_reason or "not connected"
            print(f"error: device {device.device_id} is {profile.status.value}: {reason}", file=sys.stderr)
            return EXIT_FAILED
        result = await manager.assign_task_to_device(f"cli-{secrets.token_hex(4)}", device.device_id, args.request)
    if args.json:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    else:
        outcome = "completed" if result.ok else f"failed ({result.error_type}): {result.error}"
        print(f"task {result.task_id} on {result.device_id}: {outcome}", file=sys.stderr)
        print(msgspec.json.encode(result.result).decode())
    return EXIT_OK if result.ok else EXIT_FAILED


# --- serve and agent ---------------------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    from .server import serve_aip

    token = args.token or os.environ.get("GALAXY_TRIO_TOKEN")
    if not token:
        token = secrets.token_urlsafe(24)
        # Printed once, on purpose, so that clients can be pointed at this server; never logged.
        print(f"token: {token}", file=sys.stderr, flush=True)
    await serve_aip(host=args.host, port=args.port, token=token, max_frame_size=args.max_frame)
    return EXIT_OK


async def _agent(args: argparse.Namespace) -> int:
    from .agent import DeviceAgent
    from .redact import url_with_token

    url = args.server
    if url_token(url) is None and args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            print(f"error: environment variable {args.token_env!r} is not set", file=sys.stderr)
            return EXIT_USAGE
        url = url_with_token(url, token)
    logger.info("device agent %s for %s", args.device_id, redact_url(url))
    await DeviceAgent(url, args.device_id, platform=args.platform).run()
    return EXIT_OK
