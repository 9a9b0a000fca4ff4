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

A proposal's future is resolved when the entry at its (index, term) is applied. If the entry
applied at that index has another term, a new leader overwrote it: it can never commit, so
the caller gets engine.Rejected (a definite no). A proposal whose fate is not known within
request_timeout_s fails with engine.Timeout (it may still commit later).

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
relayed; with no known leader they wait (up to the timeout) for one to appear. A forwarded
proposal whose answer is lost fails with Timeout, never with a false "failed", and is never
re-sent (raw commands carry no session, so a resend could apply twice).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from engine import errors
from engine.messages import AdminOp, ClientOp, ClientStatus, EntryKind, Message, MessageType
from engine.types import NodeConfig, Ready, Snapshot, parse_address

logger = logging.getLogger("engine.node")

# How often expired requests are swept (ticks); a request may outlive its timeout by this.
_SWEEP_EVERY_TICKS = 10
# A ReadIndex round not answered within this many ticks is retried with a new context.
_READ_RETRY_TICKS = 20
READ_MODES = ("linearizable", "lease", "stale")


# ADMIN ops that change the membership (leader only; see "membership" below).
_MEMBERSHIP_ADMIN_OPS = frozenset(
    {AdminOp.ADD_MEMBER, AdminOp.REMOVE_MEMBER, AdminOp.PROMOTE_MEMBER})
# A leader re-sends a removal notice this many times, once per heartbeat interval, to a node
# it removed (a removed node never learns that its removal committed, thesis §4.2.3).
_REMOVAL_NOTICES = 20


# A turn waits at most this many loop iterations for datagrams still arriving (bounds the
# latency group commit adds: one iteration is a few microseconds when nothing is waiting).
_MAX_TURN_DEFERRALS = 16
# ... and only after a burst: the loop reads up to 32 datagrams per wake-up (libuv), so a
# wake-up that read fewer than this drained the socket and waiting would only add latency.
_BURST_DATAGRAMS = 8


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes) -> bytes: ...
    def query(self, query: bytes) -> bytes: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


class _AnsweringFuture(asyncio.Future):  # type: ignore[type-arg]
    """The outcome of a remote client's request: answers the client the moment it settles.

    A plain future's done-callbacks run one loop turn later, after the rest of the turn that
    settled it (the commit broadcast to the followers, the commit-index write). Measured with
    one outstanding UDP write and fsync, that put 0.09 ms (p50) between apply and the reply.
    Here the reply is queued synchronously, ahead of the turn's other datagrams.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 answer: Callable[[asyncio.Future[bytes]], None]) -> None:
        super().__init__(loop=loop)
        self._answer = answer

    def set_result(self, result: Any) -> None:
        super().set_result(result)
        self._answer(self)

    def set_exception(self, exception: Any) -> None:
        super().set_exception(exception)
        self._answer(self)

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        self._answer(self)
        return True


class _PendingRead:
    __slots__ = ("query", "future", "deadline")

    def __init__(self, query: bytes, future: asyncio.Future[bytes], deadline: float) -> None:
        self.query = query
        self.future = future
        self.deadline = deadline


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


def _state_machine_fork(state_machine: Any) -> Callable[[], bytes] | None:
    """Freeze the state now; return a function that serialises the frozen copy (to run on
    another thread while apply continues), or None if the state machine offers no
    `snapshot_fork()` (then the driver calls snapshot() on the loop)."""
    fork = getattr(state_machine, "snapshot_fork", None)
    if fork is None:
        return None
    serialize: Callable[[], bytes] = fork()
    return serialize


def _error_payload(exc: BaseException) -> bytes:
    """An ADMIN_RESPONSE body naming the error's class, so a client re-raises the same type."""
    return json.dumps({"error": type(exc).__name__, "message": str(exc)}).encode()


def _open_storage(config: NodeConfig) -> Any:
    if config.data_dir is None:
        from engine.aio.memory_storage import MemoryStorage

        return MemoryStorage()
    from engine.aio.wal import WriteAheadLog

    os.makedirs(config.data_dir, exist_ok=True)
    return WriteAheadLog(config.data_dir, fsync=config.fsync)


