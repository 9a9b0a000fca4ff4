"""Deterministic discrete-event simulation of a consensus cluster (FoundationDB / VOPR style),
one simulator for every protocol core: protocol="raft" (RaftCore) or "paxos" (PaxosCore).

N cores run in one thread against a simulated network, disk and clock. One seed drives every
choice (random.Random(seed)), events are ordered by (time, sequence), so a run is a pure
function of its seed; `trace_hash` (SHA-256 of the event trace) proves it. The protocol core
is the only thing that changes: a small adapter (sim_raft.RaftProtocol, sim_paxos.PaxosProtocol)
makes the core, models its state machine and runs its invariant checker (sim_node.py holds
what they share with this module, so neither imports the other).

The model (shared by every protocol)
  network  every message may be lost, duplicated and delayed (uniform in [min, max] ms, so
           messages reorder); partitions cut links both ways or one way.
  disk     sim_disk.SimDisk: the WAL's suffix-replace rule, the snapshot file and the WAL's
           compaction marker; it holds exactly what completed (simulated) fsyncs wrote.
  crashes  a crash loses everything in memory and the Ready being persisted (its pre-persist
           `messages` already went out, as with engine.Node). With faults.unsynced_crash a node
           also crashes at the driver's durability points: before an fsync completes, between
           writing a snapshot file and the WAL's compaction marker (installs and the snapshot
           policy alike). Restart builds a new core from the disk: the state machine is
           restored from the snapshot file (if any) and replays the log after it.
  driver   every node runs engine.driver.Driver, the driver engine.Node runs, with simulated
           implementations of its interfaces: SimTransport (the network above), SimStorage
           (SimDisk; a save completes after a simulated fsync, `fsync_min_ms..fsync_max_ms`),
           SimJobs (snapshot writes, installs and WAL compactions as events), a turn
           scheduler (turns run after each event, in order, like loop.call_soon) and the
           simulated clock. So the Ready order checked here is the shipped one: a leader
           applies before its own fsync, a follower acks and then applies after it.
  clients  proposals go to whichever node leads (Driver.propose_batch: the core's propose
           and the driver's outcome tables); reads to any node (background clients through
           the driver's ReadIndex rounds, Simulation.read straight to the core), each
           checked against everything committed anywhere when it began. Every
           proposal is answered by the driver, as in engine.Node: its result when the entry
           at its (index, term) is applied, Superseded when another entry is applied there,
           Timeout after REQUEST_TIMEOUT_S, and through engine.errors.unfinished when its
           node crashes (Stopped), is removed from the configuration (MembershipError) or
           refuses it (Overloaded); OutcomeUnknown when a snapshot install covers it.
           Commands are unique, so a command is its operation.
  nemesis  partitions (isolate one node, the leader, a random split, one-way cuts), crashes and
           restarts; for Raft also leadership transfers and membership changes (see below).

Raft extras: transfers / lease reads (faults.transfer, lease_read) and membership (spares > 0:
nodes n+1.. start only once a change adds them; faults.membership asks the leader for random
changes; snapshots record the configuration as of their index; `witnesses` are metadata-only
voters for life). Paxos extras: flexible quorums (phase1_quorum, phase2_quorum).

Checkers (run after every turn and at the driver's hook points, SimHooks: ready taken,
persisted, applied, snapshot installed): engine/testing/invariants.py (Raft), engine/testing/
paxos_invariants.py (Paxos), plus the driver-level rules here: a durable term / promised
ballot never goes back, no compaction forgets a stored entry above its marker (except a Raft
install replacing a conflicting log), a snapshot is installed only beyond the applied index,
and honest outcomes: no operation answered with a definite failure (engine.Rejected and its
subclasses) is ever applied by any node (invariants.check_definite_failures_not_applied, at
every answer and every apply; `definite_failures` and `applied_ops` hold what it compares).

Scenario DSL:
    sim = Simulation(n=3, seed=7)                 # or Simulation(3, 7, protocol="paxos")
    leader = sim.wait_leader()
    sim.partition({leader}, set(sim.node_ids) - {leader})
    sim.run_for(2_000)
    sim.heal(); sim.crash(2); sim.restart(2)
    sim.run_until(lambda: sim.leader() is not None, max_time=5_000)

Swarm: `run_swarm(seed, protocol=...)` draws the cluster size and fault rates from the seed,
runs a faulty phase, then heals the network, restarts every node and requires a committed,
applied proposal on every member within a bounded simulated time. A failure raises
SimulationFailure whose message contains ENGINE_SIM_SEED=<seed>.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import random
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, Protocol

from engine.driver import PENDING, Driver
from engine.errors import (
    ConfChangeInProgress,
    ConfigError,
    EngineError,
    InvariantViolation,
    MembershipError,
    NotLeader,
    Overloaded,
    Rejected,
    Stopped,
)
from engine.limits import Limits, TimingConfig
from engine.messages import EntryKind
from engine.raft.membership import (
    ConfChangeOp,
    ConfChangeType,
    add_learner,
    demote,
    encode_membership,
    promote,
    remove,
)
from engine.testing.invariants import ClusterChecker, check_definite_failures_not_applied
from engine.testing.sim_disk import SimDisk
from engine.testing.sim_node import Proposal, SimNode
from engine.testing.sim_paxos import PaxosProtocol
from engine.testing.sim_raft import RaftProtocol, decode_applied, encode_applied
from engine.types import HardState, Ready, Snapshot

_TICK, _DELIVER, _PERSIST, _CLIENT, _NEMESIS, _JOB = range(6)
_CRASH, _RESTART, _JOB_TRACE = 4, 5, 6  # trace codes
# A simulated proposal not answered in this long times out (engine.Node's request timeout).
REQUEST_TIMEOUT_S = 10.0
_PACK = struct.Struct("<qBqqqqq").pack
_LEADER = "leader"  # both cores' Role.LEADER (a StrEnum) compare equal to it
_NORMAL = int(EntryKind.NORMAL)

ProtocolName = Literal["raft", "paxos"]


class SimulationFailure(AssertionError):
    """An invariant or liveness requirement failed; the message names the seed."""


def _fail(what: str) -> NoReturn:
    """A driver-level invariant failed (the protocols' checkers raise the same error)."""
    raise InvariantViolation(what)


class SimProtocol(Protocol):
    """What the simulator needs from a protocol (sim_raft.py, sim_paxos.py)."""

    name: str
    install_may_discard_log: bool
    checker: Any

    def make_core(self, sim: Simulation, node: SimNode, applied: int) -> Any: ...
    def on_restart(self, sim: Simulation, node: SimNode) -> None: ...
    def restore(self, sim: Simulation, node: SimNode, snapshot: Snapshot) -> list[Any]: ...
    def snapshot_data(self, sim: Simulation, node: SimNode, core: Any, index: int) -> bytes: ...
    def on_trim(self, sim: Simulation, node: SimNode, index: int) -> None: ...
    def on_ready(self, sim: Simulation, node: SimNode, core: Any, ready: Ready) -> None: ...
    def on_persisted(self, sim: Simulation, node: SimNode, ready: Ready) -> None: ...
    def apply(self, sim: Simulation, node: SimNode, entry: Any) -> None: ...
    def read_floor(self, sim: Simulation) -> int: ...
    def on_read(self, sim: Simulation, node_id: int, index: int, floor: int) -> None: ...
    def on_proposed(self, sim: Simulation, first: int, term: int,
                    commands: list[bytes]) -> None: ...
    def observe(self, sim: Simulation, node: SimNode, core: Any) -> None: ...
    def possible_members(self, sim: Simulation) -> set[int]: ...
    def settled(self, sim: Simulation, index: int) -> bool: ...
    def removed(self, sim: Simulation, node: SimNode, core: Any) -> bool: ...
    def is_committed(self, proposal: Proposal) -> bool: ...
    def is_lost(self, proposal: Proposal) -> bool: ...
    def final_checks(self, sim: Simulation) -> None: ...
    def describe(self, sim: Simulation) -> str: ...


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Fault rates of one run. Probabilities are per message / per nemesis step / per
    durability point (unsynced_crash)."""

    loss: float = 0.0
    duplicate: float = 0.0
    delay_min_ms: int = 1
    delay_max_ms: int = 3
    fsync_min_ms: int = 0
    fsync_max_ms: int = 1
    nemesis_interval_ms: int = 100
    partition: float = 0.0  # P(start a partition) per nemesis step
    heal: float = 0.0  # P(heal partitions) per nemesis step
    crash: float = 0.0  # P(crash a random up node) per nemesis step
    restart: float = 0.0  # P(restart a random down node) per nemesis step
    propose_interval_ms: int = 0  # 0: no background clients
    read: float = 0.0  # P(a client step is a read instead of a write)
    transfer: float = 0.0  # P(the leader is asked to transfer leadership) per nemesis step
    membership: float = 0.0  # P(the leader is asked for a membership change) per nemesis step
    # P(the node crashes at a durability point: before an fsync completes, or between a
    # snapshot file and the WAL's compaction marker).
    unsynced_crash: float = 0.0

    @classmethod
    def swarm(cls, rng: random.Random) -> FaultConfig:
        """Each seed draws its own fault rates (swarm testing; VOPR ranges)."""
        delay_min = rng.randint(0, 20)
        fsync_min = rng.randint(0, 5)
        return cls(
            loss=0.0 if rng.random() < 0.2 else rng.uniform(0.0, 0.3),
            duplicate=0.0 if rng.random() < 0.3 else rng.uniform(0.0, 0.3),
            delay_min_ms=delay_min,
            delay_max_ms=delay_min + rng.randint(0, 60),
            fsync_min_ms=fsync_min,
            fsync_max_ms=fsync_min + rng.randint(0, 15),
            nemesis_interval_ms=100,
            partition=rng.uniform(0.0, 0.15),
            heal=rng.uniform(0.05, 0.5),
            crash=0.0 if rng.random() < 0.2 else rng.uniform(0.0, 0.1),
            restart=rng.uniform(0.1, 0.6),
            propose_interval_ms=rng.randint(5, 40),
            read=rng.uniform(0.0, 0.3),
        )

    def healed(self) -> FaultConfig:
        """The same delays with every fault and the background load off."""
        return FaultConfig(
            delay_min_ms=self.delay_min_ms, delay_max_ms=self.delay_max_ms,
            fsync_min_ms=self.fsync_min_ms, fsync_max_ms=self.fsync_max_ms,
        )


class _Crashed(Exception):
    """Raised inside a storage job when the node crashes at a durability point."""


class SimOutcome:
    """A proposal's outcome (the future surface the driver resolves): answers the
    simulated client at once (Simulation._answer)."""

    __slots__ = ("_sim", "command", "_done")

    def __init__(self, sim: Simulation, command: bytes) -> None:
        self._sim = sim
        self.command = command
        self._done = False

    def done(self) -> bool:
        return self._done

    def _settle(self, error: EngineError | None) -> None:
        if self._done:
            _fail(f"the outcome of {self.command[:24]!r} was set twice")
        self._done = True
        self._sim._answer(self.command, error)

    def set_result(self, result: Any) -> None:
        self._settle(None)

    def set_exception(self, exception: BaseException) -> None:
        if not isinstance(exception, EngineError):
            raise exception
        self._settle(exception)


class SimRead:
    """A read's outcome (the future surface): the answer is the index of the state it was
    served from (SimStateMachine.query), which must reach the commit index at its start."""

    __slots__ = ("_sim", "_node_id", "_floor", "_done")

    def __init__(self, sim: Simulation, node_id: int, floor: int) -> None:
        self._sim, self._node_id, self._floor = sim, node_id, floor
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: Any) -> None:
        self._done = True
        sim = self._sim
        sim.protocol.on_read(sim, self._node_id, int(result), self._floor)
        sim.stats["reads_served"] += 1

    def set_exception(self, exception: BaseException) -> None:
        if not isinstance(exception, EngineError):
            raise exception
        self._done = True
        self._sim.stats["reads_refused"] += 1


class SimTransport:
    """engine.driver.Transport on the simulated network (loss, duplicates, delay, cuts)."""

    def __init__(self, sim: Simulation) -> None:
        self._send = sim._send

    def send(self, messages: list[Any], now: bool = False) -> None:
        send = self._send
        for message in messages:
            send(message)

    def flush(self) -> None:
        """Every message is scheduled as it is sent."""


class SimStorage:
    """engine.driver.Storage on SimDisk. A save completes after a simulated fsync (an event
    `fsync_min_ms..fsync_max_ms` later); a crash before it loses the save, and with
    faults.unsynced_crash the node may crash at that point or between a snapshot file and
    the WAL's compaction marker."""

    def __init__(self, sim: Simulation, node: SimNode) -> None:
        self._sim = sim
        self._node = node
        self.pending: tuple[list[Any], HardState | None] | None = None

    def save(self, entries: list[Any], hard_state: HardState | None, *, sync: bool) -> object:
        sim, node = self._sim, self._node
        if self.pending is not None:
            _fail(f"node {node.node_id}: a save while another is in flight")
        self.pending = (entries, hard_state)
        faults = sim.faults
        sim._schedule(sim.rng.randint(faults.fsync_min_ms, faults.fsync_max_ms), _PERSIST,
                      node.node_id, node.incarnation)
        return PENDING

    def complete(self) -> bool:
        """The fsync finished (False: the node crashed instead)."""
        sim, node = self._sim, self._node
        assert self.pending is not None
        entries, hard_state = self.pending
        self.pending = None
        sim._trace_event(_PERSIST, node.node_id, len(entries), 0, 0, 0)
        if sim._unsynced_crash(node):  # the fsync never completed
            return False
        if entries and node.disk.save(entries):
            sim.stats["disk_truncations"] += 1
        if hard_state is not None:
            if hard_state.term < node.disk.hard_state.term:
                _fail(f"node {node.node_id} persisted term went back to {hard_state.term}")
            node.disk.hard_state = hard_state
        return True

    def save_snapshot(self, snapshot: Snapshot, envelope: bytes) -> None:
        """The snapshot policy's file (written, fsynced, renamed)."""
        node = self._node
        node.disk.save_snapshot(snapshot)
        node.snapshot_index = max(node.snapshot_index, snapshot.index)
        self._sim.stats["snapshots_taken"] += 1

    def compact(self, index: int, term: int) -> None:
        """The WAL's compaction marker after the policy's snapshot file."""
        sim, node = self._sim, self._node
        if sim._unsynced_crash(node, snapshot_file=True):  # file durable, WAL marker not
            raise _Crashed
        sim.protocol.on_trim(sim, node, index)
        sim._compact_disk(node, index, term, install=False)

    def install_snapshot(self, snapshot: Snapshot, envelope: bytes) -> None:
        """A leader's snapshot: the file, then the WAL's marker at (index, term)."""
        sim, node = self._sim, self._node
        if snapshot.index <= node.applied_index:
            _fail(f"node {node.node_id} installs snapshot {snapshot.index} at or below "
                  f"applied {node.applied_index}")
        sim.protocol.on_trim(sim, node, snapshot.index)
        node.disk.save_snapshot(snapshot)
        if sim._unsynced_crash(node, snapshot_file=True):  # file durable, WAL marker not
            raise _Crashed
        sim._compact_disk(node, snapshot.index, snapshot.term,
                          install=sim.protocol.install_may_discard_log)


class SimJobs:
    """engine.driver.JobRunner: a job runs as a scheduled event (a storage thread's or the
    snapshot thread's latency), then its callback; a crash in between drops both."""

    def __init__(self, sim: Simulation, node: SimNode) -> None:
        self._sim = sim
        self._node = node

    def run(self, job: Callable[[], Any],
            done: Callable[[Any, BaseException | None], None]) -> None:
        sim, node = self._sim, self._node
        faults = sim.faults
        sim._schedule(sim.rng.randint(faults.fsync_min_ms, faults.fsync_max_ms), _JOB,
                      node.node_id, (node.incarnation, job, done))


class SimStateMachine:
    """engine.types.StateMachine of a simulated node. The model of its state (node.applied,
    every entry kind included) is kept by SimHooks.applied; this answers the driver."""

    def __init__(self, sim: Simulation, node: SimNode) -> None:
        self._sim = sim
        self._node = node

    def apply(self, index: int, command: bytes) -> bytes:
        return b""

    def query(self, query: bytes) -> bytes:
        return b"%d" % self._node.applied_index

    def snapshot(self) -> bytes:
        sim, node = self._sim, self._node
        return sim.protocol.snapshot_data(sim, node, node.core, node.applied_index)

    def restore(self, data: bytes) -> None:
        """The model is restored in SimHooks.snapshot_installed (it checks the index too)."""


class SimMembership:
    """engine.driver.Membership for Raft: snapshots record the configuration at their index;
    a node removed by the batch it applied answers its pending proposals as engine.Node's
    going quiet does (unknown: the next leader may commit them)."""

    def __init__(self, sim: Simulation, node: SimNode) -> None:
        self._sim = sim
        self._node = node

    def follow(self) -> None:
        """The simulated network reaches every node: no peer set to follow."""

    def config_committed(self, entry: Any) -> None:
        """Removal is checked once per batch (after_apply)."""

    def after_apply(self) -> None:
        sim, node = self._sim, self._node
        driver = node.driver
        if driver is not None and driver.proposals and sim.protocol.removed(sim, node,
                                                                             driver.core):
            driver.fail_everything(MembershipError(f"node {node.node_id} was removed"))

    def configuration_at(self, index: int) -> bytes:
        core = self._node.core
        return encode_membership(core.configuration_at(index))


class SimHooks:
    """engine.driver.Hooks: the protocol's checks at the driver's fixed points."""

    def __init__(self, sim: Simulation, node: SimNode) -> None:
        self._sim = sim
        self._node = node

    def enqueued(self, outcome: Any) -> None:
        """Simulated clients propose through Driver.propose_batch."""

    def submitted(self, first: int, live: list[Any]) -> None:
        """Recorded by Simulation._propose (it needs the term too)."""

    def received(self, messages: Any) -> None:
        """Nothing to check on arrival."""

    def ready(self, ready: Ready) -> None:
        sim, node = self._sim, self._node
        core = node.core
        # The commits this Ready reports are checked before any of them is applied (a
        # leader applies in this turn).
        sim._observe(node, core)
        sim.protocol.on_ready(sim, node, core, ready)
        for read in ready.read_states:   # Simulation.read asks the core directly
            if read.index:
                floor = sim._read_floors.get(read.context, 0)
                sim.protocol.on_read(sim, node.node_id, read.index, floor)
                sim.stats["reads_served"] += 1
            else:
                sim.stats["reads_refused"] += 1
            sim.read_results[read.context] = read.index

    def persisted(self, ready: Ready) -> None:
        self._sim.protocol.on_persisted(self._sim, self._node, ready)

    def applied(self, ready: Ready) -> None:
        sim, node = self._sim, self._node
        apply = sim.protocol.apply
        failures, applied_ops = sim.definite_failures, sim.applied_ops
        for entry in ready.committed_entries:
            apply(sim, node, entry)
            if entry.kind == _NORMAL and entry.data:
                command = bytes(entry.data)
                if command in failures:
                    check_definite_failures_not_applied(failures, (command,))
                applied_ops.add(command)

    def snapshot_installed(self, snapshot: Snapshot) -> None:
        sim, node = self._sim, self._node
        node.applied = sim.protocol.restore(sim, node, snapshot)
        node.applied_index = node.snapshot_index = snapshot.index
        sim.stats["snapshots_installed"] += 1

    def snapshot_taken(self, snapshot: Snapshot) -> None:
        """Counted when its file is written (SimStorage.save_snapshot)."""


_STATS = (
    "messages_sent", "messages_lost", "messages_duplicated", "messages_blocked",
    "leaders_elected", "crashes", "unsynced_crashes", "restarts", "restarts_from_snapshot",
    "snapshot_file_crashes",
    "partitions", "disk_truncations", "proposals", "proposals_refused", "entries_committed",
    "reads_served", "reads_refused", "lease_reads", "snapshots_taken", "snapshots_installed",
    "snapshot_chunks_sent", "snapshot_retransmits", "transfers_started", "transfers_completed",
    "transfers_refused", "conf_changes", "conf_changes_refused", "conf_changes_committed",
    "learners_promoted", "voters_removed", "witness_changes", "leader_removals",
    "answered_ok", "answered_definite_failure", "answered_unknown",
)


class Simulation:
    """A seeded cluster of protocol cores on a simulated network, disk and clock."""

    def __init__(
        self,
        n: int = 3,
        seed: int = 0,
        *,
        protocol: ProtocolName = "raft",
        faults: FaultConfig | None = None,
        timing: TimingConfig | None = None,
        limits: Limits | None = None,
        pre_vote: bool = True,
        check_quorum: bool = True,
        check_invariants: bool = True,
        snapshot_entries: int = 0,
        snapshot_trailing: int = 0,
        lease_read: bool = False,
        spares: int = 0,
        witnesses: Iterable[int] = (),
        phase1_quorum: int | None = None,
        phase2_quorum: int | None = None,
    ) -> None:
        """n initial voters (ids 1..n) plus (Raft) `spares` nodes (ids n+1..) that join only
        when a membership change adds them; `witnesses`: ids that are witnesses (initial
        voters or spares). phase1_quorum / phase2_quorum: Paxos flexible quorums."""
        if protocol not in ("raft", "paxos"):
            raise ConfigError(f"unknown protocol {protocol!r}")
        if protocol == "paxos" and (spares or witnesses or lease_read):
            raise ConfigError("spares, witnesses and lease reads are Raft features")
        self.seed = seed
        self.snapshot_entries = snapshot_entries
        self.snapshot_trailing = snapshot_trailing
        self.lease_reads_enabled = protocol == "raft" and lease_read and check_quorum
        self.rng = random.Random(seed)
        self.faults = faults or FaultConfig()
        adapter_class = RaftProtocol if protocol == "raft" else PaxosProtocol
        self.timing = timing or adapter_class.default_timing
        self.limits = limits or adapter_class.default_limits
        self.check_invariants = check_invariants
        self.initial_voters: tuple[int, ...] = tuple(range(1, n + 1))
        self.node_ids: tuple[int, ...] = tuple(range(1, n + spares + 1))
        witness_ids = frozenset(witnesses)
        self.nodes: dict[int, SimNode] = {
            i: SimNode(i, joined=i <= n, witness=i in witness_ids) for i in self.node_ids
        }
        self.protocol: SimProtocol
        if protocol == "raft":
            self.protocol = RaftProtocol(self, pre_vote=pre_vote, check_quorum=check_quorum,
                                         witnesses=witness_ids)
        else:
            self.protocol = PaxosProtocol(self, phase1_quorum=phase1_quorum,
                                          phase2_quorum=phase2_quorum)
        self.checker = self.protocol.checker
        self.now = 0
        self._queue: list[tuple[int, int, int, int, Any]] = []
        self._sequence = 0
        self._blocked: set[tuple[int, int]] = set()
        self._trace = hashlib.sha256()
        # Turns the drivers scheduled: (node, incarnation, turn), run after each event.
        self._soon: deque[tuple[SimNode, int, Callable[[], None]]] = deque()
        self._client_sequence = 0
        self._read_floors: dict[bytes, int] = {}
        self.read_results: dict[bytes, int] = {}
        self.events = 0
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        # Core counters (PaxosCore.counters) summed over every incarnation of every node.
        self.core_counters: dict[str, int] = {}
        # A transfer in progress: (old leader, target, term); completed when target leads.
        self._transfers: list[tuple[int, int, int]] = []
        self.snapshot_counters: dict[int, dict[str, int]] = {}
        # Honest outcomes: command -> the definite failure it was answered with; every
        # command some node's state machine applied.
        self.definite_failures: dict[bytes, str] = {}
        self.applied_ops: set[bytes] = set()
        for node_id in self.initial_voters:
            self._start(self.nodes[node_id])
        if self.faults.nemesis_interval_ms and self._nemesis_active():
            self._schedule(self.faults.nemesis_interval_ms, _NEMESIS, 0, None)
        if self.faults.propose_interval_ms:
            self._schedule(self.faults.propose_interval_ms, _CLIENT, 0, None)

    # ------------------------------------------------------------------ scenario DSL

    def run_for(self, duration_ms: int) -> None:
        self.run_until(lambda: False, max_time=duration_ms)

    def run_until(self, predicate: Callable[[], bool], max_time: int = 10_000) -> bool:
        """Runs events until predicate() holds (True) or max_time simulated ms pass (False)."""
        deadline = self.now + max_time
        while not predicate():
            if not self._queue or self._queue[0][0] > deadline:
                self.now = deadline
                return predicate()
            self.step_event()
        return True

    def partition(self, *groups: Iterable[int]) -> None:
        """Only nodes in the same group can talk (nodes in no group are isolated)."""
        sets = [set(group) for group in groups]
        group_of = {node: i for i, group in enumerate(sets) for node in group}
        self._blocked = {
            (a, b)
            for a in self.node_ids
            for b in self.node_ids
            if a != b and (a not in group_of or group_of.get(a) != group_of.get(b))
        }
        self.stats["partitions"] += 1

    def cut(self, src: int, dst: int) -> None:
        """One-way partition: messages from src to dst are dropped."""
        self._blocked.add((src, dst))
        self.stats["partitions"] += 1

    def heal(self) -> None:
        self._blocked = set()

    def crash(self, node_id: int) -> None:
        """Stops a node; everything not yet fsynced is lost."""
        node = self.nodes[node_id]
        if node.core is None:
            return
        self._harvest_counters(node.core)
        driver = node.driver
        assert driver is not None
        driver.stop()
        driver.fail_everything(Stopped("node crashed"))
        node.driver = None
        node.storage = None
        node.incarnation += 1
        self.stats["crashes"] += 1
        self._trace_event(_CRASH, node_id, 0, 0, 0, 0)

    def restart(self, node_id: int) -> None:
        """Restarts a crashed node from its disk (a no-op for a running node)."""
        node = self.nodes[node_id]
        if node.core is not None or not node.joined:
            return
        self.protocol.on_restart(self, node)
        self.stats["restarts"] += 1
        self._start(node)
        self._trace_event(_RESTART, node_id, 0, 0, 0, 0)

    def propose(
        self, command: bytes | None = None, node_id: int | None = None
    ) -> tuple[int, int, int]:
        """Proposes one command on node_id (default: the leader); raises NotLeader etc."""
        if node_id is None:
            node_id = self.leader()
            if node_id is None:
                raise NotLeader("no leader in the simulation")
        return self._propose(node_id, [command if command is not None else self._next_command()])

    def propose_many(self, node_id: int, count: int) -> list[bytes]:
        """Proposes `count` fresh commands at node_id in one batch; [] if it is not leader or
        is overloaded."""
        commands = [self._next_command() for _ in range(count)]
        try:
            self._propose(node_id, commands)
        except (NotLeader, Overloaded):
            return []
        return commands

    def read(self, node_id: int, context: bytes | None = None) -> bytes:
        """Starts a ReadIndex read on node_id; its result lands in read_results[context]."""
        if context is None:
            self._client_sequence += 1
            context = b"read-%d" % self._client_sequence
        self._read_floors[context] = self.protocol.read_floor(self)
        self._core(node_id).read_index(context)
        self._input_done(self.nodes[node_id])
        return context

    def _driver_read(self, node: SimNode) -> None:
        """A client's linearizable read through node's driver (Driver.enqueue_read: the
        turn's shared ReadIndex round, answered once applied through its index), checked
        against everything committed anywhere when it began."""
        driver = node.driver
        assert driver is not None
        driver.enqueue_read(b"", SimRead(self, node.node_id, self.protocol.read_floor(self)))
        self._input_done(node)

    def lease_read(self, node_id: int) -> int | None:
        """A lease read on node_id (Raft thesis §6.4.1): its read index, checked against
        everything committed anywhere now, or None when the node holds no lease."""
        lease = self._core(node_id).lease_read_index()
        if lease is None:
            return None
        self.protocol.on_read(self, node_id, lease[0], self.protocol.read_floor(self))
        self.stats["lease_reads"] += 1
        return int(lease[0])

    def transfer_leadership(self, target: int, leader: int | None = None) -> None:
        """Asks the leader (default: the current one) to hand leadership to target (Raft)."""
        leader = self.leader() if leader is None else leader
        if leader is None:
            raise NotLeader("no leader in the simulation")
        core = self._core(leader)
        core.transfer_leadership(target)
        self._transfers.append((leader, target, core.term))
        self.stats["transfers_started"] += 1
        self._input_done(self.nodes[leader])

    def change_membership(self, ops: list[ConfChangeOp], leader: int | None = None) -> int:
        """Proposes a Raft membership change on the leader; starts spares it adds. Returns
        the index of the CONFIG entry; raises what RaftCore.propose_conf_change raises."""
        leader = self.leader() if leader is None else leader
        if leader is None:
            raise NotLeader("no leader in the simulation")
        index, _ = self._core(leader).propose_conf_change(ops)
        self.stats["conf_changes"] += 1
        for op in ops:
            node = self.nodes[op.node_id]
            if op.type == ConfChangeType.ADD_LEARNER and not node.joined:
                node.joined = True
                self._start(node)
            if op.type == ConfChangeType.PROMOTE:
                self.stats["learners_promoted"] += 1
            if op.type in (ConfChangeType.REMOVE, ConfChangeType.DEMOTE):
                self.stats["voters_removed"] += 1
                if op.node_id == leader:
                    self.stats["leader_removals"] += 1
            if node.witness:
                self.stats["witness_changes"] += 1
        self._input_done(self.nodes[leader])
        return int(index)

    @staticmethod
    def address(node_id: int) -> str:
        return f"10.0.0.{node_id}:7000"

    def check_durable(self) -> None:
        """Raft: every committed entry is on a majority of the newest committed
        configuration's voters, and its command on a full copy among them."""
        self._raft_checker().check_durable_membership(
            {i: n.disk.term for i, n in self.nodes.items()},
            [i for i, n in self.nodes.items() if not n.witness],
        )

    def leader(self) -> int | None:
        """The running leader of the highest term (ballot), if any."""
        best: tuple[int, int] | None = None
        for node in self.nodes.values():
            core = node.core
            if core is not None and core.role == _LEADER and (best is None or core.term > best[0]):
                best = (core.term, node.node_id)
        return None if best is None else best[1]

    def wait_leader(self, max_time: int = 10_000) -> int:
        if not self.run_until(lambda: self.leader() is not None, max_time):
            raise self._failure(f"no leader within {max_time} ms")
        leader = self.leader()
        assert leader is not None
        return leader

    def core(self, node_id: int) -> Any:
        return self._core(node_id)

    def check_outcomes(self) -> None:
        """No operation answered with a definite failure was applied by any node."""
        check_definite_failures_not_applied(self.definite_failures, self.applied_ops)

    def is_committed(self, index: int, term: int) -> bool:
        """Raft: the entry at index committed with term."""
        terms = self._raft_checker().committed_terms
        return index < len(terms) and terms[index] == term

    def possible_members(self) -> set[int]:
        return self.protocol.possible_members(self)

    def settled(self, index: int) -> bool:
        """Every member of a settled configuration applied through index (the healed phase's
        progress requirement)."""
        return self.protocol.settled(self, index)

    def applied_everywhere(self, index: int, node_ids: Iterable[int] | None = None) -> bool:
        ids = self.node_ids if node_ids is None else node_ids
        return all(self.nodes[i].applied_index >= index for i in ids)

    def messages_in_flight(self) -> Iterator[Any]:
        for _, _, kind, _, payload in self._queue:
            if kind == _DELIVER:
                yield payload

    def harvest_counters(self) -> dict[str, int]:
        """Core counters summed over every incarnation, the running ones included."""
        totals = dict(self.core_counters)
        for node in self.nodes.values():
            for name, value in getattr(node.core, "counters", {}).items():
                totals[name] = totals.get(name, 0) + value
        return totals

    def on_new_leader(self, node_id: int) -> None:
        """A node became leader (called by the protocol's observer): transfers to it done."""
        for transfer in [t for t in self._transfers if t[1] == node_id]:
            self.stats["transfers_completed"] += 1
            self._transfers.remove(transfer)

    @property
    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    # ------------------------------------------------------------------ event loop

    def step_event(self) -> None:
        time, _, kind, node_id, payload = heapq.heappop(self._queue)
        self.now = time
        self.events += 1
        try:
            self._dispatch(kind, node_id, payload)
        except (InvariantViolation, SimulationFailure):
            raise
        except EngineError as exc:  # a core raised on simulated input: a bug
            raise InvariantViolation(f"{type(exc).__name__}: {exc}") from exc

    def _dispatch(self, kind: int, node_id: int, payload: Any) -> None:
        self._dispatch_event(kind, node_id, payload)
        self._run_turns()

    def _dispatch_event(self, kind: int, node_id: int, payload: Any) -> None:
        if kind == _DELIVER:
            self._deliver(node_id, payload)
        elif kind == _TICK:
            node = self.nodes[node_id]
            if node.driver is not None and payload == node.incarnation:
                self._trace_event(_TICK, node_id, 0, 0, 0, 0)
                node.driver.tick()
                self._schedule(self.timing.tick_ms, _TICK, node_id, node.incarnation)
        elif kind == _PERSIST:
            node = self.nodes[node_id]
            storage = node.storage
            if (node.driver is not None and payload == node.incarnation and storage is not None
                    and storage.pending is not None and storage.complete()):
                node.driver.persisted()
        elif kind == _JOB:
            node = self.nodes[node_id]
            incarnation, job, done = payload
            if node.driver is not None and incarnation == node.incarnation:
                self._trace_event(_JOB_TRACE, node_id, 0, 0, 0, 0)
                try:
                    result = job()
                except _Crashed:
                    self.crash(node_id)
                    return
                except Exception as exc:
                    done(None, exc)
                    return
                done(result, None)
        elif kind == _CLIENT:
            if self.faults.propose_interval_ms:  # background clients stop with the faults
                self._client_step()
                self._schedule(
                    1 + self.rng.randrange(2 * self.faults.propose_interval_ms), _CLIENT, 0, None
                )
        elif self._nemesis_active():
            self._nemesis_step()
            self._schedule(self.faults.nemesis_interval_ms, _NEMESIS, 0, None)

    def _nemesis_active(self) -> bool:
        faults = self.faults
        return bool(faults.partition or faults.crash or faults.transfer or faults.membership)

    def _schedule(self, delay_ms: int, kind: int, node_id: int, payload: Any) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (self.now + delay_ms, self._sequence, kind, node_id, payload))

    def _trace_event(self, kind: int, node_id: int, a: int, b: int, c: int, d: int) -> None:
        self._trace.update(_PACK(self.now, kind, node_id, a, b, c, d))

    # ------------------------------------------------------------------ nodes and driver

    def _start(self, node: SimNode) -> None:
        """Boots a core from the node's disk (engine.Node's start): WAL open, state machine
        restored from the snapshot file, then the core rebuilt from snapshot + log."""
        node.disk.open()
        snapshot = node.disk.snapshot
        applied = 0
        node.applied = []
        if snapshot is not None:
            node.applied = self.protocol.restore(self, node, snapshot)
            applied = snapshot.index
            self.stats["restarts_from_snapshot"] += 1
        core = self.protocol.make_core(self, node, applied)
        incarnation = node.incarnation

        def call_soon(turn: Callable[[], None]) -> None:
            self._soon.append((node, incarnation, turn))

        driver = Driver(
            node.node_id, SimStateMachine(self, node), clock=self._clock, call_soon=call_soon,
            request_timeout_s=REQUEST_TIMEOUT_S, max_entry_bytes=self.limits.max_entry_bytes,
            max_pending_proposals=self.limits.max_pending_proposals,
            snapshot_entries=self.snapshot_entries,
            snapshot_trailing_entries=self.snapshot_trailing,
        )
        driver.witness = node.witness
        driver.hooks = SimHooks(self, node)
        node.storage = SimStorage(self, node)
        jobs = SimJobs(self, node)
        driver.start(core, SimTransport(self), node.storage, applied=applied,
                     storage_jobs=jobs, snapshot_jobs=jobs,
                     membership=SimMembership(self, node) if self.protocol.name == "raft"
                     else None)
        node.driver = driver
        node.snapshot_index = applied
        node.last_commit = core.commit_index
        # A term learned but never persisted is legitimately forgotten by a crash (nothing
        # durable depended on it); the persisted term itself never goes back (checked on fsync).
        node.last_term = core.term
        node.led_ballot = 0
        node.applied_index = applied
        # Nodes' timers are not in phase.
        self._schedule(
            1 + self.rng.randrange(self.timing.tick_ms), _TICK, node.node_id, node.incarnation
        )

    def _raft_checker(self) -> ClusterChecker:
        checker = self.checker
        if not isinstance(checker, ClusterChecker):
            raise ConfigError("a Raft-only check on a Paxos simulation")
        return checker

    def _core(self, node_id: int) -> Any:
        core = self.nodes[node_id].core
        if core is None:
            raise NotLeader(f"node {node_id} is down")
        return core

    def _propose(self, node_id: int, commands: list[bytes]) -> tuple[int, int, int]:
        """A client hands `commands` to node_id's driver as one batch (Driver.propose_batch:
        the core's propose and the outcome tables); a non-leader refuses (NotLeader), the
        core's back-pressure answers them (Overloaded)."""
        node = self.nodes[node_id]
        driver = node.driver
        if driver is None:
            raise NotLeader(f"node {node_id} is down")
        deadline = self._clock() + REQUEST_TIMEOUT_S
        batch = [(command, SimOutcome(self, command), deadline) for command in commands]
        try:
            first, last, term = driver.propose_batch(batch)
        except Overloaded:   # back-pressure: nothing was appended; the outcomes are answered
            self._input_done(node)
            raise
        self.protocol.on_proposed(self, first, term, commands)
        self.stats["proposals"] += len(commands)
        self._input_done(node)
        return first, last, term

    # ------------------------------------------------------------------ outcomes

    def _answer(self, command: bytes, error: EngineError | None) -> None:
        """A proposal's caller gets its answer: a result (None) or `error`."""
        if error is None:
            self.stats["answered_ok"] += 1
        elif isinstance(error, Rejected):
            self.stats["answered_definite_failure"] += 1
            self.definite_failures[command] = f"{type(error).__name__}: {error}"
            if command in self.applied_ops:
                check_definite_failures_not_applied(self.definite_failures, (command,))
        else:
            self.stats["answered_unknown"] += 1

    def _unsynced_crash(self, node: SimNode, *, snapshot_file: bool = False) -> bool:
        """At a durability point: crash now with probability faults.unsynced_crash.
        snapshot_file: the point between a durable snapshot file and the WAL's marker."""
        rate = self.faults.unsynced_crash
        if rate and self.rng.random() < rate:
            self.stats["unsynced_crashes"] += 1
            self.stats["snapshot_file_crashes"] += snapshot_file
            self.crash(node.node_id)
            return True
        return False

    def _clock(self) -> float:
        """The drivers' clock: simulated time in seconds."""
        return self.now / 1000.0

    def _input_done(self, node: SimNode) -> None:
        """After an input given to node's driver or core: its turn runs now."""
        if node.driver is not None:
            node.driver.schedule_turn()
        self._run_turns()

    def _run_turns(self) -> None:
        """Run the turns the drivers scheduled (engine.Node's loop.call_soon), in order, then
        check what each turn touched."""
        soon = self._soon
        while soon:
            node, incarnation, turn = soon.popleft()
            if node.driver is None or node.incarnation != incarnation:
                continue
            turn()
            core = node.core  # None if the node crashed on the way
            if core is not None:
                self._observe(node, core)

    def _compact_disk(self, node: SimNode, index: int, term: int, *, install: bool) -> None:
        """The WAL's compact(index, term). A compaction never forgets a stored entry above
        its marker - except a Raft install, which replaces a conflicting log (Figure 13)."""
        dropped = node.disk.compact(index, term)
        forgotten = [entry.index for entry in dropped if entry.term]
        if forgotten and not install:
            _fail(
                f"node {node.node_id}: WAL compaction at ({index}, {term}) forgets stored "
                f"entries {forgotten[:5]}... above it"
            )

    def _observe(self, node: SimNode, core: Any) -> None:
        if core.term < node.last_term:
            _fail(
                f"term of node {node.node_id} went back from {node.last_term} to {core.term}"
            )
        node.last_term = core.term
        self.protocol.observe(self, node, core)

    def _harvest_counters(self, core: Any) -> None:
        for name, value in getattr(core, "counters", {}).items():
            self.core_counters[name] = self.core_counters.get(name, 0) + value

    # ------------------------------------------------------------------ network

    def _send(self, message: Any) -> None:
        src, dst = message.src, message.dst
        stats = self.stats
        stats["messages_sent"] += 1
        if (src, dst) in self._blocked:
            stats["messages_blocked"] += 1
            return
        rng, faults = self.rng, self.faults
        if faults.loss and rng.random() < faults.loss:
            stats["messages_lost"] += 1
            return
        copies = 1
        if faults.duplicate and rng.random() < faults.duplicate:
            copies = 2
            stats["messages_duplicated"] += 1
        for _ in range(copies):
            self._schedule(
                rng.randint(faults.delay_min_ms, faults.delay_max_ms), _DELIVER, dst, message
            )

    def _deliver(self, node_id: int, message: Any) -> None:
        node = self.nodes[node_id]
        if node.driver is None or (message.src, node_id) in self._blocked:
            return
        self._trace_event(_DELIVER, node_id, message.type, message.src, message.term, message.index)
        driver = node.driver
        assert driver is not None
        driver.receive(message)
        driver.schedule_turn()

    # ------------------------------------------------------------------ clients and nemesis

    def _next_command(self) -> bytes:
        self._client_sequence += 1
        size = self.rng.randrange(0, 48)
        return (b"cmd-%d:" % self._client_sequence) + b"x" * size

    def _client_step(self) -> None:
        up = [node for node in self.nodes.values() if node.core is not None]
        if not up:
            return
        node = self.rng.choice(up)
        core = node.core
        if self.rng.random() < self.faults.read:
            if self.lease_reads_enabled and core.role == _LEADER and self.rng.random() < 0.5:
                if self.lease_read(node.node_id) is None:
                    self.stats["reads_refused"] += 1
                return
            self._driver_read(node)
            return
        if core.role != _LEADER:
            return
        batch = [self._next_command() for _ in range(1 + self.rng.randrange(3))]
        try:
            self._propose(node.node_id, batch)
        except Overloaded:
            self.stats["proposals_refused"] += len(batch)

    def _nemesis_step(self) -> None:
        rng, faults = self.rng, self.faults
        ids = self.node_ids
        if self._blocked and rng.random() < faults.heal:
            self.heal()
        elif len(ids) > 1 and rng.random() < faults.partition:
            self._partition_step()
        up = [i for i in ids if self.nodes[i].core is not None]
        down = [i for i in ids if self.nodes[i].core is None and self.nodes[i].joined]
        if up and rng.random() < faults.crash:
            self.crash(rng.choice(up))
        if down and rng.random() < faults.restart:
            self.restart(rng.choice(down))
        leader = self.leader()
        if leader is not None and len(ids) > 1 and rng.random() < faults.transfer:
            target = rng.choice([i for i in ids if i != leader])
            try:
                self.transfer_leadership(target, leader)
            except ConfigError:  # a learner, witness or non-member: refused
                self.stats["transfers_refused"] += 1
        if faults.membership and rng.random() < faults.membership:
            self._membership_step()

    def _partition_step(self) -> None:
        rng, ids = self.rng, self.node_ids
        mode = rng.randrange(4)
        leader = self.leader()
        if mode == 3 and leader is not None:  # isolate the leader: the classic
            self.partition({leader}, set(ids) - {leader})
        elif mode == 0:  # isolate one node
            lone = rng.choice(ids)
            self.partition({lone}, set(ids) - {lone})
        elif mode == 1:  # a random split
            shuffled = list(ids)
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(ids) - 1)
            self.partition(set(shuffled[:cut]), set(shuffled[cut:]))
        else:  # one-way: a node cannot hear some peers, or cannot reach them
            a, b = rng.sample(ids, 2)
            self.cut(a, b)

    def _membership_step(self) -> None:
        """The nemesis asks the (Raft) leader for a random membership change (add a learner
        or a witness learner, promote, demote, remove, or replace a voter in one joint
        change)."""
        leader = self.leader()
        if leader is None:
            return
        rng = self.rng
        membership = self._core(leader).membership
        outside = [i for i in self.node_ids if i not in membership.members]
        learners = sorted(membership.learners)
        voters = sorted(membership.voters)
        roll = rng.random()
        ops: list[ConfChangeOp]
        if roll < 0.35 and outside:
            node = rng.choice(outside)
            ops = [add_learner(node, self.address(node), witness=self.nodes[node].witness)]
        elif roll < 0.65 and learners:
            ops = [promote(rng.choice(learners))]
        elif roll < 0.75:
            ops = [demote(rng.choice(voters))]
        elif roll < 0.9:
            ops = [remove(rng.choice(sorted(membership.members)))]
        elif learners:
            # Replace a voter by a learner in one joint change (thesis §4.3 allows any).
            ops = [promote(rng.choice(learners)), remove(rng.choice(voters))]
        else:
            return
        try:
            self.change_membership(ops, leader)
        except (MembershipError, ConfChangeInProgress, Overloaded):
            self.stats["conf_changes_refused"] += 1

    def _failure(self, what: str) -> SimulationFailure:
        return SimulationFailure(f"{what} (reproduce with ENGINE_SIM_SEED={self.seed})")


