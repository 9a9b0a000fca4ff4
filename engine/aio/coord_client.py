"""engine.Client's coordination API: leases, locks with fencing tokens, watches, elections
(docs/coordination.md). The Client methods (lease, lock, watch, election, grant_lease, ...)
delegate here; everything goes through the client's sessions and reads, so a retried
command applies once (Raft thesis §6.3) and every read is linearizable (ReadIndex).

How a client learns what changed (no thundering herd, no trust in its own clock):

  * a lock waiter polls its OWN entry (a LOCK query: its token, or its place in the FIFO
    queue), backing off from 5 ms to 20 ms x (1 + its place), at most 100 ms. A release
    wakes nobody: the state machine grants the next waiter in the same apply, and that
    waiter's next poll (within 20 ms) finds its token. Each waiter costs one read per poll,
    whatever the number of waiters;
  * a watch is a cursor on revisions: it reads pages of events from its next revision (each
    page ends at a revision boundary and says where to resume), so it delivers every change
    of its range exactly once, in revision order, across leader changes and reconnects (the
    events are replicated state; any leader answers the same page). A start below the
    retained history raises engine.Compacted with the oldest revision. It polls every
    `poll_s` while caught up;
  * a lease is kept alive by a background task renewing it every TTL/3. The holder trusts
    it until `valid_until`: send time + TTL (1 - rho) on its own monotonic clock, measured
    from the last renewal it sent that applied (engine.coord.holder_deadline).

Placement: a lease, its lock and election entries and the keys put under it live in the
group that owns the KV store answering these commands. On one group that is the whole key
space; a sharded cluster puts a lock, an election or a watch in the shard that owns its name
or key, and a lease must then be granted in the shard of the keys attached to it
(docs/coordination.md, "Sharding").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.coord.commands import Command, CoordOp, encode_command
from engine.coord.election import Leader
from engine.coord.lease import holder_deadline
from engine.coord.watch import WatchEvent
from engine.kv import commands
from engine.kv import coord as wire
from engine.messages import ClientOp, enum_members

if TYPE_CHECKING:
    from engine.aio.client import Client

__all__ = ["Election", "Lease", "LeaseInfo", "Lock", "fence_of", "lease_id_of"]

_OP = enum_members(ClientOp)
_LINEARIZABLE = 0   # engine.aio.node_reads.READ_MODES.index("linearizable")
MAX_CLOCK_DRIFT = 0.1   # rho (engine.coord.LessorConfig.max_clock_drift)
_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.1
_HEAD_POLL_MAX_S = 0.02


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as granted or renewed: its id, TTL and renewal generation."""

    id: int
    ttl_ms: int
    generation: int


def lease_id_of(lease: Any) -> int:
    """A lease argument: a Lease, a LeaseInfo or an int id."""
    if isinstance(lease, int) and not isinstance(lease, bool):
        return lease
    lease_id = getattr(lease, "id", None)
    if not isinstance(lease_id, int):
        raise errors.ConfigError(f"a lease is a Lease, LeaseInfo or int id, got {lease!r}")
    return lease_id


def fence_of(fence: Any) -> tuple[bytes, int]:
    """A fence argument: a held Lock or a (lock name, token) pair."""
    if isinstance(fence, Lock):
        if fence.token is None:
            raise errors.ConfigError("put(..., fence=lock) with a lock not held")
        return fence.name, fence.token
    if isinstance(fence, tuple) and len(fence) == 2:
        name, token = fence
        if isinstance(name, bytes) and isinstance(token, int) and token > 0:
            return name, token
    raise errors.ConfigError(f"a fence is a held Lock or (name, token), got {fence!r}")


def _answer(result: commands.KVResult) -> Any:
    """A coordination command's or query's JSON answer; the typed error if refused."""
    if result.status == commands.Status.REFUSED:
        raise wire.error_from_payload(result.value)
    if not result.ok:
        raise errors.StateMachineError(
            result.error or f"coordination request answered {result.status.name}")
    return json.loads(result.value or b"null")


