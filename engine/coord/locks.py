"""Locks with fencing tokens: the replicated LockTable and the FencedResource helper (sans-IO).

Per lock name the table keeps the holders (in grant order) and a FIFO queue of waiters, each
bound to a lease (its session). One lease has at most one entry per lock: acquiring again
under the same lease is the same acquisition (etcd's Lock service rule), not a re-entrant
count; asking again in the other mode (shared / exclusive) is refused, never an upgrade.

Grants. The queue is served strictly in order: the head is granted as soon as it is
compatible with the holders, then the next, and so on; a waiter never overtakes an earlier
one (ZooKeeper's sequential nodes, etcd's create revisions: FIFO, no starvation). Every
grant draws the next value of one persisted counter, so the token of a lock increases with
every grant and a token is never reused, even after the lock's queue empties or its row is
evicted. Every change that frees a place (release, a waiter cancelling, the lease ending)
returns the grants it made: the caller tells exactly those waiters (no thundering herd;
ZooKeeper's "watch only your predecessor" done by the server).

Kinds on the same table (a name keeps one kind while anyone holds or waits for it):
    mutex          exclusive acquisitions
    read-write     shared acquisitions (readers) and exclusive ones (writers); FIFO, so a
                   reader arriving after a waiting writer waits behind it (no writer
                   starvation; Chubby's shared/exclusive locks)
    semaphore      shared acquisitions with a capacity N: at most N holders

Fencing (Kleppmann 2016; Chubby's sequencers checked with CheckSequencer). `check_fence(name,
token)` raises FencingTokenStale unless the token is held now, or (strict=False) it is the
newest grant of the lock: so once a newer token exists, every write under an older one is
refused. `strict=True` also refuses the newest token after its holder released or lost it
(Chubby's check that the sequencer is still valid). A token never granted is refused.

Bounds: holders + waiters over all locks <= Limits.max_lock_entries; lock rows <=
Limits.max_lock_names, a free row (no holder, no waiter) kept for its newest token until
room is needed, the one with the oldest newest token first. A write fenced by an evicted
lock is refused (refusing is always safe).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.coord.codec import Writer, frame, unframe
from engine.errors import DecodeError, FencingTokenStale, LockKindMismatch, Overloaded
from engine.limits import Limits

__all__ = ["AcquireResult", "FencedResource", "Grant", "LockTable"]

_MAGIC = b"ECK1"
_FENCE_MAGIC = b"ECF1"
_VERSION = 1


@dataclass(frozen=True)
class Grant:
    """A holder: `lease_id` holds `lock` with `token` (shared: a reader or semaphore slot)."""

    lock: bytes
    lease_id: int
    token: int
    shared: bool = False


@dataclass(frozen=True)
class AcquireResult:
    """granted: the grant when the lease holds the lock now, else None and `position` is the
    number of entries ahead of it in the queue (holders excluded). new: this call made the
    grant (False when the lease already held the lock)."""

    granted: Grant | None
    position: int = 0
    new: bool = False


@dataclass
class _Lock:
    capacity: int = 0                      # 0: mutex / read-write; N: semaphore of N
    holders: dict[int, tuple[int, bool]] = field(default_factory=dict)  # lease -> token, shared
    waiters: dict[int, bool] = field(default_factory=dict)              # lease -> shared, FIFO
    last_token: int = 0

    def compatible(self, shared: bool) -> bool:
        if not shared:
            return not self.holders
        if any(not is_shared for _, is_shared in self.holders.values()):
            return False
        return self.capacity == 0 or len(self.holders) < self.capacity

    @property
    def free(self) -> bool:
        return not self.holders and not self.waiters


class LockTable:
    """The replicated locks (see the module docstring). Leases are opaque ids here: the
    caller (CoordState) checks they exist and calls release_lease when one ends."""

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self._locks: dict[bytes, _Lock] = {}
        self._by_lease: dict[int, set[bytes]] = {}
        self._next_token = 1
        self._entries = 0
        # Free rows, evicted oldest newest-token first: a heap with stale rows skipped.
        self._free: list[tuple[int, bytes]] = []

    # ------------------------------------------------------------------ commands

    def acquire(self, name: bytes, lease_id: int, *, shared: bool = False,
                capacity: int = 0) -> AcquireResult:
        """Queue `lease_id` for `name` (exclusive, or shared for a reader / semaphore slot;
        capacity > 0 makes the name a semaphore of that many slots, shared only)."""
        if capacity < 0 or (capacity > 0 and not shared):
            raise LockKindMismatch(f"lock {name!r}: a semaphore (capacity {capacity}) is "
                                   "acquired shared, with capacity >= 1")
        lock = self._locks.get(name)
        if lock is not None:
            held = lock.holders.get(lease_id)
            queued = lock.waiters.get(lease_id)
            if (held is not None and held[1] != shared) or (
                    queued is not None and queued != shared):
                # Never answer a writer with a reader's grant: no silent up/downgrade.
                have = "exclusive" if shared else "shared"
                raise LockKindMismatch(f"lease {lease_id} already holds or waits for lock "
                                       f"{name!r} {have}")
            if held is not None:
                return AcquireResult(Grant(name, lease_id, held[0], held[1]))
            if queued is not None:
                return AcquireResult(None, list(lock.waiters).index(lease_id))
            if lock.free:
                lock.capacity = capacity
            elif lock.capacity != capacity:
                raise LockKindMismatch(
                    f"lock {name!r} is in use with capacity {lock.capacity}, not {capacity}")
        if self._entries >= self._limits.max_lock_entries:
            raise Overloaded(f"{self._entries} lock holders and waiters: "
                             "Limits.max_lock_entries reached")
        if lock is None:
            self._make_room()
            lock = self._locks[name] = _Lock(capacity=capacity)
        lock.waiters[lease_id] = shared
        self._entries += 1
        self._by_lease.setdefault(lease_id, set()).add(name)
        for grant in self._grant_waiters(name, lock):
            if grant.lease_id == lease_id:
                return AcquireResult(grant, new=True)
        return AcquireResult(None, len(lock.waiters) - 1)

    def release(self, name: bytes, lease_id: int) -> list[Grant]:
        """The lease stops holding (or waiting for) `name`; returns the grants this made,
        in grant order. Releasing what the lease does not hold or wait for does nothing."""
        lock = self._locks.get(name)
        if lock is None:
            return []
        if lock.holders.pop(lease_id, None) is None and lock.waiters.pop(lease_id, None) is None:
            return []
        self._entries -= 1
        names = self._by_lease[lease_id]
        names.discard(name)
        if not names:
            del self._by_lease[lease_id]
        grants = self._grant_waiters(name, lock)
        if lock.free:
            heapq.heappush(self._free, (lock.last_token, name))
            if len(self._free) > 2 * len(self._locks) + 64:
                # Rows freed, taken and freed again leave stale heap rows: rebuild.
                self._free = [(row.last_token, row_name)
                              for row_name, row in self._locks.items() if row.free]
                heapq.heapify(self._free)
        return grants

    def release_lease(self, lease_id: int) -> list[Grant]:
        """The lease ended (revoked, expired, its session died): every lock it held or
        waited for is released, in name order; returns the grants made."""
        grants: list[Grant] = []
        for name in sorted(self._by_lease.get(lease_id, ())):
            grants += self.release(name, lease_id)
        return grants

    def _grant_waiters(self, name: bytes, lock: _Lock) -> list[Grant]:
        grants: list[Grant] = []
        while lock.waiters:
            lease_id, shared = next(iter(lock.waiters.items()))
            if not lock.compatible(shared):
                break   # FIFO: nobody overtakes the head
            del lock.waiters[lease_id]
            token = self._next_token
            self._next_token += 1
            lock.holders[lease_id] = (token, shared)
            lock.last_token = token
            grants.append(Grant(name, lease_id, token, shared))
        return grants

    def _make_room(self) -> None:
        while len(self._locks) >= self._limits.max_lock_names:
            if not self._free:
                raise Overloaded(f"{len(self._locks)} locks in use: "
                                 "Limits.max_lock_names reached")
            token, name = heapq.heappop(self._free)
            lock = self._locks.get(name)
            if lock is not None and lock.free and lock.last_token == token:
                del self._locks[name]

    # ------------------------------------------------------------------ fencing

    def check_fence(self, name: bytes, token: int, *, strict: bool = False) -> None:
        """Raise FencingTokenStale unless a write under `token` of lock `name` is allowed
        (module docstring). Deterministic: it reads the replicated state only."""
        lock = self._locks.get(name)
        if lock is None:
            raise FencingTokenStale(name, token, 0, "no grant of this lock is known")
        if token > lock.last_token:
            raise FencingTokenStale(name, token, lock.last_token, "this token was never granted")
        if any(held == token for held, _ in lock.holders.values()):
            return
        if strict:
            raise FencingTokenStale(name, token, lock.last_token,
                                    "its holder no longer holds the lock")
        if token < lock.last_token:
            raise FencingTokenStale(name, token, lock.last_token)

    # ------------------------------------------------------------------ reads

    def holders(self, name: bytes) -> list[Grant]:
        lock = self._locks.get(name)
        if lock is None:
            return []
        return [Grant(name, lease_id, token, shared)
                for lease_id, (token, shared) in lock.holders.items()]

    def waiters(self, name: bytes) -> list[int]:
        lock = self._locks.get(name)
        return [] if lock is None else list(lock.waiters)

    def last_token(self, name: bytes) -> int:
        lock = self._locks.get(name)
        return 0 if lock is None else lock.last_token

    def lease_ids(self) -> list[int]:
        """Every lease with an entry (holding or waiting), sorted."""
        return sorted(self._by_lease)

    def names_of(self, lease_id: int) -> list[bytes]:
        return sorted(self._by_lease.get(lease_id, ()))

    @property
    def next_token(self) -> int:
        return self._next_token

    def __len__(self) -> int:
        return len(self._locks)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        out = Writer()
        out.u64(self._next_token)
        out.u32(len(self._locks))
        for name in sorted(self._locks):
            lock = self._locks[name]
            out.blob(name)
            out.u32(lock.capacity)
            out.u64(lock.last_token)
            out.u32(len(lock.holders))
            for lease_id, (token, shared) in lock.holders.items():   # grant order
                out.u64(lease_id)
                out.u64(token)
                out.u8(int(shared))
            out.u32(len(lock.waiters))
            for lease_id, shared in lock.waiters.items():           # queue order
                out.u64(lease_id)
                out.u8(int(shared))
        return frame(_MAGIC, _VERSION, out.getvalue())

    def restore(self, data: bytes) -> None:
        """Replace the state; DecodeError (state unchanged) for anything malformed or any
        state the commands cannot produce."""
        body = unframe(data, _MAGIC, _VERSION, "lock table")
        next_token = body.u64("next token")
        locks: dict[bytes, _Lock] = {}
        previous: bytes | None = None
        seen_tokens: set[int] = set()
        for _ in range(body.count("lock count", 24)):
            name = body.blob("lock name")
            if previous is not None and name <= previous:
                raise DecodeError("lock table snapshot: lock names unsorted or repeated")
            previous = name
            lock = _Lock(capacity=body.u32("capacity"), last_token=body.u64("last token"))
            if lock.last_token >= next_token:
                raise DecodeError(f"lock table snapshot: lock {name!r} token {lock.last_token}"
                                  f" not below the next token {next_token}")
            for _ in range(body.count("holder count", 17)):
                lease_id, token, shared = body.u64("holder lease"), body.u64("token"), \
                    _flag(body.u8("holder mode"))
                if lease_id in lock.holders or token in seen_tokens or not (
                        0 < token <= lock.last_token) or not lock.compatible(shared) or (
                        lock.capacity and not shared):
                    raise DecodeError(f"lock table snapshot: lock {name!r} has an impossible "
                                      f"holder (lease {lease_id}, token {token})")
                seen_tokens.add(token)
                lock.holders[lease_id] = (token, shared)
            for _ in range(body.count("waiter count", 9)):
                lease_id, shared = body.u64("waiter lease"), _flag(body.u8("waiter mode"))
                if lease_id in lock.holders or lease_id in lock.waiters or (
                        lock.capacity and not shared):
                    raise DecodeError(f"lock table snapshot: lock {name!r} repeats lease "
                                      f"{lease_id} or mixes kinds")
                lock.waiters[lease_id] = shared
            if lock.waiters and lock.compatible(next(iter(lock.waiters.values()))):
                raise DecodeError(f"lock table snapshot: the head waiter of {name!r} should "
                                  "hold the lock")
            if lock.holders and max(t for t, _ in lock.holders.values()) != lock.last_token \
                    and not any(s for _, s in lock.holders.values()):
                raise DecodeError(f"lock table snapshot: the holder of {name!r} does not hold "
                                  "its newest token")
            locks[name] = lock
        body.end()
        self._set_state(locks, next_token)

    def _set_state(self, locks: dict[bytes, _Lock], next_token: int) -> None:
        self._locks = locks
        self._next_token = next_token
        self._by_lease = {}
        self._entries = 0
        for name, lock in locks.items():
            for lease_id in (*lock.holders, *lock.waiters):
                self._by_lease.setdefault(lease_id, set()).add(name)
                self._entries += 1
        self._free = [(lock.last_token, name) for name, lock in locks.items() if lock.free]
        heapq.heapify(self._free)


def _flag(value: int) -> bool:
    if value > 1:
        raise DecodeError(f"lock table snapshot: mode flag {value}")
    return bool(value)


class FencedResource:
    """The storage side of fencing, for a user's own state machine (Kleppmann 2016): the
    resource remembers, per lock, the greatest token it has accepted and refuses any write
    with a smaller one. It does not know the grants, so it refuses a stale holder only once
    the newer holder has written (use LockTable.check_fence where the grants are applied).

        fence = FencedResource()
        fence.admit(b"jobs", token)      # raises FencingTokenStale, or records the token
        ...apply the write...

    Deterministic, so it can live in replicated state: snapshot()/restore()."""

    def __init__(self) -> None:
        self._newest: dict[bytes, int] = {}

    def admit(self, lock: bytes, token: int) -> None:
        newest = self._newest.get(lock, 0)
        if token < newest:
            raise FencingTokenStale(lock, token, newest)
        self._newest[lock] = token

    def newest(self, lock: bytes) -> int:
        return self._newest.get(lock, 0)

    def locks(self) -> Iterable[bytes]:
        return sorted(self._newest)

    def snapshot(self) -> bytes:
        out = Writer()
        out.u32(len(self._newest))
        for lock in sorted(self._newest):
            out.blob(lock)
            out.u64(self._newest[lock])
        return frame(_FENCE_MAGIC, _VERSION, out.getvalue())

    def restore(self, data: bytes) -> None:
        body = unframe(data, _FENCE_MAGIC, _VERSION, "fenced resource")
        newest: dict[bytes, int] = {}
        previous: bytes | None = None
        for _ in range(body.count("lock count", 12)):
            lock = body.blob("lock name")
            if previous is not None and lock <= previous:
                raise DecodeError("fenced resource snapshot: lock names unsorted or repeated")
            previous = lock
            newest[lock] = body.u64("token")
        body.end()
        self._newest = newest
