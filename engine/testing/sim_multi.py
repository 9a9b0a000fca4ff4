"""Deterministic simulation of many consensus groups per process (FoundationDB / VOPR style):
P simulated processes, each running ONE engine.host.Host with G groups, every group
replicated on every process. The host and the drivers are the shipped ones
(engine.host.Host, engine.driver.Driver); only the world around them is simulated.

One seed drives every choice (random.Random(seed)); events are ordered by (time, sequence), so
a run is a pure function of its seed, and `trace_hash` (SHA-256 of the event trace) proves it.

The model
  processes  process p hosts one replica of every group g (ids 1..G) in one Host: drivers built
             with `call_soon=host.group_call_soon`, bound by `host.add_group` to the host's
             GroupTransport / GroupStorage. The host's own `call_soon` is the simulator's turn
             queue (turns run after each event, in order, like loop.call_soon).
  network    the process's transport buffers what the groups send and, at `flush()` and at the
             end of every event (the UDP transport's end-of-loop-turn flush), sends ONE
             datagram per peer process carrying every group's messages. A datagram may be
             lost, duplicated and delayed (uniform in [min, max] ms, so datagrams reorder);
             partitions cut links both ways or one way. On arrival the shell's split is
             modelled (engine.Node's): forwarded client requests are served by the group's
             driver, their answers go to `Driver.on_forward_response`, consensus messages to
             `Host.receive`.
  disk       one simulated disk per process holding one sim_disk.SimDisk per group.
             `save_many([(group, entries, hard_state), ...], sync=)` answers PENDING and
             completes after a simulated fsync (`fsync_min_ms..fsync_max_ms`), then the shell
             calls `host.persisted()`. Snapshot files and WAL compaction markers are written by
             the drivers' storage and snapshot jobs, run as events.
  crashes    a crash loses the batch in flight (one WAL record: all of it or none) and
             everything in memory (with faults.unsynced_crash a process also crashes at the
             fsync's completion, instead of it); a restart rebuilds every group's core and
             state machine from its SimDisk (the snapshot file, then the log after it).
  replicas   one group's replica may be rebuilt in place inside a running process
             (`restart_group`: Host.remove_group, then add_group of a new driver and core
             built from the group's disk), while none of its storage work is under way.
  clock      simulated time; each process calls `host.tick()` every tick (processes are not
             in phase).
  clients    propose unique commands to random groups, at the replica leading that group
             (`Driver.submit`: the command joins that group's proposal batch of the next host
             turn); sometimes at a follower, which forwards it (the driver's forwarding and the
             shell's relay). Every outcome is recorded; acknowledged ones must survive. Reads
             go to any replica (`Driver.enqueue_read`: the turn's ReadIndex round), each
             checked against everything committed anywhere when it began.

Invariants (InvariantViolation, reported as SimulationFailure with the seed)
  per group    the single-group checkers, one per group, through the protocol adapters of the
               one-group simulator (sim_raft.RaftProtocol: engine.testing.invariants
               .ClusterChecker; sim_paxos.PaxosProtocol: paxos_invariants.PaxosChecker):
               election safety, log matching, leader completeness, state machine safety,
               a leader's commit held by a quorum of disks, durable votes, durability (every
               committed entry on a quorum of disks at every crash and restart), snapshot
               state equal to the committed history; linearizable reads; honest outcomes (no
               operation answered with a definite failure is applied).
  no acknowledged write lost   after the faulty phase the network is healed and every process
               restarted; within a bounded simulated time every acknowledged command must be
               applied on every replica of its group (`settle`).
  host-level   groups never cross: a group's core steps only messages carrying its group id
               (checked on every `core.step`); at most one `save_many` in flight per process,
               at most one per host turn and per completion, no group twice in one; every
               group's save joins the host's batch (each driver's saves equal the batches it
               appeared in, plus the one being built); syncs are counted per process
               (`syncs`), per group (`group_syncs`), so a test can show that the number of
               fsyncs follows the turns, not the number of groups.

Not modelled here: quiescence (every hosted group ticks), groups placed on a subset of the
processes, membership changes, splits, merges and moves of ranges.

Usage:
    sim = MultiSim(processes=3, groups=16, seed=7, faults=MultiFaults(loss=0.05, ...))
    sim.run_for(3_000); sim.settle()
    run_multi_swarm(seed, groups=4)     # draws the fault rates from the seed
    python -m engine.testing.sim_multi --seeds 100 --groups 16 --protocol paxos --fault-ms 5000
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import heapq
import random
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.driver import PENDING, Driver
from engine.errors import (
    ConfigError,
    EngineError,
    InvariantViolation,
    NotLeader,
    Rejected,
    StateMachineError,
    Stopped,
    Superseded,
)
from engine.host import Host
from engine.limits import Limits, TimingConfig
from engine.messages import ClientStatus, EntryKind, Message, MessageType
from engine.paxos.core import IDENTITY_BYTES
from engine.raft.membership import encode_membership
from engine.testing.invariants import ClusterChecker, check_definite_failures_not_applied
from engine.testing.sim_node import SimNode
from engine.testing.sim_paxos import PaxosProtocol
from engine.testing.sim_raft import RaftProtocol
from engine.types import HardState, Ready, Snapshot

_TICK, _DELIVER, _PERSIST, _CLIENT, _NEMESIS, _JOB, _CRASH, _RESTART = range(8)
_PACK = struct.Struct("<qBqqqqq").pack
_LEADER = "leader"  # both cores' Role.LEADER (a StrEnum) compare equal to it
_NORMAL = int(EntryKind.NORMAL)
_CLIENT_REQUEST = int(MessageType.CLIENT_REQUEST)
_CLIENT_RESPONSE = int(MessageType.CLIENT_RESPONSE)
_WRITE_STATUS = 1  # engine.messages.ClientOp.WRITE (a forwarded proposal)
# A simulated proposal not answered in this long times out (engine.Node's request timeout).
REQUEST_TIMEOUT_S = 10.0
# Bounded work while settling: a healed cluster of 3 processes x 16 groups settles in far
# fewer events; more means a message storm (a liveness bug).
SETTLE_MAX_EVENTS = 400_000

ProtocolName = Literal["raft", "paxos"]


class SimulationFailure(AssertionError):
    """An invariant or liveness requirement failed; the message names the seed."""


@dataclass(frozen=True, slots=True)
class MultiFaults:
    """Fault rates and load of one run. Probabilities are per datagram / per nemesis step."""

    loss: float = 0.0
    duplicate: float = 0.0
    delay_min_ms: int = 1
    delay_max_ms: int = 3
    fsync_min_ms: int = 1
    fsync_max_ms: int = 2
    nemesis_interval_ms: int = 100
    partition: float = 0.0   # P(start a partition) per nemesis step
    heal: float = 0.0        # P(heal partitions) per nemesis step
    crash: float = 0.0       # P(crash a random up process) per nemesis step
    restart: float = 0.0     # P(restart a random down process) per nemesis step
    propose_interval_ms: int = 0   # 0: no background clients
    forward: float = 0.0     # P(a client proposes at a follower, which forwards)
    unsynced_crash: float = 0.0   # P(the process crashes instead of completing an fsync)
    group_restart: float = 0.0    # P(one group's replica is rebuilt in place) per nemesis step
    read: float = 0.0        # P(a client step is a linearizable read instead of writes)

    @classmethod
    def swarm(cls, rng: random.Random) -> MultiFaults:
        """Each seed draws its own fault rates (swarm testing)."""
        delay_min = rng.randint(0, 10)
        fsync_min = rng.randint(0, 5)
        return cls(
            loss=0.0 if rng.random() < 0.2 else rng.uniform(0.0, 0.2),
            duplicate=0.0 if rng.random() < 0.3 else rng.uniform(0.0, 0.2),
            delay_min_ms=delay_min,
            delay_max_ms=delay_min + rng.randint(0, 30),
            fsync_min_ms=fsync_min,
            fsync_max_ms=fsync_min + rng.randint(0, 10),
            partition=rng.uniform(0.0, 0.2),
            heal=rng.uniform(0.1, 0.5),
            crash=0.0 if rng.random() < 0.2 else rng.uniform(0.0, 0.15),
            restart=rng.uniform(0.2, 0.6),
            propose_interval_ms=rng.randint(2, 20),
            forward=rng.uniform(0.0, 0.3),
            unsynced_crash=0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.01),
            group_restart=0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.5),
            read=rng.uniform(0.0, 0.3),
        )

    def healed(self) -> MultiFaults:
        """The same delays with every fault and the background load off."""
        return MultiFaults(delay_min_ms=self.delay_min_ms, delay_max_ms=self.delay_max_ms,
                           fsync_min_ms=self.fsync_min_ms, fsync_max_ms=self.fsync_max_ms)


# ---------------------------------------------------------------------- one group's view

class GroupView:
    """engine.testing.sim_node.SimulationView of one group: what the one-group protocol
    adapters (sim_raft, sim_paxos) read and call, so each group gets the single-group
    simulator's checker unchanged."""

    lease_reads_enabled = False

    def __init__(self, sim: MultiSim, group: int) -> None:
        self.group = group
        self._sim = sim
        self.initial_voters: tuple[int, ...] = sim.process_ids
        self.nodes: dict[int, SimNode] = {p: SimNode(p) for p in sim.process_ids}
        self.stats: dict[str, int] = collections.defaultdict(int)
        self.snapshot_counters: dict[int, dict[str, int]] = {}
        self.rng = sim.rng
        self.timing = sim.timing
        self.limits = sim.limits
        self.check_invariants = sim.check_invariants
        self.protocol: Any = (
            RaftProtocol(self, pre_vote=True, check_quorum=True, witnesses=frozenset())
            if sim.protocol == "raft" else PaxosProtocol(self))
        # Commands of this group acknowledged to their clients.
        self.acked: set[bytes] = set()

    @staticmethod
    def address(node_id: int) -> str:
        return f"10.0.0.{node_id}:7000"

    def check_durable(self) -> None:
        """Raft: every committed entry of this group is on a quorum of its disks."""
        checker = self.protocol.checker
        if isinstance(checker, ClusterChecker):
            checker.check_durable_membership(
                {i: n.disk.term for i, n in self.nodes.items()}, list(self.nodes))

    def messages_in_flight(self) -> Iterator[Any]:
        group = self.group
        for message in self._sim.messages_in_flight():
            if message.group == group:
                yield message

    def on_new_leader(self, node_id: int) -> None:
        """No transfers to track here."""

    def leader(self) -> int | None:
        """The up replica leading the highest term (ballot), if any."""
        best: tuple[int, int] | None = None
        for node in self.nodes.values():
            core = node.core
            if core is not None and core.role == _LEADER and (best is None or core.term > best[0]):
                best = (core.term, node.node_id)
        return None if best is None else best[1]

    def applied_commands(self, node: SimNode) -> set[bytes]:
        """The client commands node's state machine applied (no-ops excluded)."""
        if self._sim.protocol == "raft":
            return {bytes(c) for c in node.applied}
        return {data[IDENTITY_BYTES:] for kind, data in node.applied
                if kind == _NORMAL and len(data) > IDENTITY_BYTES}


