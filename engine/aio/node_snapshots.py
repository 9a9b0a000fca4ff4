"""engine.Node's snapshot start-up and take_snapshot(). Taking snapshots (the thresholds,
serialising off the loop, WAL compaction, the core's compaction) and installing a leader's
snapshot are the driver's (engine/driver.py, "snapshots"); Node gives it the threads.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from engine.config import NodeConfig
from engine.driver import state_machine_fork as _state_machine_fork

if TYPE_CHECKING:
    from engine.aio.node import StateMachine
    from engine.aio.node_membership import NodeMembership
    from engine.driver import Driver

__all__ = ["_SnapshotsMixin", "_state_machine_fork"]


class _SnapshotsMixin:
    """Node's snapshots at start (_restore_from) and on demand (take_snapshot). Node
    attributes it uses: config, state_machine, _driver, _loop."""

    config: NodeConfig
    state_machine: StateMachine
    _driver: Driver
    _members: NodeMembership
    _loop: asyncio.AbstractEventLoop | None

    if TYPE_CHECKING:  # defined by Node and the other mixins
        # Node (node.py)
        def _check_running(self) -> None: ...

    def take_snapshot(self) -> bool:
        """Snapshot the state machine now; False if one is already being taken or nothing
        new was applied. Normally the NodeConfig thresholds trigger it."""
        self._check_running()
        return self._driver.start_snapshot()

    async def _restore_from(self, recovered: Any) -> int:
        """Restore the state machine from the recovered snapshot; returns its index."""
        snapshot = getattr(recovered, "snapshot", None)
        if snapshot is None:
            return 0
        if self._driver.witness or self._members.snapshot_is_witness_own(snapshot):
            self._driver.witness = True
            return int(snapshot.index)  # a witness restores no state machine data
        assert self._loop is not None
        await self._loop.run_in_executor(None, self.state_machine.restore, snapshot.data)
        return int(snapshot.index)
