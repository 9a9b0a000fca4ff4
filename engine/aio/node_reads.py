"""engine.Node's reads: read() in its three READ_MODES. The ReadIndex rounds (Raft thesis
§6.4: the reads queued in a turn share one round, wait for apply, are answered) and the lease
check (§6.4.1) are the driver's (engine/driver.py); this component picks the mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from engine import errors
from engine.aio.node_component import NodeComponent
from engine.driver import READ_RETRY_TICKS as _READ_RETRY_TICKS
from engine.driver import PendingRead as _PendingRead

READ_MODES = ("linearizable", "lease", "stale")
__all__ = ["READ_MODES", "_READ_RETRY_TICKS", "_PendingRead", "NodeReads"]


class NodeReads(NodeComponent):
    """Node's reads (see the module docstring): a component of engine.aio.node.Node
    (node._reads) with no state of its own; the pending reads are the driver's."""

    async def read(self, query: bytes, mode: str, timeout: float | None) -> bytes:
        """engine.Node.read (its docstring holds the modes' guarantees)."""
        node = self.node
        if mode == "linearizable":
            return await self.enqueue(query, timeout)
        node._check_running()
        node._members.refuse_witness_read()
        if mode == "stale":
            node.counters["stale_reads"] = node.counters.get("stale_reads", 0) + 1
            return self.query_now(bytes(query))
        if mode != "lease":
            raise errors.ConfigError(f"read mode must be one of {READ_MODES}, got {mode!r}")
        lease_index = self.lease_read_index()
        if lease_index is None:
            return await self.enqueue(query, timeout)
        driver = node._driver
        if lease_index <= driver.applied:
            return self.query_now(bytes(query))
        assert self._loop is not None
        future: asyncio.Future[bytes] = self._loop.create_future()
        driver.wait_for_apply(lease_index, bytes(query), future, timeout)
        return await future

    def enqueue(self, query: bytes, timeout: float | None,
                answer: Callable[[asyncio.Future[bytes]], None] | None = None
                ) -> asyncio.Future[bytes]:
        """Queue a read for this turn's shared ReadIndex round; the future is its answer."""
        node = self.node
        node._check_running()
        node._members.refuse_witness_read()
        future = node._new_future(answer)
        node._driver.enqueue_read(bytes(query), future, timeout)
        return future

    def lease_read_index(self) -> int | None:
        """The leader's lease read index, if its lease holds in ticks AND in real time."""
        driver = self.node._driver
        if driver.caps.lease_reads is None or driver.core is None:
            return None
        timing = self.config.timing
        return driver.lease_read_index(
            timing.election_timeout_ticks, driver.core.config.lease_drift_ticks_or_default,
            timing.tick_ms / 1000.0)

    def query_now(self, query: bytes) -> bytes:
        try:
            return self.node.state_machine.query(query)
        except Exception as exc:
            raise errors.StateMachineError(f"query raised {exc!r}") from exc
