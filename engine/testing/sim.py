"""Deterministic discrete-event simulation of a Raft cluster (FoundationDB / VOPR style).

N RaftCore nodes run in one thread against a simulated network, disk and clock. One seed
drives every choice (random.Random(seed)), events are ordered by (time, sequence), so a run
is a pure function of its seed; `trace_hash` (SHA-256 of the event trace) proves it.

The model
  network  every message may be lost, duplicated and delayed (uniform in [min, max] ms, so
           messages reorder); partitions cut links both ways or one way.
  disk     a node's disk holds exactly what its Ready asked to persist, once the simulated
           fsync completed. A crash loses the Ready being persisted and everything in memory;
           restart builds a new RaftCore from the disk: the state machine is restored from the
           disk's snapshot (if any) and replays the log after it.
  snapshots  with snapshot_entries > 0 a node snapshots its state machine (the list of
           commands it applied) every snapshot_entries applied entries, durably at once, then
           compacts its disk and core log to snapshot_trailing entries below it; followers that
           fall behind the compacted log receive the snapshot in chunks over the faulty network.
  transfers / lease reads  the nemesis asks the leader to hand over leadership
           (faults.transfer); with lease_read, clients also read through the leader lease.
  membership  with spares > 0, nodes n+1.. start only once a change adds them; the nemesis
           (faults.membership) asks the leader for random changes (add a learner or witness
           learner, promote, demote, remove - the leader too - or replace a voter in one
           joint change); snapshots record the configuration as of their index, as a driver
           must; `witnesses` are metadata-only voters for life (their ids are never reused).
  driver   the etcd loop: ready() -> send `messages` now -> fsync entries + hard state ->
           send `messages_after_persist` -> apply committed entries -> advance(); one Ready at
           a time per node, while the core keeps receiving messages and ticks.
  clients  proposals go to whichever node is leader; reads (ReadIndex) to any node.

ClusterChecker (engine/testing/invariants.py) checks the global invariants after every event.

Scenario DSL:
    sim = Simulation(n=3, seed=7)
    leader = sim.wait_leader()
    sim.partition({leader}, set(sim.node_ids) - {leader})
    sim.run_for(2_000)
    sim.heal(); sim.crash(2); sim.restart(2)
    sim.run_until(lambda: sim.leader() is not None, max_time=5_000)

Swarm: `run_swarm(seed)` draws the cluster size and fault rates from the seed, runs a faulty
phase, then heals the network, restarts every node and requires a leader and a committed
proposal on every node within a bounded simulated time. A failure raises SimulationFailure
whose message contains ENGINE_SIM_SEED=<seed>.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import (
    ConfChangeInProgress,
    ConfigError,
    EngineError,
    InvariantViolation,
    MembershipError,
    NotLeader,
    Overloaded,
)
from engine.messages import EntryKind
from engine.raft.config import RaftConfig
from engine.raft.core import RaftCore, Role
from engine.raft.membership import (
    ConfChangeOp,
    ConfChangeType,
    Membership,
    add_learner,
    decode_membership,
    demote,
    encode_membership,
    promote,
    remove,
)
from engine.testing.invariants import ClusterChecker
from engine.types import HardState, Limits, Ready, Snapshot, TimingConfig

_TICK, _DELIVER, _PERSIST, _CLIENT, _NEMESIS = range(5)
_PACK = struct.Struct("<qBqqqqq").pack


class SimulationFailure(AssertionError):
    """An invariant or liveness requirement failed; the message names the seed."""


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Fault rates of one run. Probabilities are per message / per nemesis step."""

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