# ---------------------------------------------------------------------- swarm

# A client re-proposes its marker after this long without an outcome: a deposed Paxos
# leader's proposal can stay undecided for ever when the new leader's phase-1 quorum never
# saw it and no later proposal reuses its slot (engine.Node reports Timeout, outcome unknown).
MARKER_RETRY_MS = 1_500
# Bounded work: after healing, a cluster settles in a few thousand events (measured: the
# slowest healthy seed of 600 Raft, 300 membership and 700 Paxos seeds needed 6,566, 4,099
# and 28,521 events). More means a message storm (amplification): a liveness bug even if
# the cluster would settle eventually, and it would dominate the swarm's run time.
LIVENESS_MAX_EVENTS = 50_000



@dataclass(slots=True)
class SwarmResult:
    seed: int
    n: int
    events: int
    trace_hash: str
    stats: dict[str, int]  # the whole run
    fault_stats: dict[str, int]  # the faulty phase only (coverage)
    faults: FaultConfig
    simulated_ms: int
    protocol: str = "raft"
    core_counters: dict[str, int] = field(default_factory=dict)  # the whole run
    liveness_events: int = 0  # events the healed phase needed to settle


def swarm_config(seed: int) -> tuple[int, FaultConfig, TimingConfig, Limits, bool, bool]:
    """The cluster size, faults, timing and limits a Raft seed draws (swarm testing)."""
    rng = random.Random(f"swarm:{seed}")
    n = rng.choice((1, 2, 3, 3, 3, 3, 4, 5, 5))
    faults = FaultConfig.swarm(rng)
    heartbeat = rng.randint(2, 4)
    timing = TimingConfig(
        tick_ms=10,
        heartbeat_interval_ticks=heartbeat,
        election_timeout_ticks=rng.randint(max(10, 3 * heartbeat), 20),
    )
    limits = Limits(
        max_inflight_messages=rng.randint(1, 16),
        max_append_bytes=rng.choice((64, 256, 4096)),
        max_pending_proposals=rng.randint(16, 256),
        max_uncommitted_bytes=rng.choice((512, 4096, 1 << 20)),
        max_apply_batch=rng.choice((4, 64, 16_384)),
    )
    # Most seeds run the production configuration; some turn pre-vote / check-quorum off.
    pre_vote = rng.random() < 0.8
    check_quorum = rng.random() < 0.8
    return n, faults, timing, limits, pre_vote, check_quorum