async def command(client: Client, cmd: Command, timeout: float | None = None) -> Any:
    raw = encode_command(cmd)
    result = await client._write(
        lambda session, seq: wire.encode_coord(raw, client_id=session, seq=seq), timeout)
    return _answer(result)


async def query(client: Client, payload: bytes, timeout: float | None = None
                ) -> commands.KVResult:
    return await client._request(_OP.READ, payload, _LINEARIZABLE, timeout)  # type: ignore[no-any-return]


async def put_ex(client: Client, key: bytes, value: bytes, lease: Any, fence: Any,
                 timeout: float | None) -> commands.WriteResult:
    lease_id = 0 if lease is None else lease_id_of(lease)
    name, token = (b"", 0) if fence is None else fence_of(fence)
    result = await client._write(lambda session, seq: wire.encode_put_ex(
        key, value, lease_id=lease_id, fence_name=name, fence_token=token,
        client_id=session, seq=seq), timeout)
    if result.status == commands.Status.REFUSED:
        raise wire.error_from_payload(result.value)
    client._check_write(result)
    return commands.WriteResult(result.revision or 0, None, result.existed, result.retained)


# ---------------------------------------------------------------------- leases


async def grant_lease(client: Client, ttl_s: float, timeout: float | None = None) -> LeaseInfo:
    ttl_ms = int(ttl_s * 1000)
    if ttl_ms <= 0:
        raise errors.ConfigError(f"a lease TTL is a positive number of seconds, got {ttl_s!r}")
    lease = (await command(client, Command(CoordOp.GRANT, ttl_ms=ttl_ms), timeout))["lease"]
    return LeaseInfo(lease["id"], lease["ttl_ms"], lease["generation"])


async def keepalive(client: Client, lease: Any, timeout: float | None = None) -> LeaseInfo:
    """Renew a lease (its full TTL from now on the leader's clock); LeaseNotFound if gone."""
    answer = await command(client, Command(CoordOp.KEEPALIVE, lease_id=lease_id_of(lease)),
                           timeout)
    found = answer["lease"]
    return LeaseInfo(found["id"], found["ttl_ms"], found["generation"])


async def revoke(client: Client, lease: Any, timeout: float | None = None) -> bool:
    """End a lease now (its keys deleted, its locks released); False if it was gone."""
    answer = await command(client, Command(CoordOp.REVOKE, lease_id=lease_id_of(lease)),
                           timeout)
    return bool(answer["applied"])


async def leases(client: Client, timeout: float | None = None) -> list[dict[str, int]]:
    """Every live lease: id, ttl_ms, remaining_ms (as last persisted), generation, keys."""
    return _answer(await query(client, wire.encode_coord_query(wire.Q_LEASES), timeout))  # type: ignore[no-any-return]