# ---------------------------------------------------------------------- the driver's world

class Outcome:
    """A client's proposal outcome (the future surface the driver resolves)."""

    __slots__ = ("_sim", "group", "command", "_done")

    def __init__(self, sim: MultiSim, group: int, command: bytes) -> None:
        self._sim = sim
        self.group = group
        self.command = command
        self._done = False

    def done(self) -> bool:
        return self._done

    def _settle(self, error: EngineError | None) -> None:
        if self._done:
            raise InvariantViolation(f"the outcome of {self.command!r} was set twice")
        self._done = True
        self._sim._answer(self.group, self.command, error)

    def set_result(self, result: Any) -> None:
        self._settle(None)

    def set_exception(self, exception: BaseException) -> None:
        if not isinstance(exception, EngineError):
            raise exception
        self._settle(exception)


class ReadOutcome:
    """A linearizable read's outcome (Driver.enqueue_read: the turn's ReadIndex round): the
    answer is the applied index it was served at (SimStateMachine.query), which must reach
    everything committed anywhere when the read began."""

    __slots__ = ("_sim", "_view", "_node_id", "_floor", "_done")

    def __init__(self, sim: MultiSim, view: GroupView, node_id: int) -> None:
        self._sim, self._view, self._node_id = sim, view, node_id
        self._floor = view.protocol.read_floor(view)
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any) -> None:
        self._done = True
        view = self._view
        view.protocol.on_read(view, self._node_id, int(result), self._floor)
        self._sim.stats["reads_served"] += 1

    def set_exception(self, exception: BaseException) -> None:
        if not isinstance(exception, EngineError):
            raise exception
        self._done = True
        self._sim.stats["reads_refused"] += 1


