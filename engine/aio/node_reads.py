"""engine.Node's reads: lease reads (Raft thesis §6.4.1) and ReadIndex reads (§6.4).

Split out of engine/aio/node.py; `_ReadsMixin` is a base class of engine.aio.node.Node and
its methods run on a Node (see that module's docstring for the loop-turn model: all reads
queued in a turn share one ReadIndex round).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.config import NodeConfig

if TYPE_CHECKING:
    from engine.aio.node import StateMachine

# A ReadIndex round not answered within this many ticks is retried with a new context.
_READ_RETRY_TICKS = 20
READ_MODES = ("linearizable", "lease", "stale")


class _PendingRead:
    __slots__ = ("query", "future", "deadline")

    def __init__(self, query: bytes, future: asyncio.Future[bytes], deadline: float) -> None:
        self.query = query
        self.future = future
        self.deadline = deadline


class _ReadsMixin:
    """Node's reads: the public read() in its three READ_MODES, the ReadIndex rounds (queued
    reads -> one round -> wait for apply -> answer), lease reads checked in ticks and on the
    loop clock (_note_core_tick, _lease_read_index), and read expiry (_expire_reads).

    Node attributes it uses (set in Node.__init__ / start): config, state_machine, counters,
    _core, _loop, _applied, _ticks; its own state: _read_queue, _read_rounds,
    _reads_waiting_apply, _read_seq, _tick_clock.
    """

    config: NodeConfig
    state_machine: StateMachine
    counters: dict[str, int]
    _core: Any
    _loop: asyncio.AbstractEventLoop | None
    _applied: int
    _ticks: int
    _read_queue: list[_PendingRead]
    _read_rounds: dict[bytes, tuple[list[_PendingRead], int]]
    _reads_waiting_apply: list[tuple[int, list[_PendingRead]]]
    _read_seq: int
    _tick_clock: deque[tuple[int, float]]

    if TYPE_CHECKING:  # defined by Node and the other mixins
        # Node (node.py)
        def _new_future(self, answer: Callable[[asyncio.Future[bytes]], None] | None
                        ) -> asyncio.Future[bytes]: ...
        # Node (node.py)
        def _check_running(self) -> None: ...
        # Node (node.py)
        def _schedule_turn(self) -> None: ...
        # _MembershipMixin
        def _refuse_witness_read(self) -> None: ...

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
        self._refuse_witness_read()
        if mode == "stale":
            self.counters["stale_reads"] = self.counters.get("stale_reads", 0) + 1
            return self._query_now(bytes(query))
        if mode != "lease":
            raise errors.ConfigError(f"read mode must be one of {READ_MODES}, got {mode!r}")
        lease_index = self._lease_read_index()
        if lease_index is None:
            return await self._enqueue_read(query, timeout)
        if lease_index <= self._applied:
            return self._query_now(bytes(query))
        assert self._loop is not None
        future: asyncio.Future[bytes] = self._loop.create_future()
        deadline = self._loop.time() + (timeout or self.config.request_timeout_s)
        self._reads_waiting_apply.append((lease_index, [_PendingRead(bytes(query), future,
                                                                     deadline)]))
        return await future

    def _enqueue_read(self, query: bytes, timeout: float | None,
                      answer: Callable[[asyncio.Future[bytes]], None] | None = None
                      ) -> asyncio.Future[bytes]:
        """Queue a read for this turn's shared ReadIndex round; the future is its answer."""
        self._check_running()
        self._refuse_witness_read()
        assert self._loop is not None
        future = self._new_future(answer)
        deadline = self._loop.time() + (timeout or self.config.request_timeout_s)
        self._read_queue.append(_PendingRead(bytes(query), future, deadline))
        self._schedule_turn()
        return future

    # ------------------------------------------------------------------ lease reads (§6.4.1)

    def _note_core_tick(self) -> None:
        ticks = getattr(self._core, "ticks", None)
        if ticks is not None and self._loop is not None:
            self._tick_clock.append((ticks, self._loop.time()))

    def _lease_read_index(self) -> int | None:
        """The leader's lease read index, if its lease holds in ticks AND in real time."""
        lease = getattr(self._core, "lease_read_index", None)
        result = lease() if lease is not None else None
        if result is None or self._loop is None:
            return None
        index, sent_tick = result
        # A lower bound of the real time the lease's heartbeat round was sent: when the core
        # had processed a tick at or before the one it was sent at (ticks can lag real time).
        sent_at = None
        for tick, at in reversed(self._tick_clock):
            if tick <= sent_tick:
                sent_at = at
                break
        if sent_at is None:
            return None
        timing = self.config.timing
        lease_ticks = timing.election_timeout_ticks - self._core.config.lease_drift_ticks_or_default
        if self._loop.time() - sent_at >= lease_ticks * timing.tick_ms / 1000.0:
            return None
        self.counters["lease_reads"] = self.counters.get("lease_reads", 0) + 1
        return int(index)

    def _query_now(self, query: bytes) -> bytes:
        try:
            return self.state_machine.query(query)
        except Exception as exc:
            raise errors.StateMachineError(f"query raised {exc!r}") from exc

    # ------------------------------------------------------------------ reads (Raft §6.4)

    def _start_read_round(self) -> None:
        reads, self._read_queue = self._read_queue, []
        reads = [r for r in reads if not r.future.done()]
        if not reads:
            return
        self._read_seq += 1
        context = self._read_seq.to_bytes(8, "little") + self.config.node_id.to_bytes(8, "little")
        try:
            self._core.read_index(context)
        except errors.NotLeader:
            # No leader known yet: keep them queued; _retry_reads re-tries every tick.
            self._read_queue.extend(reads)
            return
        self.counters["read_rounds"] += 1
        self._read_rounds[context] = (reads, self._ticks)

    def _retry_reads(self) -> None:
        if not self._read_rounds:
            return
        stale = [c for c, (_, sent) in self._read_rounds.items()
                 if self._ticks - sent >= _READ_RETRY_TICKS]
        for context in stale:
            reads, _ = self._read_rounds.pop(context)
            self._read_queue.extend(r for r in reads if not r.future.done())

    def _on_read_state(self, index: int, context: bytes) -> None:
        round_ = self._read_rounds.pop(context, None)
        if round_ is None:
            return
        reads = round_[0]
        if index == 0:  # the leader refused (e.g. no entry committed in its term yet): retry
            self._read_queue.extend(r for r in reads if not r.future.done())
            return
        if index <= self._applied:
            self._answer_reads(reads)
        else:
            self._reads_waiting_apply.append((index, reads))

    def _serve_applied_reads(self) -> None:
        ready: list[tuple[int, list[_PendingRead]]] = []
        waiting: list[tuple[int, list[_PendingRead]]] = []
        for index, reads in self._reads_waiting_apply:
            (ready if index <= self._applied else waiting).append((index, reads))
        self._reads_waiting_apply = waiting
        for _, reads in ready:
            self._answer_reads(reads)

    def _answer_reads(self, reads: list[_PendingRead]) -> None:
        for read in reads:
            if read.future.done():
                continue
            try:
                read.future.set_result(self.state_machine.query(read.query))
            except Exception as exc:
                read.future.set_exception(errors.StateMachineError(f"query raised {exc!r}"))
            self.counters["reads"] += 1

    def _expire_reads(self, now: float) -> None:
        def expire(reads: list[_PendingRead]) -> list[_PendingRead]:
            alive = []
            for read in reads:
                if read.future.done():
                    continue
                if read.deadline <= now:
                    read.future.set_exception(errors.Timeout("read not served in time"))
                else:
                    alive.append(read)
            return alive

        self._read_queue = expire(self._read_queue)
        for context, (reads, sent) in list(self._read_rounds.items()):
            alive = expire(reads)
            if alive:
                self._read_rounds[context] = (alive, sent)
            else:
                del self._read_rounds[context]
        self._reads_waiting_apply = [
            (index, alive) for index, reads in self._reads_waiting_apply
            if (alive := expire(reads))
        ]