@dataclass(frozen=True, slots=True)
class SwarmExtras:
    """What a seed draws for the features added after the base swarm (drawn from their own
    stream so the base configuration of every seed stays the same)."""

    snapshot_entries: int
    snapshot_trailing: int
    snapshot_chunk_bytes: int
    snapshot_inflight_chunks: int
    lease_read: bool
    transfer: float
    unsynced_crash: float


def swarm_extras(seed: int) -> SwarmExtras:
    rng = random.Random(f"swarm-extras:{seed}")
    return SwarmExtras(
        # Small thresholds so that compaction and snapshot installs happen in a short run.
        snapshot_entries=rng.choice((0, 5, 10, 20, 40)),
        snapshot_trailing=rng.choice((0, 0, 2, 8)),
        snapshot_chunk_bytes=rng.choice((256, 1024, 4096, 65_000)),
        snapshot_inflight_chunks=rng.choice((2, 4, 16)),
        lease_read=rng.random() < 0.7,
        transfer=0.0 if rng.random() < 0.4 else rng.uniform(0.0, 0.1),
        # Crashes at the driver's durability points (fsync, snapshot file vs WAL marker).
        unsynced_crash=rng.choice((0.0, 0.0, 0.002, 0.01)),
    )


@dataclass(frozen=True, slots=True)
class MembershipExtras:
    """What a membership-swarm seed draws on top of the base swarm configuration."""

    spares: int  # nodes that can join (ids n+1..n+spares)
    witnesses: frozenset[int]  # witness ids among the initial voters and the spares
    membership: float  # P(a membership change) per nemesis step


