"""engine.Node: the asyncio driver around a sans-IO protocol core (DESIGN.md §1).

Theory of operation
-------------------
One loop turn ("a turn") is the unit of batching. Everything that arrives during a turn —
datagrams, proposals, reads, ticks — is queued, and `_run_turn` (scheduled once per turn with
call_soon) hands it to the core in bulk: every queued message is stepped, all queued
proposals go to the core in ONE `propose(batch)` call, all queued reads share ONE ReadIndex
round. Then the core's Ready is processed (etcd's Ready/Advance contract, engine.types.Ready):

  1. `ready.messages` go out at once (the leader replicates while it writes its own log,
     Raft thesis §10.2.1);
  2. `ready.entries` + `ready.hard_state` are written with ONE fsync (group commit) on the
     storage thread; while that write is in flight the core is not touched — new inputs just
     queue up and form the next, bigger batch;
  3. after the fsync: `ready.messages_after_persist` (votes, append acks: promises about
     durable state, DESIGN.md §5), then committed entries are applied, proposal futures are
     resolved, ReadIndex reads whose index is applied are answered, and `core.advance()`.
     (A Ready without acks to send — the leader's — applies its committed entries before
     step 2 instead: they are durable on a quorum already, and their callers are answered
     while the new entries are written; see _handle_ready.)

A proposal's future is resolved when the entry at its (index, term) is applied. If the entry
applied at that index has another term, a new leader overwrote it: it can never commit, so
the caller gets engine.Superseded (a definite no; Raft §5.3, §5.4.3). A proposal whose fate
is not known within request_timeout_s fails with engine.Timeout (it may still commit later).
Every other way a proposal can end early (stop, crash, removal, a leader change under a
forwarded command, back-pressure) picks its error with engine.errors.unfinished: a definite
failure (Rejected, NotLeader, Stopped) only if no copy of it ever entered a log or left this
node, else engine.OutcomeUnknown. The queues say which: `_proposal_queue` and
`_waiting_for_leader` hold work never handed to a core nor forwarded (unless its future is
in `_sent_before`: a retry-safe command re-sent after a leader change), `_proposals` holds
appended work and `_forwarded` work sent to a leader.

Snapshots (Raft and Paxos: both cores offer compact() and the same log surface; see
engine.raft.core "Snapshots and compaction" and engine.paxos.core). After applying, the
driver snapshots the state machine once NodeConfig.snapshot_entries entries or snapshot_bytes
payload bytes were applied since the last snapshot (`_maybe_snapshot`). A state machine that
offers `snapshot_fork() -> Callable[[], bytes]` (freeze now, serialise later) is serialised on
the snapshot thread while apply continues; otherwise `snapshot()` runs on the loop (the pause
it costs is what snapshot_fork avoids). The snapshot thread writes the checksummed envelope
durably (engine.aio.wal.write_snapshot_file; kept in memory for data_dir=None), then the WAL
thread records compact(floor, term) with floor = index - snapshot_trailing_entries (turns
wait meanwhile: the loop thread writes the WAL otherwise), and only then
`core.compact(snapshot, compact_to=floor)` trims the in-memory log. A Ready carrying a
snapshot from the leader (`_persist_snapshot_ready`) is handled before anything else in it:
on the WAL thread the envelope is written, the WAL compacted at it and the state machine
restored from it; then the rest of the Ready is handled as usual. At start the newest
snapshot restores the state machine and the WAL replays the log after it.

Proposals on a follower are forwarded to the leader (as a CLIENT_REQUEST) and the answer is
relayed; with no known leader they wait (up to the timeout) for one to appear. When another
leader appears while forwarded proposals are unanswered (the old one may have appended them),
a command the state machine calls retry-safe (`retry_safe(command)`: KVStore's commands in a
session, which apply once however many copies commit, Raft thesis §6.3) is sent again to the
new leader; any other fails at once with OutcomeUnknown, since a second copy could apply
twice (see Node.propose). A forwarded proposal whose answer is lost fails with Timeout at
its deadline, never with a false "failed".

Modules: this file holds Node's lifecycle, public API and the turn; the membership part
(engine/aio/node_membership.py), snapshots (node_snapshots.py), reads (node_reads.py) and
forwarding / serving clients and admin ops (node_serving.py) are mixins Node inherits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from engine import __version__, errors
from engine._core import IMPLEMENTATION
from engine.aio.node_events import _EventsMixin
from engine.aio.node_membership import _MEMBERSHIP_ADMIN_OPS as _MEMBERSHIP_ADMIN_OPS
from engine.aio.node_membership import _REMOVAL_NOTICES as _REMOVAL_NOTICES
from engine.aio.node_membership import _error_payload as _error_payload
from engine.aio.node_membership import _MembershipMixin
from engine.aio.node_reads import _READ_RETRY_TICKS as _READ_RETRY_TICKS
from engine.aio.node_reads import READ_MODES as READ_MODES
from engine.aio.node_reads import _PendingRead as _PendingRead
from engine.aio.node_reads import _ReadsMixin
from engine.aio.node_serving import _ServingMixin
from engine.aio.node_snapshots import _SnapshotsMixin
from engine.aio.node_snapshots import _state_machine_fork as _state_machine_fork
from engine.config import NodeConfig
from engine.messages import EntryKind, Message, MessageType
from engine.types import Ready, Snapshot
from engine.types import StateMachine as StateMachine

if TYPE_CHECKING:
    from engine.aio.metrics import NodeMetrics

# The `X as X` imports above keep these names importable from here (engine.aio.client
# imports READ_MODES; tests and tools the others).

logger = logging.getLogger("engine.node")

_NORMAL = int(EntryKind.NORMAL)   # plain ints: compared once per applied entry
_CONFIG = int(EntryKind.CONFIG)
_CLIENT_REQUEST = int(MessageType.CLIENT_REQUEST)   # compared once per received message
_CLIENT_RESPONSE = int(MessageType.CLIENT_RESPONSE)
_ADMIN = int(MessageType.ADMIN)
# How often expired requests are swept (ticks); a request may outlive its timeout by this.
_SWEEP_EVERY_TICKS = 10

# A turn waits at most this many loop iterations for datagrams still arriving (bounds the
# latency group commit adds: one iteration is a few microseconds when nothing is waiting).
_MAX_TURN_DEFERRALS = 16
# ... and only after a burst: the loop reads up to 32 datagrams per wake-up (libuv), so a
# wake-up that read fewer than this drained the socket and waiting would only add latency.
_BURST_DATAGRAMS = 8


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


class Node(_MembershipMixin, _SnapshotsMixin, _ReadsMixin, _ServingMixin, _EventsMixin):
    """One member of a replicated state machine (see the module docstring).

    The lifecycle, the public propose/status API and the hot path (the turn: _run_turn,
    _submit_proposals, _handle_ready, _save, _after_persist, _apply) are here; the rest is
    in mixins that run on the attributes __init__ sets: membership (node_membership.py),
    snapshots (node_snapshots.py), reads (node_reads.py), forwarding and serving clients
    and admin ops (node_serving.py).
    """

    def __init__(
        self, config: NodeConfig, state_machine: StateMachine | None = None, *,
        storage: Any = None, clock_ns: Callable[[], int] | None = None,
    ) -> None:
        if state_machine is None:
            from engine.kv import KVStore

            state_machine = KVStore(config.limits)
        self.config = config
        self.state_machine = state_machine
        # The wall clock of the boot epoch (injectable for tests; engine.aio.udp.wall_clock_ns).
        self._clock_ns = clock_ns
        self._storage = storage
        self._core: Any = None
        self._transport: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self._ticks = 0
        self._pending_ticks = 0  # ticks that arrived while a write was in flight
        self._next_tick_at = 0.0
        self._tick_scale = 1.0   # clock-rate skew, fault injection only (ADMIN SET_FAULTS)
        self._turn_scheduled = False
        self._received_since_turn = 0   # datagram batches received since the last turn
        self._turn_deferrals = 0
        # A WAL job (snapshot install, compaction) runs on the storage thread: the loop must
        # not touch the WAL, so turns wait (inputs queue and form the next batch).
        self._persisting = 0   # WAL jobs in flight
        self._storage_executor: ThreadPoolExecutor | None = None
        self._inbox: list[Message] = []
        # Proposals queued this turn: (command, future, deadline).
        self._proposal_queue: list[tuple[bytes, asyncio.Future[bytes], float]] = []
        # Proposals in the log: index -> (term, future, deadline).
        self._proposals: dict[int, tuple[int, asyncio.Future[bytes], float]] = {}
        # Proposals waiting for a leader to forward to.
        self._waiting_for_leader: deque[tuple[bytes, asyncio.Future[bytes], float]] = deque()
        # Proposals forwarded to the leader: seq -> (command, future, deadline), all sent to
        # node _forwarded_to.
        self._forwarded: dict[int, tuple[bytes, asyncio.Future[bytes], float]] = {}
        self._forwarded_to = 0
        self._forward_seq = 0
        # Futures of proposals queued again after a copy was forwarded (a retry-safe command
        # re-sent to a new leader): whatever ends them, their outcome is unknown.
        self._sent_before: weakref.WeakSet[asyncio.Future[bytes]] = weakref.WeakSet()
        # The state machine's retry_safe(command) -> bool, if it has one (KVStore does).
        self._retry_safe: Callable[[bytes], bool] | None = getattr(
            state_machine, "retry_safe", None)
        # Reads: queued this turn; in a ReadIndex round (context -> (reads, tick sent));
        # waiting for apply to reach their index (index, reads).
        self._read_queue: list[_PendingRead] = []
        self._read_rounds: dict[bytes, tuple[list[_PendingRead], int]] = {}
        self._reads_waiting_apply: list[tuple[int, list[_PendingRead]]] = []
        self._read_seq = 0
        self._applied = 0
        self._fatal: BaseException | None = None
        # Latency profiler (engine.profiling), attached by `python -m engine bench --profile`.
        # None costs one `is not None` test per proposal/batch at the marked hooks.
        self._profiler: Any = None
        # Prometheus metrics (engine.aio.metrics), with NodeConfig.metrics_addr: sampled once
        # per turn, never per write.
        self._metrics: NodeMetrics | None = None
        self._max_entry_bytes = config.limits.max_entry_bytes
        self._max_pending_proposals = config.limits.max_pending_proposals
        self._request_timeout_s = config.request_timeout_s
        self.counters: dict[str, int] = {
            "proposals": 0, "proposal_batches": 0, "applied": 0, "readies": 0, "saves": 0,
            "syncs": 0,
            "reads": 0, "read_rounds": 0, "forwarded": 0, "reforwarded": 0,
            "client_requests": 0, "replies_too_large": 0,
        }
        # Snapshots (Raft and Paxos: the cores offer the same compact()/log surface): what was
        # applied since the last one; one snapshot at a time.
        self._snapshot_policy = config.protocol in ("raft", "paxos")
        self._since_snapshot_entries = 0
        self._since_snapshot_bytes = 0
        self._snapshotting = False
        self._compaction_due: tuple[Snapshot, int] | None = None
        self._snapshot_executor: ThreadPoolExecutor | None = None
        self.snapshot_stats: dict[str, float] = {
            "taken": 0, "installed": 0, "last_pause_ms": 0.0, "max_pause_ms": 0.0,
            "last_write_s": 0.0, "last_bytes": 0,
        }
        # Lease reads: (core tick, loop time when the core had processed it), recent ones.
        self._tick_clock: deque[tuple[int, float]] = deque(
            maxlen=4 * config.timing.election_timeout_ticks
        )
        # Membership (Raft thesis §4; see "membership" below): the configuration the
        # transport's peer set follows, why this node was removed ("" while a member), this
        # node's witness role, and the removal notices a leader still owes removed nodes.
        self._track_membership = config.protocol == "raft"
        self._membership_seen: Any = None
        self._removed = ""
        self._removal_due = ""   # removed by a CONFIG entry in the batch being applied
        self._witness = config.node_id in config.bootstrap_witnesses()
        self._removal_notices: dict[int, list[Any]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Recover from storage, bind the UDP socket and start ticking."""
        from engine.aio.identity import open_identity, store_cluster_id
        from engine.aio.udp import UdpTransport, wall_clock_ns

        if self._running:
            raise errors.EngineError("node already started")
        self._loop = asyncio.get_running_loop()
        if self._storage is None:
            self._storage = _open_storage(self.config)
        recovered = await self._loop.run_in_executor(None, self._storage.open)
        try:
            self._applied = await self._restore_from(recovered)
            self._core = _make_core(self.config, recovered, self._applied)
            # Raft: the peers of the recovered configuration (thesis §4.1), not only the
            # bootstrap members; later configurations are followed in _handle_ready.
            peers = self._member_peers()
            # Cluster id and boot epoch, stored durably before the socket binds (identity.py).
            identity = await self._loop.run_in_executor(
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
            self._storage.close()
            raise
        if self.config.data_dir is not None:
            self._storage_executor = ThreadPoolExecutor(1, thread_name_prefix="engine-wal")
        self._running = True
        self._membership_seen = getattr(self._core, "membership", None)
        self._seen_term, self._seen_leader = self._core.term, self._core.leader_id
        self._check_removed_at_start()
        if self.config.metrics_addr is not None:
            await self._serve_metrics(self.config.metrics_addr)
        self._next_tick_at = self._loop.time()
        self._schedule_tick()
        self._schedule_turn()

    async def stop(self) -> None:
        """Graceful stop: stop ticking, fail pending requests with Stopped, close sockets."""
        if not self._running:
            return
        self._running = False
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        # Let an in-flight fsync finish so what it acknowledged is really on disk.
        while self._persisting and self._fatal is None:
            await asyncio.sleep(0.001)
        self._fail_everything(errors.Stopped("node stopped"))
        self._close_metrics()
        self._transport.close()
        if self._storage_executor is not None:
            self._storage_executor.shutdown(wait=True)
        if self._snapshot_executor is not None:
            self._snapshot_executor.shutdown(wait=True)
        self._storage.close()

    def crash(self) -> None:
        """Stop at once as a crash would (tests): no waiting, unsynced writes are lost."""
        self._running = False
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._fail_everything(errors.Stopped("node crashed"))
        self._close_metrics()
        if self._transport is not None:
            self._transport.close()
        if self._storage_executor is not None:
            # The write in flight ends first (a killed process's write does too, or never
            # starts): nothing of this incarnation touches the log once a restart opens it.
            self._storage_executor.shutdown(wait=True)
        abandon = getattr(self._storage, "abandon", None)
        if abandon is not None:
            abandon()   # file closed unsynced, data directory released, as at a process exit

    def attach_profiler(self, profiler: Any) -> None:
        """Report each proposal's stage timestamps to `profiler` (engine.profiling); None
        detaches. Benchmarks only: it costs time per proposal while attached."""
        self._profiler = profiler

    @property
    def running(self) -> bool:
        return self._running

    @property
    def node_id(self) -> int:
        return self.config.node_id

    @property
    def transport(self) -> Any:
        return self._transport

    @property
    def core(self) -> Any:
        return self._core

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
        member), Rejected (abandoned after an election timeout, or another node won) or
        Timeout.
        """
        self._check_running()
        core = self._core
        if not hasattr(core, "transfer_leadership"):
            raise errors.ConfigError("leadership transfer needs protocol='raft'")
        core.transfer_leadership(target)
        self._schedule_turn()
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
            elif not core.lead_transferee:
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
        # The library's per-write hot path (docs/performance.md, where the time goes): the
        # limits come from the frozen config once, the checks and the turn scheduling are
        # inline, and propose's coroutine is skipped.
        answer = _answer
        if self._fatal is not None or not self._running or self._removed:
            self._check_running()
        if len(command) > self._max_entry_bytes:
            raise errors.EntryTooLarge(
                f"command of {len(command)} bytes exceeds max_entry_bytes="
                f"{self._max_entry_bytes}"
            )
        queue = self._proposal_queue
        if len(self._proposals) + len(queue) >= self._max_pending_proposals:
            raise errors.Overloaded(f"{self._max_pending_proposals} proposals pending "
                                    f"(Limits.max_pending_proposals)")
        loop = self._loop
        assert loop is not None
        future = loop.create_future() if answer is None else _AnsweringFuture(loop, answer)
        if type(command) is not bytes:
            command = bytes(command)
        queue.append((command, future, loop.time() + (timeout or self._request_timeout_s)))
        if self._profiler is not None:  # profiler hook: queued
            self._profiler.enqueued(future)
        if not self._turn_scheduled:
            self._turn_scheduled = True
            loop.call_soon(self._run_turn)
        return future

    def campaign(self) -> None:
        """Start an election now (benchmarks, demos); the core decides the rest."""
        self._check_running()
        self._core.campaign()
        self._schedule_turn()

    @property
    def fatal_error(self) -> BaseException | None:
        """The error that stopped this node (a failed WAL write, ...), None while healthy."""
        return self._fatal

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "node_id": self.config.node_id,
            "protocol": self.config.protocol,
            "address": self.config.members[self.config.node_id],
            "running": self._running,
            "applied_index": self._applied,
            "pending_proposals": len(self._proposals) + len(self._proposal_queue),
            "durable": self.config.data_dir is not None and self.config.fsync,
            "version": __version__,
            "core_implementation": IMPLEMENTATION,   # "cython", or "python" (the pure twins)
        }
        if self._core is not None:
            core_status = dict(self._core.status())
            core_status.pop("applied_index", None)
            status.update(core_status)
        if self._track_membership:
            # Thesis §4.2.3: a removed node goes quiet; say so (and why) instead of hiding.
            status["removed"] = bool(self._removed)
            if self._removed:
                status["removed_reason"] = self._removed
        status["counters"] = dict(self.counters)
        if self._transport is not None:
            status["transport"] = self._transport.stats()
        return status

    # ------------------------------------------------------------------ internals: scheduling

    def _check_running(self) -> None:
        if self._fatal is not None:
            raise errors.Stopped(f"node stopped after a fatal error: {self._fatal!r}")
        if not self._running:
            raise errors.Stopped("node is not running")
        if self._removed:
            raise errors.MembershipError(self._removed)

    def _schedule_turn(self) -> None:
        if not self._turn_scheduled and self._loop is not None:
            self._turn_scheduled = True
            self._loop.call_soon(self._run_turn)

    def _schedule_tick(self) -> None:
        assert self._loop is not None
        # tick_scale (fault injection only, set by ADMIN SET_FAULTS) stretches or shrinks the
        # tick interval: this node's logical clock runs slower (> 1) or faster (< 1) than its
        # peers', the clock-rate skew that leases must tolerate (Raft thesis §6.4.1).
        tick_s = self.config.timing.tick_ms / 1000.0 * self._tick_scale
        self._next_tick_at += tick_s
        now = self._loop.time()
        if self._next_tick_at < now - 10 * tick_s:  # the loop stalled: do not burst-tick
            self._next_tick_at = now + tick_s
        self._tick_handle = self._loop.call_at(self._next_tick_at, self._on_tick)

    def _on_tick(self) -> None:
        if not self._running:
            return
        self._ticks += 1
        if self._removed:
            pass  # removed: the core never ticks again, so it never campaigns (thesis §4.2.3)
        elif not self._persisting:
            self._core.tick()
            self._note_core_tick()
        else:
            self._pending_ticks += 1
        if self._removal_notices:
            self._send_removal_notices()
        self._note_leadership()
        if self._ticks % _SWEEP_EVERY_TICKS == 0:
            self._expire_requests()
        self._retry_reads()
        self._schedule_tick()
        self._schedule_turn()

    def _on_messages(self, messages: list[Message], address: Any) -> None:
        for message in messages:
            kind = message.type
            if kind == _CLIENT_REQUEST:
                self._on_client_request(message, address)
            elif kind == _CLIENT_RESPONSE:
                self._on_forward_response(message)
            elif kind == _ADMIN:
                self._on_admin(message, address)
            else:
                self._inbox.append(message)
        if self._profiler is not None:  # profiler hook: acks received
            self._profiler.received(messages)
        self._received_since_turn += 1
        self._schedule_turn()

    # ------------------------------------------------------------------ the turn

    def _run_turn(self) -> None:
        self._turn_scheduled = False
        if not self._running or self._persisting:
            return  # inputs stay queued; the turn after the WAL job takes them
        if (self._received_since_turn >= _BURST_DATAGRAMS
                and self._turn_deferrals < _MAX_TURN_DEFERRALS):
            # Group commit: a burst of datagrams arrived since this turn was scheduled, so
            # more are probably waiting in the socket (the loop reads at most 32 per wake-up,
            # libuv's batch). Let the loop read them first: one Ready, one fsync, for all
            # (docs/performance.md, "Group commit").
            self._received_since_turn = 0
            self._turn_deferrals += 1
            self._schedule_turn()
            return
        self._received_since_turn = 0
        self._turn_deferrals = 0
        core = self._core
        try:
            for _ in range(self._pending_ticks):
                core.tick()
            if self._pending_ticks:
                self._note_core_tick()
            self._pending_ticks = 0
            if self._inbox:
                inbox, self._inbox = self._inbox, []
                for message in inbox:
                    core.step(message)
            if self._metrics is not None:
                self._metrics.sample_turn(self._proposal_queue, self._read_queue)
            if self._proposal_queue:
                self._submit_proposals()
            if self._waiting_for_leader or self._forwarded:
                self._forward_waiting()   # (also follows a leader change, see there)
            if self._read_queue:
                self._start_read_round()
            if core.has_ready():
                self._handle_ready(core.ready())
                if core.has_ready():
                    # More committed entries than one Ready carries (max_apply_batch): the
                    # next part comes after the callbacks this one made ready (the answered
                    # callers' next proposals), so the pipeline stays full.
                    self._schedule_turn()
        except errors.InvariantViolation as exc:
            self._die(exc)
            raise

    def _submit_proposals(self) -> None:
        if getattr(self._core, "lead_transferee", 0):
            # Leadership transfer (§3.10): proposals wait here (at most an election timeout)
            # and then go to the new leader, or to us if the transfer is abandoned.
            return
        queue, self._proposal_queue = self._proposal_queue, []
        # A caller that cancelled its future before this turn is not proposed at all.
        commands = [item[0] for item in queue if not item[1].done()]
        if not commands:
            return
        live = (queue if len(commands) == len(queue)
                else [item for item in queue if not item[1].done()])
        try:
            first, last, term = self._core.propose(commands)
        except errors.NotLeader as exc:
            self._waiting_for_leader.extend(live)
            if exc.leader_id is None:
                return
            self._forward_waiting()
            return
        except errors.Rejected as exc:  # Overloaded / EntryTooLarge: nothing appended
            sent_before = self._sent_before
            for _, future, _ in live:
                future.set_exception(errors.unfinished(exc, may_apply=future in sent_before))
            return
        self.counters["proposals"] += len(live)
        self.counters["proposal_batches"] += 1
        if last - first + 1 != len(live):
            raise errors.InvariantViolation(
                f"core appended {last - first + 1} entries for {len(live)} proposals"
            )
        self._proposals.update(
            zip(range(first, last + 1), [(term, item[1], item[2]) for item in live], strict=True)
        )
        if self._profiler is not None:  # profiler hook: handed to the core
            self._profiler.submitted(first, live)

    def _handle_ready(self, ready: Ready) -> None:
        self.counters["readies"] += 1
        self._note_leadership()
        if self._profiler is not None:  # profiler hook: sent, committed
            self._profiler.ready(ready)
        if self._track_membership and self._core.membership is not self._membership_seen:
            self._follow_membership()  # before sending: this Ready may address new members
        if ready.messages:
            # Queued before the apply below: applying our own removal makes this node go
            # quiet (no peers), and this Ready may carry the hand-off's TIMEOUT_NOW.
            # With entries, out now, not at the end of the loop turn: the write below blocks
            # the loop, and followers should write in parallel with it (Raft thesis §10.2.1).
            self._transport.send(ready.messages, now=bool(ready.entries))
        if ready.snapshot is not None:
            self._persist_snapshot_ready(ready)
            return
        # Committed entries are already durable on a quorum (a core counts its own copy only
        # after its fsync), so they are applied — and their callers answered — while this
        # Ready's own writes are in flight, as etcd applies in parallel with persisting. Not
        # when this Ready also holds acks for its new entries (a follower): the leader's
        # commit, and so its callers, wait for those acks, and nobody here waits for the
        # apply, so the acks go first and the entries are applied after (_after_persist).
        apply_late = bool(ready.messages_after_persist) and bool(ready.entries)
        if ready.committed_entries and not apply_late:
            self._apply_ready(ready)
        if not ready.entries:
            # The remote callers' answers, queued as their futures settled, leave now, ahead
            # of this Ready's commit notices (the transport writes replies first) and of the
            # commit-index write.
            self._transport.flush()
        for read_state in ready.read_states:
            self._on_read_state(read_state.index, read_state.context)
        if self._reads_waiting_apply:
            self._serve_applied_reads()
        if (ready.entries or ready.hard_state is not None) and not self._save(ready):
            return
        self._after_persist(ready, apply_late)

    def _save(self, ready: Ready) -> bool:
        """Persist the Ready's entries and hard state: one write and, unless nothing in it
        needs one, one fdatasync. Returns False if the write failed (the node is dead).

        The write runs on the loop thread: handing it to a storage thread costs more than the
        fdatasync itself (the thread hop, its wake-up and the GIL hand-back;
        docs/performance.md, "WAL write on the loop thread"), and the loop has nothing else to
        do meanwhile: the core is not stepped while its Ready is unpersisted. The Ready's
        messages are already on their way, so followers write in parallel with the leader
        (Raft thesis §10.2.1).
        """
        hard_state = ready.hard_state
        sync = ready.must_sync   # set by the core (engine.types.Ready)
        metrics = self._metrics
        timed = sync and metrics is not None and metrics.durable
        started = time.perf_counter() if timed else 0.0
        try:
            self._storage.save(ready.entries, hard_state, sync=sync)
        except Exception as exc:
            # Nothing that depends on this write may be acknowledged (DESIGN.md §5): stop.
            self._die(exc)
            return False
        self.counters["saves"] += 1
        if timed and metrics is not None:
            metrics.wal_save_seconds.observe(time.perf_counter() - started)
        if sync:
            self.counters["syncs"] += 1
        if self._profiler is not None:  # profiler hook: appended locally
            self._profiler.persisted(ready)
        return True

    def _after_persist(self, ready: Ready, apply_late: bool = False) -> None:
        """The Ready's entries and hard state are on disk: promises may go out, then the
        committed entries _handle_ready left for after them are applied."""
        if ready.messages_after_persist:
            # Acks and votes: the turn is their batch, so they need not wait for the loop.
            self._transport.send(ready.messages_after_persist, now=True)
        if apply_late and ready.committed_entries:
            self._apply_ready(ready)
            if self._reads_waiting_apply:
                self._serve_applied_reads()
        self._core.advance(ready)
        if self._snapshot_policy:
            self._maybe_snapshot(ready.committed_entries)

    def _apply_ready(self, ready: Ready) -> None:
        self._apply(ready.committed_entries)
        if self._profiler is not None:  # profiler hook: applied
            self._profiler.applied(ready)

    def _apply(self, entries: list[Any]) -> None:
        apply = self.state_machine.apply
        take_pending = self._proposals.pop
        normal = _NORMAL
        # A witness holds no payloads (engine.raft.core "Witnesses"): it applies nothing.
        apply_normal = not self._witness
        for entry in entries:
            index = entry.index
            result: Any = b""
            kind = entry.kind
            if kind == normal:
                if apply_normal:
                    try:
                        result = apply(index, entry.data)
                    except Exception as exc:  # the user's state machine: report, keep going
                        logger.exception("state machine raised at index %d", index)
                        result = errors.StateMachineError(
                            f"apply at index {index} raised {exc!r}")
            elif kind == _CONFIG:
                # Never applied to the state machine (like NOOP); see _on_config_committed.
                self._on_config_committed(entry)
            self._applied = index
            pending = take_pending(index, None)
            if pending is None:
                continue
            term, future, _ = pending
            if future.done():
                continue
            if term != entry.term:
                # Another entry committed at our index: ours never commits (Raft §5.3, §5.4.3).
                future.set_exception(errors.unfinished(errors.Superseded(
                    f"entry {index} was replaced by a new leader (term {entry.term})"
                ), may_apply=future in self._sent_before))
            elif type(result) is bytes or not isinstance(result, Exception):
                future.set_result(result)
            else:
                future.set_exception(result)
        self.counters["applied"] += len(entries)
        if self._removal_due:
            # After the whole batch: the entries committed after our removal are answered.
            self._go_quiet(self._removal_due)

    # ------------------------------------------------------------------ timeouts and errors

    def _expire_requests(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        timeout = errors.Timeout
        for index in [i for i, (_, f, d) in self._proposals.items() if d <= now or f.done()]:
            _, future, _ = self._proposals.pop(index)
            if not future.done():
                future.set_exception(timeout(f"proposal at index {index} not applied in time"))
        for seq in [s for s, (_, f, d) in self._forwarded.items() if d <= now or f.done()]:
            _, future, _ = self._forwarded.pop(seq)
            if not future.done():
                future.set_exception(timeout("no answer from the leader in time"))
        if self._waiting_for_leader:
            keep: deque[tuple[bytes, asyncio.Future[bytes], float]] = deque()
            for item in self._waiting_for_leader:
                if item[2] <= now and not item[1].done():
                    # Never sent anywhere (unless an earlier copy was): a definite no.
                    item[1].set_exception(errors.unfinished(
                        errors.NotLeader("no leader known in time"),
                        may_apply=item[1] in self._sent_before))
                elif not item[1].done():
                    keep.append(item)
            self._waiting_for_leader = keep
        self._expire_reads(now)

    def _fail_everything(self, error: errors.EngineError) -> None:
        """End every pending request because of `error` (stop, crash, removal): appended or
        forwarded proposals with an unknown outcome, the rest with `error` (engine.errors
        .unfinished; reads never enter a log)."""
        sent_before = self._sent_before
        held: list[asyncio.Future[Any]] = []   # never handed to a core nor forwarded
        held += [f for _, f, _ in self._proposal_queue if f not in sent_before]
        held += [f for _, f, _ in self._waiting_for_leader if f not in sent_before]
        held += [r.future for r in self._read_queue]
        for reads, _ in self._read_rounds.values():
            held += [r.future for r in reads]
        for _, reads in self._reads_waiting_apply:
            held += [r.future for r in reads]
        sent: list[asyncio.Future[Any]] = []   # appended, forwarded, or a copy of them was
        sent += [f for _, f, _ in self._proposal_queue if f in sent_before]
        sent += [f for _, f, _ in self._waiting_for_leader if f in sent_before]
        sent += [f for _, f, _ in self._proposals.values()]
        sent += [f for _, f, _ in self._forwarded.values()]
        for futures, may_apply in ((held, False), (sent, True)):
            for future in futures:
                if not future.done():
                    future.set_exception(errors.unfinished(error, may_apply=may_apply))
        self._proposal_queue.clear()
        self._proposals.clear()
        self._waiting_for_leader.clear()
        self._forwarded.clear()
        self._read_queue.clear()
        self._read_rounds.clear()
        self._reads_waiting_apply.clear()

    def _die(self, exc: BaseException) -> None:
        logger.critical("node %d stopping after a fatal error: %r", self.config.node_id, exc)
        self._fatal = exc
        self.crash()