class RelayOutcome:
    """A forwarded proposal served by a leader's driver: the answer goes back to the
    forwarding replica as a CLIENT_RESPONSE (engine.aio.node_serving's statuses)."""

    __slots__ = ("_driver", "_request", "_done")

    def __init__(self, driver: Driver, request: Message) -> None:
        self._driver = driver
        self._request = request
        self._done = False

    def done(self) -> bool:
        return self._done

    def _reply(self, status: int, context: bytes = b"") -> None:
        self._done = True
        driver, request = self._driver, self._request
        if driver.running:
            driver.transport.send([Message(
                _CLIENT_RESPONSE, src=driver.node_id, dst=request.src, seq=request.seq,
                status=status, context=context)])

    def set_result(self, result: Any) -> None:
        self._reply(int(ClientStatus.OK), bytes(result or b""))

    def set_exception(self, exception: BaseException) -> None:
        if isinstance(exception, NotLeader):
            self._reply(int(ClientStatus.NOT_LEADER))
        elif isinstance(exception, Superseded):
            # Another copy may apply (node_serving: only "unknown" is true for the client).
            self._reply(int(ClientStatus.UNKNOWN))
        elif isinstance(exception, Rejected):
            self._reply(int(ClientStatus.REJECTED), str(exception).encode())
        elif isinstance(exception, StateMachineError):
            self._reply(int(ClientStatus.ERROR), str(exception).encode())
        else:
            self._reply(int(ClientStatus.UNKNOWN))


class SimStateMachine:
    """engine.types.StateMachine of one replica: the model of its state (node.applied) is
    kept by GroupHooks.applied through the protocol adapter; this answers the driver."""

    def __init__(self, view: GroupView, node: SimNode) -> None:
        self._view = view
        self._node = node

    def apply(self, index: int, command: bytes) -> bytes:
        return b""

    def query(self, query: bytes) -> bytes:
        return b"%d" % self._node.applied_index

    def snapshot(self) -> bytes:
        view, node = self._view, self._node
        data: bytes = view.protocol.snapshot_data(view, node, node.core, node.applied_index)
        return data

    def restore(self, data: bytes) -> None:
        """The model is restored in GroupHooks.snapshot_installed."""


class RaftMembership:
    """engine.driver.Membership for a Raft group without membership changes: snapshots
    record the configuration at their index (Raft Figure 13 "last config")."""

    def __init__(self, node: SimNode) -> None:
        self._node = node

    def follow(self) -> None:
        """Every process is reachable: no peer set to follow."""

    def config_committed(self, entry: Any) -> None:
        """No changes are proposed here."""

    def after_apply(self) -> None:
        """Nobody is removed."""

    def configuration_at(self, index: int) -> bytes:
        return encode_membership(self._node.core.configuration_at(index))


class GroupHooks:
    """engine.driver.Hooks of one replica: the group's protocol checks at the driver's
    fixed points (as the one-group simulator's SimHooks)."""

    def __init__(self, sim: MultiSim, view: GroupView, node: SimNode) -> None:
        self._sim = sim
        self._view = view
        self._node = node

    def enqueued(self, outcome: Any) -> None:
        """Recorded when answered."""

    def submitted(self, first: int, live: list[Any]) -> None:
        view = self._view
        core = self._node.core
        view.protocol.on_proposed(view, first, core.term, [item[0] for item in live])
        self._sim.stats["proposals"] += len(live)

    def received(self, messages: Any) -> None:
        """Checked on every core.step (MultiSim._checked_step)."""

    def ready(self, ready: Ready) -> None:
        view, node = self._view, self._node
        self._sim._observe(view, node)
        view.protocol.on_ready(view, node, node.core, ready)

    def persisted(self, ready: Ready) -> None:
        self._view.protocol.on_persisted(self._view, self._node, ready)

    def applied(self, ready: Ready) -> None:
        sim, view, node = self._sim, self._view, self._node
        apply = view.protocol.apply
        failures, applied_ops = sim.definite_failures, sim.applied_ops
        for entry in ready.committed_entries:
            apply(view, node, entry)
            if entry.kind == _NORMAL and entry.data:
                command = bytes(entry.data)
                if command in failures:
                    check_definite_failures_not_applied(failures, (command,))
                applied_ops.add(command)

    def snapshot_installed(self, snapshot: Snapshot) -> None:
        view, node = self._view, self._node
        node.applied = view.protocol.restore(view, node, snapshot)
        node.applied_index = node.snapshot_index = snapshot.index
        self._sim.stats["snapshots_installed"] += 1

    def snapshot_taken(self, snapshot: Snapshot) -> None:
        """Counted when its file is written."""


class SimJobs:
    """engine.driver.JobRunner: a job (snapshot write, install, WAL compaction) runs as a
    scheduled event, then its callback; a crash in between drops both."""

    def __init__(self, sim: MultiSim, process: SimProcess) -> None:
        self._sim = sim
        self._process = process

    def run(self, job: Callable[[], Any],
            done: Callable[[Any, BaseException | None], None]) -> None:
        sim, process = self._sim, self._process
        faults = sim.faults
        sim._schedule(sim.rng.randint(faults.fsync_min_ms, faults.fsync_max_ms), _JOB,
                      process.process_id, (process.incarnation, job, done))