def membership_extras(seed: int, n: int) -> MembershipExtras:
    rng = random.Random(f"swarm-membership:{seed}")
    spares = rng.randint(1, 3)
    witnesses: set[int] = set()
    # An initial witness only where witnesses < full voters holds (rule W1).
    if n >= 3 and rng.random() < 0.35:
        witnesses.add(n)
    for spare in range(n + 1, n + spares + 1):
        if rng.random() < 0.35:
            witnesses.add(spare)
    return MembershipExtras(spares, frozenset(witnesses), rng.uniform(0.2, 0.7))


def raft_swarm_simulation(seed: int, *, membership: bool = False,
                          check_invariants: bool = True) -> Simulation:
    """The Raft cluster a seed draws (membership=True adds spares, witnesses and random
    membership changes; the base configuration a seed draws is the same either way)."""
    n, faults, timing, limits, pre_vote, check_quorum = swarm_config(seed)
    extras = swarm_extras(seed)
    faults = dataclasses.replace(faults, transfer=extras.transfer,
                                 unsynced_crash=extras.unsynced_crash)
    spares, witnesses = 0, frozenset[int]()
    if membership:
        member_extras = membership_extras(seed, n)
        spares, witnesses = member_extras.spares, member_extras.witnesses
        faults = dataclasses.replace(faults, membership=member_extras.membership)
    limits = dataclasses.replace(
        limits,
        max_snapshot_chunk_bytes=extras.snapshot_chunk_bytes,
        max_snapshot_inflight_chunks=extras.snapshot_inflight_chunks,
    )
    return Simulation(
        n, seed, faults=faults, timing=timing, limits=limits, pre_vote=pre_vote,
        check_quorum=check_quorum, check_invariants=check_invariants,
        snapshot_entries=extras.snapshot_entries, snapshot_trailing=extras.snapshot_trailing,
        lease_read=extras.lease_read, spares=spares, witnesses=witnesses,
    )