@dataclass(slots=True)
class SimNode:
    node_id: int
    core: RaftCore | None = None
    incarnation: int = 0
    # The simulated disk: what synced Readys persisted (index i at disk_entries[i - 1]).
    disk_hard_state: HardState = field(default_factory=HardState)
    disk_entries: list[Any] = field(default_factory=list)
    # One Ready at a time is being persisted (the etcd driver loop).
    persisting: Ready | None = None
    last_commit: int = 0
    last_term: int = 0
    applied_index: int = 0
    applied: list[bytes] = field(default_factory=list)  # commands applied (no no-ops)
    # Durable snapshot and the (index, term) disk_entries follow (disk_entries[i] has index
    # disk_log_start[0] + 1 + i).
    disk_snapshot: Snapshot | None = None
    disk_log_start: tuple[int, int] = (0, 0)
    snapshot_index: int = 0  # index of the last snapshot taken or installed (in memory)
    # Membership: a spare node joins (runs) once first added; a witness stays one for life
    # (a node id is never reused across witness and full roles).
    joined: bool = True
    witness: bool = False

    @property
    def up(self) -> bool:
        return self.core is not None

    @property
    def disk_last_index(self) -> int:
        return self.disk_log_start[0] + len(self.disk_entries)

    def disk_term(self, index: int) -> int | None:
        """Term of the entry at index on disk; None if a snapshot covers it; 0 if absent."""
        start = self.disk_log_start[0]
        if index <= start:
            return None
        if index > self.disk_last_index:
            return 0
        return int(self.disk_entries[index - start - 1].term)

    def compact_disk(self, index: int, term: int) -> None:
        """The WAL's compact(index, term): keep the entries after (index, term) if the disk
        holds that entry, else drop them all (Raft Figure 13 steps 6-7)."""
        if index <= self.disk_log_start[0]:
            return
        if self.disk_term(index) == term:
            del self.disk_entries[: index - self.disk_log_start[0]]
        else:
            self.disk_entries = []
        self.disk_log_start = (index, term)


def encode_applied(commands: list[bytes]) -> bytes:
    """The simulated state machine's snapshot: its applied commands, length-prefixed."""
    return b"".join(struct.pack("<I", len(c)) + c for c in commands)


def decode_applied(data: bytes) -> list[bytes]:
    commands, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        commands.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return commands


