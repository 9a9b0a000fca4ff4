"""Leases on consensus time: the replicated LeaseTable and the leader-side Lessor (sans-IO).

The design is etcd's lessor (server/lease/lessor.go) with its remaining-TTL checkpoints, made
explicit about clock rates.

Replicated state (`LeaseTable`, the same on every replica, changed only by applied commands):
a lease has an id (assigned by the table from a persisted counter, never reused), the granted
TTL, the remaining TTL as last persisted, a renewal generation and the keys attached to it.

    GRANT(ttl_ms)                  -> a new lease, remaining = ttl, generation 1
    KEEPALIVE(id)                  -> remaining = ttl, generation + 1 (LeaseNotFound if gone)
    CHECKPOINT(id, generation, remaining_ms)
                                   -> remaining persisted (the leader's measure, see below),
                                      only if the lease was not renewed since the leader
                                      measured (a stale, smaller remaining must not undo a
                                      KEEPALIVE committed before it)
    REVOKE(id)                     -> the lease and its keys' attachments are gone
    EXPIRE(id, generation)         -> REVOKE, but only if the lease was not renewed since the
                                      leader decided (an EXPIRE committed after a KEEPALIVE it
                                      did not see changes nothing)

No command carries a time: a client's clock is never trusted, and the state machine never
reads one. Revoking or expiring returns the lease with its keys; the caller (CoordState, then
the KV store) deletes the keys and releases the locks the lease's session held.

Time (`Lessor`): only the leader measures time, with its own monotonic clock, passed in as
readings (`now_ms`); the Lessor never reads a clock. It keeps a deadline per lease and
proposes EXPIRE for leases past it. Followers keep no deadlines. On becoming leader
(`promote`) every lease gets `remaining + extend_ms` (extend_ms: the election timeout), so a
lease whose holder kept it alive through the old leader is not expired before the holder has
had time to find the new one (etcd's Promote; Consul resets TTLs on failover likewise).

Clock-rate bound. Assume every leader's monotonic clock runs at a rate r in [1 - rho, 1 + rho]
of true time (rho = `max_clock_drift`; 0.1 covers the simulator's 0.9x..1.1x skew nemesis;
real quartz drifts ~1e-4). Claim: no lease expires less than its TTL of true time after its
last renewal (grant or keepalive) was applied.

  Single leader. The leader sets deadline = t_apply + ttl * (1 + rho) in its own clock units.
  It proposes EXPIRE once its clock has advanced by E_l >= ttl * (1 + rho); the true time
  elapsed is E_l / r >= ttl * (1 + rho) / (1 + rho) = ttl.
  Checkpoints. At a reading E_l after the renewal the leader persists
  remaining = ceil((deadline - now) / (1 + rho)) >= ttl - E_l / (1 + rho); the true time
  elapsed by then is E_t >= E_l / (1 + rho), so E_t + remaining >= ttl.
  Leader change. A new leader (any rate r') sets deadline = now + (remaining + extend) *
  (1 + rho) and so waits at least remaining + extend >= remaining of true time, after a
  checkpoint that was at least E_t of true time after the renewal: E_t + remaining >= ttl.
  Renewals not yet applied by the deciding leader are caught by EXPIRE's generation check.
Deposed leaders: an EXPIRE proposed by a leader that has since lost its role either commits
(its decision was made on the bound above and is still correct) or is replaced in the log.
The holder's side (not in this module): a client that measured its own send time t_send can
rely on the lease until t_send + ttl * (1 - rho) by its own clock, since the renewal applies
after it was sent and its clock runs no slower than 1 - rho.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from engine.coord.codec import Writer, frame, unframe
from engine.errors import DecodeError, LeaseNotFound, Overloaded, Rejected
from engine.limits import Limits

__all__ = ["Checkpoint", "Expire", "Lease", "LeaseTable", "Lessor", "LessorConfig",
           "holder_deadline"]

_MAGIC = b"ECL1"
_VERSION = 1
_MAX_TTL_MS = 2**53   # far beyond any use; keeps the leader's float arithmetic exact


@dataclass
class Lease:
    lease_id: int
    ttl_ms: int
    remaining_ms: int
    generation: int
    keys: set[bytes] = field(default_factory=set)


class LeaseTable:
    """The replicated leases (see the module docstring). Deterministic: no clock, no hash
    order in any output."""

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self._leases: dict[int, Lease] = {}
        self._key_lease: dict[bytes, int] = {}
        self._next_id = 1

    # ------------------------------------------------------------------ commands

    def grant(self, ttl_ms: int) -> Lease:
        if not isinstance(ttl_ms, int) or not 0 < ttl_ms <= _MAX_TTL_MS:
            raise Rejected(f"lease TTL must be a positive number of ms, got {ttl_ms!r}")
        if len(self._leases) >= self._limits.max_leases:
            raise Overloaded(f"{len(self._leases)} leases alive: Limits.max_leases reached")
        lease = Lease(self._next_id, ttl_ms, ttl_ms, 1)
        self._next_id += 1
        self._leases[lease.lease_id] = lease
        return lease

    def keepalive(self, lease_id: int) -> Lease:
        lease = self._require(lease_id)
        lease.remaining_ms = lease.ttl_ms
        lease.generation += 1
        return lease

    def checkpoint(self, lease_id: int, generation: int, remaining_ms: int) -> bool:
        """Persist the leader's remaining TTL; False (nothing done) for a lease that is gone or
        was renewed since the leader measured it. Clamped to [0, ttl]: a checkpoint never
        lengthens a lease beyond a renewal."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.generation != generation:
            return False
        lease.remaining_ms = max(0, min(int(remaining_ms), lease.ttl_ms))
        return True

    def revoke(self, lease_id: int) -> Lease | None:
        """Remove the lease; returns it (its keys detached) or None if it was already gone."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return None
        for key in lease.keys:
            del self._key_lease[key]
        return lease

    def expire(self, lease_id: int, generation: int) -> Lease | None:
        """REVOKE if the lease was not renewed since the leader decided; else None."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.generation != generation:
            return None
        return self.revoke(lease_id)

    def attach(self, key: bytes, lease_id: int) -> None:
        """Attach key to the lease (put(..., lease=...)); a key has at most one lease, so it
        leaves any other first (etcd: a put with another lease moves the key)."""
        lease = self._require(lease_id)
        self.detach(key)
        lease.keys.add(key)
        self._key_lease[key] = lease_id

    def detach(self, key: bytes) -> int | None:
        """The key was deleted or overwritten without a lease: forget its lease."""
        lease_id = self._key_lease.pop(key, None)
        if lease_id is not None:
            self._leases[lease_id].keys.discard(key)
        return lease_id

    # ------------------------------------------------------------------ reads

    def get(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def lease_of(self, key: bytes) -> int | None:
        return self._key_lease.get(key)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[Lease]:
        return (self._leases[lease_id] for lease_id in sorted(self._leases))

    def _require(self, lease_id: int) -> Lease:
        lease = self._leases.get(lease_id)
        if lease is None:
            raise LeaseNotFound(lease_id)
        return lease

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        out = Writer()
        out.u64(self._next_id)
        out.u32(len(self._leases))
        for lease in self:
            out.u64(lease.lease_id)
            out.u64(lease.ttl_ms)
            out.u64(lease.remaining_ms)
            out.u64(lease.generation)
            out.u32(len(lease.keys))
            for key in sorted(lease.keys):
                out.blob(key)
        return frame(_MAGIC, _VERSION, out.getvalue())

    def restore(self, data: bytes) -> None:
        """Replace the state; DecodeError (state unchanged) for anything malformed."""
        body = unframe(data, _MAGIC, _VERSION, "lease table")
        next_id = body.u64("next lease id")
        leases: dict[int, Lease] = {}
        key_lease: dict[bytes, int] = {}
        previous_id = 0
        for _ in range(body.count("lease count", 36)):
            lease_id = body.u64("lease id")
            ttl, remaining, generation = (body.u64("ttl"), body.u64("remaining ttl"),
                                          body.u64("generation"))
            if not previous_id < lease_id < next_id:
                raise DecodeError(f"lease table snapshot: lease id {lease_id} out of order or "
                                  f"not below the next id {next_id}")
            if not 0 < ttl <= _MAX_TTL_MS or remaining > ttl or generation == 0:
                raise DecodeError(f"lease table snapshot: lease {lease_id} has ttl {ttl}, "
                                  f"remaining {remaining}, generation {generation}")
            previous_id = lease_id
            lease = Lease(lease_id, ttl, remaining, generation)
            previous_key: bytes | None = None
            for _ in range(body.count("key count", 4)):
                key = body.blob("key")
                if previous_key is not None and key <= previous_key:
                    raise DecodeError(f"lease table snapshot: keys of lease {lease_id} unsorted")
                if key in key_lease:
                    raise DecodeError(f"lease table snapshot: key {key!r} on two leases")
                previous_key = key
                lease.keys.add(key)
                key_lease[key] = lease_id
            leases[lease_id] = lease
        body.end()
        self._leases, self._key_lease, self._next_id = leases, key_lease, next_id


def holder_deadline(sent_at: float, ttl_ms: int, max_clock_drift: float) -> float:
    """Until when, on the holder's own monotonic clock (ms), a holder may rely on a lease
    whose GRANT or KEEPALIVE it sent at its reading `sent_at` (taken before sending).

    The holder's clock runs at a rate r_h in [1 - rho, 1 + rho], so its reading reaches
    sent_at + ttl * (1 - rho) after true time ttl * (1 - rho) / r_h <= ttl, that is by true
    time t_send + ttl. The renewal applied at t_apply >= t_send, and no leader expires the
    lease before t_apply + ttl (the module docstring's bound): the holder stops trusting the
    lease before it can end. The answer's arrival does not move this later, since the holder
    never knows when the renewal applied (Chubby's conservative client-side lease)."""
    return sent_at + ttl_ms * (1.0 - max_clock_drift)


# ---------------------------------------------------------------------- the leader's clock


@dataclass(frozen=True)
class LessorConfig:
    """extend_ms: added to every lease on promotion (the election timeout). max_clock_drift:
    rho of the module docstring. checkpoint_interval_ms: how often a lease's remaining TTL is
    persisted (etcd: 5 minutes). expire_retry_ms: an EXPIRE not applied by then is proposed
    again (etcd's expiredLeaseRetryInterval, 3 s). max_expire_per_call: EXPIREs (and CHECKPOINTs)
    proposed per call, so a mass expiry does not flood the log (etcd: 1,000 revokes/s)."""

    extend_ms: int
    max_clock_drift: float = 0.1
    checkpoint_interval_ms: int = 300_000
    expire_retry_ms: int = 3_000
    max_expire_per_call: int = 1_000

    def __post_init__(self) -> None:
        if self.extend_ms < 0 or not 0.0 <= self.max_clock_drift < 1.0:
            raise ValueError("extend_ms must be >= 0 and max_clock_drift in [0, 1)")
        if min(self.checkpoint_interval_ms, self.expire_retry_ms, self.max_expire_per_call) <= 0:
            raise ValueError("intervals and max_expire_per_call must be positive")


@dataclass(frozen=True)
class Expire:
    """A command the leader proposes: EXPIRE(lease_id, generation)."""

    lease_id: int
    generation: int


@dataclass(frozen=True)
class Checkpoint:
    """A command the leader proposes: CHECKPOINT(lease_id, generation, remaining_ms)."""

    lease_id: int
    generation: int
    remaining_ms: int


class _DueQueue:
    """Lease ids by due time: one live row per lease, superseded rows skipped when popped
    and dropped by a rebuild once they outnumber the live ones (etcd's LeaseQueue)."""

    __slots__ = ("_heap", "_due")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}

    def schedule(self, lease_id: int, due: float) -> None:
        self._due[lease_id] = due
        heapq.heappush(self._heap, (due, lease_id))
        if len(self._heap) > 2 * len(self._due) + 64:
            self._heap = [(when, lid) for lid, when in self._due.items()]
            heapq.heapify(self._heap)

    def forget(self, lease_id: int) -> None:
        self._due.pop(lease_id, None)

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()

    def pop_due(self, now_ms: float) -> int | None:
        """The lease whose live row is earliest and due by now (unscheduled), else None."""
        while self._heap and self._heap[0][0] <= now_ms:
            due, lease_id = heapq.heappop(self._heap)
            if self._due.get(lease_id) == due:
                del self._due[lease_id]
                return lease_id
        return None

    def __len__(self) -> int:
        return len(self._heap)