def paxos_swarm_simulation(seed: int, *, check_invariants: bool = True) -> Simulation:
    """The Multi-Paxos cluster a seed draws: size 1-5, flexible quorums in half the
    five-node seeds, the same fault families as Raft (drawn from FaultConfig.swarm), crashes
    at durability points, and snapshots every 3-25 applied slots in about half the seeds."""
    rng = random.Random(f"paxos-swarm:{seed}")
    n = rng.choice((1, 3, 3, 5))
    q1 = q2 = None
    if n == 5 and rng.random() < 0.5:
        q1, q2 = rng.choice(((4, 2), (3, 3), (5, 1), (2, 4)))
    # A heavier client load than Raft's draws: pipelined slots are what leave the holes a
    # new leader must fill with no-ops (and the re-proposals and catch-ups around them).
    faults = dataclasses.replace(
        FaultConfig.swarm(rng), unsynced_crash=rng.choice((0.0, 0.002, 0.01)),
        propose_interval_ms=rng.randint(2, 12))
    snapshot_entries = rng.choice((0, 3, 8, 25)) if rng.random() < 0.67 else 0
    heartbeat = rng.randint(2, 3)
    timing = TimingConfig(tick_ms=10, heartbeat_interval_ticks=heartbeat,
                          election_timeout_ticks=rng.randint(max(8, 3 * heartbeat), 15))
    limits = dataclasses.replace(
        PaxosProtocol.default_limits,
        max_inflight_messages=rng.randint(1, 16),
        # At least 256-byte chunks: with 64-byte chunks and a window of 2, a catch-up transfer
        # of the 15 KB state a long seed builds moves 128 bytes per round trip and needs more
        # than the healed phase's 10 s (seeds 355 and 425: progressing, never done in time).
        max_snapshot_chunk_bytes=rng.choice((256, 512, 4096)),
        max_snapshot_inflight_chunks=rng.choice((2, 4, 16)),
    )
    return Simulation(
        n, seed, protocol="paxos", faults=faults, timing=timing, limits=limits,
        check_invariants=check_invariants, snapshot_entries=snapshot_entries,
        snapshot_trailing=rng.choice((0, 2, 8)), phase1_quorum=q1, phase2_quorum=q2,
    )


