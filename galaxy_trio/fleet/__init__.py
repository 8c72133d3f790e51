"""Fleet mode: several managers share one fleet of devices through a registry (Redis), each device driven by one.

A layer on top of :mod:`galaxy_trio.manager`: it uses only the manager's public API and events, and the manager
knows nothing of it. Single-process users change nothing; the in-memory registry is the default.

Usage::

    async with ConstellationDeviceManager(task_name="office") as manager:
        async with open_fleet_member(manager, "redis://10.0.0.5:6379/0", config.devices) as member:
            result = await member.assign_task_to_device("t1", "printer-7", "print the report")

Design
======

**Registry** (:mod:`.registry`): one interface, two implementations — :class:`MemoryRegistry` (in process, the
default; several members in one process may share one) and :class:`~galaxy_trio.fleet.redis.RedisRegistry`
(valkey-glide, which runs natively under trio; key layout in :mod:`.redis`). Shared state: the fleet's
``task_name``, the device catalog, every device's record (status, owner, the manager's ``AgentProfile`` as JSON —
capabilities, system_info/metadata, last heartbeat — and when it was written), the live members, a bounded event
stream (``XADD MAXLEN ~``) of status and lease events, and one mailbox stream per member.

**Ownership by lease** (:mod:`.lease`, :mod:`.keeper`): a member owns a device while it holds
``<ns>:lease:<device_id>`` = its member id, set with ``SET NX PX ttl`` semantics and renewed every ``ttl/3`` by a
compare-and-renew script (only if the value is still ours). A renewal that finds the lease gone or taken drops the
device at once (``disconnect_device``) and never renews it again. Each member connects only the devices it owns;
all of them are registered in its manager with ``auto_connect=False``.

**Balance**: live members announce themselves in a sorted set scored by the *server's* clock (TTL'd like leases).
Each member holds at most its fair share ``ceil(devices / live members)``: below it, it takes unowned devices
(ranked by rendezvous hashing, so members scanning together reach for different devices); above it — a member
joined — it hands back the excess, idle devices first, closing each connection *before* releasing the lease so the
next owner is not refused as a duplicate. A member waits one ``join_grace`` after announcing itself before it
takes anything, so members started together share from the start. A dead or partitioned member stops beating and
renewing: its leases expire and the survivors take the devices at their next tick.

**One client_id per device**: the manager's client_id is ``<task_name>@<device_id>``; the fleet stores its
``task_name`` and refuses (:class:`FleetMismatch`) a member whose manager uses another. So whoever drives a device
registers the same client_id, and the server's duplicate-client_id rejection fences two managers from driving one
device even if clocks misbehave. A device that a new owner finds refused (the old link not yet gone) is retried
with backoff (:mod:`.driver`).

**Registry unreachable**: a lease acquired or renewed by a request *sent* at local time ``t`` is valid locally until
``t + ttl - safety_margin`` — before the registry itself can expire it. Without answers, the member turns
``degraded`` (property, log, :attr:`FleetEventKind.DEGRADED` event, ``degraded`` in its member record), keeps each
device exactly until that local expiry (a watchdog task, independent of the stuck tick), drops it then, and retries
the registry with :class:`~galaxy_trio.backoff.Backoff`. When the registry answers again the member recovers,
re-acquires leases by the normal fair-share scan, and the devices come back to IDLE — wherever the shares put them.
No lease is ever held by two members in the registry (set-if-absent), and no member drives a device past its own
validity, so nothing is double-owned at any moment.

**Tasks across managers** (:mod:`.routing`): :meth:`FleetMember.assign_task_to_device` runs locally if this member
owns the device, else posts the request to the owner's mailbox (a stream read with ``XREAD BLOCK`` on a dedicated
connection); the owner runs it with its manager and posts the :class:`~galaxy_trio.manager.TaskResult` (msgspec
JSON) back to the requester's mailbox. Same result type and refusal types as on one manager; an unknown device
raises :class:`~galaxy_trio.manager.UnknownDevice` listing the fleet's devices; the wait is bounded by the caller's
cancel scope or, failing that, the manager's ``task_timeout``.

**Pure vs I/O**: lease validity, renewal bookkeeping and fair share are pure (:mod:`.lease`); the keeper's loop
talks to a registry and a :class:`DeviceDriver` only, so the timing rules run on trio's MockClock with the memory
registry and a recording driver.

**Reading the fleet** (:mod:`.status`): :func:`read_fleet_status` (rows for ``--json``) and
:func:`read_fleet_status_text` / :func:`render_fleet_table` (the text table) need only the Redis URL.
"""

from .errors import FleetError, FleetMismatch, RegistryUnavailable
from .events import FleetEvent, FleetEventKind, FleetSubscription
from .keeper import DeviceDriver, LeaseKeeper
from .lease import LeaseBook, LeaseTiming, fair_share, rank_for_member
from .member import FleetMember, default_member_id, open_fleet_member
from .memory import MemoryRegistry
from .registry import DeviceRecord, DeviceUpdate, FleetRegistry, FleetSnapshot, MemberRecord
from .status import fleet_rows, read_fleet_status, read_fleet_status_text, render_fleet_table

__all__ = [
    "DeviceDriver",
    "DeviceRecord",
    "DeviceUpdate",
    "FleetError",
    "FleetEvent",
    "FleetEventKind",
    "FleetMember",
    "FleetMismatch",
    "FleetRegistry",
    "FleetSnapshot",
    "FleetSubscription",
    "LeaseBook",
    "LeaseKeeper",
    "LeaseTiming",
    "MemberRecord",
    "MemoryRegistry",
    "RegistryUnavailable",
    "default_member_id",
    "fair_share",
    "fleet_rows",
    "open_fleet_member",
    "rank_for_member",
    "read_fleet_status",
    "read_fleet_status_text",
    "render_fleet_table",
]
