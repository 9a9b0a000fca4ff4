"""engine.Node's lease clock: the leader-side Lessor (engine.coord.lease) over the KVStore's
replicated leases, fed this node's monotonic clock (loop.time()) on every tick.

Only the leader measures time (docs/coordination.md, "Time is the leader's clock"):

  * becoming leader: `promote` gives every lease its persisted remaining TTL plus the longest
    election timeout (2 x election_timeout_ticks: the timeout is randomized in [T, 2T)), so
    no lease ends early because leadership moved (etcd's Promote);
  * each tick: the lease ids the store's lease commands touched since the last tick are
    tracked (a renewal restarts the full TTL; tracked up to one tick late, which only makes
    a deadline later), then the EXPIRE and CHECKPOINT commands the Lessor decides are
    proposed, without a session: both carry the renewal generation they were measured at,
    so a copy applied twice or after a renewal changes nothing;
  * losing leadership: `demote`, a follower never expires a lease.

A restore (a snapshot installed) replaces the store's lease table: the Lessor is rebuilt over
the new one and, on a leader, promoted again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from engine.aio.node_component import NodeComponent
from engine.coord.commands import Command, CoordOp, encode_command
from engine.coord.lease import Lessor, LessorConfig
from engine.kv.coord import encode_coord

if TYPE_CHECKING:
    from engine.aio.node import Node

logger = logging.getLogger("engine.node")


class NodeLeases(NodeComponent):
    def __init__(self, node: Node) -> None:
        super().__init__(node)
        store: Any = node.state_machine
        # Any state machine with the KVStore's coordination state (engine.kv.KVStore).
        self._store = store if hasattr(store, "touched_leases") else None
        if self._store is not None:
            store.track_leases = True
        timing = self.config.timing
        self._lessor_config = LessorConfig(
            extend_ms=2 * timing.election_timeout_ticks * timing.tick_ms)
        self._lessor: Lessor | None = None
        self._table: Any = None
        self._leader = False
        self.proposed = 0   # EXPIRE and CHECKPOINT commands proposed (tests, metrics)

    @property
    def lessor(self) -> Lessor | None:
        return self._lessor

    def tick(self) -> None:
        store = self._store
        loop = self._loop
        if store is None or loop is None:
            return
        now_ms = loop.time() * 1000.0
        core = self._core
        leader = core is not None and core.leader_id == self.config.node_id
        touched = store.touched_leases
        table = store.coord.leases
        lessor = self._lessor
        if lessor is None or table is not self._table:
            lessor = self._lessor = Lessor(table, self._lessor_config)
            self._table = table
            self._leader = False
        if leader != self._leader:
            self._leader = leader
            if leader:
                lessor.promote(now_ms)   # covers every lease the table holds now
            else:
                lessor.demote()
            touched.clear()
        if not leader:
            touched.clear()
            return
        if touched:
            for lease_id in touched:
                lessor.track(lease_id, now_ms)
            touched.clear()
        for expire in lessor.expired(now_ms):
            self._propose(Command(CoordOp.EXPIRE, lease_id=expire.lease_id,
                                  generation=expire.generation))
        for checkpoint in lessor.checkpoints(now_ms):
            self._propose(Command(CoordOp.CHECKPOINT, lease_id=checkpoint.lease_id,
                                  generation=checkpoint.generation,
                                  remaining_ms=checkpoint.remaining_ms))

    def _propose(self, command: Command) -> None:
        try:
            future = self.node.submit(encode_coord(encode_command(command)))
        except Exception as exc:   # back-pressure or stopping: the Lessor proposes again
            logger.debug("lease command not proposed: %r", exc)
            return
        self.proposed += 1
        future.add_done_callback(_settled)


def _settled(future: asyncio.Future[bytes]) -> None:
    # A lost proposal is proposed again by the Lessor (expire_retry_ms): only consume it.
    if not future.cancelled():
        future.exception()
