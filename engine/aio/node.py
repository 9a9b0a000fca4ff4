"""engine.Node: the asyncio shell around engine.driver.Driver (DESIGN.md §1).

The driver (engine/driver.py) owns the turn and its order: inputs queued during a loop turn
are handed to the core in bulk (every message stepped, ONE propose(batch), ONE ReadIndex
round), then the Ready is handled — `messages` sent, a leader's snapshot installed, committed
entries applied early when the Ready holds no acks for new entries (a leader's), entries and
hard state saved with one sync when `ready.must_sync`, then `messages_after_persist`, the late
apply (a follower's), reads, `advance`, the snapshot policy. Its module docstring holds the
rules for outcomes (Superseded, Timeout, engine.errors.unfinished) and forwarding. The
simulator runs the same driver, so what the swarm checks is this order.

Node is the driver's I/O: the UDP transport (engine.aio.udp), the WAL (engine.aio.wal, written
on the loop thread: the thread hop costs more than the fdatasync, docs/performance.md "WAL
write on the loop thread"), the loop's timers (ticks) and call_soon (turns), thread pools for
storage jobs (snapshot install, WAL compaction; turns wait meanwhile) and for serialising
snapshots, metrics, and serving remote clients and ADMIN operations. A state machine that
offers `snapshot_fork() -> Callable[[], bytes]` (freeze now, serialise later) is serialised
on the snapshot thread while apply continues; otherwise `snapshot()` runs on the loop. At
start the newest snapshot restores the state machine and the WAL replays the log after it.

A proposal on a follower is forwarded to the leader (CLIENT_REQUEST) and the answer relayed;
with no known leader it waits (up to the timeout) for one. When another leader appears while
forwarded proposals are unanswered, a command the state machine calls retry-safe
(`retry_safe(command)`: KVStore's commands in a session, Raft thesis §6.3) is sent again to
the new leader; any other fails at once with OutcomeUnknown (see Node.propose).

Modules: this file holds Node's lifecycle, public API, metrics endpoint and the I/O the
driver runs on. Its parts are components (engine.aio.node_component.NodeComponent) that own
their state: membership (node_membership.NodeMembership, node._members), serving clients and
ADMIN ops (node_serving.NodeServing, node._serving), leadership events
(node_events.LeaderEvents, node._events), the read modes (node_reads.NodeReads, node._reads)
and snapshots at start and on demand (node_snapshots.NodeSnapshots, node._snapshots); the
turn, proposals, pending reads and snapshot policy are the driver's state (node.driver).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from engine import __version__, errors
from engine._core import IMPLEMENTATION
from engine.aio.node_events import LeaderCallback, LeaderEvents
from engine.aio.node_leases import NodeLeases
from engine.aio.node_membership import _MEMBERSHIP_ADMIN_OPS as _MEMBERSHIP_ADMIN_OPS
from engine.aio.node_membership import _REMOVAL_NOTICES as _REMOVAL_NOTICES
from engine.aio.node_membership import NodeMembership
from engine.aio.node_membership import _error_payload as _error_payload
from engine.aio.node_reads import _READ_RETRY_TICKS as _READ_RETRY_TICKS
from engine.aio.node_reads import READ_MODES as READ_MODES
from engine.aio.node_reads import NodeReads
from engine.aio.node_reads import _PendingRead as _PendingRead
from engine.aio.node_serving import NodeServing
from engine.aio.node_snapshots import NodeSnapshots
from engine.aio.node_snapshots import _state_machine_fork as _state_machine_fork
from engine.config import NodeConfig
from engine.core import capabilities
from engine.driver import Driver, InlineJobs
from engine.messages import Message, MessageType
from engine.types import Snapshot
from engine.types import StateMachine as StateMachine

if TYPE_CHECKING:
    from engine.aio.metrics import NodeMetrics
    from engine.aio.node_host import HostedGroup

# The `X as X` imports above keep these names importable from here (engine.aio.client
# imports READ_MODES; tests and tools the others).

logger = logging.getLogger("engine.node")

_CLIENT_REQUEST = int(MessageType.CLIENT_REQUEST)   # compared once per received message
_CLIENT_RESPONSE = int(MessageType.CLIENT_RESPONSE)
_ADMIN = int(MessageType.ADMIN)


class _AnsweringFuture(asyncio.Future):  # type: ignore[type-arg]
    """The outcome of a remote client's request: answers the client the moment it settles.

    A plain future's done-callbacks run one loop turn later, after the rest of the turn that
    settled it (the commit broadcast to the followers, the commit-index write), a delay on
    every remote write's path (docs/performance.md, "Reply path"). Here the reply is queued
    synchronously, ahead of the turn's other datagrams.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 answer: Callable[[asyncio.Future[bytes]], None]) -> None:
        super().__init__(loop=loop)
        self._answer = answer
        self._observers: list[Callable[[asyncio.Future[bytes]], None]] = []

    def observe(self, observer: Callable[[asyncio.Future[bytes]], None]) -> None:
        """Call observer(self) right after the answer went out (the latency profiler's
        "answered" milestone; a done-callback would run a loop turn later)."""
        self._observers.append(observer)

    def _settled(self) -> None:
        self._answer(self)
        for observer in self._observers:
            observer(self)

    def set_result(self, result: Any) -> None:
        super().set_result(result)
        self._settled()

    def set_exception(self, exception: Any) -> None:
        super().set_exception(exception)
        self._settled()

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        self._settled()
        return True


