"""engine.Node's public reads: read() in its three READ_MODES. The ReadIndex rounds (Raft
thesis §6.4: the reads queued in a turn share one round, wait for apply, are answered) and
the lease check (§6.4.1) are the driver's (engine/driver.py); this mixin picks the mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine import errors
from engine.config import NodeConfig
from engine.driver import READ_RETRY_TICKS as _READ_RETRY_TICKS
from engine.driver import PendingRead as _PendingRead

if TYPE_CHECKING:
    from engine.aio.node import StateMachine
    from engine.aio.node_membership import NodeMembership
    from engine.driver import Driver

READ_MODES = ("linearizable", "lease", "stale")
__all__ = ["READ_MODES", "_READ_RETRY_TICKS", "_PendingRead", "_ReadsMixin"]


class _ReadsMixin:
    """Node's reads (see the module docstring). Node attributes it uses: config,
    state_machine, _driver, _loop."""

    config: NodeConfig
    state_machine: StateMachine
    _driver: Driver
    _members: NodeMembership
    _loop: asyncio.AbstractEventLoop | None

    if TYPE_CHECKING:  # defined by Node and the other mixins
        @property
        def counters(self) -> dict[str, int]: ...
        # Node (node.py)
        def _new_future(self, answer: Callable[[asyncio.Future[bytes]], None] | None
                        ) -> asyncio.Future[bytes]: ...
        # Node (node.py)
        def _check_running(self) -> None: ...

    # ------------------------------------------------------------------ public API: read

    async def read(self, query: bytes, *, mode: str = "linearizable",
                   timeout: float | None = None) -> bytes:
        """Query the state machine without writing to the log. `mode` picks the guarantee:

        "linearizable" (default; ReadIndex, Raft thesis §6.4): the answer reflects every write
            acknowledged before read() was called. The leader confirms it is still leader with
            a heartbeat round to a quorum, then the read waits until this node has applied the
            leader's commit index. On a follower the read index comes from the leader (one
            round trip) and the follower answers from its own state once it applied that far.
        "lease" (§6.4.1, Raft with check_quorum only): on the leader, answered from local state
            with no round trip while its lease holds: a quorum acknowledged a heartbeat sent
            less than (election_timeout_ticks - lease_drift_ticks) ticks ago, checked both in
            ticks and on the loop's monotonic clock. Linearizable as long as clock rates
            differ by less than that margin (and the process does not pause longer than it
            between the check and the answer). Elsewhere, or without a valid lease, it is a
            "linearizable" read.
        "stale": answered at once from this node's state machine, which may lag the leader by
            any amount (a partitioned node can return arbitrarily old data). Never blocks;
            never goes back in time on one node, but is not ordered with other nodes.

        Raises Timeout (no answer in time), Stopped, StateMachineError, ConfigError for an
        unknown mode.
        """
        if mode == "linearizable":
            return await self._enqueue_read(query, timeout)
        self._check_running()
        self._members.refuse_witness_read()
        if mode == "stale":
            self.counters["stale_reads"] = self.counters.get("stale_reads", 0) + 1
            return self._query_now(bytes(query))
        if mode != "lease":
            raise errors.ConfigError(f"read mode must be one of {READ_MODES}, got {mode!r}")
        lease_index = self._lease_read_index()
        if lease_index is None:
            return await self._enqueue_read(query, timeout)
        if lease_index <= self._driver.applied:
            return self._query_now(bytes(query))
        assert self._loop is not None
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._driver.wait_for_apply(lease_index, bytes(query), future, timeout)
        return await future

    def _enqueue_read(self, query: bytes, timeout: float | None,
                      answer: Callable[[asyncio.Future[bytes]], None] | None = None
                      ) -> asyncio.Future[bytes]:
        """Queue a read for this turn's shared ReadIndex round; the future is its answer."""
        self._check_running()
        self._members.refuse_witness_read()
        future = self._new_future(answer)
        self._driver.enqueue_read(bytes(query), future, timeout)
        return future

    def _lease_read_index(self) -> int | None:
        """The leader's lease read index, if its lease holds in ticks AND in real time."""
        driver = self._driver
        if driver.caps.lease_reads is None or driver.core is None:
            return None
        timing = self.config.timing
        return driver.lease_read_index(
            timing.election_timeout_ticks, driver.core.config.lease_drift_ticks_or_default,
            timing.tick_ms / 1000.0)

    def _query_now(self, query: bytes) -> bytes:
        try:
            return self.state_machine.query(query)
        except Exception as exc:
            raise errors.StateMachineError(f"query raised {exc!r}") from exc