class Simulation:
    """A seeded cluster of RaftCore nodes on a simulated network, disk and clock."""

    def __init__(
        self,
        n: int = 3,
        seed: int = 0,
        *,
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
    ) -> None:
        """n initial voters (ids 1..n) plus `spares` nodes (ids n+1..) that join only when a
        membership change adds them; `witnesses`: ids that are witnesses (initial voters or
        spares)."""
        self.seed = seed
        self.snapshot_entries = snapshot_entries
        self.snapshot_trailing = snapshot_trailing
        self.lease_reads_enabled = lease_read and check_quorum
        self.rng = random.Random(seed)
        self.faults = faults or FaultConfig()
        self.timing = timing or TimingConfig(
            tick_ms=10, heartbeat_interval_ticks=3, election_timeout_ticks=15
        )
        self.limits = limits or Limits()
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.check_invariants = check_invariants
        self.initial_voters: tuple[int, ...] = tuple(range(1, n + 1))
        self.node_ids: tuple[int, ...] = tuple(range(1, n + spares + 1))
        witness_ids = frozenset(witnesses)
        self.nodes: dict[int, SimNode] = {
            i: SimNode(i, joined=i <= n, witness=i in witness_ids) for i in self.node_ids
        }
        self.bootstrap = Membership.of(
            self.initial_voters, witnesses=witness_ids & set(self.initial_voters),
            addresses={i: self.address(i) for i in self.initial_voters},
        )
        self.checker = ClusterChecker(
            self.initial_voters, bootstrap=self.bootstrap, witnesses=witness_ids
        )
        self.now = 0
        self._queue: list[tuple[int, int, int, int, Any]] = []
        self._sequence = 0
        self._blocked: set[tuple[int, int]] = set()
        self._trace = hashlib.sha256()
        self._client_sequence = 0
        self._read_floors: dict[bytes, int] = {}
        self.read_results: dict[bytes, int] = {}
        self.events = 0
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "messages_sent",
                "messages_lost",
                "messages_duplicated",
                "messages_blocked",
                "leaders_elected",
                "crashes",
                "restarts",
                "partitions",
                "disk_truncations",
                "proposals",
                "proposals_refused",
                "entries_committed",
                "reads_served",
                "reads_refused",
                "lease_reads",
                "snapshots_taken",
                "snapshots_installed",
                "snapshot_chunks_sent",
                "snapshot_retransmits",
                "transfers_started",
                "transfers_completed",
                "transfers_refused",
                "conf_changes",
                "conf_changes_refused",
                "conf_changes_committed",
                "learners_promoted",
                "voters_removed",
                "witness_changes",
                "leader_removals",
            ),
            0,
        )
        # A transfer in progress: (old leader, target, term); completed when target leads.
        self._transfers: list[tuple[int, int, int]] = []
        self._snapshot_counters: dict[int, dict[str, int]] = {}
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
        node.core = None
        node.persisting = None
        node.incarnation += 1
        self.stats["crashes"] += 1
        self._trace_event(4, node_id, 0, 0, 0, 0)

    def restart(self, node_id: int) -> None:
        """Restarts a crashed node from its disk (a no-op for a running node)."""
        node = self.nodes[node_id]
        if node.core is not None or not node.joined:
            return
        self.checker.on_restart(
            node_id, node.disk_hard_state.commit, node.disk_term, node.disk_last_index
        )
        self.check_durable()
        self.stats["restarts"] += 1
        self._start(node)
        self._trace_event(5, node_id, 0, 0, 0, 0)

    def propose(
        self, command: bytes | None = None, node_id: int | None = None
    ) -> tuple[int, int, int]:
        """Proposes one command on node_id (default: the leader); raises NotLeader etc."""
        if node_id is None:
            node_id = self.leader()
            if node_id is None:
                raise NotLeader("no leader in the simulation")
        core = self._core(node_id)
        if command is None:
            command = self._next_command()
        result = core.propose([command])
        self.stats["proposals"] += 1
        self._after_input(self.nodes[node_id])
        return result

    def read(self, node_id: int, context: bytes | None = None) -> bytes:
        """Starts a ReadIndex read on node_id; its result lands in read_results[context]."""
        if context is None:
            self._client_sequence += 1
            context = b"read-%d" % self._client_sequence
        self._read_floors[context] = self.checker.committed_index
        self._core(node_id).read_index(context)
        self._after_input(self.nodes[node_id])
        return context

    def lease_read(self, node_id: int) -> int | None:
        """A lease read on node_id (thesis §6.4.1): its read index, checked against everything
        committed anywhere now, or None when the node holds no lease."""
        lease = self._core(node_id).lease_read_index()
        if lease is None:
            return None
        self.checker.on_read(node_id, lease[0], self.checker.committed_index)
        self.stats["lease_reads"] += 1
        return lease[0]

    def transfer_leadership(self, target: int, leader: int | None = None) -> None:
        """Asks the leader (default: the current one) to hand leadership to target."""
        leader = self.leader() if leader is None else leader
        if leader is None:
            raise NotLeader("no leader in the simulation")
        core = self._core(leader)
        core.transfer_leadership(target)
        self._transfers.append((leader, target, core.term))
        self.stats["transfers_started"] += 1
        self._after_input(self.nodes[leader])

    @staticmethod
    def address(node_id: int) -> str:
        return f"10.0.0.{node_id}:7000"

    def check_durable(self) -> None:
        """Every committed entry is on a majority of the newest committed configuration's
        voters, and its command on a full copy among them (invariants.py "Membership")."""
        self.checker.check_durable_membership(
            {i: n.disk_term for i, n in self.nodes.items()},
            [i for i, n in self.nodes.items() if not n.witness],
        )

    def change_membership(self, ops: list[ConfChangeOp], leader: int | None = None) -> int:
        """Proposes a membership change on the leader; starts spares it adds. Returns the
        index of the CONFIG entry; raises what RaftCore.propose_conf_change raises."""
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
        self._after_input(self.nodes[leader])
        return index

    def leader(self) -> int | None:
        """The running leader of the highest term, if any."""
        best: tuple[int, int] | None = None
        for node in self.nodes.values():
            core = node.core
            if (
                core is not None
                and core.role == Role.LEADER
                and (best is None or core.term > best[0])
            ):
                best = (core.term, node.node_id)
        return None if best is None else best[1]

    def wait_leader(self, max_time: int = 10_000) -> int:
        if not self.run_until(lambda: self.leader() is not None, max_time):
            raise self._failure(f"no leader within {max_time} ms")
        leader = self.leader()
        assert leader is not None
        return leader

    def core(self, node_id: int) -> RaftCore:
        return self._core(node_id)

    def is_committed(self, index: int, term: int) -> bool:
        terms = self.checker.committed_terms
        return index < len(terms) and terms[index] == term

    def possible_members(self) -> set[int]:
        """Nodes that are members of the newest committed configuration or of a configuration
        entry on some disk beyond the committed history (it may still commit)."""
        members = set(self.checker.membership.members)
        committed = self.checker.committed_index
        for node in self.nodes.values():
            start = node.disk_log_start[0]
            for entry in node.disk_entries[max(0, committed - start):]:
                if entry.kind == EntryKind.CONFIG:
                    members |= decode_membership(entry.data).members
        # Appends still in flight may carry a configuration no disk holds yet (the leader
        # sends before its own fsync, thesis §10.2.1).
        for _, _, kind, _, message in self._queue:
            if kind == _DELIVER:
                for entry in message.entries:
                    if entry.kind == EntryKind.CONFIG:
                        members |= decode_membership(entry.data).members
        return members

    def settled(self, index: int) -> bool:
        """The newest committed configuration is not joint and all its members applied
        through index (the healed phase's progress requirement)."""
        membership = self.checker.membership
        if membership.joint:
            return False
        return all(self.nodes[i].applied_index >= index for i in membership.members)

    def applied_everywhere(self, index: int, node_ids: Iterable[int] | None = None) -> bool:
        ids = self.node_ids if node_ids is None else node_ids
        return all(self.nodes[i].applied_index >= index for i in ids)

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
        if kind == _DELIVER:
            self._deliver(node_id, payload)
        elif kind == _TICK:
            node = self.nodes[node_id]
            if node.core is not None and payload == node.incarnation:
                self._trace_event(_TICK, node_id, 0, 0, 0, 0)
                node.core.tick()
                self._after_input(node)
                self._schedule(self.timing.tick_ms, _TICK, node_id, node.incarnation)
        elif kind == _PERSIST:
            node = self.nodes[node_id]
            if (
                node.core is not None
                and payload == node.incarnation
                and node.persisting is not None
            ):
                ready, node.persisting = node.persisting, None
                self._trace_event(_PERSIST, node_id, len(ready.entries), 0, 0, 0)
                self._complete_ready(node, ready)
                self._after_input(node)
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
        bootstrap = self.bootstrap
        joining = node.node_id not in bootstrap.voters
        config = RaftConfig(
            node.node_id,
            self.initial_voters,
            self.timing,
            self.limits,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            check_invariants=self.check_invariants,
            seed=self.rng.getrandbits(32),
            lease_read=self.lease_reads_enabled,
            # A spare joins as a learner and learns the configuration from the leader.
            learners=(node.node_id,) if joining else (),
            witnesses=tuple(sorted(bootstrap.witnesses | ({node.node_id} if node.witness
                                                          else set()))),
            addresses=bootstrap.addresses,
        )
        snapshot = node.disk_snapshot
        applied = 0
        node.applied = []
        if snapshot is not None:
            # Restore the state machine from the snapshot, then replay the log after it.
            if node.disk_last_index < snapshot.index:
                node.compact_disk(snapshot.index, snapshot.term)
            node.applied = decode_applied(snapshot.data)
            applied = snapshot.index
            self.checker.check_state(node.node_id, applied, node.applied)
        node.core = RaftCore(
            config, node.disk_hard_state, list(node.disk_entries), applied=applied,
            snapshot=snapshot, log_start=node.disk_log_start,
        )
        node.snapshot_index = applied
        node.persisting = None
        node.last_commit = node.core.commit_index
        # A term learned but never persisted is legitimately forgotten by a crash (nothing
        # durable depended on it); the persisted term itself never goes back (checked on fsync).
        node.last_term = node.core.term
        node.applied_index = applied
        # Nodes' timers are not in phase.
        self._schedule(
            1 + self.rng.randrange(self.timing.tick_ms), _TICK, node.node_id, node.incarnation
        )

    def _core(self, node_id: int) -> RaftCore:
        core = self.nodes[node_id].core
        if core is None:
            raise NotLeader(f"node {node_id} is down")
        return core

    def _after_input(self, node: SimNode) -> None:
        """Drives the node's Ready loop, then checks the invariants touched by the input."""
        core = node.core
        while core is not None and node.persisting is None and core.has_ready():
            ready = core.ready()
            self._on_ready(node, core, ready)
            for message in ready.messages:
                self._send(message)
            if ready.entries or ready.hard_state is not None:
                node.persisting = ready
                faults = self.faults
                self._schedule(
                    self.rng.randint(faults.fsync_min_ms, faults.fsync_max_ms),
                    _PERSIST,
                    node.node_id,
                    node.incarnation,
                )
            else:
                self._complete_ready(node, ready)
        if core is not None:
            self._observe(node, core)

    def _on_ready(self, node: SimNode, core: RaftCore, ready: Ready) -> None:
        if ready.entries:
            first = ready.entries[0].index
            self.checker.on_entries_written(node.node_id, ready.entries, core.log.term(first - 1))

    def _complete_ready(self, node: SimNode, ready: Ready) -> None:
        """The fsync finished: write the disk, send acks, apply, advance()."""
        core = node.core
        assert core is not None
        if ready.snapshot is not None:
            self._install_snapshot(node, ready.snapshot)
        if ready.entries:
            self._write_disk(node, ready.entries)
        if ready.hard_state is not None:
            hard_state = ready.hard_state
            self.checker.on_vote_persisted(node.node_id, hard_state.term, hard_state.vote)
            if hard_state.term < node.disk_hard_state.term:
                self.checker.fail(
                    f"node {node.node_id} persisted term went back to {hard_state.term}"
                )
            if hard_state.commit > max(node.disk_last_index, node.snapshot_index):
                self.checker.fail(
                    f"node {node.node_id} persisted commit {hard_state.commit} beyond its disk"
                )
            node.disk_hard_state = hard_state
        for message in ready.messages_after_persist:
            self._send(message)
        for entry in ready.committed_entries:
            self.checker.on_apply(node.node_id, node.applied_index + 1, entry)
            node.applied_index = entry.index
            if entry.data:
                node.applied.append(entry.data)
        for read in ready.read_states:
            if read.index:
                floor = self._read_floors.get(read.context, 0)
                self.checker.on_read(node.node_id, read.index, floor)
                self.stats["reads_served"] += 1
            else:
                self.stats["reads_refused"] += 1
            self.read_results[read.context] = read.index
        core.advance(ready)
        self._maybe_snapshot(node, core)

    def _install_snapshot(self, node: SimNode, snapshot: Snapshot) -> None:
        """Ready.snapshot: persist it (snapshot, then the WAL marker) and restore from it."""
        if snapshot.index <= node.applied_index:
            self.checker.fail(
                f"node {node.node_id} installs snapshot {snapshot.index} at or below applied "
                f"{node.applied_index}"
            )
        node.disk_snapshot = snapshot
        node.compact_disk(snapshot.index, snapshot.term)
        node.applied = decode_applied(snapshot.data)
        node.applied_index = node.snapshot_index = snapshot.index
        self.checker.check_state(node.node_id, snapshot.index, node.applied)
        self.stats["snapshots_installed"] += 1

    def _maybe_snapshot(self, node: SimNode, core: RaftCore) -> None:
        """The driver's snapshot policy: every snapshot_entries applied entries, durable at
        once (file + fsync + rename), then the disk and the core log are compacted."""
        if not self.snapshot_entries or node.persisting is not None:
            return
        index = core.applied_index
        if index - node.snapshot_index < self.snapshot_entries or index != node.applied_index:
            return
        term = core.log.term(index)
        # The driver records the configuration as of the snapshot (restart rebuilds from it).
        snapshot = Snapshot(
            index, term, encode_applied(node.applied),
            configuration=encode_membership(core.configuration_at(index)),
        )
        self.checker.check_state(node.node_id, index, node.applied)
        if index > core.commit_index:
            self.checker.fail(f"node {node.node_id} snapshot {index} above its commit")
        node.disk_snapshot = snapshot
        node.snapshot_index = index
        floor = min(index - self.snapshot_trailing, core.log.persisted_index)
        if floor > node.disk_log_start[0]:
            floor_term = core.log.term(floor)
            if node.disk_term(floor) == floor_term:
                node.compact_disk(floor, floor_term)
        core.compact(snapshot, compact_to=node.disk_log_start[0])
        self.stats["snapshots_taken"] += 1

    def _check_commit_quorum(self, node_id: int, core: RaftCore, commit: int) -> None:
        """A leader's commit: the entry is durable on a majority of *each* half of the
        leader's configuration (thesis §4.3; acks follow the fsync, §3.8)."""
        term = core.log.term(commit)
        for half in core.membership.halves:
            holders = [
                i for i in half if self.nodes[i].disk_term(commit) in (None, term)
            ]
            if len(holders) < len(half) // 2 + 1:
                self.checker.fail(
                    f"leader {node_id} committed {commit} held by {holders} of voters "
                    f"{sorted(half)} (configuration {core.membership})"
                )

    def _write_disk(self, node: SimNode, entries: list[Any]) -> None:
        start = node.disk_log_start[0]
        first = entries[0].index
        if first > node.disk_last_index + 1:
            self.checker.fail(
                f"node {node.node_id} wrote index {first} after a gap at "
                f"{node.disk_last_index + 1}"
            )
        if first <= start:
            # Entries at or below the disk's compaction floor are covered by its snapshot.
            entries = entries[start + 1 - first :]
            if not entries:
                return
            first = entries[0].index
        disk = node.disk_entries
        if first <= node.disk_last_index:
            if disk[first - start - 1].term != entries[0].term:
                self.stats["disk_truncations"] += 1
            del disk[first - start - 1 :]
        disk.extend(entries)

    def _observe(self, node: SimNode, core: RaftCore) -> None:
        node_id = node.node_id
        if core.term < node.last_term:
            self.checker.fail(
                f"term of node {node_id} went back from {node.last_term} to {core.term}"
            )
        node.last_term = core.term
        commit = core.commit_index
        if commit != node.last_commit:
            old = node.last_commit
            # A snapshot install jumps commit over entries the log no longer holds; they are
            # committed history already (checked by check_state at the install).
            lo = max(old + 1, core.log.first_index)
            if lo - 1 > self.checker.committed_index:
                self.checker.fail(
                    f"node {node_id} committed through a snapshot at {lo - 1} beyond the "
                    f"committed history {self.checker.committed_index}"
                )
            entries = core.log.slice(lo, commit + 1) if commit >= lo else []
            self.checker.on_commit(node_id, old, commit, entries)
            if core.role == Role.LEADER and commit > old:
                self._check_commit_quorum(node_id, core, commit)
            node.last_commit = commit
            self.stats["entries_committed"] = self.checker.committed_index
            self.stats["conf_changes_committed"] = self.checker.configs_committed
        if core.role == Role.LEADER:
            # One membership change in flight (thesis §4.3): at most one configuration
            # entry beyond the committed history.
            committed = self.checker.committed_index
            pending = [i for i, _ in core.configurations()[1:] if i > committed]
            if len(pending) > 1:
                self.checker.fail(
                    f"leader {node_id} holds {len(pending)} uncommitted configurations {pending}"
                )
        if core.role == Role.LEADER and self.checker.on_leader(
            node_id, core.term, core.log.term, core.log.first_index
        ):
            self.stats["leaders_elected"] += 1
            for transfer in [t for t in self._transfers if t[1] == node_id]:
                self.stats["transfers_completed"] += 1
                self._transfers.remove(transfer)
        stats = core.snapshot_stats
        node_stats = self._snapshot_counters.setdefault(node_id, {})
        for name, key in (("chunks_sent", "snapshot_chunks_sent"),
                          ("retransmits", "snapshot_retransmits")):
            seen = node_stats.get(name, 0)
            if stats[name] != seen:
                self.stats[key] += max(stats[name] - seen, 0)
                node_stats[name] = stats[name]

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
        if node.core is None or (message.src, node_id) in self._blocked:
            return
        self._trace_event(_DELIVER, node_id, message.type, message.src, message.term, message.index)
        node.core.step(message)
        self._after_input(node)

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
        assert core is not None
        if self.rng.random() < self.faults.read:
            if self.lease_reads_enabled and core.role == Role.LEADER and self.rng.random() < 0.5:
                if self.lease_read(node.node_id) is None:
                    self.stats["reads_refused"] += 1
                return
            try:
                self.read(node.node_id)
            except (NotLeader, Overloaded):
                self.stats["reads_refused"] += 1
            return
        if core.role != Role.LEADER:
            return
        batch = [self._next_command() for _ in range(1 + self.rng.randrange(3))]
        try:
            core.propose(batch)
            self.stats["proposals"] += len(batch)
        except Overloaded:
            self.stats["proposals_refused"] += len(batch)
        self._after_input(node)

    def _nemesis_step(self) -> None:
        rng, faults = self.rng, self.faults
        ids = self.node_ids
        if self._blocked and rng.random() < faults.heal:
            self.heal()
        elif len(ids) > 1 and rng.random() < faults.partition:
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

    def _membership_step(self) -> None:
        """The nemesis asks the leader for a random membership change (add a learner or a
        witness learner, promote, demote, remove, or replace a voter in one joint change)."""
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