def _recovered_core_state(recovered: Any, applied: int, what: str) -> dict[str, Any]:
    """The constructor keywords both cores take to restart from storage: hard state, the log
    after the snapshot, the snapshot and where the log starts. A log trimmed with no snapshot
    covering the trimmed part cannot restart (StorageError)."""
    snapshot = getattr(recovered, "snapshot", None)
    floor = getattr(recovered, "snapshot_index", 0)
    if floor and snapshot is None:
        raise errors.StorageError(f"the {what} are trimmed through {floor} but no snapshot "
                                  "covers them")
    return {"hard_state": recovered.hard_state, "entries": recovered.entries,
            "applied": applied, "snapshot": snapshot,
            "log_start": (floor, getattr(recovered, "snapshot_term", 0))}


def _make_core(config: NodeConfig, recovered: Any, applied: int = 0) -> Any:
    """The protocol core for config.protocol; the driver is the same for every protocol."""
    seed = config.seed if config.seed is not None else (config.node_id ^ time.time_ns())
    voters = tuple(sorted(config.members))
    if config.protocol == "raft":
        from engine.raft.core import RaftConfig, RaftCore

        # The bootstrap membership (the configuration at index 0, thesis §4.1); the log's
        # CONFIG entries and a snapshot's configuration supersede it.
        learners = config.bootstrap_learners()
        raft_config = RaftConfig(
            node_id=config.node_id, voters=tuple(v for v in voters if v not in learners),
            timing=config.timing, limits=config.limits,
            pre_vote=config.pre_vote, check_quorum=config.check_quorum,
            check_invariants=config.check_invariants, seed=seed,
            lease_read=config.check_quorum, lease_drift_ticks=config.lease_drift_ticks,
            quiesce=config.quiesce,
            learners=learners, witnesses=config.bootstrap_witnesses(),
            addresses=tuple(sorted(config.members.items())),
        )
        return RaftCore(raft_config, **_recovered_core_state(recovered, applied, "log entries"))
    if config.protocol == "paxos":
        from engine.paxos import PaxosConfig, PaxosCore

        paxos_config = PaxosConfig(
            node_id=config.node_id, voters=voters, timing=config.timing, limits=config.limits,
            check_invariants=config.check_invariants, seed=seed,
            phase1_quorum=config.phase1_quorum, phase2_quorum=config.phase2_quorum,
        )
        return PaxosCore(paxos_config, **_recovered_core_state(recovered, applied, "slots"))
    raise errors.ConfigError(f"unknown protocol {config.protocol!r}")


