"""CoordState: leases, locks and elections as one replicated state (sans-IO, deterministic).

This is the piece a KV state machine embeds: it applies the coordination commands and
answers what they changed, and the KV store does the rest (deleting a lease's keys and
recording those deletes in its WatchLog, telling the granted waiters). A lock or election
entry is always bound to a live lease: acquiring under a lease that does not exist raises
LeaseNotFound, and a lease that ends (REVOKE, EXPIRE) takes its entries with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.coord.codec import Writer, frame, unframe
from engine.coord.election import Elections, LeaderChange
from engine.coord.lease import Lease, LeaseTable
from engine.coord.locks import AcquireResult, Grant, LockTable
from engine.errors import DecodeError, LeaseNotFound
from engine.limits import Limits

__all__ = ["CoordState", "LeaseEnd"]

_MAGIC = b"ECS1"
_VERSION = 1


@dataclass(frozen=True)
class LeaseEnd:
    """What ending a lease did: the keys to delete (sorted), the lock grants it caused (tell
    exactly these waiters) and the election leaders that changed."""

    lease: Lease
    keys: tuple[bytes, ...]
    grants: tuple[Grant, ...]
    leader_changes: tuple[LeaderChange, ...]


class CoordState:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.leases = LeaseTable(self.limits)
        self.locks = LockTable(self.limits)
        self.elections = Elections(self.limits)

    # ------------------------------------------------------------------ leases

    def grant_lease(self, ttl_ms: int) -> Lease:
        return self.leases.grant(ttl_ms)

    def keepalive(self, lease_id: int) -> Lease:
        return self.leases.keepalive(lease_id)

    def checkpoint(self, lease_id: int, generation: int, remaining_ms: int) -> bool:
        return self.leases.checkpoint(lease_id, generation, remaining_ms)

    def revoke(self, lease_id: int) -> LeaseEnd | None:
        return self._end(self.leases.revoke(lease_id))

    def expire(self, lease_id: int, generation: int) -> LeaseEnd | None:
        return self._end(self.leases.expire(lease_id, generation))

    def _end(self, lease: Lease | None) -> LeaseEnd | None:
        if lease is None:
            return None
        return LeaseEnd(lease, tuple(sorted(lease.keys)),
                        tuple(self.locks.release_lease(lease.lease_id)),
                        tuple(self.elections.release_lease(lease.lease_id)))

    # ------------------------------------------------------------------ locks

    def acquire(self, name: bytes, lease_id: int, *, shared: bool = False,
                capacity: int = 0) -> AcquireResult:
        self._require(lease_id)
        return self.locks.acquire(name, lease_id, shared=shared, capacity=capacity)

    def release(self, name: bytes, lease_id: int) -> list[Grant]:
        return self.locks.release(name, lease_id)

    def check_fence(self, name: bytes, token: int, *, strict: bool = False) -> None:
        self.locks.check_fence(name, token, strict=strict)

    # ------------------------------------------------------------------ elections

    def campaign(self, name: bytes, lease_id: int, value: bytes) -> list[LeaderChange]:
        self._require(lease_id)
        return self.elections.campaign(name, lease_id, value)

    def _require(self, lease_id: int) -> None:
        if lease_id not in self.leases:
            raise LeaseNotFound(lease_id)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        out = Writer()
        out.blob(self.leases.snapshot())
        out.blob(self.locks.snapshot())
        out.blob(self.elections.snapshot())
        return frame(_MAGIC, _VERSION, out.getvalue())

    def restore(self, data: bytes) -> None:
        """Replace the whole state; DecodeError (state unchanged) for malformed bytes or a
        lock or election entry whose lease does not exist."""
        body = unframe(data, _MAGIC, _VERSION, "coordination state")
        leases, locks, elections = (LeaseTable(self.limits), LockTable(self.limits),
                                    Elections(self.limits))
        leases.restore(body.blob("lease table"))
        locks.restore(body.blob("lock table"))
        elections.restore(body.blob("elections"))
        body.end()
        bound = set(locks.lease_ids()) | set(elections.lease_ids())
        orphans = sorted(lease_id for lease_id in bound if lease_id not in leases)
        if orphans:
            raise DecodeError(f"coordination snapshot: entries of leases {orphans} that do "
                              "not exist")
        self.leases, self.locks, self.elections = leases, locks, elections
