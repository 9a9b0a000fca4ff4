"""engine.Node's snapshots (Raft §7; the Paxos core offers the same compact()/log surface).

Split out of engine/aio/node.py; `_SnapshotsMixin` is a base class of engine.aio.node.Node and
its methods run on a Node. The flow (taking, writing off the loop, WAL compaction, installing
a leader's snapshot, restoring at start) is described in that module's docstring,
"Snapshots".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.config import NodeConfig
from engine.logs import log_event
from engine.types import Ready, Snapshot

if TYPE_CHECKING:
    from engine.aio.node import StateMachine

logger = logging.getLogger("engine.node")


def _state_machine_fork(state_machine: Any) -> Callable[[], bytes] | None:
    """Freeze the state now; return a function that serialises the frozen copy (to run on
    another thread while apply continues), or None if the state machine offers no
    `snapshot_fork()` (then the driver calls snapshot() on the loop)."""
    fork = getattr(state_machine, "snapshot_fork", None)
    if fork is None:
        return None
    serialize: Callable[[], bytes] = fork()
    return serialize


class _SnapshotsMixin:
    """Node's snapshots: take_snapshot() and the size/entry thresholds (_maybe_snapshot),
    serialising and writing on the snapshot thread (_start_snapshot, _write_snapshot), WAL
    compaction on the storage thread (_on_snapshot_written, _wal_job, _snapshot_done),
    installing a leader's snapshot (_persist_snapshot_ready) and restoring at start
    (_restore_from).

    Node attributes it uses (set in Node.__init__ / start): config, state_machine, _core,
    _loop, _running, _storage, _storage_executor, _persisting, _applied, _proposals, _witness;
    its own state: _snapshot_policy, _since_snapshot_entries, _since_snapshot_bytes,
    _snapshotting, _compaction_due, _snapshot_executor, snapshot_stats.
    """

    config: NodeConfig
    state_machine: StateMachine
    _core: Any
    _loop: asyncio.AbstractEventLoop | None
    _running: bool
    _storage: Any
    _storage_executor: ThreadPoolExecutor | None
    _persisting: int
    _applied: int
    _proposals: dict[int, tuple[int, asyncio.Future[bytes], float]]
    _witness: bool
    _snapshot_policy: bool
    _since_snapshot_entries: int
    _since_snapshot_bytes: int
    _snapshotting: bool
    _compaction_due: tuple[Snapshot, int] | None
    _snapshot_executor: ThreadPoolExecutor | None
    snapshot_stats: dict[str, float]

    if TYPE_CHECKING:  # defined by Node and the other mixins
        # Node (node.py)
        def _check_running(self) -> None: ...
        # Node (node.py)
        def _schedule_turn(self) -> None: ...
        # Node (node.py)
        def _handle_ready(self, ready: Ready) -> None: ...
        # _MembershipMixin
        def _configuration_at(self, index: int) -> bytes: ...
        # _MembershipMixin
        def _snapshot_is_witness_own(self, snapshot: Any) -> bool: ...
        # Node (node.py)
        def _die(self, exc: BaseException) -> None: ...

    # ------------------------------------------------------------------ public API: snapshot

    def take_snapshot(self) -> bool:
        """Snapshot the state machine now (Raft); False if one is already being taken or
        nothing new was applied. Normally the NodeConfig thresholds trigger it."""
        self._check_running()
        return self._start_snapshot()

    # ------------------------------------------------------------------ snapshots (Raft §7)

    async def _restore_from(self, recovered: Any) -> int:
        """Restore the state machine from the recovered snapshot; returns its index."""
        snapshot = getattr(recovered, "snapshot", None)
        if snapshot is None:
            return 0
        if self._witness or self._snapshot_is_witness_own(snapshot):
            self._witness = True
            return int(snapshot.index)  # a witness restores no state machine data
        assert self._loop is not None
        await self._loop.run_in_executor(None, self.state_machine.restore, snapshot.data)
        return int(snapshot.index)

    def _maybe_snapshot(self, entries: list[Any]) -> None:
        if self._compaction_due is not None and self._core.applied_index >= (
                self._compaction_due[0].index):
            snapshot, floor = self._compaction_due
            self._compaction_due = None
            self._snapshot_done(snapshot, floor)
        if not entries:
            return
        self._since_snapshot_entries += len(entries)
        self._since_snapshot_bytes += (len(entries[0].data) if len(entries) == 1
                                       else sum(len(entry.data) for entry in entries))
        config = self.config
        if (
            self._since_snapshot_entries >= config.snapshot_entries
            or self._since_snapshot_bytes >= config.snapshot_bytes
        ):
            self._start_snapshot()

    def _start_snapshot(self) -> bool:
        core = self._core
        index = self._applied
        if (
            self._snapshotting or not self._snapshot_policy or index <= core.snapshot_index
            or index < core.log.first_index - 1
        ):
            return False
        term = core.log.term(index)
        started = time.perf_counter()
        # A witness has no state machine data: its snapshots carry none (thesis §4 witness).
        serialize = None if self._witness else _state_machine_fork(self.state_machine)
        data = self.state_machine.snapshot() if serialize is None and not self._witness else b""
        # Raft Figure 13 "last config": the snapshot carries the configuration at its index,
        # so a restart from it (or a follower installing it) keeps the membership.
        configuration = self._configuration_at(index)
        pause_ms = (time.perf_counter() - started) * 1000.0
        stats = self.snapshot_stats
        stats["last_pause_ms"] = pause_ms
        stats["max_pause_ms"] = max(stats["max_pause_ms"], pause_ms)
        self._since_snapshot_entries = self._since_snapshot_bytes = 0
        self._snapshotting = True
        # Keep snapshot_trailing_entries below the snapshot for followers slightly behind;
        # never compact past what this node's log has persisted.
        floor = min(index - self.config.snapshot_trailing_entries, core.log.persisted_index)
        floor = max(floor, core.log.first_index - 1)
        floor_term = core.log.term(floor)
        write = self._write_snapshot
        assert self._loop is not None
        # Serialising and checksumming take ~1 s per 500k keys: always off the loop, also
        # for data_dir=None (regression: test_in_memory_snapshot_is_serialised_off_the_event_loop).
        if self._snapshot_executor is None:
            self._snapshot_executor = ThreadPoolExecutor(1, thread_name_prefix="engine-snap")
        written = self._loop.run_in_executor(
            self._snapshot_executor, write, index, term, data, serialize, configuration
        )
        written.add_done_callback(lambda f: self._on_snapshot_written(f, floor, floor_term))
        return True

    def _write_snapshot(self, index: int, term: int, data: bytes,
                        serialize: Callable[[], bytes] | None,
                        configuration: bytes = b"") -> Snapshot:
        """On the snapshot thread: serialise (if forked), checksum, write durably."""
        from engine.replication.snapshot import encode_snapshot

        started = time.perf_counter()
        if serialize is not None:
            data = serialize()
        snapshot = Snapshot(index, term, data, configuration=configuration)
        envelope = encode_snapshot(snapshot)
        self._storage.save_snapshot(snapshot, envelope)
        self.snapshot_stats["last_write_s"] = time.perf_counter() - started
        self.snapshot_stats["last_bytes"] = len(envelope)
        # The core only needs the envelope (to send to followers), not a second copy.
        return Snapshot(index, term, b"", envelope, configuration=configuration)

    def _on_snapshot_written(self, written: asyncio.Future[Snapshot], floor: int,
                             floor_term: int) -> None:
        if written.cancelled() or written.exception() is not None:
            self._die(written.exception() or errors.StorageError("snapshot write cancelled"))
            return
        if not self._running:
            return
        snapshot = written.result()
        if self._storage_executor is None:   # in memory: compaction is a list slice
            self._storage.compact(floor, floor_term)
            self._snapshot_done(snapshot, floor)
            return
        self._wal_job(lambda: self._storage.compact(floor, floor_term),
                      lambda: self._snapshot_done(snapshot, floor), "WAL compaction")

    def _snapshot_done(self, snapshot: Snapshot, floor: int) -> None:
        if self._core.applied_index < snapshot.index:
            # The state machine applies before the core hears of it (advance() follows the
            # fsync): compact once the core caught up, in _maybe_snapshot.
            self._compaction_due = (snapshot, floor)
            return
        self._snapshotting = False
        stats = self.snapshot_stats
        stats["taken"] += 1
        self._core.compact(snapshot, compact_to=floor)
        log_event(logger, "snapshot_taken",
                  f"node {self.config.node_id}: snapshot at index {snapshot.index}",
                  node_id=self.config.node_id, index=snapshot.index, term=snapshot.term,
                  bytes=int(stats["last_bytes"]), write_s=round(stats["last_write_s"], 6),
                  pause_ms=round(stats["last_pause_ms"], 3), log_floor=floor)

    def _persist_snapshot_ready(self, ready: Ready) -> None:
        """A snapshot from the leader: write it, compact the WAL at it and restore the state
        machine from it (all on the WAL thread), then handle the rest of the Ready."""
        snapshot = ready.snapshot
        assert snapshot is not None

        def install() -> None:
            from engine.replication.snapshot import encode_snapshot

            envelope = snapshot.envelope or encode_snapshot(snapshot)
            self._storage.save_snapshot(snapshot, envelope)
            self._storage.compact(snapshot.index, snapshot.term)
            if not self._witness:  # a witness's snapshots carry no state machine data
                self.state_machine.restore(snapshot.data)

        def finish() -> None:
            self._applied = snapshot.index
            self.snapshot_stats["installed"] += 1
            log_event(logger, "snapshot_installed",
                      f"node {self.config.node_id}: installed the leader's snapshot at index "
                      f"{snapshot.index}", node_id=self.config.node_id, index=snapshot.index,
                      term=snapshot.term, bytes=len(snapshot.envelope))
            self._since_snapshot_entries = self._since_snapshot_bytes = 0
            for index in [i for i in self._proposals if i <= snapshot.index]:
                _, future, _ = self._proposals.pop(index)
                if not future.done():
                    future.set_exception(errors.OutcomeUnknown(
                        f"entry {index} was covered by a snapshot from the leader: outcome "
                        "unknown here"))
            ready.snapshot = None
            ready.messages = []   # already sent
            self._handle_ready(ready)

        if self._storage_executor is None:
            install()
            finish()
            return
        self._wal_job(install, finish, "snapshot install")

    def _wal_job(self, job: Callable[[], object], on_done: Callable[[], None],
                 what: str) -> None:
        """Run a long WAL job (snapshot install, compaction) on the storage thread. Turns wait
        until it is done, so the loop thread never touches the WAL at the same time."""
        assert self._loop is not None and self._storage_executor is not None
        self._persisting += 1
        future = self._loop.run_in_executor(self._storage_executor, job)

        def finished(done: asyncio.Future[object]) -> None:
            self._persisting -= 1
            if done.cancelled() or done.exception() is not None:
                self._die(done.exception() or errors.StorageError(f"{what} cancelled"))
                return
            if self._running:
                on_done()
                self._schedule_turn()

        future.add_done_callback(finished)
