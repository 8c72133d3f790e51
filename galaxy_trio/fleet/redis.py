"""RedisRegistry: the fleet's shared state on Redis (or Valkey), through valkey-glide's native trio support.

Client: valkey-glide 2.x. Its async client runs under trio (through anyio): commands are futures completed by a
reader task that glide spawns in the current ``trio.run``, and they honour trio cancellation. Two settings matter:

- ``lazy_connect=True``: without it, creating a client connects synchronously inside the FFI call and blocks the
  whole trio thread (measured: 2 s with the server down). Lazily, the first command connects, off the trio thread.
- blocking reads (``XREAD BLOCK``, the mailbox) get a second client: glide multiplexes one connection per client,
  and a blocked connection would stall lease renewals queued behind it.

Layout (``<ns>`` is the namespace, ``galaxy`` by default; standalone Redis only — the scripts touch several keys):

==============================  ==========  ===========================================================
``<ns>:fleet``                  hash        ``task_name`` every member must share (it makes the client_ids)
``<ns>:devices``                set         the fleet's catalog of device ids
``<ns>:lease:<device_id>``      string      the owning member's id, with the lease TTL (``PX``)
``<ns>:device:<device_id>``     hash        ``status``, ``owner``, ``profile`` (AgentProfile JSON), ``updated_at``
``<ns>:events``                 stream      status and lease events, ``MAXLEN ~ max_events``
``<ns>:members``                zset        live members, scored by expiry in the *server's* clock (``TIME``)
``<ns>:member:<member_id>``     string      the member's self-description (JSON), same TTL
``<ns>:mail:<member_id>``       stream      task requests, cancellations and replies for that member
==============================  ==========  ===========================================================

Every conditional write is a Lua script (``EVALSHA`` through glide's ``Script``), so "still mine?" and the write are
one atomic step: compare-and-renew, compare-and-delete, and fenced profile writes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final

import msgspec
import trio

from .errors import RegistryUnavailable
from .redis_url import RedisTarget, parse_redis_url
from .registry import DeviceRecord, DeviceUpdate, FleetSnapshot, MemberRecord, check_release_events

try:
    from glide import (
        AdvancedGlideClientConfiguration,
        BackoffStrategy,
        Batch,
        GlideClient,
        GlideClientConfiguration,
        GlideError,
        Logger,
        LogLevel,
        NodeAddress,
        Script,
        ServerCredentials,
        StreamReadOptions,
    )
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "fleet mode on Redis needs valkey-glide: pip install 'galaxy_trio[fleet]' (or: pip install valkey-glide)"
    ) from exc

__all__ = ["RedisRegistry", "RedisTarget", "open_redis_registry", "parse_redis_url"]

#: Devices per script call: keeps each script's run short (Redis runs scripts one at a time).
_CHUNK: Final = 500
_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode


# --- scripts ---------------------------------------------------------------------------------------------------

_JOIN = """
redis.call('HSETNX', KEYS[1], 'task_name', ARGV[1])
for i = 2, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return redis.call('HGET', KEYS[1], 'task_name')
"""

# Membership is scored with the server's clock, so members on hosts whose clocks disagree still agree on who lives.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

# Set-if-absent, in the caller's order of preference, until `need` are held. A lease already ours counts (and is
# extended): so a reply lost on the way back never strands a lease until it expires.
_ACQUIRE = """
local got = {}
local need = tonumber(ARGV[3])
for i = 1, #KEYS do
  if #got >= need then break end
  local holder = redis.call('GET', KEYS[i])
  if not holder then
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
    got[#got + 1] = i
  elseif holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    got[#got + 1] = i
  end
end
return got
"""

# Compare-and-renew: a lease that is gone or someone else's is left alone (and reported lost).
_RENEW = """
local kept = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    kept[#kept + 1] = i
  end
end
return kept
"""

# Compare-and-delete, marking the device unowned and disconnected in the same step, and recording why.
# KEYS: events stream, then (lease, device record) pairs. ARGV: member, maxlen, now, then one event per device
# (an empty string: none).
_RELEASE = """
local released = {}
for i = 1, (#KEYS - 1) / 2 do
  local lease, record = KEYS[2 * i], KEYS[2 * i + 1]
  if redis.call('GET', lease) == ARGV[1] then
    redis.call('DEL', lease)
    redis.call('HSET', record, 'status', 'disconnected', 'owner', '', 'updated_at', ARGV[3])
    released[#released + 1] = i
    local event = ARGV[3 + i]
    if event ~= nil and event ~= '' then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event', event)
    end
  end
end
return released
"""

# Fenced profile writes. KEYS: events stream, then (lease, device record) pairs.
# ARGV: member, maxlen, now, then per device: status, profile, n events, events...
_PUBLISH = """
local fenced = {}
local a = 4
for i = 1, (#KEYS - 1) / 2 do
  local status, profile, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local first = a + 3
  a = first + n
  if redis.call('GET', KEYS[2 * i]) == ARGV[1] then
    redis.call('HSET', KEYS[2 * i + 1], 'status', status, 'owner', ARGV[1], 'profile', profile, 'updated_at', ARGV[3])
    for j = first, first + n - 1 do
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[j])
    end
  else
    fenced[#fenced + 1] = i
  end
end
return fenced
"""

_APPEND = """
for j = 2, #ARGV do redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[j]) end
return 1
"""

_POST = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def _script(source: str) -> Script:
    return Script(source)  # type: ignore[no-untyped-call]  # glide's Script.__init__ is unannotated


class _Scripts:
    """glide ``Script`` objects: each is loaded once and run by its SHA (EVALSHA, falling back to EVAL)."""

    def __init__(self) -> None:
        self.join = _script(_JOIN)
        self.beat = _script(_BEAT)
        self.leave = _script(_LEAVE)
        self.acquire = _script(_ACQUIRE)
        self.renew = _script(_RENEW)
        self.release = _script(_RELEASE)
        self.publish = _script(_PUBLISH)
        self.append = _script(_APPEND)
        self.post = _script(_POST)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _indexes(reply: Any) -> list[int]:
    """A script's list of 1-based positions, as 0-based ints."""
    return [int(i) - 1 for i in reply or ()]


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _stream_id(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


class RedisRegistry:
    """The Redis implementation of :class:`~galaxy_trio.fleet.registry.FleetRegistry`; use
    :func:`open_redis_registry` to create one."""

    def __init__(
        self,
        target: RedisTarget,
        config: GlideClientConfiguration,
        client: GlideClient,
        *,
        namespace: str,
        max_events: int,
        mail_block: float,
        mail_expiry: float,
    ) -> None:
        self.target = target
        self.namespace = namespace
        self._config = config
        self._client = client
        self._blocking: GlideClient | None = None
        self._max_events = str(max_events)
        self._mail_block_ms = max(1, round(mail_block * 1000))
        self._mail_expiry_ms = str(math.ceil(mail_expiry * 1000))
        self._mail_cursor: dict[str, str] = {}
        self._closed_mailboxes: set[str] = set()
        self._scripts = _Scripts()
        self._fleet_key = f"{namespace}:fleet"
        self._catalog_key = f"{namespace}:devices"
        self._events_key = f"{namespace}:events"
        self._members_key = f"{namespace}:members"

    @property
    def display_name(self) -> str:
        return f"Redis at {self.target.display}"

    def __repr__(self) -> str:
        return f"<RedisRegistry {self.target.display} namespace={self.namespace!r}>"

    def lease_key(self, device_id: str) -> str:
        return f"{self.namespace}:lease:{device_id}"

    def device_key(self, device_id: str) -> str:
        return f"{self.namespace}:device:{device_id}"

    def member_key(self, member_id: str) -> str:
        return f"{self.namespace}:member:{member_id}"

    def mailbox_key(self, member_id: str) -> str:
        return f"{self.namespace}:mail:{member_id}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except GlideError as exc:
            detail = str(exc).strip() or type(exc).__name__
            raise RegistryUnavailable(f"{self.display_name}: {what} failed: {detail}") from exc

    async def _run(self, script: Script, keys: list[str], args: list[str | bytes], what: str) -> Any:
        with self._errors(what):
            return await self._client.invoke_script(script, keys=list(keys), args=list(args))

    async def aclose(self) -> None:
        for client in (self._client, self._blocking):
            if client is not None:
                await client.close()

    # --- fleet, members ----------------------------------------------------------------------------------------

    async def join_fleet(self, task_name: str, device_ids: Sequence[str]) -> str:
        stored = task_name
        for chunk in _chunks(device_ids) if device_ids else [()]:
            reply = await self._run(
                self._scripts.join, [self._fleet_key, self._catalog_key], [task_name, *chunk], "joining the fleet"
            )
            stored = _text(reply)
        return stored

    async def fleet_device_ids(self) -> list[str]:
        with self._errors("reading the device catalog"):
            members = await self._client.smembers(self._catalog_key)
        return sorted(_text(m) for m in members)

    async def beat(self, member: MemberRecord, ttl: float) -> list[str]:
        reply = await self._run(
            self._scripts.beat,
            [self._members_key, self.member_key(member.member_id)],
            [member.member_id, str(math.ceil(ttl * 1000)), _encode_json(member)],
            "membership beat",
        )
        return sorted(_text(m) for m in reply or ())

    async def leave(self, member_id: str) -> None:
        await self._run(self._scripts.leave, [self._members_key, self.member_key(member_id)], [member_id], "leaving")

    # --- leases ------------------------------------------------------------------------------------------------

    async def owners(self, device_ids: Sequence[str]) -> list[str | None]:
        result: list[str | None] = []
        for chunk in _chunks(device_ids):
            with self._errors("reading lease owners"):
                values = await self._client.mget([self.lease_key(d) for d in chunk])
            result.extend(None if v is None else _text(v) for v in values)
        return result

    async def acquire(self, member_id: str, candidates: Sequence[str], need: int, ttl: float) -> list[str]:
        got: list[str] = []
        ttl_ms = str(math.ceil(ttl * 1000))
        for chunk in _chunks(candidates):
            if len(got) >= need:
                break
            reply = await self._run(
                self._scripts.acquire,
                [self.lease_key(d) for d in chunk],
                [member_id, ttl_ms, str(need - len(got))],
                "acquiring leases",
            )
            got.extend(chunk[i] for i in _indexes(reply))
        return got

    async def renew(self, member_id: str, device_ids: Sequence[str], ttl: float) -> list[str]:
        kept: list[str] = []
        ttl_ms = str(math.ceil(ttl * 1000))
        for chunk in _chunks(device_ids):
            reply = await self._run(
                self._scripts.renew, [self.lease_key(d) for d in chunk], [member_id, ttl_ms], "renewing leases"
            )
            kept.extend(chunk[i] for i in _indexes(reply))
        return kept

    async def release(self, member_id: str, device_ids: Sequence[str], events: Sequence[bytes] = ()) -> list[str]:
        check_release_events(device_ids, events)
        released: list[str] = []
        for start in range(0, len(device_ids), _CHUNK):
            chunk = device_ids[start : start + _CHUNK]
            keys = [self._events_key]
            for device_id in chunk:
                keys += (self.lease_key(device_id), self.device_key(device_id))
            args: list[str | bytes] = [member_id, self._max_events, repr(time.time())]
            args.extend(events[start : start + _CHUNK] if events else [b""] * len(chunk))
            reply = await self._run(self._scripts.release, keys, args, "releasing leases")
            released.extend(chunk[i] for i in _indexes(reply))
        return released

    # --- shared state ------------------------------------------------------------------------------------------

    async def publish(self, member_id: str, updates: Sequence[DeviceUpdate]) -> list[str]:
        fenced: list[str] = []
        for chunk in _chunks(updates):
            keys = [self._events_key]
            args: list[str | bytes] = [member_id, self._max_events, repr(time.time())]
            for update in chunk:
                keys += (self.lease_key(update.device_id), self.device_key(update.device_id))
                args += (update.status, update.profile, str(len(update.events)), *update.events)
            reply = await self._run(self._scripts.publish, keys, args, "publishing device state")
            fenced.extend(chunk[i].device_id for i in _indexes(reply))
        return fenced

    async def append_events(self, events: Sequence[bytes]) -> None:
        for chunk in _chunks(events):
            await self._run(self._scripts.append, [self._events_key], [self._max_events, *chunk], "appending events")

    async def read_events(self, count: int) -> list[dict[str, Any]]:
        if count <= 0:
            return []
        with self._errors("reading events"):
            reply = await self._client.custom_command(["XREVRANGE", self._events_key, "+", "-", "COUNT", str(count)])
        entries = []
        for _entry_id, fields in reversed(list(_stream_entries(reply))):
            raw = fields.get(b"event")
            if raw is not None:
                entries.append(_decode_json(raw))
        return entries

    async def read_fleet(self) -> FleetSnapshot:
        device_ids = await self.fleet_device_ids()
        owners = await self.owners(device_ids)
        records: list[Any] = []
        for chunk in _chunks(device_ids):
            batch = Batch(is_atomic=False)
            for device_id in chunk:
                batch.hgetall(self.device_key(device_id))
            with self._errors("reading device records"):
                records.extend(await self._client.exec(batch, raise_on_error=True) or ())
        with self._errors("reading members"):
            task_name = await self._client.hget(self._fleet_key, "task_name")
            member_ids = [_text(m) for m in await self._client.custom_command(["ZRANGE", self._members_key, "0", "-1"])]
            member_docs = await self._client.mget([self.member_key(m) for m in member_ids]) if member_ids else []
        devices = [_device_record(d, owner, raw) for d, owner, raw in zip(device_ids, owners, records, strict=True)]
        # A member whose own key has expired is dead even if no beat has pruned the set yet.
        members = sorted(
            (msgspec.json.decode(doc, type=MemberRecord) for doc in member_docs if doc is not None),
            key=lambda m: m.member_id,
        )
        return FleetSnapshot(
            devices=devices, members=members, task_name=None if task_name is None else _text(task_name)
        )

    # --- mail --------------------------------------------------------------------------------------------------

    async def open_mailbox(self, member_id: str) -> None:
        if self._blocking is None:
            with self._errors("opening the mailbox connection"):
                self._blocking = await GlideClient.create(self._config)
        with self._errors("opening the mailbox"):
            await self._client.delete([self.mailbox_key(member_id)])
        self._mail_cursor[member_id] = "0-0"
        self._closed_mailboxes.discard(member_id)

    async def close_mailbox(self, member_id: str) -> None:
        if self._mail_cursor.pop(member_id, None) is not None:
            self._closed_mailboxes.add(member_id)
        with self._errors("closing the mailbox"):
            await self._client.delete([self.mailbox_key(member_id)])

    async def post_mail(self, member_id: str, payload: bytes) -> None:
        await self._run(
            self._scripts.post,
            [self.mailbox_key(member_id)],
            [payload, self._max_events, self._mail_expiry_ms],
            "posting mail",
        )

    async def fetch_mail(self, member_id: str) -> list[bytes]:
        if member_id in self._closed_mailboxes:
            # Closed while its reader was between two reads (a member leaving): nothing will arrive, as in the
            # memory registry; the reader's scope ends the wait.
            await trio.sleep_forever()
        cursor = self._mail_cursor.get(member_id)
        if cursor is None or self._blocking is None:
            raise RuntimeError(f"mailbox of {member_id!r} is not open")
        key = self.mailbox_key(member_id)
        with self._errors("reading mail"):
            reply = await self._blocking.xread(
                {key: cursor}, StreamReadOptions(block_ms=self._mail_block_ms, count=256)
            )
        if not reply:
            return []
        entries = reply.get(key.encode()) or {}
        messages = []
        last = cursor
        for entry_id in sorted(entries, key=_stream_id):
            for pair in entries[entry_id]:
                if len(pair) == 2 and pair[0] == b"m":
                    messages.append(bytes(pair[1]))
            last = entry_id.decode()
        self._mail_cursor[member_id] = last
        return messages


def _stream_entries(reply: Any) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """XRANGE-style replies, as glide returns them (a mapping of id → field pairs, or a list of [id, fields])."""
    if isinstance(reply, dict):
        items: Any = reply.items()
    else:
        items = ((entry[0], entry[1]) for entry in reply or ())
    for entry_id, fields in items:
        if isinstance(fields, dict):
            yield entry_id, fields
        else:
            flat = list(fields)
            if flat and isinstance(flat[0], list):
                yield entry_id, {pair[0]: pair[1] for pair in flat}
            else:
                yield entry_id, dict(zip(flat[::2], flat[1::2], strict=True))


def _device_record(device_id: str, owner: str | None, raw: Any) -> DeviceRecord:
    fields: dict[bytes, bytes] = dict(raw or {})
    profile_raw = fields.get(b"profile")
    reported_by = _text(fields[b"owner"]) if fields.get(b"owner") else None
    status = fields.get(b"status")
    updated = fields.get(b"updated_at")
    return DeviceRecord(
        device_id=device_id,
        owner=owner,
        reported_by=reported_by,
        status=None if status is None else _text(status),
        profile=None if not profile_raw else _decode_json(profile_raw),
        updated_at=None if updated is None else float(updated),
    )


def _client_config(target: RedisTarget, *, request_timeout: float, client_name: str) -> GlideClientConfiguration:
    timeout_ms = max(50, round(request_timeout * 1000))
    credentials = (
        ServerCredentials(password=target.password, username=target.username) if target.password is not None else None
    )
    # Reconnect quickly (25 ms, doubling, capped near the request timeout): a member that finds Redis again
    # sooner re-acquires its leases sooner. Our own backoff paces the lease ticks on top of this.
    retries = max(1, math.ceil(math.log2(max(timeout_ms / 25, 2))))
    return GlideClientConfiguration(
        [NodeAddress(target.host, target.port)],
        use_tls=target.tls,
        credentials=credentials,
        database_id=target.database,
        request_timeout=timeout_ms,
        reconnect_strategy=BackoffStrategy(num_of_retries=retries, factor=25, exponent_base=2),
        client_name=client_name,
        lazy_connect=True,
        advanced_config=AdvancedGlideClientConfiguration(connection_timeout=timeout_ms),
    )


_logger_configured = False


def _quiet_glide_logger() -> None:
    """glide logs every timed-out request to stdout at WARN by default; unless the application configured glide's
    logger first, keep only its errors (ours are reported through RegistryUnavailable and the degraded state)."""
    global _logger_configured
    if not _logger_configured:
        Logger.init(LogLevel.ERROR)
        _logger_configured = True


@asynccontextmanager
async def open_redis_registry(
    url: str,
    *,
    namespace: str = "galaxy",
    request_timeout: float = 1.0,
    max_events: int = 10_000,
    mail_block: float = 1.0,
    mail_expiry: float = 3600.0,
    client_name: str | None = None,
) -> AsyncIterator[RedisRegistry]:
    """A :class:`RedisRegistry` on ``url`` (see :func:`parse_redis_url`), closed on exit.

    Connecting is lazy: an unreachable server shows up as :class:`RegistryUnavailable` on the first call, never as
    a stall here. ``request_timeout`` is glide's per-request bound (the caller's cancel scope may cut it shorter);
    ``mail_block`` how long one mailbox read blocks server-side; ``mail_expiry`` how long an unread mailbox lives.
    """
    target = parse_redis_url(url)
    if not namespace or any(c.isspace() for c in namespace):
        raise ValueError(f"namespace must be a non-empty word, got {namespace!r}")
    _quiet_glide_logger()
    config = _client_config(
        target, request_timeout=request_timeout, client_name=client_name or f"galaxy_trio-{os.getpid()}"
    )
    try:
        client = await GlideClient.create(config)
    except GlideError as exc:
        raise RegistryUnavailable(f"Redis at {target.display}: cannot create a client: {exc}") from exc
    registry = RedisRegistry(
        target,
        config,
        client,
        namespace=namespace,
        max_events=max_events,
        mail_block=mail_block,
        mail_expiry=mail_expiry,
    )
    try:
        yield registry
    finally:
        await registry.aclose()
