"""Coordination on the replicated state machine side (DESIGN.md §2 `coord/`): leases on
consensus time, locks with fencing tokens, watches and elections. Sans-IO and deterministic:
nothing here reads a clock; the leader's Lessor is handed its clock readings.

    CoordState       leases + locks + elections, as a KV state machine embeds them
    LeaseTable       replicated leases (grant / keepalive / checkpoint / revoke / expire)
    Lessor           the leader's deadlines: proposes EXPIRE and CHECKPOINT commands
    LockTable        FIFO lock queues, fencing tokens, read-write locks, semaphores
    FencedResource   the token check for a user's own state machine
    WatchLog         retained change events and watchers (Compacted, WatchOverflow)
    Elections        campaign / proclaim / resign / leader, LeaderChange events
    commands         the commands' log encoding and apply(state, command) -> Effect

docs/coordination.md describes the design and what is not yet wired to the client.
"""

from __future__ import annotations

from engine.coord.election import Elections, Leader, LeaderChange
from engine.coord.lease import (
    Checkpoint,
    Expire,
    Lease,
    LeaseTable,
    Lessor,
    LessorConfig,
    holder_deadline,
)
from engine.coord.locks import AcquireResult, FencedResource, Grant, LockTable
from engine.coord.state import CoordState, LeaseEnd
from engine.coord.watch import DELETE, PUT, Watcher, WatchEvent, WatchLog

__all__ = [
    "DELETE", "PUT", "AcquireResult", "Checkpoint", "CoordState", "Elections", "Expire",
    "FencedResource", "Grant", "Leader", "LeaderChange", "Lease", "LeaseEnd", "LeaseTable",
    "Lessor", "LessorConfig", "LockTable", "WatchEvent", "WatchLog", "Watcher",
    "holder_deadline",
]