def swarm_config(seed: int) -> tuple[int, FaultConfig, TimingConfig, Limits, bool, bool]:
    """The cluster size, faults, timing and limits a seed draws (swarm testing)."""
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


def run_swarm(
    seed: int,
    *,
    fault_time_ms: int = 3_000,
    max_events: int = 4_000,
    liveness_time_ms: int = 10_000,
    check_invariants: bool = True,
    membership: bool = False,
) -> SwarmResult:
    """One swarm run: faulty phase, then heal + restart all + liveness. Raises SimulationFailure.
    membership=True adds spare nodes, witnesses and random membership changes (the
    membership swarm); the base configuration a seed draws is the same either way."""
    n, faults, timing, limits, pre_vote, check_quorum = swarm_config(seed)
    extras = swarm_extras(seed)
    faults = dataclasses.replace(faults, transfer=extras.transfer)
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
    sim = Simulation(
        n,
        seed,
        faults=faults,
        timing=timing,
        limits=limits,
        pre_vote=pre_vote,
        check_quorum=check_quorum,
        check_invariants=check_invariants,
        snapshot_entries=extras.snapshot_entries,
        snapshot_trailing=extras.snapshot_trailing,
        lease_read=extras.lease_read,
        spares=spares,
        witnesses=witnesses,
    )
    try:
        deadline = fault_time_ms
        while sim._queue and sim._queue[0][0] <= deadline and sim.events < max_events:
            sim.step_event()
        fault_stats = dict(sim.stats)
        _liveness_phase(sim, liveness_time_ms)
    except SimulationFailure:
        raise
    except Exception as exc:
        raise SimulationFailure(
            f"seed {seed} (n={n}, {faults}) failed at t={sim.now} ms after {sim.events} events: "
            f"{type(exc).__name__}: {exc} (reproduce with ENGINE_SIM_SEED={seed})"
        ) from exc
    return SwarmResult(
        seed, n, sim.events, sim.trace_hash, dict(sim.stats), fault_stats, faults, sim.now
    )


