"""Elections on leases and grant order: the logic layer of campaign / leader / resign /
observe (etcd's concurrency.Election), sans-IO and deterministic.

An election is an exclusive lock of its own LockTable (its own name space and counter):

  campaign(name, lease, value)   join the FIFO queue of candidates under `lease` with
                                 `value`; the head of the queue is the leader. A candidate
                                 already queued updates its value. The caller (the client
                                 library) waits until a LeaderChange names its lease.
  leader(name)                   the current Leader (lease, value, term) or None.
  proclaim(name, lease, value)   the leader announces a new value without losing its term;
                                 NotElectionLeader from anyone else.
  resign(name, lease)            leave the election (leader or candidate); the next
                                 candidate, if any, leads.
  observe                        every call that changes an election's leader or its value
                                 returns the LeaderChange events it caused, in order: the
                                 node feeds them to observers (the current leader first,
                                 then each change), so an observer sees every leader
                                 exactly once, in term order.

The term of a leadership is the lock token of its grant: it increases with every new leader
(etcd uses the leader key's create revision), so it fences a deposed leader's writes like a
lock token (check_fence). A lease that ends (revoked, expired: the candidate's process died
or was cut off past its TTL) leaves every election it was in (release_lease), which is how a
dead leader is replaced on consensus time.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.coord.codec import Writer, frame, unframe
from engine.coord.locks import Grant, LockTable
from engine.errors import DecodeError, NotElectionLeader
from engine.limits import Limits

__all__ = ["Elections", "Leader", "LeaderChange"]

_MAGIC = b"ECE1"
_VERSION = 1


@dataclass(frozen=True)
class Leader:
    election: bytes
    lease_id: int
    value: bytes
    term: int


@dataclass(frozen=True)
class LeaderChange:
    """Election `election` is now led by `leader` (None: no candidate is left)."""

    election: bytes
    leader: Leader | None


class Elections:
    def __init__(self, limits: Limits | None = None) -> None:
        self._locks = LockTable(limits)
        self._values: dict[tuple[bytes, int], bytes] = {}

    def campaign(self, name: bytes, lease_id: int, value: bytes) -> list[LeaderChange]:
        before = self.leader(name)
        self._locks.acquire(name, lease_id)
        self._values[(name, lease_id)] = value
        after = self.leader(name)
        return [LeaderChange(name, after)] if after != before else []

    def proclaim(self, name: bytes, lease_id: int, value: bytes) -> list[LeaderChange]:
        current = self.leader(name)
        if current is None or current.lease_id != lease_id:
            raise NotElectionLeader(f"lease {lease_id} does not lead election {name!r}")
        if current.value == value:
            return []
        self._values[(name, lease_id)] = value
        return [LeaderChange(name, self.leader(name))]

    def resign(self, name: bytes, lease_id: int) -> list[LeaderChange]:
        before = self.leader(name)
        self._locks.release(name, lease_id)
        self._values.pop((name, lease_id), None)
        after = self.leader(name)
        return [LeaderChange(name, after)] if after != before else []

    def release_lease(self, lease_id: int) -> list[LeaderChange]:
        """The lease ended: it leaves every election it led or waited in (name order)."""
        changes: list[LeaderChange] = []
        for name in self._locks.names_of(lease_id):
            changes += self.resign(name, lease_id)
        return changes

    def leader(self, name: bytes) -> Leader | None:
        holders = self._locks.holders(name)
        if not holders:
            return None
        grant: Grant = holders[0]
        return Leader(name, grant.lease_id, self._values[(name, grant.lease_id)], grant.token)

    def candidates(self, name: bytes) -> list[int]:
        """Leases in the election: the leader first, then the queue."""
        return [grant.lease_id for grant in self._locks.holders(name)] + self._locks.waiters(
            name)

    def lease_ids(self) -> list[int]:
        """Every lease that is a candidate somewhere, sorted."""
        return self._locks.lease_ids()

    def check_term(self, name: bytes, term: int) -> None:
        """FencingTokenStale unless `term` is the current leadership of `name`."""
        self._locks.check_fence(name, term, strict=True)

    def snapshot(self) -> bytes:
        out = Writer()
        out.blob(self._locks.snapshot())
        out.u32(len(self._values))
        for (name, lease_id) in sorted(self._values):
            out.blob(name)
            out.u64(lease_id)
            out.blob(self._values[(name, lease_id)])
        return frame(_MAGIC, _VERSION, out.getvalue())

    def restore(self, data: bytes) -> None:
        body = unframe(data, _MAGIC, _VERSION, "elections")
        locks = LockTable(self._locks._limits)
        locks.restore(body.blob("candidate queues"))
        values: dict[tuple[bytes, int], bytes] = {}
        previous: tuple[bytes, int] | None = None
        for _ in range(body.count("candidate count", 16)):
            row = (body.blob("election name"), body.u64("lease id"))
            if previous is not None and row <= previous:
                raise DecodeError("elections snapshot: candidates unsorted or repeated")
            previous = row
            values[row] = body.blob("value")
        body.end()
        queued = {(name, lease_id) for lease_id in locks.lease_ids()
                  for name in locks.names_of(lease_id)}
        if queued != set(values):
            raise DecodeError("elections snapshot: candidate values do not match the queues")
        if any(lock.capacity or any(shared for _, shared in lock.holders.values())
               or any(lock.waiters.values()) for lock in locks._locks.values()):
            raise DecodeError("elections snapshot: an election queue holds a shared entry")
        self._locks, self._values = locks, values