class Lease:
    """`async with client.lease(ttl_s) as lease`: granted on entry, renewed every TTL/3 by a
    background task, revoked on exit. `lease.id` for put(..., lease=lease); `valid_until`
    (loop time, seconds) is how long the holder may rely on it; `lost` is set once a renewal
    found it gone (expired: keepalives stopped or were late)."""

    def __init__(self, client: Client, ttl_s: float, *, timeout: float | None = None) -> None:
        self._client = client
        self.ttl_s = ttl_s
        self._timeout = timeout
        self.info: LeaseInfo | None = None
        self.valid_until = 0.0
        self.lost = False
        self._task: asyncio.Task[None] | None = None

    @property
    def id(self) -> int:
        if self.info is None:
            raise errors.ConfigError("the lease is not granted yet (use `async with`)")
        return self.info.id

    async def grant(self) -> Lease:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        self.info = await grant_lease(self._client, self.ttl_s, self._timeout)
        self._trust(sent)
        self._task = loop.create_task(self._keep_alive(), name=f"engine-lease-{self.id}")
        return self

    def _trust(self, sent: float) -> None:
        assert self.info is not None
        self.valid_until = holder_deadline(sent * 1000.0, self.info.ttl_ms,
                                           MAX_CLOCK_DRIFT) / 1000.0

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            sent = loop.time()
            try:
                self.info = await keepalive(self._client, self.id,
                                            timeout=max(self.ttl_s / 3, 0.5))
            except errors.LeaseNotFound:
                self.lost = True
                return
            except (errors.Timeout, errors.NotLeader, errors.Rejected):
                continue   # the next renewal may get through; valid_until is unchanged
            self._trust(sent)

    def stop_keepalive(self) -> None:
        """Stop renewing (the lease then expires after its TTL on the leader's clock): what a
        holder paused past its TTL looks like to the cluster."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def revoke(self) -> None:
        self.stop_keepalive()
        if self.info is not None and not self.lost:
            with contextlib.suppress(errors.LeaseNotFound):
                await revoke(self._client, self.id, self._timeout)

    async def __aenter__(self) -> Lease:
        return await self.grant()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.revoke()


# ---------------------------------------------------------------------- locks


class Lock:
    """`async with client.lock(name, ttl_s=...) as lock`: queued FIFO under a lease of its
    own (or `lease=`), held on entry with `lock.token`, an integer that increases with every
    grant of the lock; released (and its own lease revoked) on exit. Pass `fence=lock` to
    put so the state machine refuses the write once a newer token exists."""

    def __init__(self, client: Client, name: bytes, *, ttl_s: float = 10.0,
                 lease: Lease | None = None, shared: bool = False, capacity: int = 0,
                 timeout: float | None = None) -> None:
        if not isinstance(name, bytes) or not name:
            raise errors.ConfigError("a lock name is non-empty bytes")
        self._client = client
        self.name = name
        self.ttl_s = ttl_s
        self.lease = lease
        self._own_lease = lease is None
        self.shared = shared
        self.capacity = capacity
        self._timeout = timeout
        self.token: int | None = None

    @property
    def valid_until(self) -> float:
        """Until when (loop time, seconds) the holder may rely on the lock: its lease's
        valid_until (0.0 when not held)."""
        if self.token is None or self.lease is None:
            return 0.0
        return self.lease.valid_until

    async def acquire(self) -> Lock:
        """Queue and wait until granted (timeout=None: as long as it takes)."""
        if self.lease is None:
            self.lease = await Lease(self._client, self.ttl_s).grant()
        try:
            answer = await command(self._client, Command(
                CoordOp.ACQUIRE, lease_id=self.lease.id, name=self.name, shared=self.shared,
                capacity=self.capacity))
            token = answer["token"]
            delay = _POLL_MIN_S
            loop = asyncio.get_running_loop()
            deadline = None if self._timeout is None else loop.time() + self._timeout
            query_bytes = wire.encode_coord_query(wire.Q_LOCK, lease_id=self.lease.id,
                                                  name=self.name)
            while token is None:
                if deadline is not None and loop.time() > deadline:
                    raise errors.Timeout(f"lock {self.name!r} not granted within "
                                         f"{self._timeout} s")
                if self.lease.lost:
                    raise errors.LeaseNotFound(self.lease.id)
                await asyncio.sleep(delay)
                status = _answer(await query(self._client, query_bytes))
                token = status["token"]
                position = status["position"]
                if token is None and position is None:
                    raise errors.LeaseNotFound(self.lease.id)   # our entry is gone
                # The next in line polls most often: a handover costs it at most
                # _HEAD_POLL_MAX_S, and a waiter further back reads less often.
                delay = min(delay * 2, _HEAD_POLL_MAX_S * (1 + (position or 0)), _POLL_MAX_S)
            self.token = int(token)
            return self
        except BaseException:
            await self._give_up()
            raise

    async def _give_up(self) -> None:
        with contextlib.suppress(errors.EngineError):
            await self.release()

    async def release(self) -> None:
        lease, self.token = self.lease, None
        if lease is None:
            return
        if self._own_lease:
            await lease.revoke()    # its end releases the lock (and any queue place)
            self.lease = None
        elif lease.info is not None:
            await command(self._client, Command(CoordOp.RELEASE, lease_id=lease.id,
                                                name=self.name), self._timeout)

    async def __aenter__(self) -> Lock:
        return await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


# ---------------------------------------------------------------------- watches


async def watch(client: Client, key: bytes, *, prefix: bool = False,
                start_revision: int | None = None, poll_s: float = 0.05,
                max_events: int = 1_000) -> AsyncGenerator[WatchEvent, None]:
    """Every change of `key` (or every key under it with prefix=True) from start_revision
    (None: the next revision), exactly once, in revision order (module docstring)."""
    cursor = 0 if start_revision is None else max(1, int(start_revision))
    failures = 0
    while True:
        try:
            result = await query(client, wire.encode_coord_query(
                wire.Q_WATCH, start_revision=cursor, name=key, prefix=prefix,
                max_events=max_events))
        except (errors.Timeout, errors.NotLeader):
            failures += 1   # no leader for now: resume from the same cursor
            await asyncio.sleep(min(poll_s * failures, 1.0))
            continue
        failures = 0
        if result.status == commands.Status.REFUSED:
            raise wire.error_from_payload(result.value)
        if not result.ok:
            raise errors.StateMachineError(result.error or "the cluster does not serve watches")
        page = wire.decode_watch_page(result.value or b"")
        for kind, event_key, value, revision in page.events:
            yield WatchEvent(kind, event_key, value, revision)
        # A lagging node may answer an older end: the cursor never moves back.
        cursor = max(cursor, page.next_revision)
        if not page.events:
            await asyncio.sleep(poll_s)


# ---------------------------------------------------------------------- elections


class Election:
    """client.election(name): campaign(value) waits until this client leads (FIFO among
    candidates, under a lease of its own kept alive in the background); leader() reads the
    current leader; proclaim(value) changes the leader's value; resign() steps down;
    observe() yields each new leader (term or value changed)."""

    def __init__(self, client: Client, name: bytes, *, ttl_s: float = 10.0,
                 poll_s: float = 0.05) -> None:
        self._client = client
        self.name = name
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self.lease: Lease | None = None

    async def campaign(self, value: bytes, *, timeout: float | None = None) -> Leader:
        if self.lease is None:
            self.lease = await Lease(self._client, self.ttl_s).grant()
        await command(self._client, Command(CoordOp.CAMPAIGN, lease_id=self.lease.id,
                                            name=self.name, value=value))
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = _POLL_MIN_S
        while True:
            leader = await self.leader()
            if leader is not None and leader.lease_id == self.lease.id:
                return leader
            if self.lease.lost:
                raise errors.LeaseNotFound(self.lease.id)
            if deadline is not None and loop.time() > deadline:
                raise errors.Timeout(f"not elected in {self.name!r} within {timeout} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)

    async def leader(self) -> Leader | None:
        found = _answer(await query(self._client, wire.encode_coord_query(
            wire.Q_ELECTION, name=self.name)))
        if found is None:
            return None
        return Leader(self.name, found["lease_id"], bytes.fromhex(found["value"]),
                      found["term"])

    async def proclaim(self, value: bytes) -> None:
        if self.lease is None:
            raise errors.NotElectionLeader(f"not campaigning in {self.name!r}")
        await command(self._client, Command(CoordOp.PROCLAIM, lease_id=self.lease.id,
                                            name=self.name, value=value))

    async def resign(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None:
            await lease.revoke()   # its end leaves the election

    async def observe(self) -> AsyncGenerator[Leader | None, None]:
        last: tuple[int, bytes] | None = None
        first = True
        while True:
            leader = await self.leader()
            seen = None if leader is None else (leader.term, leader.value)
            if first or seen != last:
                first, last = False, seen
                yield leader
            await asyncio.sleep(self.poll_s)
