"""``python -m galaxy_trio``: run a fleet, serve AIP, run a device agent, run one task, check a config.

The commands are thin: each loads what it needs, then hands over to the library (manager, server, agent, local
mode). Human output goes to stderr (a live table when stdout is a terminal), machine output (``--json``) to
stdout. Ctrl-C (or SIGTERM) shuts everything down cleanly.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import logging
import os
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any, NoReturn
from urllib.parse import urlsplit

import msgspec
import trio

from ._nursery import open_service_nursery
from .aip.client_protocol import REFUSED_HINT
from .config import ConfigError, DeviceConfig, GalaxyConfig, ManagerSettings, load_config
from .errors import GalaxyTrioError
from .redact import redact_url, url_token
from .runtime import freeze_settled_objects, tune_gc

__all__ = ["main"]

logger = logging.getLogger("galaxy_trio.cli")

EXIT_OK = 0
EXIT_FAILED = 1  # a device or task did not succeed
EXIT_USAGE = 2  # bad arguments or a bad config

#: ``run`` re-probes FAILED devices this often when the config leaves ``failed_retry_interval`` unset.
RUN_FAILED_RETRY_INTERVAL = 60.0


class ServeError(GalaxyTrioError):
    """The AIP server could not start listening (port in use, no permission): exit status 1."""


class UsageError(Exception):
    """A bad argument found after parsing (a URL, a host name, a missing extra): exit status 2, one line."""


def _port(text: str) -> int:
    """A TCP port for ``--port``: 1-65535, or 0 for a free one (argparse shows the message and exits 2)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a port 1-65535 (0: any free port)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port; give 1-65535 (0: any free port)")
    return port


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes, got {value}")
    return value


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _add_control_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--control HOST:PORT`` and ``--control-allow-remote``, for ``run`` and ``serve`` alike."""
    parser.add_argument(
        "--control",
        metavar="HOST:PORT",
        help=f"serve {what} there (port 0: any free one; the URL and token are printed once; token from"
        " $GALAXY_TRIO_CONTROL_TOKEN if set); needs the 'control' extra",
    )
    parser.add_argument(
        "--control-allow-remote", action="store_true", help="let --control bind an address that is not loopback"
    )


def _version() -> str:
    from . import __version__

    return f"galaxy_trio {__version__} (Python {sys.version.split()[0]}, trio {trio.__version__})"


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line — what was wrong, and where the usage is — not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m galaxy_trio",
        description="Device-fleet registration and control over AIP (UFO Galaxy compatible), on trio.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (also after the command)")
    # Each subcommand accepts -v too; SUPPRESS keeps a -v given before the subcommand from being reset.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_run, _add_task, _add_status, _add_check, _add_serve, _add_agent, _add_ctl):
        add(sub, common)
    return parser


_Subparsers = Any  # argparse's _SubParsersAction is private


def _add_run(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser(
        "run", parents=[common], help="bring every device in CONFIG to IDLE and keep it there until Ctrl-C"
    )
    _add_config_arguments(run)
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
    _add_control_options(run, "the control API and dashboard")


def _add_task(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    task = sub.add_parser("task", parents=[common], help="register one device, run one task on it, print the result")
    task.add_argument("config", help="devices.yaml")
    task.add_argument("--device", required=True, help="device_id from CONFIG")
    task.add_argument("request", help='the task text; the default driver runs {"tool_name": ..., "parameters": ...}')
    task.add_argument("--local", action="store_true", help="start the device's server and agent in this process")
    task.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _add_status(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser("status", parents=[common], help="fleet mode: print every device of the fleet in Redis")
    status.add_argument("--redis", required=True, metavar="URL", help="the fleet's Redis (redis://HOST:PORT/DB)")
    status.add_argument("--json", action="store_true", help="print the fleet as a JSON array on stdout")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG, or UFO's constellation.yaml naming it (``run`` and ``check`` read a config the same way)."""
    parser.add_argument("config", nargs="?", help="devices.yaml (ours or UFO Galaxy's)")
    parser.add_argument(
        "--constellation",
        metavar="FILE",
        help="UFO Galaxy's config/galaxy/constellation.yaml: its settings, and its DEVICE_INFO as CONFIG when CONFIG"
        " is not given (a relative DEVICE_INFO is taken from the current directory, as UFO does)",
    )