def _open_storage(config: NodeConfig) -> Any:
    if config.data_dir is None:
        from engine.aio.memory_storage import MemoryStorage

        return MemoryStorage()
    from engine.aio.wal import WriteAheadLog, make_directory_durably

    if config.fsync:
        make_directory_durably(config.data_dir)   # the directory's entry survives a crash
    else:
        os.makedirs(config.data_dir, exist_ok=True)
    return WriteAheadLog(config.data_dir, fsync=config.fsync)


def next_tick_at(previous: float, tick_s: float, now: float) -> float:
    """The next tick's loop time: one interval after the previous, or one after now if the
    loop stalled more than ten ticks (a stalled loop does not burst-tick to catch up)."""
    at = previous + tick_s
    return now + tick_s if at < now - 10 * tick_s else at


class _ThreadJobs:
    """engine.driver.JobRunner on one worker thread; `done` runs back on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._name = name
        self.executor: ThreadPoolExecutor | None = None

    def run(self, job: Callable[[], Any],
            done: Callable[[Any, BaseException | None], None]) -> None:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix=self._name)
        future = self._loop.run_in_executor(self.executor, job)

        def finished(result: asyncio.Future[Any]) -> None:
            if result.cancelled():
                done(None, errors.StorageError(f"{self._name} job cancelled"))
                return
            error = result.exception()
            done(None if error is not None else result.result(), error)

        future.add_done_callback(finished)

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)


class _StoragePort:
    """engine.driver.Storage over a WriteAheadLog or MemoryStorage: `save` is the storage's
    own bound method (no indirection per write); an install writes the snapshot file, then
    compacts the log at it (Raft Figure 13 steps 6-7)."""

    def __init__(self, storage: Any) -> None:
        self.save = storage.save
        self.save_snapshot = storage.save_snapshot
        self.compact = storage.compact

    def install_snapshot(self, snapshot: Snapshot, envelope: bytes) -> None:
        self.save_snapshot(snapshot, envelope)
        self.compact(snapshot.index, snapshot.term)


class _MembershipPort:
    """engine.driver.Membership for a Raft node: the transport follows the configuration
    (thesis §4.1), a removal is noticed as the batch committing it is applied (§4.2.3)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def follow(self) -> None:
        node = self._node
        if node._driver.core.membership is not node._members.seen:
            node._follow_membership()

    def config_committed(self, entry: Any) -> None:
        self._node._members.on_config_committed(entry)

    def after_apply(self) -> None:
        members = self._node._members
        if members.removal_due:
            members.go_quiet(members.removal_due)

    def configuration_at(self, index: int) -> bytes:
        return self._node._members.configuration_at(index)