def run_swarm(
    seed: int,
    *,
    protocol: ProtocolName = "raft",
    fault_time_ms: int = 3_000,
    max_events: int = 4_000,
    liveness_time_ms: int = 10_000,
    liveness_max_events: int = LIVENESS_MAX_EVENTS,
    check_invariants: bool = True,
    membership: bool = False,
) -> SwarmResult:
    """One swarm run: faulty phase, then heal + restart all + liveness. Raises SimulationFailure.
    membership=True (Raft) adds spare nodes, witnesses and random membership changes."""
    if protocol == "paxos":
        if membership:
            raise ConfigError("membership changes are a Raft feature")
        sim = paxos_swarm_simulation(seed, check_invariants=check_invariants)
    else:
        sim = raft_swarm_simulation(seed, membership=membership,
                                    check_invariants=check_invariants)
    try:
        deadline = fault_time_ms
        while sim._queue and sim._queue[0][0] <= deadline and sim.events < max_events:
            sim.step_event()
        fault_stats = dict(sim.stats)
        fault_events = sim.events
        faults = sim.faults
        _liveness_phase(sim, liveness_time_ms, liveness_max_events)
    except SimulationFailure:
        raise
    except Exception as exc:
        raise SimulationFailure(
            f"{protocol} seed {seed} (n={len(sim.initial_voters)}, {sim.faults}) failed at "
            f"t={sim.now} ms after {sim.events} events: {type(exc).__name__}: {exc} "
            f"(reproduce with ENGINE_SIM_SEED={seed})"
        ) from exc
    return SwarmResult(
        seed, len(sim.initial_voters), sim.events, sim.trace_hash, dict(sim.stats), fault_stats,
        faults, sim.now, protocol, sim.harvest_counters(), sim.events - fault_events,
    )