def _liveness_phase(sim: Simulation, budget_ms: int) -> None:
    """Heal everything, restart every node, and require progress in bounded time."""
    sim.faults = FaultConfig(
        delay_min_ms=sim.faults.delay_min_ms,
        delay_max_ms=sim.faults.delay_max_ms,
        fsync_min_ms=sim.faults.fsync_min_ms,
        fsync_max_ms=sim.faults.fsync_max_ms,
    )
    sim.heal()
    for node_id in sim.node_ids:
        sim.crash(node_id)
    # Nodes that cannot be members any more stay down (an operator retires removed servers;
    # thesis §4.2.3: they would only disrupt).
    members = sim.possible_members()
    for node_id in sim.node_ids:
        if node_id in members:
            sim.restart(node_id)
    deadline = sim.now + budget_ms
    marker = b"liveness-%d" % sim.seed
    proposed: tuple[int, int, int] | None = None
    while sim.now < deadline:
        if proposed is not None and sim.is_committed(proposed[0], proposed[2]):
            settled = functools.partial(sim.settled, proposed[0])
            if sim.run_until(settled, deadline - sim.now):
                sim.check_durable()
                for node in sim.nodes.values():
                    if node.up:
                        sim.checker.check_state(node.node_id, node.applied_index, node.applied)
                return
            break
        leader = sim.leader()
        if leader is not None and (proposed is None or sim.core(leader).term != proposed[2]):
            try:
                proposed = sim.propose(marker, leader)
            except Overloaded:
                pass  # back-pressure from the faulty phase; retry once it drains
        sim.run_for(min(50, deadline - sim.now))
    raise sim._failure(
        f"liveness: no proposal committed and applied on every member of a settled "
        f"configuration within {budget_ms} ms of healing (leader={sim.leader()}, "
        f"proposed={proposed}, committed membership {sim.checker.membership} at "
        f"{sim.checker.membership_index}, "
        f"status={[core.status() for n in sim.nodes.values() if (core := n.core)]})"
    )


__all__ = [
    "Simulation",
    "SimulationFailure",
    "FaultConfig",
    "SimNode",
    "SwarmResult",
    "run_swarm",
    "swarm_config",
    "swarm_extras",
    "SwarmExtras",
    "MembershipExtras",
    "membership_extras",
    "encode_applied",
    "decode_applied",
]