class SimProcessDisk:
    """The host's storage: one WAL per process holding every group's SimDisk.
    `save_many` answers PENDING; the batch lands on the disks when the simulated fsync
    completes (`complete`), and is lost if the process crashes first."""

    def __init__(self, sim: MultiSim, process: SimProcess) -> None:
        self._sim = sim
        self._process = process
        # Batches written, oldest first, whose fsync has not completed. The WAL orders
        # them: they complete in order (with the shipped host there is at most one).
        self.pending: deque[list[tuple[int, list[Any], HardState | None]]] = deque()
        self._last_done_at = 0
        self.calls_this_turn = 0
        # The snapshot file written by the job running now: (group, index) (an install
        # writes it and the WAL marker in one job; the snapshot policy in two).
        self.snapshot_in_job: tuple[int, int] | None = None

    def save_many(self, batch: list[tuple[int, list[Any], HardState | None]], *,
                  sync: bool) -> object:
        sim, process = self._sim, self._process
        pid = process.process_id
        self.calls_this_turn += 1
        groups = [group for group, _, _ in batch]
        if sim.check_host:
            if self.calls_this_turn > 1:
                sim.fail(f"process {pid}: two save_many in one host turn")
            if self.pending:
                sim.fail(f"process {pid}: a save_many while another is in flight")
            if len(set(groups)) != len(groups):
                sim.fail(f"process {pid}: a group twice in one save_many {groups}")
        for group in groups:
            process.saves_by_group[group] += 1
        self.pending.append(batch)
        process.batches += 1
        process.syncs += sync
        faults = sim.faults
        done_at = max(sim.now + sim.rng.randint(faults.fsync_min_ms, faults.fsync_max_ms),
                      self._last_done_at)
        self._last_done_at = done_at
        sim._schedule(done_at - sim.now, _PERSIST, pid, process.incarnation)
        return PENDING

    def complete(self) -> None:
        """The oldest batch's fsync completed: the whole batch is on the disks."""
        sim, process = self._sim, self._process
        batch = self.pending.popleft()
        for group, entries, hard_state in batch:
            node = sim.views[group].nodes[process.process_id]
            disk = node.disk
            if entries and disk.save(entries):
                sim.stats["disk_truncations"] += 1
            if hard_state is not None:
                if hard_state.term < disk.hard_state.term:
                    sim.fail(f"process {process.process_id} group {group}: persisted term "
                             f"went back to {hard_state.term}")
                disk.hard_state = hard_state

    def save_snapshot(self, snapshot: Snapshot, envelope: bytes, *, group: int) -> None:
        node = self._sim.views[group].nodes[self._process.process_id]
        node.disk.save_snapshot(snapshot)
        node.snapshot_index = max(node.snapshot_index, snapshot.index)
        self.snapshot_in_job = (group, snapshot.index)
        self._sim.stats["snapshots_written"] += 1

    def compact(self, index: int, term: int, *, group: int) -> None:
        """The WAL's compaction marker. It never forgets a stored entry above it, except a
        Raft install (the snapshot file written in this same job) replacing a conflicting
        log (Raft Figure 13 step 7)."""
        sim = self._sim
        view = sim.views[group]
        node = view.nodes[self._process.process_id]
        view.protocol.on_trim(view, node, index)
        install = (self.snapshot_in_job == (group, index)
                   and view.protocol.install_may_discard_log)
        dropped = node.disk.compact(index, term)
        forgotten = [entry.index for entry in dropped if entry.term]
        if forgotten and not install:
            sim.fail(f"process {self._process.process_id} group {group}: WAL compaction at "
                     f"({index}, {term}) forgets stored entries {forgotten[:5]} above it")


class ProcessTransport:
    """The process's one transport: buffers every group's messages; `flush` sends one
    datagram per peer process (the MultiSim also flushes at the end of every event)."""

    def __init__(self, sim: MultiSim, process: SimProcess) -> None:
        self._sim = sim
        self._process = process
        self.outbox: list[Message] = []

    def send(self, messages: Iterable[Message], now: bool = False) -> None:
        self.outbox.extend(messages)
        if now:
            self.flush()

    def flush(self) -> None:
        if not self.outbox:
            return
        outbox, self.outbox = self.outbox, []
        by_peer: dict[int, list[Message]] = {}
        for message in outbox:
            by_peer.setdefault(message.dst, []).append(message)
        for dst, messages in by_peer.items():
            self._sim._send_datagram(self._process.process_id, dst, messages)


@dataclass(slots=True)
class SimProcess:
    process_id: int
    incarnation: int = 0
    host: Host | None = None
    transport: ProcessTransport | None = None
    disk: SimProcessDisk | None = None
    jobs: SimJobs | None = None
    # This incarnation's counts: save_many calls (batches), syncs among them, and how many
    # batches each group appeared in.
    batches: int = 0
    syncs: int = 0
    saves_by_group: collections.Counter[int] = field(default_factory=collections.Counter)
    # Summed over every incarnation.
    total_batches: int = 0
    total_syncs: int = 0
    total_group_syncs: int = 0

    @property
    def up(self) -> bool:
        return self.host is not None


_STATS = (
    "datagrams_sent", "datagrams_lost", "datagrams_duplicated", "datagrams_blocked",
    "messages_sent", "crashes", "restarts", "partitions", "disk_truncations", "proposals",
    "client_requests", "forwarded_requests", "answered_ok", "answered_definite_failure",
    "answered_unknown", "snapshots_written", "snapshots_installed", "batches_lost",
    "unsynced_crashes", "group_restarts", "group_restarts_refused", "reads_served",
    "reads_refused",
)