def _liveness_phase(sim: Simulation, budget_ms: int, max_events: int = LIVENESS_MAX_EVENTS) -> None:
    """Heal everything, restart every node, and require progress in bounded time and work:
    a marker proposal committed and applied on every member of a settled configuration."""
    sim.faults = sim.faults.healed()
    sim.heal()
    for node_id in sim.node_ids:
        sim.crash(node_id)
    # Nodes that cannot be members any more stay down (an operator retires removed servers;
    # Raft thesis §4.2.3: they would only disrupt).
    members = sim.possible_members()
    for node_id in sim.node_ids:
        if node_id in members:
            sim.restart(node_id)
    deadline = sim.now + budget_ms
    protocol = sim.protocol
    proposals: list[Proposal] = []
    proposed_at = 0
    event_limit = sim.events + max_events

    def storm() -> bool:
        return sim.events >= event_limit

    while sim.now < deadline and not storm():
        done = [p for p in proposals if protocol.is_committed(p)]
        if done:
            index = done[0].first
            sim.run_until(functools.partial(_settled_or_storm, sim, index, event_limit),
                          deadline - sim.now)
            if sim.settled(index):
                protocol.final_checks(sim)
                sim.check_outcomes()
                return
            break
        leader = sim.leader()
        if leader is not None and (
            not proposals
            or sim.core(leader).term != proposals[-1].term
            or protocol.is_lost(proposals[-1])
            or sim.now - proposed_at >= MARKER_RETRY_MS
        ):
            # A new marker per attempt: each is its own operation (unique commands).
            marker = b"liveness-%d-%d" % (sim.seed, len(proposals))
            try:
                proposals.append(Proposal(*sim.propose(marker, leader), marker))
                proposed_at = sim.now
            except Overloaded:
                pass  # back-pressure from the faulty phase; retry once it drains
        sim.run_until(storm, min(50, deadline - sim.now))
    if storm():
        raise sim._failure(
            f"liveness: message storm, {max_events} events after healing without settling "
            f"(messages by (type, src, dst) in flight: {_traffic(sim)}, "
            f"{protocol.describe(sim)})"
        )
    raise sim._failure(
        f"liveness: no proposal committed and applied on every member of a settled "
        f"configuration within {budget_ms} ms of healing (leader={sim.leader()}, "
        f"proposals={proposals}, {protocol.describe(sim)}, "
        f"status={[core.status() for n in sim.nodes.values() if (core := n.core)]})"
    )


def _settled_or_storm(sim: Simulation, index: int, event_limit: int) -> bool:
    return sim.events >= event_limit or sim.settled(index)


def _traffic(sim: Simulation) -> list[tuple[tuple[int, int, int], int]]:
    """The heaviest (message type, src, dst) flows in flight (a storm's signature)."""
    flows: dict[tuple[int, int, int], int] = {}
    for message in sim.messages_in_flight():
        key = (int(message.type), message.src, message.dst)
        flows[key] = flows.get(key, 0) + 1
    return sorted(flows.items(), key=lambda item: -item[1])[:4]


__all__ = [
    "Simulation",
    "SimulationFailure",
    "SimProtocol",
    "Proposal",
    "FaultConfig",
    "SimNode",
    "SimDisk",
    "SwarmResult",
    "run_swarm",
    "raft_swarm_simulation",
    "paxos_swarm_simulation",
    "swarm_config",
    "swarm_extras",
    "SwarmExtras",
    "MembershipExtras",
    "membership_extras",
    "encode_applied",
    "decode_applied",
    "MARKER_RETRY_MS",
    "LIVENESS_MAX_EVENTS",
]