class Lessor:
    """The leader's deadlines over a LeaseTable (see the module docstring). Pure: every
    method that needs the time takes the leader's monotonic reading `now_ms`, and each
    call costs O(log leases) per lease it returns, never a scan of every lease.

    Call `promote(now)` on becoming leader and `demote()` on losing it; `track(lease_id,
    now)` after applying any lease command (GRANT, KEEPALIVE, REVOKE, EXPIRE); propose what
    `expired(now)` and `checkpoints(now)` return."""

    def __init__(self, table: LeaseTable, config: LessorConfig) -> None:
        self._table = table
        self._config = config
        self._stretch = 1.0 + config.max_clock_drift
        self._leader = False
        # lease id -> (deadline, generation it was set for).
        self._deadline: dict[int, tuple[float, int]] = {}
        self._expiry = _DueQueue()        # deadline, then each EXPIRE retry
        self._checkpoint = _DueQueue()    # next checkpoint

    @property
    def is_leader(self) -> bool:
        return self._leader

    def promote(self, now_ms: float) -> None:
        """Became leader: every lease gets remaining + extend (etcd's Promote), measured from
        now on this leader's clock."""
        self._forget_all()
        self._leader = True
        for lease in self._table:
            self._set(lease.lease_id, now_ms
                      + (lease.remaining_ms + self._config.extend_ms) * self._stretch,
                      lease.generation, now_ms)

    def demote(self) -> None:
        """Lost leadership: a follower never expires a lease."""
        self._forget_all()
        self._leader = False

    def _forget_all(self) -> None:
        self._deadline.clear()
        self._expiry.clear()
        self._checkpoint.clear()

    def track(self, lease_id: int, now_ms: float) -> None:
        """After a lease command applied on this node: a renewal (new generation) restarts the
        lease's full TTL from now; a lease gone is forgotten."""
        if not self._leader:
            return
        lease = self._table.get(lease_id)
        if lease is None:
            self._deadline.pop(lease_id, None)
            self._expiry.forget(lease_id)
            self._checkpoint.forget(lease_id)
            return
        known = self._deadline.get(lease_id)
        if known is not None and known[1] == lease.generation:
            return
        self._set(lease_id, now_ms + lease.ttl_ms * self._stretch, lease.generation, now_ms)

    def _set(self, lease_id: int, deadline: float, generation: int, now_ms: float) -> None:
        self._deadline[lease_id] = (deadline, generation)
        self._expiry.schedule(lease_id, deadline)
        self._checkpoint.schedule(lease_id, now_ms + self._config.checkpoint_interval_ms)

    def deadline(self, lease_id: int) -> float | None:
        known = self._deadline.get(lease_id)
        return None if known is None else known[0]

    def remaining_ms(self, lease_id: int, now_ms: float) -> int | None:
        """A lower bound of the true time the lease has left (what a TTL query answers)."""
        known = self._deadline.get(lease_id)
        if known is None:
            return None
        return max(0, math.ceil((known[0] - now_ms) / self._stretch))

    def _current(self, lease_id: int) -> int | None:
        """The lease's generation if the table still holds the one this Lessor tracks."""
        known = self._deadline.get(lease_id)
        lease = self._table.get(lease_id)
        if known is None or lease is None or known[1] != lease.generation:
            return None   # gone or renewed, and track() has not been told yet
        return lease.generation

    def expired(self, now_ms: float) -> list[Expire]:
        """EXPIRE commands to propose now: leases past their deadline, earliest first, at
        most max_expire_per_call; each is proposed again every expire_retry_ms until it
        applies (a lost proposal)."""
        out: list[Expire] = []
        while self._leader and len(out) < self._config.max_expire_per_call:
            lease_id = self._expiry.pop_due(now_ms)
            if lease_id is None:
                break
            generation = self._current(lease_id)
            if generation is None:
                continue
            out.append(Expire(lease_id, generation))
            self._expiry.schedule(lease_id, now_ms + self._config.expire_retry_ms)
        return out

    def checkpoints(self, now_ms: float) -> list[Checkpoint]:
        """CHECKPOINT commands for leases neither renewed nor persisted for
        checkpoint_interval_ms, earliest first, at most max_expire_per_call; remaining is
        the true-time lower bound."""
        out: list[Checkpoint] = []
        while self._leader and len(out) < self._config.max_expire_per_call:
            lease_id = self._checkpoint.pop_due(now_ms)
            if lease_id is None:
                break
            generation = self._current(lease_id)
            remaining = self.remaining_ms(lease_id, now_ms)
            if generation is None or remaining is None:
                continue
            out.append(Checkpoint(lease_id, generation, remaining))
            self._checkpoint.schedule(lease_id, now_ms + self._config.checkpoint_interval_ms)
        return out