class Node:
    """One member of a replicated state machine (see the module docstring)."""

    def __init__(
        self, config: NodeConfig, state_machine: StateMachine | None = None, *,
        storage: Any = None,
    ) -> None:
        if state_machine is None:
            from engine.kv import KVStore

            state_machine = KVStore()
        self.config = config
        self.state_machine = state_machine
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
        self._synced_vote: tuple[int, int] = (-1, -1)   # (term, vote) last fdatasynced
        self._inbox: list[Message] = []
        # Proposals queued this turn: (command, future, deadline).
        self._proposal_queue: list[tuple[bytes, asyncio.Future[bytes], float]] = []
        # Proposals in the log: index -> (term, future, deadline).
        self._proposals: dict[int, tuple[int, asyncio.Future[bytes], float]] = {}
        # Proposals waiting for a leader to forward to.
        self._waiting_for_leader: deque[tuple[bytes, asyncio.Future[bytes], float]] = deque()
        # Proposals forwarded to the leader: seq -> (command, future, deadline).
        self._forwarded: dict[int, tuple[bytes, asyncio.Future[bytes], float]] = {}
        self._forward_seq = 0
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
        self.counters: dict[str, int] = {
            "proposals": 0, "proposal_batches": 0, "applied": 0, "readies": 0, "saves": 0,
            "syncs": 0,
            "reads": 0, "read_rounds": 0, "forwarded": 0, "client_requests": 0,
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
        self._witness = config.node_id in config.bootstrap_witnesses()
        self._removal_notices: dict[int, list[Any]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Recover from storage, bind the UDP socket and start ticking."""
        from engine.aio.udp import UdpTransport

        if self._running:
            raise errors.EngineError("node already started")
        self._loop = asyncio.get_running_loop()
        if self._storage is None:
            self._storage = _open_storage(self.config)
        recovered = await self._loop.run_in_executor(None, self._storage.open)
        self._synced_vote = (recovered.hard_state.term, recovered.hard_state.vote)
        self._applied = await self._restore_from(recovered)
        self._core = _make_core(self.config, recovered, self._applied)
        # Raft: the peers of the recovered configuration (thesis §4.1), not only the
        # bootstrap members; later configurations are followed in _handle_ready.
        peers = self._member_peers()
        self._transport = UdpTransport(
            self.config.node_id,
            self.config.address_of(self.config.node_id),
            peers,
            self.config.cluster_key,
            cluster_id=self.config.cluster_id,
            limits=self.config.limits,
            on_messages=self._on_messages,
        )
        await self._transport.start()
        if self.config.data_dir is not None:
            self._storage_executor = ThreadPoolExecutor(1, thread_name_prefix="engine-wal")
        self._running = True
        self._membership_seen = getattr(self._core, "membership", None)
        self._check_removed_at_start()
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
        if self._transport is not None:
            self._transport.close()
        if self._storage_executor is not None:
            self._storage_executor.shutdown(wait=False)

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

        Raises EntryTooLarge / Overloaded / Rejected (definitely not applied), Timeout
        (unknown), Stopped, StateMachineError.
        """
        return await self._enqueue_proposal(command, timeout)

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

    def take_snapshot(self) -> bool:
        """Snapshot the state machine now (Raft); False if one is already being taken or
        nothing new was applied. Normally the NodeConfig thresholds trigger it."""
        self._check_running()
        return self._start_snapshot()

    def _new_future(self, answer: Callable[[asyncio.Future[bytes]], None] | None
                    ) -> asyncio.Future[bytes]:
        assert self._loop is not None
        if answer is None:
            return self._loop.create_future()
        return _AnsweringFuture(self._loop, answer)

    def _enqueue_proposal(self, command: bytes, timeout: float | None,
                          answer: Callable[[asyncio.Future[bytes]], None] | None = None
                          ) -> asyncio.Future[bytes]:
        """Queue a proposal for this turn's batch; the future is its outcome (no task).
        `answer`, for a remote client, is called with the future the moment it settles."""
        self._check_running()
        if len(command) > self.config.limits.max_entry_bytes:
            raise errors.EntryTooLarge(
                f"command of {len(command)} bytes exceeds max_entry_bytes="
                f"{self.config.limits.max_entry_bytes}"
            )
        limit = self.config.limits.max_pending_proposals
        if len(self._proposals) + len(self._proposal_queue) >= limit:
            raise errors.Overloaded(f"{limit} proposals pending (Limits.max_pending_proposals)")
        assert self._loop is not None
        future = self._new_future(answer)
        deadline = self._loop.time() + (timeout or self.config.request_timeout_s)
        self._proposal_queue.append((bytes(command), future, deadline))
        if self._profiler is not None:  # profiler hook: queued
            self._profiler.enqueued(future)
        self._schedule_turn()
        return future

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

    def campaign(self) -> None:
        """Start an election now (benchmarks, demos); the core decides the rest."""
        self._check_running()
        self._core.campaign()
        self._schedule_turn()

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "node_id": self.config.node_id,
            "protocol": self.config.protocol,
            "address": self.config.members[self.config.node_id],
            "running": self._running,
            "applied_index": self._applied,
            "pending_proposals": len(self._proposals) + len(self._proposal_queue),
            "durable": self.config.data_dir is not None and self.config.fsync,
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
        if self._ticks % _SWEEP_EVERY_TICKS == 0:
            self._expire_requests()
        self._retry_reads()
        self._schedule_tick()
        self._schedule_turn()

    def _on_messages(self, messages: list[Message], address: Any) -> None:
        for message in messages:
            kind = message.type
            if kind == MessageType.CLIENT_REQUEST:
                self._on_client_request(message, address)
            elif kind == MessageType.CLIENT_RESPONSE:
                self._on_forward_response(message)
            elif kind == MessageType.ADMIN:
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
            # libuv's batch). Let the loop read them first: one Ready, one fsync, for all.
            # Measured, 1,000 outstanding UDP clients with fsync: ~30 requests per fsync
            # without this, ~200 with it.
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
            if self._proposal_queue:
                self._submit_proposals()
            if self._waiting_for_leader:
                self._forward_waiting()
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
        live = [(c, f, d) for (c, f, d) in queue if not f.done()]
        if not live:
            return
        try:
            first, last, term = self._core.propose([command for command, _, _ in live])
        except errors.NotLeader as exc:
            self._waiting_for_leader.extend(live)
            if exc.leader_id is None:
                return
            self._forward_waiting()
            return
        except errors.Rejected as exc:  # Overloaded / EntryTooLarge: definite no
            for _, future, _ in live:
                future.set_exception(type(exc)(str(exc)))
            return
        self.counters["proposals"] += len(live)
        self.counters["proposal_batches"] += 1
        if last - first + 1 != len(live):
            raise errors.InvariantViolation(
                f"core appended {last - first + 1} entries for {len(live)} proposals"
            )
        proposals = self._proposals
        for offset, (_, future, deadline) in enumerate(live):
            proposals[first + offset] = (term, future, deadline)
        if self._profiler is not None:  # profiler hook: handed to the core
            self._profiler.submitted(first, live)

    def _handle_ready(self, ready: Ready) -> None:
        self.counters["readies"] += 1
        if self._profiler is not None:  # profiler hook: sent, committed
            self._profiler.ready(ready)
        if self._track_membership and self._core.membership is not self._membership_seen:
            self._follow_membership()  # before sending: this Ready may address new members
        if ready.messages and (ready.entries or ready.snapshot is not None):
            self._transport.send(ready.messages)
            # Out now, not at the end of the loop turn: the write below blocks the loop,
            # and followers should write in parallel with it (Raft thesis §10.2.1).
            self._transport.flush()
        if ready.snapshot is not None:
            self._persist_snapshot_ready(ready)
            return
        # Committed entries are already durable on a quorum (a core counts its own copy only
        # after its fsync), so they are applied — and their callers answered — while this
        # Ready's own writes are in flight, as etcd applies in parallel with persisting.
        if ready.committed_entries:
            self._apply(ready.committed_entries)
            if self._profiler is not None:  # profiler hook: applied
                self._profiler.applied(ready)
        if not ready.entries:
            # The remote callers' answers, queued as their futures settled, leave now, ahead
            # of this Ready's commit broadcast and commit-index write.
            self._transport.flush()
            if ready.messages:
                self._transport.send(ready.messages)
        for read_state in ready.read_states:
            self._on_read_state(read_state.index, read_state.context)
        for first, last, _term in ready.dropped:
            for index in range(first, last + 1):
                pending = self._proposals.pop(index, None)
                if pending is not None and not pending[1].done():
                    pending[1].set_exception(errors.Rejected("proposal dropped before commit"))
        if self._reads_waiting_apply:
            self._serve_applied_reads()
        if (ready.entries or ready.hard_state is not None) and not self._save(ready):
            return
        self._after_persist(ready)

    def _save(self, ready: Ready) -> bool:
        """Persist the Ready's entries and hard state: one write and, unless nothing in it
        needs one, one fdatasync. Returns False if the write failed (the node is dead).

        The write runs on the loop thread. Measured on this 2-core machine, handing it to a
        storage thread cost more than the fdatasync itself (leader write p50 0.62 ms through
        run_in_executor vs 0.15 ms for a bare write + fdatasync: the thread hop, its wake-up
        and the GIL hand-back), and the loop has nothing else to do meanwhile: the core is not
        stepped while its Ready is unpersisted. The Ready's messages are already on their way,
        so followers write in parallel with the leader (Raft thesis §10.2.1).
        """
        hard_state = ready.hard_state
        # etcd's MustSync: entries, a new term or a new vote must be durable before anything
        # that depends on them goes out (Raft Figure 2, persistent state); the commit index is
        # volatile state, written along but never waited for.
        sync = bool(ready.entries) or (
            hard_state is not None and (hard_state.term, hard_state.vote) != self._synced_vote
        )
        try:
            self._storage.save(ready.entries, hard_state, sync=sync)
        except Exception as exc:
            # Nothing that depends on this write may be acknowledged (DESIGN.md §5): stop.
            self._die(exc)
            return False
        self.counters["saves"] += 1
        if sync:
            self.counters["syncs"] += 1
            if hard_state is not None:
                self._synced_vote = (hard_state.term, hard_state.vote)
        if self._profiler is not None:  # profiler hook: appended locally
            self._profiler.persisted(ready)
        return True

    def _after_persist(self, ready: Ready) -> None:
        """The Ready's entries and hard state are on disk: promises may go out."""
        if ready.messages_after_persist:
            # Acks and votes: the turn is their batch, so they need not wait for the loop.
            self._transport.send(ready.messages_after_persist)
            self._transport.flush()
        self._core.advance(ready)
        if self._snapshot_policy:
            self._maybe_snapshot(ready.committed_entries)

    def _apply(self, entries: list[Any]) -> None:
        state_machine = self.state_machine
        proposals = self._proposals
        normal = EntryKind.NORMAL
        # A witness holds no payloads (engine.raft.core "Witnesses"): it applies nothing.
        apply_normal = not self._witness
        for entry in entries:
            index = entry.index
            result: Any = b""
            kind = entry.kind
            if kind == normal:
                if apply_normal:
                    try:
                        result = state_machine.apply(index, entry.data)
                    except Exception as exc:  # the user's state machine: report, keep going
                        logger.exception("state machine raised at index %d", index)
                        result = errors.StateMachineError(
                            f"apply at index {index} raised {exc!r}")
            elif kind == EntryKind.CONFIG:
                # Never applied to the state machine (like NOOP); see _on_config_committed.
                self._on_config_committed(entry)
            self._applied = index
            pending = proposals.pop(index, None) if proposals else None
            if pending is None:
                continue
            term, future, _ = pending
            if future.done():
                continue
            if term != entry.term:
                future.set_exception(errors.Rejected(
                    f"entry {index} was replaced by a new leader (term {entry.term})"
                ))
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
        self.counters["applied"] += len(entries)

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
        self._since_snapshot_bytes += sum(len(entry.data) for entry in entries)
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
        from engine.raft.snapshot import encode_snapshot

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
        self.snapshot_stats["taken"] += 1
        self._core.compact(snapshot, compact_to=floor)

    def _persist_snapshot_ready(self, ready: Ready) -> None:
        """A snapshot from the leader: write it, compact the WAL at it and restore the state
        machine from it (all on the WAL thread), then handle the rest of the Ready."""
        snapshot = ready.snapshot
        assert snapshot is not None

        def install() -> None:
            from engine.raft.snapshot import encode_snapshot

            envelope = snapshot.envelope or encode_snapshot(snapshot)
            self._storage.save_snapshot(snapshot, envelope)
            self._storage.compact(snapshot.index, snapshot.term)
            if not self._witness:  # a witness's snapshots carry no state machine data
                self.state_machine.restore(snapshot.data)

        def finish() -> None:
            self._applied = snapshot.index
            self.snapshot_stats["installed"] += 1
            self._since_snapshot_entries = self._since_snapshot_bytes = 0
            for index in [i for i in self._proposals if i <= snapshot.index]:
                _, future, _ = self._proposals.pop(index)
                if not future.done():
                    future.set_exception(errors.Timeout(
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

    # ------------------------------------------------------------------ forwarding

    def _forward_waiting(self) -> None:
        leader_id = self._core.leader_id
        if not leader_id:
            return
        if leader_id == self.config.node_id:
            # We became leader meanwhile: propose them here.
            self._proposal_queue.extend(self._waiting_for_leader)
            self._waiting_for_leader.clear()
            self._submit_proposals()
            return
        messages = []
        while self._waiting_for_leader:
            command, future, deadline = self._waiting_for_leader.popleft()
            if future.done():
                continue
            self._forward_seq += 1
            self._forwarded[self._forward_seq] = (command, future, deadline)
            messages.append(Message(
                MessageType.CLIENT_REQUEST, src=self.config.node_id, dst=leader_id,
                seq=self._forward_seq, status=ClientOp.WRITE, context=command,
            ))
        if messages:
            self.counters["forwarded"] += len(messages)
            self._transport.send(messages)

    def _on_forward_response(self, message: Message) -> None:
        pending = self._forwarded.pop(message.seq, None)
        if pending is None:
            return
        command, future, deadline = pending
        if future.done():
            return
        status = message.status
        if status == ClientStatus.OK:
            future.set_result(message.context)
        elif status == ClientStatus.NOT_LEADER:
            # Definitely not applied there: forward again once a leader is known.
            self._waiting_for_leader.append((command, future, deadline))
            self._schedule_turn()
        elif status == ClientStatus.REJECTED:
            future.set_exception(errors.Rejected(message.context.decode(errors="replace")))
        elif status == ClientStatus.ERROR:
            future.set_exception(errors.StateMachineError(message.context.decode(errors="replace")))
        else:
            future.set_exception(errors.Timeout("the leader could not tell the outcome"))

    # ------------------------------------------------------------------ serving clients

    def _on_client_request(self, message: Message, address: Any) -> None:
        self.counters["client_requests"] += 1
        op = message.status
        if op == ClientOp.STATUS:
            self._reply(message, address, ClientStatus.OK,
                        json.dumps(self.status(), default=str).encode())
            return
        if not self._running:
            return
        # No task per request: the answer goes out the moment the outcome settles.
        def answer(done: asyncio.Future[bytes]) -> None:
            self._reply_outcome(message, address, done)

        try:
            if op == ClientOp.WRITE:
                leader_id = self._core.leader_id
                if leader_id != self.config.node_id:
                    self._reply_not_leader(message, address, leader_id)
                    return
                self._enqueue_proposal(message.context, None, answer)
            elif op == ClientOp.READ:
                if not self._core.leader_id:
                    self._reply_not_leader(message, address, None)
                    return
                # Message.index carries the read mode: READ_MODES[index] (0 = linearizable).
                if message.index == 0:
                    self._enqueue_read(message.context, None, answer)
                elif message.index < len(READ_MODES):
                    assert self._loop is not None
                    self._loop.create_task(
                        self.read(message.context, mode=READ_MODES[message.index])
                    ).add_done_callback(answer)
                else:
                    self._reply(message, address, ClientStatus.REJECTED, b"unknown read mode")
                    return
            else:
                self._reply(message, address, ClientStatus.REJECTED, b"unknown client op")
                return
        except errors.EngineError as exc:
            self._reply_error(message, address, exc)

    def _reply_outcome(self, message: Message, address: Any, done: asyncio.Future[bytes]
                       ) -> None:
        if done.cancelled():
            self._reply(message, address, ClientStatus.UNKNOWN, b"outcome unknown")
        elif (exc := done.exception()) is not None:
            self._reply_error(message, address, exc)
        else:
            self._reply(message, address, ClientStatus.OK, done.result())

    def _reply_error(self, message: Message, address: Any, exc: BaseException) -> None:
        if isinstance(exc, errors.NotLeader):
            self._reply_not_leader(message, address, exc.leader_id)
        elif isinstance(exc, errors.Rejected):
            self._reply(message, address, ClientStatus.REJECTED, str(exc).encode())
        elif isinstance(exc, errors.StateMachineError):
            self._reply(message, address, ClientStatus.ERROR, str(exc).encode())
        else:  # Timeout, Stopped, anything unexpected: the outcome is unknown
            self._reply(message, address, ClientStatus.UNKNOWN, b"outcome unknown")

    def _reply_not_leader(self, request: Message, address: Any, leader_id: int | None) -> None:
        """NOT_LEADER carries the leader's id (reject_hint) and address (context)."""
        hint = self._address_of(leader_id or 0)
        self._reply(request, address, ClientStatus.NOT_LEADER, hint.encode(), leader_id or 0)

    def _reply(self, request: Message, address: Any, status: int, context: bytes,
               leader_hint: int = 0) -> None:
        if self._transport is None:
            return
        response = Message(
            MessageType.CLIENT_RESPONSE, src=self.config.node_id, dst=request.src,
            seq=request.seq, status=int(status), context=context, reject_hint=leader_hint,
        )
        if request.src in self.config.members and request.src != self.config.node_id:
            self._transport.send([response])
        else:
            self._transport.send_to_address(address, [response])

    def _on_admin(self, message: Message, address: Any) -> None:
        """Fault injection for tests (engine.testing): switch the transport's fault filter
        and the clock-rate skew "tick_scale" (see _schedule_tick); CLEAR_FAULTS resets both.

        Frames are authenticated with the cluster key like all traffic; on top of that a node
        obeys only when started with allow_fault_injection=True.
        """
        if message.status == AdminOp.TRANSFER_LEADER:
            self._admin_transfer(message, address)
            return
        if message.status in _MEMBERSHIP_ADMIN_OPS:
            self._admin_membership(message, address)
            return
        if message.status == AdminOp.MEMBER_REMOVED:
            self._on_removal_notice(message)
            return
        if not self.config.allow_fault_injection:
            self._reply_admin(message, address, ClientStatus.REJECTED,
                              b"fault injection is disabled on this node")
            return
        try:
            if message.status == AdminOp.SET_FAULTS:
                spec = json.loads(message.context or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("fault spec must be a JSON object")
                # "tick_scale" (clock-rate skew): validated before anything changes; a spec
                # with only it leaves the transport's filter (e.g. a partition) as it is.
                skew_only = set(spec) == {"tick_scale"}
                scale = float(spec.pop("tick_scale", self._tick_scale))
                if not 0.1 <= scale <= 10.0:  # NaN fails too
                    raise ValueError(f"tick_scale must be in [0.1, 10], got {scale}")
                if not skew_only:
                    self._transport.set_fault_filter(
                        spec.get("drop_to"), spec.get("drop_from"),
                        float(spec.get("loss", 0.0)), float(spec.get("duplicate", 0.0)),
                        float(spec.get("delay_ms", 0.0)),
                        jitter_ms=float(spec.get("jitter_ms", 0.0)), seed=int(spec.get("seed", 0)),
                    )
                self._tick_scale = scale
            elif message.status == AdminOp.CLEAR_FAULTS:
                self._transport.clear_fault_filter()
                self._tick_scale = 1.0
            else:
                raise ValueError(f"unknown admin op {message.status}")
        except (ValueError, TypeError, errors.ConfigError) as exc:
            self._reply_admin(message, address, ClientStatus.REJECTED, str(exc).encode())
            return
        self._reply_admin(message, address, ClientStatus.OK, b"")

    def _admin_transfer(self, message: Message, address: Any) -> None:
        """Operator-requested leadership transfer; answered when it completes or fails."""
        try:
            target = int(json.loads(message.context or b"{}")["to"])
        except (ValueError, TypeError, KeyError):
            self._reply_admin(message, address, ClientStatus.REJECTED,
                              b'transfer needs JSON {"to": node_id}')
            return
        if self._core.leader_id != self.config.node_id:
            hint = self._address_of(self._core.leader_id or 0)
            self._reply_admin(message, address, ClientStatus.NOT_LEADER, hint.encode())
            return

        async def transfer() -> None:
            try:
                await self.transfer_leadership(target)
            except errors.EngineError as exc:
                self._reply_admin(message, address, ClientStatus.REJECTED, str(exc).encode())
            else:
                self._reply_admin(message, address, ClientStatus.OK, b"")

        assert self._loop is not None
        self._loop.create_task(transfer())

    def _reply_admin(self, request: Message, address: Any, status: int, context: bytes) -> None:
        self._transport.send_to_address(address, [Message(
            MessageType.ADMIN_RESPONSE, src=self.config.node_id, dst=request.src,
            seq=request.seq, status=int(status), context=context,
        )])

    # ---- membership (Raft thesis §4)
    #
    # The core does the protocol (engine/raft/membership.py, docs/interfaces.md "Membership
    # changes"); this section is the driver's part:
    #   * operations: add_member = add as learner, wait for catch-up, promote (joint
    #     consensus, §4.3); remove_member; promote. One change at a time: the core's
    #     ConfChangeInProgress is retried here until the deadline. Each waits for an OUTCOME
    #     (the committed configuration has the wanted shape), so it also completes when
    #     leadership moves and the new leader finishes the joint change.
    #   * the transport's peer set follows the configuration in force, which takes effect
    #     when appended (§4.1): _follow_membership runs before each Ready is sent;
    #   * a removed node goes quiet (§4.2.3): once it applies a committed configuration that
    #     removes it, or hears so from the leader (MEMBER_REMOVED: a removed follower is
    #     never sent the entry that completes its removal), its core never ticks again and it
    #     sends nothing; status() reports "removed".
    #   * a witness applies no NORMAL entries, restores no snapshot data, serves no reads.

    def members(self) -> dict[str, Any]:
        """The configuration in force on this node: voters, old_voters (joint), learners,
        witnesses, addresses, plus "index" (its CONFIG entry), "pending" (a change not yet
        committed or still joint) and "removed". Paxos: the static members."""
        core = self._core
        if not self._track_membership or core is None:
            return {
                "voters": sorted(self.config.members), "old_voters": [], "learners": [],
                "witnesses": [], "joint": False,
                "addresses": {str(i): a for i, a in sorted(self.config.members.items())},
                "index": 0, "pending": False, "removed": False,
            }
        view: dict[str, Any] = core.membership.to_dict()
        view["index"] = core.membership_index
        view["pending"] = core.conf_change_pending
        view["removed"] = bool(self._removed)
        return view

    async def add_member(self, node_id: int, address: str, *, learner: bool = False,
                         witness: bool = False, timeout: float | None = None
                         ) -> dict[str, Any]:
        """Add node `node_id` at `address` ("host:port"); returns members() once the final
        configuration is committed. Start the new node first with NodeConfig(join=True[,
        witness=True]) (or `serve --join`).

        learner=True stops after the learner is added (thesis §4.2.1: it gets the log, never
        votes). Otherwise the learner is promoted once its log is within
        promote_max_lag_entries of the leader's (§4.2.1: so the cluster never waits for a
        new voter to catch up) through joint consensus (§4.3). witness=True adds a witness
        (stores log metadata only, never leads). Idempotent: a node that already is the
        wanted kind of member at that address is not changed (a retry after Timeout).

        Leader only. Raises NotLeader (leader_id / leader_address hint), MembershipError
        (invalid or unsafe: already a different member, W1 broken, ...), Rejected (the entry
        was overwritten by a new leader: nothing changed), Timeout (unknown: the change may
        still complete), Stopped.
        """
        from engine.raft import membership as changes

        core = self._membership_core()
        try:
            parse_address(address)
        except errors.ConfigError as exc:
            raise errors.MembershipError(f"node {node_id}: {exc}") from None
        deadline = self._membership_deadline(timeout)
        current = core.membership
        if node_id in current.voters or node_id in current.learners:
            self._check_same_member(node_id, address, witness)
            await self._wait_committed(lambda m: node_id in m.members, deadline)
        else:
            entry = await self._propose_membership(
                changes.add_learner(node_id, address, witness=witness), deadline)
            await self._wait_committed(lambda m: node_id in m.members, deadline, entry)
        if not learner:
            await self._promote_when_caught_up(node_id, deadline)
        return self.members()

    async def promote(self, node_id: int, *, timeout: float | None = None) -> dict[str, Any]:
        """Make learner `node_id` a voter once it is caught up (thesis §4.2.1, §4.3); returns
        members() once C_new is committed. Errors as add_member."""
        self._membership_core()
        await self._promote_when_caught_up(node_id, self._membership_deadline(timeout))
        return self.members()

    async def remove_member(self, node_id: int, *, timeout: float | None = None
                            ) -> dict[str, Any]:
        """Remove `node_id` (voter: through joint consensus, §4.3; learner: one entry);
        returns members() once the configuration without it is committed. Removing the
        leader itself is allowed: it manages the change without counting itself and steps
        down once C_new commits (§4.2.2). The removed node goes quiet (see above). Leader
        only; errors as add_member (MembershipError for a non-member or the last voter)."""
        from engine.raft import membership as changes

        self._membership_core()
        deadline = self._membership_deadline(timeout)
        entry = await self._propose_membership(changes.remove(node_id), deadline)
        await self._wait_committed(lambda m: node_id not in m.members, deadline, entry)
        return self.members()

    def _membership_core(self) -> Any:
        """The Raft core, if membership operations may run here now; else raises."""
        if not self._track_membership:
            raise errors.MembershipError("membership changes need protocol='raft'")
        self._check_running()
        return self._core

    def _membership_deadline(self, timeout: float | None) -> float:
        assert self._loop is not None
        # A change takes a few round trips plus catch-up: allow more than one request.
        return self._loop.time() + (timeout or 3 * self.config.request_timeout_s)

    def _not_leader(self) -> errors.NotLeader:
        leader_id = self._core.leader_id or None
        return errors.NotLeader(
            f"node {self.config.node_id} is not the leader", leader_id=leader_id,
            leader_address=self._address_of(leader_id or 0) or None)

    def _check_same_member(self, node_id: int, address: str, witness: bool) -> None:
        membership = self._core.membership
        known = membership.address_map().get(node_id, "")
        if (known and known != address) or membership.is_witness(node_id) != witness:
            kind = "witness" if membership.is_witness(node_id) else "full member"
            raise errors.MembershipError(
                f"node {node_id} is already a member ({kind} at {known or '?'}); remove it "
                "first (and wipe its data) to add it differently")

    async def _propose_membership(self, op: Any, deadline: float) -> tuple[int, int]:
        """Propose one change on the leader, retrying while another is in flight (one change
        at a time, thesis §4.3); returns its CONFIG entry's (index, term)."""
        assert self._loop is not None
        tick_s = self.config.timing.tick_ms / 1000.0
        while True:
            self._check_running()
            if str(self._core.role) != "leader":
                raise self._not_leader()
            try:
                entry: tuple[int, int] = self._core.propose_conf_change(op)
            except (errors.ConfChangeInProgress, errors.Overloaded) as exc:
                # Another change (or a leadership transfer) is in flight: retry shortly.
                if self._loop.time() > deadline:
                    raise errors.Timeout(f"membership change not started in time: {exc}") from None
                await asyncio.sleep(tick_s)
                continue
            except errors.NotLeader:
                raise self._not_leader() from None
            self._schedule_turn()
            return entry

    async def _wait_committed(self, wanted: Callable[[Any], bool], deadline: float,
                              entry: tuple[int, int] | None = None) -> None:
        """Wait until the configuration committed here satisfies `wanted` (whichever leader
        committed it). `entry` = our CONFIG entry's (index, term): if another entry was
        committed at its index, ours can never commit (Rejected: nothing changed)."""
        assert self._loop is not None
        tick_s = self.config.timing.tick_ms / 1000.0
        while True:
            core = self._core
            commit = core.commit_index
            if wanted(core.configuration_at(commit)) and not self._joint_at(commit):
                return
            if entry is not None and commit >= entry[0] and self._term_at(entry[0]) not in (
                    entry[1], -1):
                raise errors.Rejected(
                    f"the configuration entry at {entry[0]} was replaced by a new leader's "
                    "log: nothing changed")
            if self._loop.time() > deadline:
                raise errors.Timeout(
                    "membership change not committed in time (it may still complete)")
            self._check_running()
            await asyncio.sleep(tick_s)

    def _joint_at(self, index: int) -> bool:
        return bool(self._core.configuration_at(index).joint)

    def _term_at(self, index: int) -> int:
        """The log's term at index, -1 if compacted away (then it was committed)."""
        try:
            return int(self._core.log.term(index))
        except errors.LogIndexError:
            return -1

    async def _promote_when_caught_up(self, node_id: int, deadline: float) -> None:
        """Thesis §4.2.1: promote a learner only once its log is (nearly) the leader's; the
        core refuses earlier with MembershipError, which here means "wait"."""
        from engine.raft import membership as changes

        assert self._loop is not None
        tick_s = self.config.timing.tick_ms / 1000.0

        def promoted(m: Any) -> bool:
            return node_id in m.voters

        while True:
            core = self._core
            committed = core.configuration_at(core.commit_index)
            if promoted(committed) and not committed.joint:
                return
            try:
                if self._catching_up(node_id):
                    raise errors.MembershipError(f"learner {node_id} is not caught up")
                entry = await self._propose_membership(changes.promote(node_id), deadline)
            except errors.MembershipError:
                if not self._catching_up(node_id):
                    raise
                if self._loop.time() > deadline:
                    raise errors.Timeout(
                        f"learner {node_id} did not catch up in time (lag "
                        f"{self._learner_lag(node_id)} entries)") from None
                await asyncio.sleep(tick_s)
                continue
            await self._wait_committed(promoted, deadline, entry)
            return

    def _learner_lag(self, node_id: int) -> int | None:
        progress = self._core.status().get("progress", {}).get(node_id)
        return None if progress is None else self._core.log.last_index - progress["match"]

    def _catching_up(self, node_id: int) -> bool:
        """A learner that has not acknowledged anything yet (the core's lag rule alone would
        promote a dead learner while the log is short: its lag is small), or whose lag is
        above the promotion limit."""
        core = self._core
        if node_id not in core.membership.learners or str(core.role) != "leader":
            return False
        progress = core.status().get("progress", {}).get(node_id)
        if progress is None or progress["match"] == 0:
            return True
        return bool(core.log.last_index - progress["match"] > core.config.promote_max_lag_entries)

    def _admin_membership(self, message: Message, address: Any) -> None:
        """ADD_MEMBER / REMOVE_MEMBER / PROMOTE_MEMBER from an operator (Client, CLI):
        leader only (NOT_LEADER with the leader's address otherwise), answered when done."""
        try:
            spec = json.loads(message.context or b"{}")
            node_id = int(spec["id"])
            if not isinstance(spec, dict) or node_id <= 0:
                raise ValueError
        except (ValueError, TypeError, KeyError):
            self._reply_admin(message, address, ClientStatus.REJECTED, _error_payload(
                errors.MembershipError('membership ops need JSON {"id": positive node id}')))
            return
        if not self._track_membership or self._removed or not self._running:
            reason = self._removed or "membership changes need protocol='raft'"
            self._reply_admin(message, address, ClientStatus.REJECTED,
                              _error_payload(errors.MembershipError(reason)))
            return
        if str(self._core.role) != "leader":
            hint = self._address_of(self._core.leader_id or 0)
            self._reply_admin(message, address, ClientStatus.NOT_LEADER, hint.encode())
            return
        op = message.status
        try:  # the client's remaining time, so the answer comes before it gives up
            timeout: float | None = min(max(float(spec.get("timeout", 0)), 0.0), 3600.0) or None
        except (ValueError, TypeError):
            timeout = None

        async def change() -> dict[str, Any]:
            if op == AdminOp.ADD_MEMBER:
                return await self.add_member(
                    node_id, str(spec.get("address", "")), learner=bool(spec.get("learner")),
                    witness=bool(spec.get("witness")), timeout=timeout)
            if op == AdminOp.PROMOTE_MEMBER:
                return await self.promote(node_id, timeout=timeout)
            return await self.remove_member(node_id, timeout=timeout)

        async def run() -> None:
            try:
                result = await change()
            except errors.NotLeader as exc:
                self._reply_admin(message, address, ClientStatus.NOT_LEADER,
                                  (exc.leader_address or "").encode())
            except (errors.Rejected, errors.ConfigError) as exc:
                self._reply_admin(message, address, ClientStatus.REJECTED, _error_payload(exc))
            except errors.EngineError as exc:  # Timeout, Stopped: the outcome is unknown
                self._reply_admin(message, address, ClientStatus.UNKNOWN, _error_payload(exc))
            else:
                self._reply_admin(message, address, ClientStatus.OK,
                                  json.dumps(result).encode())

        assert self._loop is not None
        self._loop.create_task(run())

    def _address_of(self, node_id: int) -> str:
        """A member's "host:port": the configuration in force first (it may have been added
        after this node started), then the bootstrap members; "" if unknown."""
        if self._track_membership and self._core is not None:
            return self._known_addresses().get(node_id, "")
        return self.config.members.get(node_id, "")

    def _known_addresses(self) -> dict[int, str]:
        """Addresses from the bootstrap members and every configuration in the log (newer
        ones win)."""
        addresses = dict(self.config.members)
        for _, membership in self._core.configurations():
            addresses.update(membership.address_map())
        return addresses

    def _member_peers(self) -> dict[int, str]:
        """The nodes this node may have to talk to, with their addresses: the members of the
        committed configuration and of every configuration appended after it. A leader that
        is not in C_new leads until C_new commits (thesis §4.2.2), so its followers, which
        appended C_new, must still answer it. A removed node: none, so it sends nothing."""
        if not self._track_membership:
            return {i: a for i, a in self.config.members.items() if i != self.config.node_id}
        if self._removed:
            return {}
        core = self._core
        commit = core.commit_index
        wanted = set(core.configuration_at(commit).members)
        for index, membership in core.configurations():
            if index > commit:
                wanted |= membership.members
        addresses = self._known_addresses()
        wanted.discard(self.config.node_id)
        return {member: addresses[member] for member in wanted if member in addresses}

    def _configuration_at(self, index: int) -> bytes:
        """Snapshot.configuration for a snapshot at `index` (b"" for Paxos)."""
        if not self._track_membership:
            return b""
        from engine.raft.membership import encode_membership

        return encode_membership(self._core.configuration_at(index))

    def _snapshot_is_witness_own(self, snapshot: Any) -> bool:
        """At start, before the core exists: does the snapshot's configuration make this node
        a witness (it then restores no state machine data)?"""
        if not self._track_membership or not getattr(snapshot, "configuration", b""):
            return False
        from engine.raft.membership import decode_membership

        try:
            return decode_membership(snapshot.configuration).is_witness(self.config.node_id)
        except errors.DecodeError:
            return False  # the core refuses it with a clear error right after

    def _follow_membership(self) -> None:
        """A new configuration is in force (appended, or reverted by a truncation, §4.1):
        the transport learns new members' addresses and forgets removed ones."""
        core = self._core
        self._membership_seen = core.membership
        self._witness = self._witness or bool(core.is_witness)
        self._transport.update_peers(self._member_peers())
        for member in [m for m in self._removal_notices if m in core.membership.members]:
            del self._removal_notices[member]  # re-added: no longer removed

    def _on_config_committed(self, entry: Any) -> None:
        """A committed CONFIG entry is applied (in log order). If it takes this node out of
        the cluster, go quiet; a leader notes the nodes it removed, to tell them."""
        from engine.raft.membership import decode_membership

        index = entry.index
        core = self._core
        new = decode_membership(entry.data)
        # Committed: members only the superseded configuration had are forgotten now.
        self._transport.update_peers(self._member_peers())
        before = core.configuration_at(index - 1)
        # The bootstrap configuration of a node that joined is not history (it names the
        # voters of when it joined): only real configurations count as "was a member".
        real_before = not (self.config.join and self._config_index_before(index) == 0)
        me = self.config.node_id
        if (real_before and me in before.members and me not in new.voters
                and me not in new.learners and str(core.role) != "leader"):
            # C_old,new without us in C_new (or a simple config without us) is committed: the
            # change completes without us (thesis §4.2.2; etcd stops a removed member here).
            # A leader leaving keeps managing until C_new commits, then steps down first.
            self._go_quiet(f"node {me} was removed from the cluster (configuration at {index})")
            return
        if str(core.role) == "leader" and real_before:
            addresses = before.address_map()
            for gone in before.members - new.members - {me}:
                if gone in addresses:
                    self._removal_notices[gone] = [addresses[gone], index, _REMOVAL_NOTICES]

    def _config_index_before(self, index: int) -> int:
        """The index of the CONFIG entry in force at index - 1 (0: the bootstrap one)."""
        found = 0
        for config_index, _ in self._core.configurations():
            if config_index < index:
                found = config_index
        return found

    def _check_removed_at_start(self) -> None:
        """A node restarted after its removal was compacted into its snapshot: the snapshot's
        configuration (and every later one in the log) lacks it. Joined nodes are skipped
        (their bootstrap names other voters); replayed CONFIG entries cover the rest."""
        if not self._track_membership or self.config.join:
            return
        core = self._core
        me = self.config.node_id
        base_index, _ = core.configurations()[0]
        if base_index > 0 and me not in core.membership.members:
            self._go_quiet(f"node {me} was removed from the cluster (snapshot at {base_index})")

    def _send_removal_notices(self) -> None:
        """Leader: tell nodes it removed that their removal committed, once per heartbeat
        interval, a bounded number of times (they are no longer sent any entry)."""
        if str(self._core.role) != "leader" or self._removed:
            self._removal_notices.clear()
            return
        if self._ticks % self.config.timing.heartbeat_interval_ticks:
            return
        for member, notice in list(self._removal_notices.items()):
            address, index, left = notice
            self._transport.send_to_address(parse_address(address), [Message(
                MessageType.ADMIN, src=self.config.node_id, dst=member,
                status=int(AdminOp.MEMBER_REMOVED), context=json.dumps({"index": index}).encode(),
            )])
            notice[2] = left - 1
            if left <= 1:
                del self._removal_notices[member]

    def _on_removal_notice(self, message: Message) -> None:
        """MEMBER_REMOVED from the leader (authenticated like all traffic). Refused if this
        node's own log holds a newer configuration that includes it (an id re-added)."""
        if not self._track_membership or self._removed or self._core is None:
            return
        try:
            index = int(json.loads(message.context)["index"])
        except (ValueError, TypeError, KeyError):
            return
        core = self._core
        me = self.config.node_id
        membership = core.membership
        if core.membership_index >= index and (me in membership.voters
                                               or me in membership.learners):
            return
        if str(core.role) == "leader":
            return
        self._go_quiet(f"node {me} was removed from the cluster (configuration at {index}, "
                       f"told by leader {message.src})")

    def _go_quiet(self, reason: str) -> None:
        """Thesis §4.2.3: a removed node that keeps running only disrupts. Stop ticking the
        core (no campaigns), forget every peer (nothing is sent), fail pending requests;
        status and client STATUS still answer, reporting "removed"."""
        if self._removed:
            return
        logger.warning("%s: going quiet", reason)
        self._removed = reason
        self._removal_notices.clear()
        if self._transport is not None:
            self._transport.update_peers({})
        self._fail_everything(errors.MembershipError(reason))

    def _refuse_witness_read(self) -> None:
        if self._witness:
            raise errors.Rejected(
                f"node {self.config.node_id} is a witness: it holds no state machine data; "
                "read from a full member")

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
                    # Never sent anywhere: a definite no, not an unknown.
                    item[1].set_exception(errors.NotLeader("no leader known in time"))
                elif not item[1].done():
                    keep.append(item)
            self._waiting_for_leader = keep
        self._expire_reads(now)

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

    def _fail_everything(self, error: errors.EngineError) -> None:
        futures: list[asyncio.Future[Any]] = []
        futures += [f for _, f, _ in self._proposal_queue]
        futures += [f for _, f, _ in self._proposals.values()]
        futures += [f for _, f, _ in self._waiting_for_leader]
        futures += [f for _, f, _ in self._forwarded.values()]
        futures += [r.future for r in self._read_queue]
        for reads, _ in self._read_rounds.values():
            futures += [r.future for r in reads]
        for _, reads in self._reads_waiting_apply:
            futures += [r.future for r in reads]
        for future in futures:
            if not future.done():
                future.set_exception(type(error)(str(error)))
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
