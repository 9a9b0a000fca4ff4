"""engine.Node's snapshot start-up and take_snapshot(). Taking snapshots (the thresholds,
serialising off the loop, WAL compaction, the core's compaction) and installing a leader's
snapshot are the driver's (engine/driver.py, "snapshots"); Node gives it the threads.
"""

from __future__ import annotations

from typing import Any

from engine.aio.node_component import NodeComponent
from engine.driver import state_machine_fork as _state_machine_fork

__all__ = ["NodeSnapshots", "_state_machine_fork"]


class NodeSnapshots(NodeComponent):
    """Node's snapshots at start (restore_from) and on demand (take): a component of
    engine.aio.node.Node (node._snapshots) with no state of its own."""

    def take(self) -> bool:
        """engine.Node.take_snapshot."""
        self.node._check_running()
        return self.node._driver.start_snapshot()

    async def restore_from(self, recovered: Any) -> int:
        """Restore the state machine from the recovered snapshot; returns its index."""
        snapshot = getattr(recovered, "snapshot", None)
        if snapshot is None:
            return 0
        node = self.node
        driver = node._driver
        if driver.witness or node._members.snapshot_is_witness_own(snapshot):
            driver.witness = True
            return int(snapshot.index)  # a witness restores no state machine data
        assert self._loop is not None
        await self._loop.run_in_executor(None, node.state_machine.restore, snapshot.data)
        return int(snapshot.index)