class Node:
    """One member of a replicated state machine (see the module docstring).

    `async with engine.Node(config, state_machine=...) as node:` starts it and stops it.
    """

    def __init__(
        self, config: NodeConfig, state_machine: StateMachine | None = None, *,
        storage: Any = None, clock_ns: Callable[[], int] | None = None,
        _hosted: HostedGroup | None = None,
    ) -> None:
        if state_machine is None:
            from engine.kv import KVStore

            state_machine = KVStore(config.limits)
        self.config = config
        self.state_machine = state_machine
        # The wall clock of the boot epoch (injectable for tests; engine.aio.udp.wall_clock_ns).
        self._clock_ns = clock_ns
        self._storage = storage
        self._transport: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._next_tick_at = 0.0
        self._tick_scale = 1.0   # clock-rate skew, fault injection only (ADMIN SET_FAULTS)
        self._storage_jobs: _ThreadJobs | None = None
        self._snapshot_jobs: _ThreadJobs | None = None
        self._fatal: BaseException | None = None
        # Prometheus metrics (engine.aio.metrics), with NodeConfig.metrics_addr: sampled once
        # per turn, never per write.
        self._metrics: NodeMetrics | None = None
        # One group of a NodeHost (engine.aio.node_host): the host's socket, WAL, timer and
        # turn instead of this node's own.
        self._hosted = _hosted
        self._driver = Driver(
            config.node_id, state_machine, clock=self._now,
            call_soon=self._call_soon if _hosted is None else _hosted.call_soon,
            request_timeout_s=config.request_timeout_s,
            max_entry_bytes=config.limits.max_entry_bytes,
            max_pending_proposals=config.limits.max_pending_proposals,
            snapshot_entries=config.snapshot_entries, snapshot_bytes=config.snapshot_bytes,
            snapshot_trailing_entries=config.snapshot_trailing_entries, die=self._die,
        )
        self._driver.witness = config.node_id in config.bootstrap_witnesses()
        # Leadership events (node_events.py), a component with its own state.
        self._events = LeaderEvents(config.node_id, self._driver)
        self._driver.on_leadership = self._events.note
        # Membership (Raft thesis §4), a component with its own state (node_membership.py).
        self._members = NodeMembership(self)
        # Serving remote clients and ADMIN ops (node_serving.py).
        self._serving = NodeServing(self)
        # The read modes (node_reads.py) and snapshots at start and on demand
        # (node_snapshots.py): components over the driver's state.
        self._reads = NodeReads(self)
        self._snapshots = NodeSnapshots(self)
        # The leader's lease clock over a KVStore's leases (node_leases.py).
        self._leases = NodeLeases(self)

    # The driver's state under the names Node's parts (and tests) use.
    @property
    def _core(self) -> Any:
        return self._driver.core

    @property
    def counters(self) -> dict[str, int]:
        return self._driver.counters

    @property
    def snapshot_stats(self) -> dict[str, float]:
        return self._driver.snapshot_stats

    @property
    def _applied(self) -> int:
        return self._driver.applied

    @property
    def _ticks(self) -> int:
        return self._driver.ticks

    @property
    def _running(self) -> bool:
        return self._driver.running

    @property
    def _persisting(self) -> int:
        return self._driver.persisting

    @property
    def _snapshotting(self) -> bool:
        return self._driver.snapshotting

    @property
    def _witness(self) -> bool:
        return self._driver.witness

    @_witness.setter
    def _witness(self, value: bool) -> None:
        self._driver.witness = value

    @property
    def _proposals(self) -> dict[int, tuple[int, asyncio.Future[bytes], float]]:
        return self._driver.proposals

    @property
    def _forwarded(self) -> dict[int, tuple[bytes, asyncio.Future[bytes], float]]:
        return self._driver.forwarded

    @property
    def _sent_before(self) -> set[Any]:
        return self._driver.sent_before

    def _now(self) -> float:
        loop = self._loop
        return loop.time() if loop is not None else 0.0

    def _call_soon(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            self._driver.turn_scheduled = False
            return
        loop.call_soon(callback)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Recover from storage, bind the UDP socket and start ticking."""
        from engine.aio.identity import open_identity, store_cluster_id
        from engine.aio.udp import UdpTransport, wall_clock_ns

        if self._driver.running:
            raise errors.EngineError("node already started")
        self._loop = loop = asyncio.get_running_loop()
        if self._hosted is not None:
            await self._start_hosted(self._hosted)
            return
        if self._storage is None:
            self._storage = _open_storage(self.config)
        recovered = await loop.run_in_executor(None, self._storage.open)
        try:
            applied = await self._snapshots.restore_from(recovered)
            core = _make_core(self.config, recovered, applied)
            self._driver.core = core   # the membership helpers below read it
            # What the core offers beyond engine.core.Core, resolved once (engine.core).
            membership = capabilities(core).membership
            self._members.track = membership is not None
            # Raft: the peers of the recovered configuration (thesis §4.1), not only the
            # bootstrap members; later configurations are followed as Readies go out.
            peers = self._members.member_peers()
            # Cluster id and boot epoch, stored durably before the socket binds (identity.py).
            identity = await loop.run_in_executor(
                None, open_identity, self.config, self._clock_ns or wall_clock_ns)
            self._transport = UdpTransport(
                self.config.node_id,
                self.config.listen or self.config.address_of(self.config.node_id),
                peers,
                self.config.cluster_key,
                cluster_id=identity.cluster_id,
                limits=self.config.limits,
                epoch=identity.epoch,
                on_messages=self._on_messages,
                min_client_epoch=identity.min_client_epoch,
                on_cluster_id=lambda cluster_id: store_cluster_id(self.config, cluster_id),
                encrypt_payloads=self.config.encrypt_payloads,
            )
            await self._transport.start()
        except BaseException:
            # A start that fails after the WAL opened (a corrupt snapshot, an address in use)
            # releases it: the data directory stays free for the next attempt.
            self._driver.core = None
            self._storage.close()
            raise
        storage_jobs: Any = InlineJobs()   # in memory: compaction is a list slice
        if self.config.data_dir is not None:
            storage_jobs = self._storage_jobs = _ThreadJobs(loop, "engine-wal")
        # Serialising and checksumming take ~1 s per 500k keys: always off the loop, also for
        # data_dir=None (test_in_memory_snapshot_is_serialised_off_the_event_loop).
        self._snapshot_jobs = _ThreadJobs(loop, "engine-snap")
        self._driver.start(
            core, self._transport, _StoragePort(self._storage), applied=applied,
            storage_jobs=storage_jobs, snapshot_jobs=self._snapshot_jobs,
            membership=_MembershipPort(self) if self._members.track else None,
            lease_window=4 * self.config.timing.election_timeout_ticks,
        )
        self._members.seen = membership.membership if membership is not None else None
        self._events.seen_term, self._events.seen_leader = core.term, core.leader_id
        self._members.check_removed_at_start()
        if self.config.metrics_addr is not None:
            await self._serve_metrics(self.config.metrics_addr)
            self._driver.metrics = self._metrics
        # The loop's own method, not a wrapper: the driver reads it once per write.
        self._driver.clock = loop.time
        self._next_tick_at = loop.time()
        self._schedule_tick()
        self._driver.schedule_turn()

    async def _start_hosted(self, hosted: HostedGroup) -> None:
        """Start as one group of a NodeHost: its recovered state from the host's WAL, the
        host's transport, its batch for saves, its threads and its tick."""
        recovered = hosted.recovered
        applied = await self._snapshots.restore_from(recovered)
        core = _make_core(self.config, recovered, applied)
        self._driver.core = core
        membership = capabilities(core).membership
        self._members.track = membership is not None
        self._transport = hosted.transport
        self._storage = hosted.storage
        hosted.start(self, core, applied=applied,
                     membership=_MembershipPort(self) if self._members.track else None,
                     lease_window=4 * self.config.timing.election_timeout_ticks)
        self._members.seen = membership.membership if membership is not None else None
        self._events.seen_term, self._events.seen_leader = core.term, core.leader_id
        self._members.check_removed_at_start()
        assert self._loop is not None
        self._driver.clock = self._loop.time

    async def stop(self) -> None:
        """Graceful stop: stop ticking, fail pending requests with Stopped, close sockets."""
        if not self._driver.running:
            return
        if self._hosted is not None:
            self._hosted.stop(self)
            self._driver.fail_everything(errors.Stopped("node stopped"))
            return
        # Let an in-flight storage job finish so what it acknowledged is really on disk.
        while self._driver.persisting and self._fatal is None:
            await asyncio.sleep(0.001)
        self._driver.stop()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._driver.fail_everything(errors.Stopped("node stopped"))
        self._close_metrics()
        self._transport.close()
        for jobs in (self._storage_jobs, self._snapshot_jobs):
            if jobs is not None:
                jobs.shutdown()
        self._storage.close()

    def crash(self) -> None:
        """Stop at once as a crash would (tests): no waiting, unsynced writes are lost."""
        if self._hosted is not None:
            # One group cannot crash alone: its host's process (socket, WAL) goes with it.
            self._hosted.crash()
            return
        self._driver.stop()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._driver.fail_everything(errors.Stopped("node crashed"))
        self._close_metrics()
        if self._transport is not None:
            self._transport.close()
        if self._storage_jobs is not None:
            # The write in flight ends first (a killed process's write does too, or never
            # starts): nothing of this incarnation touches the log once a restart opens it.
            self._storage_jobs.shutdown()
        abandon = getattr(self._storage, "abandon", None)
        if abandon is not None:
            abandon()   # file closed unsynced, data directory released, as at a process exit

    def attach_profiler(self, profiler: Any) -> None:
        """Report each proposal's stage timestamps to `profiler` (engine.profiling, an
        engine.driver.Hooks); None detaches. Benchmarks only: it costs time per proposal."""
        self._driver.hooks = profiler

    @property
    def _profiler(self) -> Any:
        return self._driver.hooks

    @property
    def running(self) -> bool:
        return self._driver.running

    @property
    def node_id(self) -> int:
        return self.config.node_id

    @property
    def transport(self) -> Any:
        return self._transport

    @property
    def core(self) -> Any:
        return self._driver.core

    @property
    def driver(self) -> Driver:
        return self._driver

    # ------------------------------------------------------------------ public API

    async def propose(self, command: bytes, *, timeout: float | None = None) -> bytes:
        """Replicate `command`; return the state machine's result once it is applied here.

        Raises EntryTooLarge / Overloaded / Rejected / Superseded (definitely not applied:
        it never entered a log, or another entry committed at its index), NotLeader (no
        leader appeared in time: never sent anywhere), Timeout and OutcomeUnknown (unknown:
        it entered a log or was forwarded, it may still apply), Stopped (never left this
        node; StoppedOutcomeUnknown if it had), StateMachineError.

        On a follower the command is forwarded to the leader (waiting for one to be known).
        If another leader appears before the answer, the old one may have appended it, so:
        a command the state machine calls retry-safe (`state_machine.retry_safe(command)`;
        KVStore: a command in a session, whose seq makes a second copy answer from the
        session's cache, Raft thesis §6.3) is sent again to the new leader and the call
        completes shortly after the election; any other command fails at once with
        OutcomeUnknown (re-sending it could apply it twice). A session command answered
        SESSION_EXPIRED after such a re-send may have applied through its first copy.
        """
        return await self.submit(command, timeout=timeout)

    async def transfer_leadership(self, target: int, *, timeout: float | None = None) -> None:
        """Hand leadership to `target` (Raft thesis §3.10); returns once `target` leads.

        This node must be the leader. Meanwhile new proposals wait on this node (neither lost
        nor failed: once the target leads they are forwarded to it; if the transfer is
        abandoned they are proposed here). The target is caught up first, then told to
        campaign at once (TIMEOUT_NOW). Raises NotLeader (not the leader), ConfigError (not a
        member, or a protocol without transfers), Rejected (abandoned after an election
        timeout, or another node won) or Timeout.
        """
        self._check_running()
        core = self._driver.core
        transfer = self._driver.caps.transfer
        if transfer is None:
            raise errors.ConfigError("leadership transfer needs protocol='raft'")
        transfer.transfer_leadership(target)
        self._driver.schedule_turn()
        if target == self.config.node_id:
            return
        assert self._loop is not None
        timing = self.config.timing
        tick_s = timing.tick_ms / 1000.0
        deadline = self._loop.time() + (timeout or 4 * timing.election_timeout_ticks * tick_s)
        while True:
            await asyncio.sleep(tick_s)
            self._check_running()
            if str(core.role) != "leader":
                if core.leader_id == target:
                    return
                if core.leader_id:
                    raise errors.Rejected(f"node {core.leader_id} became leader, not {target}")
            elif not transfer.lead_transferee:
                raise errors.Rejected(
                    f"transfer to {target} abandoned after an election timeout; still leader"
                )
            if self._loop.time() > deadline:
                raise errors.Timeout(f"leadership transfer to {target} not complete in time")

    def _new_future(self, answer: Callable[[asyncio.Future[bytes]], None] | None
                    ) -> asyncio.Future[bytes]:
        assert self._loop is not None
        if answer is None:
            return self._loop.create_future()
        return _AnsweringFuture(self._loop, answer)

    def submit(self, command: bytes, *, timeout: float | None = None,
               _answer: Callable[[asyncio.Future[bytes]], None] | None = None
               ) -> asyncio.Future[bytes]:
        """Queue `command` now and return the future of its outcome: what `await propose()`
        would return or raise, without a coroutine per write (await it, gather it or give it
        a done-callback; for callers that keep many writes outstanding).

        What propose refuses before queueing (Stopped, MembershipError, EntryTooLarge,
        Overloaded) is raised here, by the call itself. (`_answer`, for a remote client's
        write, is called with the future the moment it settles.)
        """
        # The library's per-write hot path (docs/performance.md, where the time goes).
        if self._fatal is not None or not self._driver.running or self._members.removed:
            self._check_running()
        loop = self._loop
        assert loop is not None
        future = loop.create_future() if _answer is None else _AnsweringFuture(loop, _answer)
        if type(command) is not bytes:
            command = bytes(command)
        self._driver.submit(command, future, timeout)
        return future

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
        return await self._reads.read(query, mode, timeout)

    def _enqueue_read(self, query: bytes, timeout: float | None,
                      answer: Callable[[asyncio.Future[bytes]], None] | None = None
                      ) -> asyncio.Future[bytes]:
        """Queue a read for this turn's ReadIndex round (a remote client's, node_serving)."""
        return self._reads.enqueue(query, timeout, answer)

    def take_snapshot(self) -> bool:
        """Snapshot the state machine now; False if one is already being taken or nothing
        new was applied. Normally the NodeConfig thresholds trigger it."""
        return self._snapshots.take()

    def campaign(self) -> None:
        """Start an election now (benchmarks, demos); the core decides the rest."""
        self._check_running()
        self._driver.core.campaign()
        self._driver.schedule_turn()

    @property
    def fatal_error(self) -> BaseException | None:
        """The error that stopped this node (a failed WAL write, ...), None while healthy."""
        return self._fatal

    def status(self) -> dict[str, Any]:
        driver = self._driver
        status: dict[str, Any] = {
            "node_id": self.config.node_id,
            "protocol": self.config.protocol,
            "address": self.config.members[self.config.node_id],
            "running": driver.running,
            "applied_index": driver.applied,
            "pending_proposals": len(driver.proposals) + len(driver.proposal_queue),
            "durable": self.config.data_dir is not None and self.config.fsync,
            "version": __version__,
            "core_implementation": IMPLEMENTATION,   # "cython", or "python" (the pure twins)
        }
        if driver.core is not None:
            core_status = dict(driver.core.status())
            core_status.pop("applied_index", None)
            status.update(core_status)
        members = self._members
        if members.track:
            # Thesis §4.2.3: a removed node goes quiet; say so (and why) instead of hiding.
            status["removed"] = bool(members.removed)
            if members.removed:
                status["removed_reason"] = members.removed
        status["counters"] = dict(driver.counters)
        if self._transport is not None:
            status["transport"] = self._transport.stats()
        return status

    # ------------------------------------------------------------------ membership (§4)

    # ------------------------------------------------------------------ observability

    @property
    def metrics(self) -> NodeMetrics | None:
        """This node's metrics (None unless NodeConfig.metrics_addr is set): `.registry`,
        `.address` (the endpoint's (host, port)), `.exposition()` (the text format)."""
        return self._metrics

    async def _serve_metrics(self, address: str) -> None:
        from engine.aio.metrics import NodeMetrics

        metrics = NodeMetrics(self)
        await metrics.serve(address)
        self._metrics = metrics

    def _close_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    @property
    def leader_changes_total(self) -> int:
        return self._events.changes_total

    @property
    def applied_index(self) -> int:
        """The highest log index applied to the state machine here."""
        return self._applied

    @property
    def leader_id(self) -> int:
        """The leader this node knows (0: none)."""
        return int(self._core.leader_id) if self._core is not None else 0

    def on_leader_change(self, callback: LeaderCallback) -> Callable[[], None]:
        """Call `callback(leader_id, term)` on the loop at each change of the leader this node
        knows (leader_id 0: none). It must not block. Returns a function that unsubscribes."""
        return self._events.on_leader_change(callback)

    def leader_changes(self) -> AsyncIterator[int]:
        """The leader this node knows now (0: none), then each change of it.

        A slow consumer is not queued for: it gets the newest leader when it asks again
        (intermediate changes coalesce, nothing grows without bound)."""
        return self._events.leader_changes()

    def members(self) -> dict[str, Any]:
        """The configuration in force on this node (NodeMembership.members)."""
        return self._members.members()

    async def add_member(self, node_id: int, address: str, *, learner: bool = False,
                         witness: bool = False, timeout: float | None = None,
                         request_id: int = 0) -> dict[str, Any]:
        """Add node `node_id` at `address`; returns members() once the final configuration
        is committed (NodeMembership.add_member has the rules and errors)."""
        return await self._members.add_member(node_id, address, learner=learner,
                                              witness=witness, timeout=timeout,
                                              request_id=request_id)

    async def promote(self, node_id: int, *, timeout: float | None = None,
                      request_id: int = 0) -> dict[str, Any]:
        """Make learner `node_id` a voter once it is caught up (NodeMembership.promote)."""
        return await self._members.promote(node_id, timeout=timeout, request_id=request_id)

    async def remove_member(self, node_id: int, *, timeout: float | None = None,
                            request_id: int = 0) -> dict[str, Any]:
        """Remove `node_id` (NodeMembership.remove_member)."""
        return await self._members.remove_member(node_id, timeout=timeout,
                                                 request_id=request_id)

    def _follow_membership(self) -> None:
        # A method of Node (not only of the part) so that tests can wrap it per instance.
        self._members.follow_membership()

    # ------------------------------------------------------------------ internals: scheduling

    def _check_running(self) -> None:
        if self._fatal is not None:
            raise errors.Stopped(f"node stopped after a fatal error: {self._fatal!r}")
        if not self._driver.running:
            raise errors.Stopped("node is not running")
        if self._members.removed:
            raise errors.MembershipError(self._members.removed)

    def _schedule_turn(self) -> None:
        self._driver.schedule_turn()

    def _fail_everything(self, error: errors.EngineError) -> None:
        self._driver.fail_everything(error)

    def _schedule_tick(self) -> None:
        assert self._loop is not None
        # tick_scale (fault injection only, set by ADMIN SET_FAULTS) stretches or shrinks the
        # tick interval: this node's logical clock runs slower (> 1) or faster (< 1) than its
        # peers', the clock-rate skew that leases must tolerate (Raft thesis §6.4.1).
        tick_s = self.config.timing.tick_ms / 1000.0 * self._tick_scale
        self._next_tick_at = next_tick_at(self._next_tick_at, tick_s, self._loop.time())
        self._tick_handle = self._loop.call_at(self._next_tick_at, self._on_tick)

    def _on_tick(self) -> None:
        if not self._driver.running:
            return
        # Removed: the core never ticks again, so it never campaigns (thesis §4.2.3).
        members = self._members
        self._driver.tick(advance_core=not members.removed)
        if members.removal_notices:
            members.send_removal_notices()
        self._events.note()
        self._leases.tick()
        if self._hosted is None:   # a hosted group is ticked by its host's timer
            self._schedule_tick()

    def _on_messages(self, messages: list[Message], address: Any) -> None:
        driver = self._driver
        inbox = driver.inbox
        for message in messages:
            kind = message.type
            if kind == _CLIENT_REQUEST:
                self._serving.on_client_request(message, address)
            elif kind == _CLIENT_RESPONSE:
                driver.on_forward_response(message)
            elif kind == _ADMIN:
                self._serving.on_admin(message, address)
            else:
                inbox.append(message)
        hooks = driver.hooks
        if hooks is not None:  # hook: acks received
            hooks.received(messages)
        driver.received_since_turn += 1
        driver.schedule_turn()

    def _die(self, exc: BaseException) -> None:
        logger.critical("node %d stopping after a fatal error: %r", self.config.node_id, exc)
        self._fatal = exc
        self.crash()