class MultiSim:
    """P simulated processes, each one Host of G groups, on a simulated network, disk and
    clock (see the module docstring)."""

    def __init__(
        self, processes: int = 3, groups: int = 4, seed: int = 0, *,
        protocol: ProtocolName = "raft", faults: MultiFaults | None = None,
        timing: TimingConfig | None = None, limits: Limits | None = None,
        snapshot_entries: int = 0, snapshot_trailing: int = 0,
        check_invariants: bool = True, check_host: bool = True,
    ) -> None:
        """`check_host=False` turns the host-level checks off (only to show that the
        per-group checks catch a host bug on their own)."""
        if protocol not in ("raft", "paxos"):
            raise ConfigError(f"unknown protocol {protocol!r}")
        if processes < 1 or groups < 1:
            raise ConfigError("at least one process and one group")
        self.seed = seed
        self.protocol = protocol
        self.rng = random.Random(seed)
        self.faults = faults or MultiFaults()
        adapter = RaftProtocol if protocol == "raft" else PaxosProtocol
        self.timing = timing or adapter.default_timing
        self.limits = limits or adapter.default_limits
        self.check_invariants = check_invariants
        self.check_host = check_host
        self.snapshot_entries = snapshot_entries
        self.snapshot_trailing = snapshot_trailing
        self.process_ids: tuple[int, ...] = tuple(range(1, processes + 1))
        self.group_ids: tuple[int, ...] = tuple(range(1, groups + 1))
        self.processes: dict[int, SimProcess] = {p: SimProcess(p) for p in self.process_ids}
        self.views: dict[int, GroupView] = {g: GroupView(self, g) for g in self.group_ids}
        self.now = 0
        self.events = 0
        self._queue: list[tuple[int, int, int, int, Any]] = []
        self._sequence = 0
        self._blocked: set[tuple[int, int]] = set()
        self._trace = hashlib.sha256()
        # Host turns scheduled: (process, incarnation, turn), run after each event.
        self._soon: deque[tuple[SimProcess, int, Callable[[], None]]] = deque()
        self._client_sequence = 0
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self.definite_failures: dict[bytes, str] = {}
        self.applied_ops: set[bytes] = set()
        for process in self.processes.values():
            self._start(process)
        if self.faults.nemesis_interval_ms and self._nemesis_active():
            self._schedule(self.faults.nemesis_interval_ms, _NEMESIS, 0, None)
        if self.faults.propose_interval_ms:
            self._schedule(self.faults.propose_interval_ms, _CLIENT, 0, None)

    # ------------------------------------------------------------------ scenario DSL

    def run_for(self, duration_ms: int) -> None:
        self.run_until(lambda: False, max_time=duration_ms)

    def run_until(self, predicate: Callable[[], bool], max_time: int = 10_000,
                  max_events: int | None = None) -> bool:
        """Runs events until predicate() holds (True) or max_time simulated ms (or
        max_events events) pass (False)."""
        deadline = self.now + max_time
        last_event = None if max_events is None else self.events + max_events
        while not predicate():
            if not self._queue or self._queue[0][0] > deadline:
                self.now = deadline
                return predicate()
            if last_event is not None and self.events >= last_event:
                return predicate()
            self.step_event()
        return True

    def partition(self, *sides: Iterable[int]) -> None:
        """Only processes on the same side can talk (processes on no side are isolated)."""
        sets = [set(side) for side in sides]
        side_of = {p: i for i, side in enumerate(sets) for p in side}
        ids = self.process_ids
        self._blocked = {(a, b) for a in ids for b in ids
                         if a != b and (a not in side_of or side_of.get(a) != side_of.get(b))}
        self.stats["partitions"] += 1

    def cut(self, src: int, dst: int) -> None:
        """One-way partition: datagrams from src to dst are dropped."""
        self._blocked.add((src, dst))
        self.stats["partitions"] += 1

    def heal(self) -> None:
        self._blocked = set()

    def crash(self, process_id: int) -> None:
        """Stops a process: the batch in flight and everything in memory are lost. Before
        it, every group's committed entries must be on a quorum of disks."""
        process = self.processes[process_id]
        host = process.host
        if host is None:
            return
        for view in self.views.values():
            view.check_durable()
        if process.disk is not None and process.disk.pending:
            self.stats["batches_lost"] += len(process.disk.pending)
        host.stop()
        for driver in host.groups.values():
            driver.fail_everything(Stopped("process crashed"))
        for view in self.views.values():
            view.nodes[process_id].driver = None
        process.total_batches += process.batches
        process.total_syncs += process.syncs
        process.total_group_syncs += sum(d.counters["syncs"] for d in host.groups.values())
        process.host = process.transport = process.disk = None
        process.incarnation += 1
        self.stats["crashes"] += 1
        self._trace_event(_CRASH, process_id, 0, 0, 0, 0)

    def restart(self, process_id: int) -> None:
        """Restarts a crashed process: every group rebuilt from its disk."""
        process = self.processes[process_id]
        if process.host is not None:
            return
        for view in self.views.values():
            view.protocol.on_restart(view, view.nodes[process_id])
        self.stats["restarts"] += 1
        self._start(process)
        self._trace_event(_RESTART, process_id, 0, 0, 0, 0)

    def propose(self, group: int, command: bytes | None = None,
                process_id: int | None = None) -> bytes:
        """A client submits `command` to `group` at process_id (default: the group's
        leader); returns the command. Raises NotLeader if there is no such replica up."""
        view = self.views[group]
        if process_id is None:
            process_id = view.leader()
            if process_id is None:
                raise NotLeader(f"group {group} has no leader")
        driver = view.nodes[process_id].driver
        if driver is None:
            raise NotLeader(f"process {process_id} is down")
        command = command if command is not None else self._next_command(group)
        self.stats["client_requests"] += 1
        try:
            driver.submit(command, Outcome(self, group, command), REQUEST_TIMEOUT_S)
        except Rejected as exc:
            self._answer(group, command, exc)
        self._run_turns()
        return command

    def leader(self, group: int) -> int | None:
        return self.views[group].leader()

    def leaders(self) -> dict[int, int | None]:
        return {g: view.leader() for g, view in self.views.items()}

    def settle(self, max_time: int = 60_000) -> None:
        """Heal the network, stop the faults and the clients, restart every process, and
        require within `max_time` simulated ms that every acknowledged command is applied
        on every replica of its group; then the final checks of every group."""
        self.faults = self.faults.healed()
        self.heal()
        for process_id in self.process_ids:
            self.restart(process_id)
        self._run_turns()
        if not self.run_until(self.converged, max_time=max_time, max_events=SETTLE_MAX_EVENTS):
            raise self._failure(f"not settled: {self.describe_missing()}")
        for view in self.views.values():
            view.protocol.final_checks(view)
        check_definite_failures_not_applied(self.definite_failures, self.applied_ops)

    def converged(self) -> bool:
        """Every group has a leader whose commit covers its own term, every replica applied
        through it, and every acknowledged command is applied on every replica."""
        for view in self.views.values():
            leader = view.leader()
            if leader is None:
                return False
            core = view.nodes[leader].core
            commit = core.commit_index
            if self.protocol == "raft" and core.log.term(commit) != core.term:
                return False
            for node in view.nodes.values():
                if node.applied_index < commit:
                    return False
            if view.acked:
                for node in view.nodes.values():
                    if not view.acked <= view.applied_commands(node):
                        return False
        return True

    def describe_missing(self) -> str:
        parts = []
        for g, view in self.views.items():
            leader = view.leader()
            applied = {p: n.applied_index for p, n in view.nodes.items()}
            missing = {p: len(view.acked - view.applied_commands(n))
                       for p, n in view.nodes.items()}
            if leader is None or any(missing.values()):
                parts.append(f"group {g}: leader {leader}, applied {applied}, acked missing "
                             f"{missing}")
        return "; ".join(parts[:4]) or "no group converged"

    def messages_in_flight(self) -> Iterator[Message]:
        for _, _, kind, _, payload in self._queue:
            if kind == _DELIVER:
                yield from payload[1]

    def fail(self, what: str) -> None:
        raise InvariantViolation(what)

    # Counters --------------------------------------------------------------

    def syncs(self) -> int:
        """fsyncs issued by every process over every incarnation (one per synced batch)."""
        return sum(p.total_syncs + p.syncs for p in self.processes.values())

    def batches(self) -> int:
        return sum(p.total_batches + p.batches for p in self.processes.values())

    def group_syncs(self) -> int:
        """Syncs the groups' drivers asked for: what one fsync per group would cost."""
        total = 0
        for process in self.processes.values():
            total += process.total_group_syncs
            if process.host is not None:
                total += sum(d.counters["syncs"] for d in process.host.groups.values())
        return total

    def acknowledged(self) -> int:
        return sum(len(view.acked) for view in self.views.values())

    @property
    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    # ------------------------------------------------------------------ event loop

    def step_event(self) -> None:
        time, _, kind, target, payload = heapq.heappop(self._queue)
        self.now = time
        self.events += 1
        try:
            self._dispatch(kind, target, payload)
            self._run_turns()
        except SimulationFailure:
            raise
        except InvariantViolation as exc:
            raise self._failure(f"invariant violated: {exc}") from exc
        except EngineError as exc:  # a core raised on simulated input: a bug
            raise self._failure(f"{type(exc).__name__}: {exc}") from exc

    def _dispatch(self, kind: int, target: int, payload: Any) -> None:
        if kind == _DELIVER:
            self._deliver(target, payload)
        elif kind == _TICK:
            process = self.processes[target]
            if process.host is not None and payload == process.incarnation:
                self._trace_event(_TICK, target, 0, 0, 0, 0)
                process.host.tick()
                self._schedule(self.timing.tick_ms, _TICK, target, process.incarnation)
        elif kind == _PERSIST:
            process = self.processes[target]
            host, disk = process.host, process.disk
            if (host is not None and disk is not None and payload == process.incarnation
                    and disk.pending):
                self._trace_event(_PERSIST, target, len(disk.pending[0]), 0, 0, 0)
                rate = self.faults.unsynced_crash
                if rate and self.rng.random() < rate:   # the fsync never completes
                    self.stats["unsynced_crashes"] += 1
                    self.crash(target)
                    return
                disk.complete()
                disk.calls_this_turn = 0
                host.persisted()
                if self.check_host:
                    self._check_host(process)
        elif kind == _JOB:
            process = self.processes[target]
            incarnation, job, done = payload
            if process.host is not None and incarnation == process.incarnation:
                self._trace_event(_JOB, target, 0, 0, 0, 0)
                assert process.disk is not None
                process.disk.snapshot_in_job = None
                try:
                    result = job()
                except Exception as exc:
                    done(None, exc)
                    return
                done(result, None)
        elif kind == _CLIENT:
            if self.faults.propose_interval_ms:
                self._client_step()
                self._schedule(1 + self.rng.randrange(2 * self.faults.propose_interval_ms),
                               _CLIENT, 0, None)
        elif kind == _NEMESIS and self._nemesis_active():
            self._nemesis_step()
            self._schedule(self.faults.nemesis_interval_ms, _NEMESIS, 0, None)

    def _nemesis_active(self) -> bool:
        faults = self.faults
        return bool(faults.partition or faults.crash or faults.group_restart)

    def _schedule(self, delay_ms: int, kind: int, target: int, payload: Any) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (self.now + delay_ms, self._sequence, kind, target, payload))

    def _trace_event(self, kind: int, target: int, a: int, b: int, c: int, d: int) -> None:
        self._trace.update(_PACK(self.now, kind, target, a, b, c, d))

    def _run_turns(self) -> None:
        """Run the host turns scheduled (loop.call_soon), in order, then the end of the
        loop turn: every transport's queued datagrams leave."""
        soon = self._soon
        while True:
            while soon:
                process, incarnation, turn = soon.popleft()
                if process.host is None or process.incarnation != incarnation:
                    continue
                assert process.disk is not None
                process.disk.calls_this_turn = 0
                turn()
                if process.host is not None and self.check_host:
                    self._check_host(process)
            for process in self.processes.values():
                if process.transport is not None:
                    process.transport.flush()
            if not soon:
                return

    # ------------------------------------------------------------------ processes

    def _start(self, process: SimProcess) -> None:
        """Boot a process: one Host, then every group from its disk (engine.Node's start:
        WAL open, state machine restored from the snapshot file, core rebuilt)."""
        incarnation = process.incarnation

        def call_soon(turn: Callable[[], None]) -> None:
            self._soon.append((process, incarnation, turn))

        process.transport = ProcessTransport(self, process)
        process.disk = SimProcessDisk(self, process)
        process.batches = process.syncs = 0
        process.saves_by_group = collections.Counter()
        host = Host(process.process_id, transport=process.transport, storage=process.disk,
                    call_soon=call_soon)
        process.host = host
        process.jobs = SimJobs(self, process)
        for group in self.views:
            self._start_group(process, group)
        # Processes' timers are not in phase.
        self._schedule(1 + self.rng.randrange(self.timing.tick_ms), _TICK,
                       process.process_id, incarnation)

    def _start_group(self, process: SimProcess, group: int) -> None:
        """Host one group's replica, rebuilt from its disk."""
        host = process.host
        assert host is not None
        view = self.views[group]
        node = view.nodes[process.process_id]
        node.disk.open()
        snapshot = node.disk.snapshot
        applied = 0
        node.applied = []
        if snapshot is not None:
            node.applied = view.protocol.restore(view, node, snapshot)
            applied = snapshot.index
        core = view.protocol.make_core(view, node, applied)
        core.step = self._checked_step(group, process.process_id, core.step)
        driver = Driver(
            process.process_id, SimStateMachine(view, node), clock=self._clock,
            call_soon=host.group_call_soon, request_timeout_s=REQUEST_TIMEOUT_S,
            max_entry_bytes=self.limits.max_entry_bytes,
            max_pending_proposals=self.limits.max_pending_proposals,
            snapshot_entries=self.snapshot_entries,
            snapshot_trailing_entries=self.snapshot_trailing,
        )
        driver.hooks = GroupHooks(self, view, node)
        node.driver = driver
        node.snapshot_index = applied
        node.last_commit = core.commit_index
        node.last_term = core.term
        node.led_ballot = 0
        node.applied_index = applied
        host.add_group(group, driver, core, applied=applied, storage_jobs=process.jobs,
                       snapshot_jobs=process.jobs,
                       membership=RaftMembership(node) if self.protocol == "raft" else None)

    def restart_group(self, process_id: int, group: int) -> bool:
        """Rebuild one group's replica inside a running process (a replica re-created in
        place): the host stops hosting it (its save not yet written leaves the batch), then
        hosts a new driver and core built from the group's disk. As a shell must, only
        while none of the group's storage work is under way (a save in the WAL's batch in
        flight, a snapshot write, install or compaction): a core rebuilt before that work
        lands would not know a vote or an entry the disk is about to hold. Returns whether
        it restarted."""
        process = self.processes[process_id]
        host, disk = process.host, process.disk
        if host is None or disk is None or group not in host.groups:
            return False
        driver = host.groups[group]
        storage_jobs = driver.persisting - (driver._persisting_ready is not None)
        in_flight = any(g == group for batch in disk.pending for g, _, _ in batch)
        if storage_jobs or driver.snapshotting or in_flight:
            self.stats["group_restarts_refused"] += 1
            return False
        host.remove_group(group)
        driver.fail_everything(Stopped("group replica restarted"))
        process.total_group_syncs += driver.counters["syncs"]
        view = self.views[group]
        view.protocol.on_restart(view, view.nodes[process_id])
        process.saves_by_group[group] = 0   # the new driver counts its saves from 0
        self.stats["group_restarts"] += 1
        self._start_group(process, group)
        self._trace_event(_RESTART, process_id, group, 0, 0, 0)
        return True

    def _checked_step(self, group: int, process_id: int,
                      step: Callable[[Message], Any]) -> Callable[[Message], Any]:
        """The core's step, refusing a message of another group (groups never cross)."""

        def checked(message: Message) -> Any:
            if message.group != group:
                self.fail(f"process {process_id}: group {group}'s core stepped a message "
                          f"of group {message.group} ({message.type!r})")
            return step(message)

        return checked

    def _check_host(self, process: SimProcess) -> None:
        """Every group's save joined the host's batch: a driver's saves are the batches it
        appeared in, plus the batch being built."""
        host = process.host
        assert host is not None
        queued = collections.Counter(group for group, _, _ in host._batch)
        for group, driver in host.groups.items():
            expected = process.saves_by_group[group] + queued[group]
            if driver.counters["saves"] != expected:
                self.fail(f"process {process.process_id} group {group}: {driver.counters['saves']}"
                          f" saves, {expected} in the host's batches")
        if process.syncs > process.batches:
            self.fail(f"process {process.process_id}: more syncs than batches")

    def _observe(self, view: GroupView, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        if core.term < node.last_term:
            self.fail(f"group {view.group} process {node.node_id}: term went back from "
                      f"{node.last_term} to {core.term}")
        node.last_term = core.term
        view.protocol.observe(view, node, core)

    def _clock(self) -> float:
        return self.now / 1000.0

    # ------------------------------------------------------------------ network

    def _send_datagram(self, src: int, dst: int, messages: list[Message]) -> None:
        stats = self.stats
        stats["datagrams_sent"] += 1
        stats["messages_sent"] += len(messages)
        if (src, dst) in self._blocked:
            stats["datagrams_blocked"] += 1
            return
        rng, faults = self.rng, self.faults
        if faults.loss and rng.random() < faults.loss:
            stats["datagrams_lost"] += 1
            return
        copies = 1
        if faults.duplicate and rng.random() < faults.duplicate:
            copies = 2
            stats["datagrams_duplicated"] += 1
        for _ in range(copies):
            self._schedule(rng.randint(faults.delay_min_ms, faults.delay_max_ms), _DELIVER,
                           dst, (src, messages))

    def _deliver(self, process_id: int, payload: tuple[int, list[Message]]) -> None:
        src, messages = payload
        process = self.processes[process_id]
        host = process.host
        if host is None or (src, process_id) in self._blocked:
            return
        self._trace_event(_DELIVER, process_id, src, len(messages), messages[0].group,
                          messages[0].type)
        consensus: list[Message] = []
        for message in messages:
            kind = message.type
            if kind == _CLIENT_REQUEST:
                self._serve_forwarded(host, message)
            elif kind == _CLIENT_RESPONSE:
                driver = host.groups.get(message.group)
                if driver is not None:
                    driver.on_forward_response(message)
            else:
                consensus.append(message)
        host.receive(consensus)

    def _serve_forwarded(self, host: Host, request: Message) -> None:
        """engine.Node's serving side, for a proposal a replica forwarded to this one."""
        driver = host.groups.get(request.group)
        if driver is None:
            return
        self.stats["forwarded_requests"] += 1
        relay = RelayOutcome(driver, request)
        if driver.core.role != _LEADER:
            relay.set_exception(NotLeader("not the leader"))
            return
        try:
            driver.submit(bytes(request.context), relay, REQUEST_TIMEOUT_S)
        except Rejected as exc:
            relay.set_exception(exc)

    # ------------------------------------------------------------------ clients and nemesis

    def _next_command(self, group: int) -> bytes:
        self._client_sequence += 1
        return b"g%d-c%d:" % (group, self._client_sequence) + b"x" * self.rng.randrange(0, 24)

    def _answer(self, group: int, command: bytes, error: EngineError | None) -> None:
        if error is None:
            self.stats["answered_ok"] += 1
            self.views[group].acked.add(command)
        elif isinstance(error, Rejected):
            self.stats["answered_definite_failure"] += 1
            self.definite_failures[command] = f"{type(error).__name__}: {error}"
            if command in self.applied_ops:
                check_definite_failures_not_applied(self.definite_failures, (command,))
        else:
            self.stats["answered_unknown"] += 1

    def _client_step(self) -> None:
        rng = self.rng
        group = rng.choice(self.group_ids)
        view = self.views[group]
        if rng.random() < self.faults.read:
            up = [p for p in self.process_ids if self.processes[p].up]
            if up:
                process_id = rng.choice(up)
                driver = view.nodes[process_id].driver
                assert driver is not None
                driver.enqueue_read(b"", ReadOutcome(self, view, process_id),
                                    REQUEST_TIMEOUT_S)
            return
        leader = view.leader()
        if leader is None:
            return
        target = leader
        if rng.random() < self.faults.forward:
            up = [p for p in self.process_ids if self.processes[p].up and p != leader]
            if up:
                target = rng.choice(up)
        for _ in range(1 + rng.randrange(3)):
            self.propose(group, process_id=target)

    def _nemesis_step(self) -> None:
        rng, faults, ids = self.rng, self.faults, self.process_ids
        if self._blocked and rng.random() < faults.heal:
            self.heal()
        elif len(ids) > 1 and rng.random() < faults.partition:
            mode = rng.randrange(3)
            if mode == 0:      # isolate one process
                lone = rng.choice(ids)
                self.partition({lone}, set(ids) - {lone})
            elif mode == 1:    # a random split
                shuffled = list(ids)
                rng.shuffle(shuffled)
                cut = rng.randint(1, len(ids) - 1)
                self.partition(set(shuffled[:cut]), set(shuffled[cut:]))
            else:              # one-way: a process cannot hear a peer, or cannot reach it
                a, b = rng.sample(ids, 2)
                self.cut(a, b)
        up = [p for p in ids if self.processes[p].up]
        down = [p for p in ids if not self.processes[p].up]
        if up and rng.random() < faults.crash:
            self.crash(rng.choice(up))
        if down and rng.random() < faults.restart:
            self.restart(rng.choice(down))
        if up and rng.random() < faults.group_restart:
            self.restart_group(rng.choice(up), rng.choice(self.group_ids))

    def _failure(self, what: str) -> SimulationFailure:
        return SimulationFailure(
            f"{what} (reproduce with ENGINE_SIM_SEED={self.seed}, protocol={self.protocol}, "
            f"processes={len(self.process_ids)}, groups={len(self.group_ids)})")


# ---------------------------------------------------------------------- swarm

@dataclass(frozen=True, slots=True)
class MultiSwarmResult:
    seed: int
    groups: int
    trace_hash: str
    events: int
    simulated_ms: int
    acknowledged: int
    batches: int
    syncs: int
    group_syncs: int
    stats: dict[str, int]


def run_multi_swarm(seed: int, *, processes: int = 3, groups: int = 4,
                    protocol: ProtocolName = "raft", fault_ms: int = 2_000,
                    check_host: bool = True) -> MultiSwarmResult:
    """One swarm run: fault rates drawn from the seed, `fault_ms` of faults and clients,
    then `settle` (every acknowledged write applied on every replica of its group)."""
    rng = random.Random(seed)
    faults = MultiFaults.swarm(rng)
    snapshot_entries = 0 if rng.random() < 0.5 else rng.randint(5, 40)
    sim = MultiSim(processes, groups, seed, protocol=protocol, faults=faults,
                   snapshot_entries=snapshot_entries, snapshot_trailing=rng.randint(0, 5),
                   check_host=check_host)
    sim.run_for(fault_ms)
    sim.settle()
    return MultiSwarmResult(
        seed=seed, groups=groups, trace_hash=sim.trace_hash, events=sim.events,
        simulated_ms=sim.now, acknowledged=sim.acknowledged(), batches=sim.batches(),
        syncs=sim.syncs(), group_syncs=sim.group_syncs(), stats=dict(sim.stats))


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.testing.sim_multi`: run swarm seeds, print one line each; the exit
    status is the number of failed seeds (capped at 100)."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.testing.sim_multi",
        description="Swarm seeds of the many-groups simulator (engine.testing.sim_multi).")
    parser.add_argument("--first", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seeds", type=int, default=20, help="number of seeds (default 20)")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--protocol", choices=("raft", "paxos"), default="raft")
    parser.add_argument("--fault-ms", type=int, default=2_000,
                        help="simulated ms of faults and clients before settling")
    args = parser.parse_args(argv)
    failed = 0
    for seed in range(args.first, args.first + args.seeds):
        try:
            result = run_multi_swarm(seed, processes=args.processes, groups=args.groups,
                                     protocol=args.protocol, fault_ms=args.fault_ms)
        except SimulationFailure as failure:
            failed += 1
            print(f"seed {seed}: FAILED {failure}", flush=True)
            continue
        stats = result.stats
        print(f"seed {seed}: ok, {result.events} events, {result.acknowledged} acknowledged, "
              f"{stats['crashes']} crashes, {stats['batches_lost']} batches lost, "
              f"{result.syncs} syncs in {result.batches} batches (the groups asked for "
              f"{result.group_syncs}), trace {result.trace_hash[:16]}", flush=True)
    print(f"{args.seeds - failed} of {args.seeds} seeds passed")
    return min(failed, 100)


__all__ = [
    "GroupView", "MultiFaults", "MultiSim", "MultiSwarmResult", "SimulationFailure",
    "main", "run_multi_swarm",
]

if __name__ == "__main__":
    raise SystemExit(main())