def _add_check(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    check = sub.add_parser("check", parents=[common], help="validate CONFIG as 'run' would, and print every problem")
    _add_config_arguments(check)
    check.add_argument("--local", action="store_true", help="check it for 'run --local' (also: 'local: true')")


def _add_serve(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    serve = sub.add_parser("serve", parents=[common], help="run an AIP server")
    serve.add_argument("--host", default="127.0.0.1", help="address or name to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=5005, help="port 1-65535 (default 5005; 0 picks a free one)")
    serve.add_argument(
        "--token",
        type=_non_empty,
        help="client token (default: $GALAXY_TRIO_TOKEN, else a random one, printed once)",
    )
    serve.add_argument(
        "--max-frame", type=_positive_int, default=1 << 20, help="largest accepted frame in bytes (1 MiB)"
    )
    _add_control_options(serve, "the server's /metrics (bearer token), /healthz and /readyz")


def _add_agent(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    agent = sub.add_parser("agent", parents=[common], help="run a device agent")
    agent.add_argument("--server", required=True, help="ws://HOST:PORT/ws?token=... of the AIP server")
    agent.add_argument("--device-id", required=True, type=_non_empty, help="the id to register under")
    agent.add_argument("--token-env", help="environment variable holding the token, if not in --server")
    agent.add_argument("--platform", type=_non_empty, help="override the detected platform (windows, linux, darwin…)")


def _add_ctl(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    ctl = sub.add_parser("ctl", parents=[common], help="steer a running 'run --control' through its control API")
    # Options shared by every action, accepted after the action (ctl devices --control URL).
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--control",
        metavar="URL",
        default=os.environ.get("GALAXY_TRIO_CONTROL_URL"),
        help="the URL 'run --control' printed (default: $GALAXY_TRIO_CONTROL_URL)",
    )
    shared.add_argument(
        "--token-env",
        metavar="NAME",
        default="GALAXY_TRIO_CONTROL_TOKEN",
        help="environment variable holding the control token (default GALAXY_TRIO_CONTROL_TOKEN)",
    )
    shared.add_argument("--json", action="store_true", help="print the answer as JSON on stdout")
    actions = ctl.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("devices", parents=[common, shared], help="every device with its live state")
    for name, text in (("connect", "bring a FAILED or stopped device back"), ("disconnect", "stop a device")):
        action = actions.add_parser(name, parents=[common, shared], help=text)
        action.add_argument("device_id", metavar="ID")
    task = actions.add_parser("task", parents=[common, shared], help="run a task on a device the manager drives")
    task.add_argument("device_id", metavar="ID")
    task.add_argument("request", help="the task text")
    task.add_argument("--task-id", help="the task id (default: generated)")
    task.add_argument("--timeout", type=float, help="seconds the task may take, queue time included")
    actions.add_parser("events", parents=[common, shared], help="follow the event stream until Ctrl-C")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m galaxy_trio`` and the ``galaxy-trio`` script; returns the exit status."""
    args = _parser().parse_args(argv)
    # On a terminal, `run` draws a live table on stdout; log lines are printed above it, through the same console.
    live = args.command == "run" and not args.json and not args.redis and sys.stdout.isatty()
    args.console = None
    if live:
        from rich.console import Console

        from .console import console_log_handler

        args.console = Console(file=sys.stdout)
        # INFO lines would push the table off a small screen: only warnings, unless -v.
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.WARNING,
            handlers=[console_log_handler(args.console)],
        )
    else:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # ctl: one line per request otherwise
    commands: dict[str, Callable[[argparse.Namespace], Any]] = {
        "run": _run,
        "task": _task,
        "check": _check,
        "status": _status,
        "serve": _serve,
        "agent": _agent,
        "ctl": _ctl,
    }
    if args.command in ("run", "serve", "agent", "task"):
        tune_gc()  # long-running fleet processes: see galaxy_trio/runtime.py
    try:
        result = trio.run(_until_interrupted, partial(commands[args.command], args))
    except Exception as exc:  # every error ends here as one line, not a traceback
        return _report(exc, verbose=args.verbose)
    return int(result)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _report(exc: Exception, *, verbose: bool) -> int:
    """Print why the command failed, once per distinct reason, and return its exit status.

    Config and usage errors exit 2, failures of devices, servers and the network 1. Anything else is a bug: it
    is reported in one line too, with the traceback only under ``-v``.
    """
    status = EXIT_FAILED
    shown: set[str] = set()
    for leaf in _leaves(exc):
        if isinstance(leaf, ConfigError | UsageError):
            status = EXIT_USAGE
            message = f"error: {leaf}"
        elif isinstance(leaf, GalaxyTrioError):
            message = f"error: {leaf}"
        elif isinstance(leaf, OSError):
            message = f"error: {leaf.strerror or leaf}"
        else:
            if verbose:
                raise exc
            message = (
                f"error: unexpected {type(leaf).__name__}: {leaf} (a bug in galaxy_trio; run again with -v for the"
                " traceback and report it)"
            )
        if message not in shown:
            shown.add(message)
            print(message, file=sys.stderr)
    return status


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


def _check_redis(url: str) -> None:
    """``--redis`` needs a Redis URL and valkey-glide: say so before anything starts, in one line (the URL first: a
    wrong one is wrong whatever is installed)."""
    from .fleet.redis_url import parse_redis_url  # needs no Redis client

    try:
        parse_redis_url(url)
    except ValueError as exc:
        raise UsageError(f"--redis: {exc}; give redis://HOST:PORT/DB") from None
    if importlib.util.find_spec("glide") is None:
        raise UsageError("--redis needs the 'fleet' extra (valkey-glide): pip install 'galaxy_trio[fleet]'")


# --- check -----------------------------------------------------------------------------------------------------


def _load_for_run(args: argparse.Namespace) -> GalaxyConfig:
    """The config ``run`` would use, refused for everything ``run`` would refuse: ``check`` calls this too."""
    from .config import RunChecks, load_constellation

    run = RunChecks(local=bool(args.local))
    if args.constellation is None and args.config is None:
        raise UsageError("give CONFIG (a devices.yaml), or --constellation FILE (UFO's constellation.yaml)")
    if args.constellation is not None:
        return load_constellation(args.constellation, args.config, run=run)
    return load_config(args.config, run=run)


async def _check(args: argparse.Namespace) -> int:
    try:
        config = _load_for_run(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {args.config or args.constellation}", file=sys.stderr)
        return EXIT_USAGE
    local = args.local or config.local
    print(f"{config.source}: ok, {len(config.devices)} device(s){', local mode' if local else ''}")
    for device in config.devices:
        print(f"  {device.device_id}: {device.display_url}")
    return EXIT_OK


# --- run ---------------------------------------------------------------------------------------------------------


def _manager_settings(config: GalaxyConfig) -> ManagerSettings:
    """The manager's settings for ``run``: a supervisor re-probes FAILED devices (every 60 s unless configured).

    The library leaves a FAILED device FAILED (the flow document's semantics); ``run`` keeps a fleet up until
    Ctrl-C, so a device that comes back (a reboot) must come back here too. ``failed_retry_interval: 0`` in the
    config turns the re-probe off.
    """
    settings = config.manager
    if settings.failed_retry_interval is None:
        settings = msgspec.structs.replace(settings, failed_retry_interval=RUN_FAILED_RETRY_INTERVAL)
    return settings


@asynccontextmanager
async def _fleet(
    settings: Any, devices: Sequence[DeviceConfig], local: bool
) -> AsyncIterator[tuple[Any, Sequence[DeviceConfig], Sequence[Any]]]:
    """The manager for ``devices``, with local servers and agents first when asked (and those servers)."""
    from .manager import ConstellationDeviceManager

    servers: Sequence[Any] = ()
    async with AsyncExitStack() as stack:
        if local:
            from .local import open_local_fleet

            fleet = await stack.enter_async_context(open_local_fleet(devices))
            devices, servers = fleet.devices, tuple(fleet.servers.values())
        manager = await stack.enter_async_context(ConstellationDeviceManager(settings=settings))
        yield manager, devices, servers


async def _run(args: argparse.Namespace) -> int:
    from .console import profiles_json

    if args.redis:
        _check_redis(args.redis)
        if args.once:
            raise UsageError("--once does not apply to --redis: a fleet member runs until stopped")
    config = _load_for_run(args)
    local = args.local or config.local
    control = _control_address(args)
    profiles: list[Any] = []
    status = EXIT_OK
    try:
        async with (
            _fleet(_manager_settings(config), config.devices, local) as (manager, devices, servers),
            # In fleet mode the control server starts with the fleet member (it routes tasks through it).
            _open_control(
                manager, None if args.redis else control, allow_remote=args.control_allow_remote, servers=servers
            ),
        ):
            try:
                if args.redis:
                    status = await _run_fleet_member(
                        manager,
                        devices,
                        args.redis,
                        control=control,
                        allow_remote=args.control_allow_remote,
                        servers=servers,
                    )
                else:
                    status = await _bring_up(
                        manager, devices, console=args.console, config_path=config.source, once=args.once
                    )
            finally:
                # Snapshot before the manager closes (closing marks every device disconnected).
                profiles = list(manager.get_all_devices().values())
    finally:
        if args.json:
            sys.stdout.buffer.write(profiles_json(profiles) + b"\n")
            sys.stdout.flush()
    return status


def _control_address(args: argparse.Namespace) -> tuple[str, int] | None:
    """``--control HOST:PORT`` checked before anything starts (and the 'control' extra there)."""
    if args.control is None:
        return None
    if importlib.util.find_spec("hypercorn") is None or importlib.util.find_spec("starlette") is None:
        raise UsageError("--control needs the 'control' extra: pip install 'galaxy_trio[control]'")
    from .control import ControlAddressError, parse_hostport
    from .control.address import check_bind

    try:
        host, port = parse_hostport(args.control)
        check_bind(host, allow_remote=args.control_allow_remote)
    except ControlAddressError as exc:
        raise UsageError(f"--control: {exc}") from None
    return host, port


@asynccontextmanager
async def _open_control(
    manager: Any,
    address: tuple[str, int] | None,
    *,
    allow_remote: bool,
    fleet: Any = None,
    servers: Sequence[Any] = (),
) -> AsyncIterator[None]:
    """The control server for ``manager`` while the block runs (nothing without ``--control``); ``servers``: the
    AIP servers local mode started, whose own figures join the metrics."""
    if address is None:
        yield
        return
    from .control import serve_control

    host, port = address
    given = os.environ.get("GALAXY_TRIO_CONTROL_TOKEN") or None
    async with open_service_nursery() as nursery:
        endpoint = await nursery.start(
            partial(
                serve_control,
                manager,
                host=host,
                port=port,
                token=given,
                allow_remote=allow_remote,
                fleet=fleet,
                servers=servers,
            )
        )
        _print_control("dashboard and control API", endpoint, given=given is not None)
        yield


def _print_control(what: str, endpoint: Any, *, given: bool) -> None:
    """The control URL and token, printed once, on purpose (like `serve`'s token); never logged."""
    token_line = "from $GALAXY_TRIO_CONTROL_TOKEN" if given else endpoint.token
    print(f"{what}: {endpoint.url}\ncontrol token: {token_line}", file=sys.stderr, flush=True)


def _check_tokens(devices: Sequence[DeviceConfig]) -> None:
    """Every unset ``token_env`` variable, as one config error before anything starts (local mode makes its own)."""
    problems: list[Any] = []
    for device in devices:
        try:
            device.resolve_url()
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)


async def _bring_up(
    manager: Any, devices: Sequence[DeviceConfig], *, console: Any, config_path: str, once: bool
) -> int:
    """Add ``devices``, wait until each is IDLE or FAILED, then (without ``once``) keep them up until cancelled.

    With a ``console`` (a terminal), a live table is drawn until this returns or is cancelled, i.e. before the
    manager closes, so the table left on screen shows the statuses the devices reached.
    """
    from .console import FleetView, open_live_table

    async with AsyncExitStack() as stack:
        events = stack.enter_context(manager.subscribe())
        if console is not None:
            view = FleetView([d.device_id for d in devices], trio.current_time())
            await stack.enter_async_context(open_live_table(view, events, console, config_path=config_path))
        manager.add_devices(devices)
        settled = await manager.wait_until_settled()
        idle = sum(1 for p in settled.values() if p.status.value == "idle")
        logger.info("%d of %d devices IDLE", idle, len(settled))
        if not once:
            freeze_settled_objects()  # a full collection: worth it only for a process that stays up
            await trio.sleep_forever()
    return EXIT_OK if idle == len(settled) else EXIT_FAILED


async def _run_fleet_member(
    manager: Any,
    devices: Sequence[DeviceConfig],
    redis_url: str,
    *,
    control: tuple[str, int] | None = None,
    allow_remote: bool = False,
    servers: Sequence[Any] = (),
) -> int:
    """Fleet mode: this manager drives only the devices whose lease it holds in Redis."""
    from .fleet import open_fleet_member

    async with (
        open_fleet_member(manager, redis_url, devices) as member,
        _open_control(manager, control, allow_remote=allow_remote, fleet=member, servers=servers),
    ):
        logger.info("joined the fleet at %s as %s", redact_url(redis_url), member.member_id)
        await trio.sleep_forever()
    return EXIT_OK


async def _status(args: argparse.Namespace) -> int:
    _check_redis(args.redis)
    from .fleet import read_fleet_status, read_fleet_status_text

    if args.json:
        rows = await read_fleet_status(args.redis)
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(rows), indent=2) + b"\n")
    else:
        print(await read_fleet_status_text(args.redis))
    return EXIT_OK


# --- task --------------------------------------------------------------------------------------------------------


def _task_hint(reason: str, device_id: str = "ID", request: str = "REQUEST") -> str:
    """What to do when ``task`` cannot bring its device up, read from the manager's failure reason.

    The reason already says what the protocol knows (the token, the /ws path, a server not running: see
    ``aip/client_protocol.py``); this adds what is specific to the command line. A duplicate client id means a
    running ``run`` holds the device: the same task goes through that run's control plane, ready to copy.
    """
    if "already registered" in reason:
        ctl = f"python -m galaxy_trio ctl task {shlex.quote(device_id)} {shlex.quote(request)} --control URL"
        return (
            f"; a running 'run' probably drives this device: send the task through its control plane, {ctl}"
            " (URL: the one 'run --control HOST:PORT' printed), or stop that run first"
        )
    if "HTTP 401" in reason or "HTTP 403" in reason:
        return "; check ?token= in server_url or the token_env variable"
    if "HTTP 404" in reason and "/ws" not in reason:
        return "; nothing serves AIP at that path: galaxy_trio and UFO servers listen on /ws"
    if "refused" in reason or "all attempts to connect" in reason:
        check = "" if REFUSED_HINT in reason else f"; connection refused: {REFUSED_HINT}"
        return f"{check}; 'python -m galaxy_trio serve' starts a server, --local starts one in this process"
    return ""


async def _task(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        device = config.device(args.device)
    except KeyError:
        ids = ", ".join(d.device_id for d in config.devices)
        raise UsageError(f"no device {args.device!r} in {args.config}; devices: {ids}") from None
    if not (args.local or config.local):
        _check_tokens([device])
    async with _fleet(config.manager, [device], args.local or config.local) as (manager, devices, _servers):
        manager.add_devices(devices)
        profile = await manager.wait_for_device(device.device_id)
        if profile.status.value != "idle":
            reason = profile.failure_reason or "not connected"
            print(
                f"error: device {device.device_id} is {profile.status.value}: {reason}"
                f"{_task_hint(reason, device.device_id, args.request)}",
                file=sys.stderr,
            )
            return EXIT_FAILED
        result = await manager.assign_task_to_device(f"cli-{secrets.token_hex(4)}", device.device_id, args.request)
    if args.json:
        sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    else:
        outcome = "completed" if result.ok else f"failed ({result.error_type}): {result.error}"
        print(f"task {result.task_id} on {result.device_id}: {outcome}", file=sys.stderr)
        print(msgspec.json.encode(result.result).decode())
    return EXIT_OK if result.ok else EXIT_FAILED


# --- ctl ---------------------------------------------------------------------------------------------------------


async def _ctl(args: argparse.Namespace) -> int:
    if not args.control:
        raise UsageError("ctl needs --control URL (the URL 'run --control' printed) or $GALAXY_TRIO_CONTROL_URL")
    if not args.control.startswith(("http://", "https://")) or not urlsplit(args.control).hostname:
        raise UsageError(f"--control {args.control!r} is not an http:// URL; give the URL 'run --control' printed")
    if importlib.util.find_spec("httpx") is None:
        raise UsageError("ctl needs the 'control' extra: pip install 'galaxy_trio[control]'")
    token = os.environ.get(args.token_env)
    if not token:
        raise UsageError(
            f"environment variable {args.token_env!r} is not set; it must hold the control token 'run --control'"
            " printed"
        )
    from .control.ctl import run_ctl

    return await run_ctl(args.action, args, args.control, token)


# --- serve and agent ---------------------------------------------------------------------------------------------


async def _resolve_host(host: str, port: int) -> None:
    """Fail early, in one line, on a ``--host`` this machine cannot resolve."""
    try:
        await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            f"--host {host!r} cannot be resolved ({exc.strerror}); give an IP address such as 127.0.0.1 or 0.0.0.0,"
            " or a name this machine resolves"
        ) from None


async def _serve(args: argparse.Namespace) -> int:
    from .server import serve_aip

    control = _control_address(args)
    await _resolve_host(args.host, args.port)
    token = args.token or os.environ.get("GALAXY_TRIO_TOKEN")
    if not token:
        token = secrets.token_urlsafe(24)
        # Printed once, on purpose, so that clients can be pointed at this server; never logged.
        print(f"token: {token}", file=sys.stderr, flush=True)
    serve = partial(serve_aip, host=args.host, port=args.port, token=token, max_frame_size=args.max_frame)
    try:
        if control is None:
            await serve()
        else:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(serve)
                await _start_server_control(nursery, server, control, allow_remote=args.control_allow_remote)
    except Exception as exc:
        for leaf in _leaves(exc):
            if isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"port {args.port} on {args.host} is already in use; stop the program using it or choose"
                    " another --port"
                ) from None
            if isinstance(leaf, OSError) and leaf.errno == errno.EADDRNOTAVAIL:
                raise ServeError(
                    f"--host {args.host} is not an address of this machine; give 127.0.0.1, 0.0.0.0 (every"
                    " interface) or one of its own addresses"
                ) from None
            if isinstance(leaf, OSError) and leaf.errno == errno.EACCES:
                raise ServeError(
                    f"no permission to listen on port {args.port} on {args.host}; ports below 1024 need privileges,"
                    " choose another --port"
                ) from None
        raise
    return EXIT_OK


async def _start_server_control(
    nursery: trio.Nursery, server: Any, address: tuple[str, int], *, allow_remote: bool
) -> None:
    """``serve --control``: the AIP server's metrics and health probes, in ``nursery``."""
    from .control import serve_server_control

    host, port = address
    given = os.environ.get("GALAXY_TRIO_CONTROL_TOKEN") or None
    endpoint = await nursery.start(
        partial(serve_server_control, [server], host=host, port=port, token=given, allow_remote=allow_remote)
    )
    _print_control("metrics and health", endpoint, given=given is not None)


def _agent_url(args: argparse.Namespace) -> str:
    """``--server`` checked, with the token from ``--token-env`` added when the URL has none."""
    from .redact import url_with_token

    url: str = args.server
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise UsageError(
            f"--server {redact_url(url)!r} is not a ws:// or wss:// URL; give e.g. ws://127.0.0.1:5005/ws?token=T"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise UsageError(f"--server {redact_url(url)!r} has an invalid port; give 1-65535") from None
    if url_token(url) is None and args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise UsageError(f"environment variable {args.token_env!r} is not set; it must hold the server's token")
        url = url_with_token(url, token)
    return url


async def _agent(args: argparse.Namespace) -> int:
    from .agent import DeviceAgent

    url = _agent_url(args)
    try:
        agent = DeviceAgent(url, args.device_id, platform=args.platform)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    logger.info("device agent %s for %s", args.device_id, redact_url(url))
    await agent.run()
    return EXIT_OK
