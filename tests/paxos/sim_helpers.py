"""A small deterministic simulation of Multi-Paxos and synod clusters (tests only).

One seed drives every choice (random.Random(seed)); events are ordered by (time, sequence),
so a run is a pure function of its seed. It will be unified with engine/testing/sim.py.

Model
  network  each message may be lost, duplicated and delayed (uniform in [1, max_delay], so
           messages reorder); partitions cut links both ways.
  disk     holds exactly what each Ready asked to persist (the WAL's suffix-replace rule),
           a snapshot file and the WAL's compaction marker (engine.aio.wal semantics: the
           slots after the marker stay iff the disk holds the marker's (slot, ballot)).
           With probability `unsynced_crash` a node crashes between ready() and the fsync:
           the Ready's entries, hard state and after-persist messages are lost (its pre-persist
           `messages` already went out, as with engine.Node); also between writing a snapshot
           file and the WAL's marker.
  driver   engine.Node's order: ready() -> send messages -> [install Ready.snapshot: file,
           marker, restore] -> save -> send after-persist -> apply committed entries ->
           advance() -> [snapshot policy: every `snapshot_entries` applied slots, snapshot the
           state machine, write it, compact the WAL and the core below it, keeping
           `snapshot_trailing` slots]. The state machine is the list of applied values.

PaxosChecker: global invariants after every persist and apply
  - at most one value chosen per slot, and a chosen value never changes: a value is chosen
    once a phase-2 quorum has *durably* accepted it in one ballot (votes are history: a vote
    stays counted when a later ballot overwrites it);
  - one value per (slot, ballot) across all acceptors;
  - every acceptor's durable promised ballot never decreases;
  - a learner applies only chosen values, strictly in slot order, so replicas apply the same
    sequence; an applied NORMAL value with identity b at slot s is exactly the command that
    the leader of ballot b proposed at s (the value-identity rule the driver relies on);
  - every replica's state machine after slot s equals every other's after s (a digest chain
    over the applied values, checked at every apply, every snapshot install and restart);
  - trimming forgets only chosen slots (every slot through the compaction point is chosen),
    and a WAL compaction never drops a stored accepted slot above its marker.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import InvariantViolation, NotLeader, Overloaded
from engine.messages import EntryKind
from engine.paxos.config import PaxosConfig
from engine.paxos.core import IDENTITY_BYTES, PaxosCore, Role
from engine.paxos.synod import Synod, SynodConfig
from engine.raft.snapshot import encode_snapshot
from engine.types import HardState, Limits, Ready, Snapshot, TimingConfig

TICK_US = 10
# Healed phase: a client re-proposes a marker not applied everywhere after this long.
MARKER_RETRY_US = 1_500
_TICK, _DELIVER, _CLIENT, _NEMESIS = range(4)


class SimulationFailure(AssertionError):
    """An invariant or liveness requirement failed; the message names the seed."""


def seeds_from_env(default: range) -> list[int]:
    """ENGINE_SIM_SEED=<n> replays one seed; otherwise the default range."""
    one = os.environ.get("ENGINE_SIM_SEED")
    return [int(one)] if one else list(default)


@dataclass
class Faults:
    loss: float = 0.0
    duplicate: float = 0.0
    max_delay: int = 5
    unsynced_crash: float = 0.0
    crash_rate: float = 0.0          # per nemesis step
    partition_rate: float = 0.0      # per nemesis step

    @classmethod
    def draw(cls, rng: random.Random) -> Faults:
        return cls(
            loss=rng.choice([0.0, 0.02, 0.1, 0.25]),
            duplicate=rng.choice([0.0, 0.05, 0.2]),
            max_delay=rng.choice([2, 10, 30, 60]),
            unsynced_crash=rng.choice([0.0, 0.002, 0.01]),
            crash_rate=rng.choice([0.0, 0.05, 0.15]),
            partition_rate=rng.choice([0.0, 0.1, 0.3]),
        )


@dataclass
class Disk:
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Any] = field(default_factory=list)   # slots floor + 1 ...
    floor: int = 0            # the WAL's compaction marker (slot, ballot)
    floor_term: int = 0
    snapshot: Snapshot | None = None

    @property
    def last(self) -> int:
        return self.floor + len(self.entries)

    def save(self, entries: list[Any], hard_state: HardState | None) -> None:
        if entries:
            first = entries[0].index
            if first > self.last + 1:
                raise InvariantViolation(f"save leaves a gap: {first} after {self.last}")
            for offset, entry in enumerate(entries):
                if entry.index != first + offset:
                    raise InvariantViolation("entries to save are not contiguous")
            entries = entries[max(self.floor + 1 - first, 0):]   # under the marker: covered
        if entries:
            del self.entries[entries[0].index - 1 - self.floor:]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def save_snapshot(self, snapshot: Snapshot) -> None:
        if self.snapshot is None or snapshot.index > self.snapshot.index:
            self.snapshot = snapshot

    def compact(self, index: int, term: int) -> None:
        """engine.aio.wal.WriteAheadLog.compact: keep the slots after `index` iff the disk
        holds slot `index` stored with ballot `term`, else discard every stored slot."""
        if index <= self.floor:
            return
        stored = self.floor_term if index == self.floor else (
            self.entries[index - 1 - self.floor].term if index <= self.last else None)
        if stored == term:
            del self.entries[:index - self.floor]
        else:
            forgotten = [e.index for e in self.entries[index - self.floor:] if e.term]
            if forgotten:
                raise InvariantViolation(
                    f"WAL compaction at ({index}, {term}) forgets accepted slots {forgotten} "
                    f"above it (stored ballot at {index}: {stored})")
            self.entries = []
        self.floor, self.floor_term = index, term

    def open(self) -> None:
        """WriteAheadLog.open: a snapshot newer than the log restarts the log after it."""
        if self.snapshot is not None and self.last < self.snapshot.index:
            self.compact(self.snapshot.index, self.snapshot.term)


def encode_values(values: list[tuple[int, bytes]]) -> bytes:
    """The simulated state machine's snapshot: its applied values, length-prefixed."""
    return b"".join(struct.pack("<BI", kind, len(data)) + data for kind, data in values)


def decode_values(data: bytes) -> list[tuple[int, bytes]]:
    values: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        kind, length = struct.unpack_from("<BI", data, offset)
        offset += 5
        values.append((kind, bytes(data[offset:offset + length])))
        offset += length
    return values


def next_digest(digest: bytes, value: tuple[int, bytes]) -> bytes:
    """The state digest after applying `value` (a hash chain over the applied values)."""
    return hashlib.blake2b(digest + bytes((value[0],)) + value[1], digest_size=16).digest()


def digest_of(values: list[tuple[int, bytes]]) -> bytes:
    digest = b""
    for value in values:
        digest = next_digest(digest, value)
    return digest


class PaxosChecker:
    def __init__(self, q2: int) -> None:
        self.q2 = q2
        self.votes: dict[tuple[int, int], set[int]] = {}
        self.value_at: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.chosen: dict[int, tuple[int, bytes]] = {}
        self.promised: dict[int, int] = {}
        self.proposed: dict[tuple[int, int], bytes] = {}
        # The state digest after each slot, set by the first replica to reach it.
        self.state_at: dict[int, bytes] = {}
        self._chosen_through = 0

    def chosen_through(self) -> int:
        while self._chosen_through + 1 in self.chosen:
            self._chosen_through += 1
        return self._chosen_through

    def on_trim(self, node: int, index: int) -> None:
        """Only chosen slots may be trimmed (an acceptor forgets what it accepted there)."""
        if index > self.chosen_through():
            raise InvariantViolation(
                f"node {node} trims through slot {index}; chosen only through "
                f"{self.chosen_through()}")

    def on_state(self, node: int, slot: int, digest: bytes) -> None:
        """Every replica's state machine after `slot` is the same."""
        if slot == 0:
            return
        known = self.state_at.setdefault(slot, digest)
        if known != digest:
            raise InvariantViolation(
                f"node {node}: state machine after slot {slot} differs from another replica's")

    def on_persist(self, node: int, disk: Disk, saved: list[Any]) -> None:
        promised = disk.hard_state.term
        if promised < self.promised.get(node, 0):
            raise InvariantViolation(f"node {node}: durable promise went back to {promised}")
        self.promised[node] = promised
        for entry in saved:
            if entry.term == 0:
                continue
            key = (entry.index, entry.term)
            value = (entry.kind, bytes(entry.data))
            known = self.value_at.setdefault(key, value)
            if known != value:
                raise InvariantViolation(f"two values for slot/ballot {key}: {known} {value}")
            voters = self.votes.setdefault(key, set())
            voters.add(node)
            if len(voters) >= self.q2:
                chosen = self.chosen.setdefault(entry.index, value)
                if chosen != value:
                    raise InvariantViolation(
                        f"slot {entry.index}: {value} chosen after {chosen} (safety)")

    def on_apply(self, node: int, applied: list[tuple[int, bytes]], entry: Any) -> None:
        slot = entry.index
        if slot != len(applied) + 1:
            raise InvariantViolation(f"node {node} applied slot {slot} after {len(applied)}")
        value = (entry.kind, entry.term.to_bytes(IDENTITY_BYTES, "little") + bytes(entry.data))
        chosen = self.chosen.get(slot)
        if chosen != value:
            raise InvariantViolation(
                f"node {node} applied {value} at slot {slot}, chosen is {chosen}")
        if entry.kind == EntryKind.NORMAL:
            proposed = self.proposed.get((slot, entry.term))
            if proposed != bytes(entry.data):
                raise InvariantViolation(
                    f"slot {slot} identity {entry.term}: applied {entry.data!r}, "
                    f"proposed {proposed!r}")
        applied.append(value)


class PaxosSim:
    """N PaxosCore replicas on a simulated network and disk (see the module docstring)."""

    def __init__(
        self, n: int = 3, seed: int = 0, faults: Faults | None = None, *,
        phase1_quorum: int | None = None, phase2_quorum: int | None = None,
        timing: TimingConfig | None = None, limits: Limits | None = None,
        snapshot_entries: int | None = None, snapshot_trailing: int = 0,
    ) -> None:
        self.seed = seed
        # Snapshot policy (engine.Node's): None = never snapshot.
        self.snapshot_entries = snapshot_entries
        self.snapshot_trailing = snapshot_trailing
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.node_ids = list(range(1, n + 1))
        self.timing = timing or TimingConfig(tick_ms=1, heartbeat_interval_ticks=2,
                                             election_timeout_ticks=10)
        self.limits = limits or Limits(max_inflight_messages=8, max_entries_per_message=64,
                                       max_append_bytes=256, max_snapshot_chunk_bytes=512,
                                       max_snapshot_inflight_chunks=4)
        self.phase1_quorum, self.phase2_quorum = phase1_quorum, phase2_quorum
        self.incarnation = {i: 0 for i in self.node_ids}
        self.checker = PaxosChecker(self._config(1).q2)
        self.now = 0
        self._seq = 0
        self._queue: list[tuple[int, int, int, Any]] = []
        self.disks = {i: Disk() for i in self.node_ids}
        self.cores: dict[int, PaxosCore] = {}
        self.applied: dict[int, list[tuple[int, bytes]]] = {i: [] for i in self.node_ids}
        self.digests: dict[int, bytes] = {i: b"" for i in self.node_ids}
        self.up: set[int] = set()
        self.cut: set[frozenset[int]] = set()
        self.stats = {"events": 0, "delivered": 0, "lost": 0, "crashes": 0, "restarts": 0,
                      "unsynced_crashes": 0, "partitions": 0, "proposals": 0,
                      "snapshots_taken": 0, "snapshots_installed": 0,
                      "restarts_from_snapshot": 0}
        self.core_counters: dict[str, int] = {}
        self._command_seq = 0
        self.last_slot = 0
        for node in self.node_ids:
            self._boot(node)

    # ------------------------------------------------------------------ cluster control

    def _config(self, node: int) -> PaxosConfig:
        return PaxosConfig(node, tuple(self.node_ids), self.timing, self.limits,
                           check_invariants=True, seed=self.seed * 1000 + self.incarnation[node],
                           phase1_quorum=self.phase1_quorum, phase2_quorum=self.phase2_quorum)

    def _boot(self, node: int) -> None:
        disk = self.disks[node]
        disk.open()
        snapshot = disk.snapshot
        # The state machine restarts from the snapshot (else empty) and replays the slots
        # after it (engine.Node._restore_from).
        self._restore(node, snapshot)
        if snapshot is not None:
            self.stats["restarts_from_snapshot"] += 1
        self.cores[node] = PaxosCore(
            self._config(node), disk.hard_state, list(disk.entries),
            applied=0 if snapshot is None else snapshot.index, snapshot=snapshot,
            log_start=(disk.floor, disk.floor_term))
        self.up.add(node)
        self._schedule(self.rng.randrange(1, TICK_US + 1), _TICK, (node, self.incarnation[node]))

    def crash(self, node: int) -> None:
        if node not in self.up:
            return
        self._harvest(node)
        self.up.discard(node)
        self.incarnation[node] += 1
        self.stats["crashes"] += 1

    def restart(self, node: int) -> None:
        if node in self.up:
            return
        self.stats["restarts"] += 1
        self._boot(node)

    def partition(self, *groups: set[int]) -> None:
        self.cut = set()
        for a in self.node_ids:
            for b in self.node_ids:
                if a < b and not any(a in g and b in g for g in groups):
                    self.cut.add(frozenset((a, b)))
        self.stats["partitions"] += 1

    def heal(self) -> None:
        self.cut = set()

    def leader(self) -> int | None:
        leaders = [i for i in sorted(self.up) if self.cores[i].role == Role.LEADER]
        return max(leaders, key=lambda i: self.cores[i].ballot) if leaders else None

    def propose(self, node: int, count: int = 1) -> list[bytes]:
        """Proposes `count` fresh commands at node; [] if it is not leader or overloaded."""
        core = self.cores[node]
        commands = []
        for _ in range(count):
            self._command_seq += 1
            commands.append(b"cmd-%d" % self._command_seq)
        try:
            first, _, ballot = core.propose(commands)
        except (NotLeader, Overloaded):
            return []
        for offset, command in enumerate(commands):
            self.checker.proposed[(first + offset, ballot)] = command
        self.last_slot = first
        self.stats["proposals"] += len(commands)
        self._drain(node)
        return commands

    # ------------------------------------------------------------------ event loop

    def _schedule(self, delay: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, kind, payload))

    def run_for(self, duration: int, client: Callable[[], None] | None = None) -> None:
        self.run_until(lambda: False, duration, client)

    def run_until(self, done: Callable[[], bool], max_duration: int,
                  client: Callable[[], None] | None = None) -> bool:
        deadline = self.now + max_duration
        next_client = self.now
        while self._queue and self._queue[0][0] <= deadline:
            if done():
                return True
            when, _, kind, payload = heapq.heappop(self._queue)
            self.now = when
            self.stats["events"] += 1
            if client is not None and when >= next_client:
                next_client = when + TICK_US
                client()
            if kind == _TICK:
                node, incarnation = payload
                if node in self.up and incarnation == self.incarnation[node]:
                    self.cores[node].tick()
                    self._drain(node)
                    self._schedule(TICK_US, _TICK, payload)
            elif kind == _DELIVER:
                self._deliver(payload)
        self.now = max(self.now, deadline)
        return done()

    def _deliver(self, message: Any) -> None:
        node = message.dst
        if node not in self.up or frozenset((message.src, node)) in self.cut:
            self.stats["lost"] += 1
            return
        self.stats["delivered"] += 1
        self.cores[node].step(message)
        self._drain(node)

    def _send(self, messages: list[Any]) -> None:
        # The hottest loop of the swarm: random() arithmetic instead of randint() (a third
        # of the cost), the heap push inlined.
        faults, random_, queue, now = self.faults, self.rng.random, self._queue, self.now
        loss, duplicate, max_delay = faults.loss, faults.duplicate, faults.max_delay
        for message in messages:
            if loss and random_() < loss:
                self.stats["lost"] += 1
                continue
            copies = 2 if duplicate and random_() < duplicate else 1
            for _ in range(copies):
                self._seq += 1
                delay = 1 + int(random_() * max_delay)
                heapq.heappush(queue, (now + delay, self._seq, _DELIVER, message))

    def _drain(self, node: int) -> None:
        core = self.cores[node]
        disk = self.disks[node]
        while node in self.up and core.has_ready():
            ready: Ready = core.ready()
            self._send(ready.messages)
            persists = bool(ready.entries) or ready.hard_state is not None
            if persists and self.rng.random() < self.faults.unsynced_crash:
                self.stats["unsynced_crashes"] += 1
                self.crash(node)
                return
            if ready.snapshot is not None and not self._install(node, ready.snapshot):
                return
            disk.save(ready.entries, ready.hard_state)
            self.checker.on_persist(node, disk, ready.entries)
            self._send(ready.messages_after_persist)
            applied = self.applied[node]
            digest = self.digests[node]
            for entry in ready.committed_entries:
                self.checker.on_apply(node, applied, entry)
                digest = next_digest(digest, applied[-1])
                self.checker.on_state(node, entry.index, digest)
            self.digests[node] = digest
            core.advance(ready)
            if self.snapshot_entries is not None and not self._maybe_snapshot(node):
                return

    # ------------------------------------------------------------------ snapshots

    def _restore(self, node: int, snapshot: Snapshot | None) -> None:
        """The state machine restored from a snapshot (a new list: scans restart)."""
        values = [] if snapshot is None else decode_values(snapshot.data)
        if snapshot is not None and len(values) != snapshot.index:
            raise InvariantViolation(
                f"node {node}: snapshot at {snapshot.index} holds {len(values)} values")
        self.applied[node] = values
        self.digests[node] = digest_of(values)
        if snapshot is not None:
            self.checker.on_state(node, snapshot.index, self.digests[node])

    def _install(self, node: int, snapshot: Snapshot) -> bool:
        """Ready.snapshot as engine.Node._persist_snapshot_ready: snapshot file, WAL marker at
        (index, term), restore. False if the node crashed on the way."""
        disk = self.disks[node]
        if self.rng.random() < self.faults.unsynced_crash:
            self.stats["unsynced_crashes"] += 1
            self.crash(node)
            return False
        self.checker.on_trim(node, snapshot.index)
        disk.save_snapshot(snapshot)
        if self.rng.random() < self.faults.unsynced_crash:
            self.stats["unsynced_crashes"] += 1
            self.crash(node)   # the snapshot file is durable, the WAL marker is not
            return False
        disk.compact(snapshot.index, snapshot.term)
        self._restore(node, snapshot)
        self.stats["snapshots_installed"] += 1
        return True

    def _maybe_snapshot(self, node: int) -> bool:
        """engine.Node._start_snapshot (the synchronous path). False if the node crashed."""
        core, disk = self.cores[node], self.disks[node]
        index = core.applied_index
        assert self.snapshot_entries is not None
        if (index - core.snapshot_index < self.snapshot_entries
                or index < core.log.first_index - 1):
            return True
        values = self.applied[node]
        if len(values) != index:
            raise InvariantViolation(f"node {node}: applied {len(values)} != core {index}")
        term = core.log.term(index)
        envelope = encode_snapshot(Snapshot(index=index, term=term, data=encode_values(values)))
        floor = min(index - self.snapshot_trailing, core.log.persisted_index)
        floor = max(floor, core.log.first_index - 1)
        floor_term = core.log.term(floor)
        disk.save_snapshot(Snapshot(index=index, term=term, data=encode_values(values),
                                    envelope=envelope))
        self.stats["snapshots_taken"] += 1
        if self.rng.random() < self.faults.unsynced_crash:
            self.stats["unsynced_crashes"] += 1
            self.crash(node)
            return False
        self.checker.on_trim(node, floor)
        disk.compact(floor, floor_term)
        core.compact(Snapshot(index=index, term=term, data=b"", envelope=envelope),
                     compact_to=floor)
        return True

    def _harvest(self, node: int) -> None:
        for name, value in self.cores[node].counters.items():
            self.core_counters[name] = self.core_counters.get(name, 0) + value

    def harvest_all(self) -> dict[str, int]:
        for node in sorted(self.up):
            self._harvest(node)
        return self.core_counters

    # ------------------------------------------------------------------ scenarios

    def nemesis_step(self) -> None:
        rng, faults = self.rng, self.faults
        if rng.random() < faults.crash_rate:
            if self.up and rng.random() < 0.6:
                self.crash(rng.choice(sorted(self.up)))
        down = [i for i in self.node_ids if i not in self.up]
        if down and rng.random() < 0.5:
            self.restart(rng.choice(down))
        if len(self.node_ids) > 1 and rng.random() < faults.partition_rate:
            nodes = list(self.node_ids)
            rng.shuffle(nodes)
            split = rng.randint(1, len(nodes) - 1)
            self.partition(set(nodes[:split]), set(nodes[split:]))
        elif self.cut and rng.random() < 0.3:
            self.heal()

    def all_applied(self, count: int) -> bool:
        return all(len(self.applied[i]) >= count for i in self.node_ids if i in self.up)


# Chaos phase length: 2,500 us (250 ticks, 8-25 election timeouts) per seed. 500 seeds x
# 2,500 us simulate more time than 300 x 4,000 did, over 500 drawn fault configurations
# instead of 300, at about 40% less CPU per seed (figures in tests/paxos/test_paxos_sim.py).
CHAOS_US = 2_500


def run_swarm(seed: int, chaos_us: int = CHAOS_US, healed_us: int = 6_000) -> PaxosSim:
    """Draw a cluster and fault rates from the seed, run a faulty phase with client load and
    a nemesis, then heal everything and require a new command chosen and applied everywhere.
    """
    rng = random.Random(seed)
    n = rng.choice([1, 3, 3, 5])
    q1 = q2 = None
    if n == 5 and rng.random() < 0.5:
        q1, q2 = rng.choice([(4, 2), (3, 3), (5, 1), (2, 4)])
    faults = Faults.draw(rng)
    # Half the seeds snapshot often (every 3-25 applied slots, keeping 0-8 trailing slots), so
    # crashed, partitioned and lagging replicas must catch up by snapshot.
    snapshot_entries = rng.choice([None, 3, 8, 25]) if rng.random() < 0.67 else None
    sim = PaxosSim(n, seed, faults, phase1_quorum=q1, phase2_quorum=q2,
                   snapshot_entries=snapshot_entries, snapshot_trailing=rng.choice([0, 2, 8]))

    def client() -> None:
        if sim.rng.random() < 0.5:
            leader = sim.leader()
            if leader is not None:
                sim.propose(leader, sim.rng.randint(1, 4))
        if sim.rng.random() < 0.1:
            sim.nemesis_step()

    try:
        sim.run_for(chaos_us, client)
        # Healed phase: a working network, every node up; progress is required.
        sim.faults = Faults(max_delay=sim.faults.max_delay)
        sim.heal()
        for node in sim.node_ids:
            sim.restart(node)
        if not sim.run_until(lambda: sim.leader() is not None, healed_us):
            raise SimulationFailure("no leader after healing")
        marker: list[tuple[int, int, bytes]] = []   # (slot, ballot, command) proposed

        def marker_lost() -> bool:
            # A proposal is definitely lost once its slot is chosen with another value
            # (a new leader filled or re-proposed it); the client then retries.
            slot, ballot, command = marker[-1]
            chosen = sim.checker.chosen.get(slot)
            return chosen is not None and chosen[1] != ballot.to_bytes(8, "little") + command

        proposed_at = [0]

        def propose_marker() -> None:
            # The client retries with a fresh command when its proposal is definitely lost,
            # or after a client timeout: a deposed leader's proposal can stay undecided for
            # ever when the new leader's phase-1 quorum never saw it and no later proposal
            # reuses its slot (engine.Node reports Timeout, outcome unknown, in that case).
            leader = sim.leader()
            if leader is not None and (not marker or marker_lost()
                                       or sim.now - proposed_at[0] >= MARKER_RETRY_US):
                commands = sim.propose(leader)
                if commands:
                    marker.append((sim.last_slot, sim.cores[leader].ballot, commands[0]))
                    proposed_at[0] = sim.now

        # Per node: the applied list last scanned and how far (each event scans only the
        # slots applied since, not the whole list).
        scanned: dict[int, tuple[list[tuple[int, bytes]], int]] = {}
        reached: set[int] = set()

        def marker_applied() -> bool:
            if not marker:
                return False
            values = {command for _, _, command in marker}
            for node in sim.node_ids:
                applied = sim.applied[node]
                seen_list, seen = scanned.get(node, (applied, 0))
                if seen_list is not applied or seen > len(applied):
                    seen = 0  # restarted: it replays from slot 1
                    reached.discard(node)
                if any(v[1][IDENTITY_BYTES:] in values for v in applied[seen:]):
                    reached.add(node)
                scanned[node] = (applied, len(applied))
            return len(reached) == len(sim.node_ids)

        if not sim.run_until(marker_applied, healed_us, propose_marker):
            raise SimulationFailure(
                f"no progress after healing: applied {[len(sim.applied[i]) for i in sim.node_ids]}"
                f", leader {sim.leader()}")
        # Replicas apply the same sequence (each is a prefix of the longest).
        longest = max(sim.applied.values(), key=len)
        for node, applied in sim.applied.items():
            if applied != longest[: len(applied)]:
                raise SimulationFailure(f"node {node} applied a different sequence")
    except (InvariantViolation, SimulationFailure) as exc:
        raise SimulationFailure(f"ENGINE_SIM_SEED={seed}: {exc!r}") from exc
    sim.harvest_all()
    return sim


# ---------------------------------------------------------------------- synod register


class SynodSim:
    """Synod replicas on the same kind of simulated network; every node proposes."""

    def __init__(self, n: int, seed: int, faults: Faults) -> None:
        self.rng = random.Random(seed)
        self.faults = faults
        self.node_ids = list(range(1, n + 1))
        self.now = 0
        self._seq = 0
        self._queue: list[tuple[int, int, int, Any]] = []
        self.disks = {i: Disk() for i in self.node_ids}
        self.incarnation = {i: 0 for i in self.node_ids}
        self.nodes: dict[int, Synod] = {}
        self.up: set[int] = set()
        self.votes: dict[tuple[int, bytes], set[int]] = {}
        self.chosen: bytes | None = None
        self.learned: dict[int, bytes] = {}
        self.seed = seed
        for node in self.node_ids:
            self._boot(node)

    def _boot(self, node: int) -> None:
        disk = self.disks[node]
        config = SynodConfig(node, tuple(self.node_ids),
                             seed=self.seed * 1000 + self.incarnation[node],
                             retry_ticks=8, check_invariants=True)
        self.nodes[node] = Synod(config, disk.hard_state, list(disk.entries))
        self.up.add(node)
        self._schedule(self.rng.randrange(1, TICK_US + 1), _TICK, (node, self.incarnation[node]))

    def _schedule(self, delay: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, kind, payload))

    def crash(self, node: int) -> None:
        if node in self.up:
            self.up.discard(node)
            self.incarnation[node] += 1

    def restart(self, node: int) -> None:
        if node not in self.up:
            self._boot(node)
            # The register's client retries its propose after the crash.
            self.propose(node, b"value-from-%d" % node)

    def propose(self, node: int, value: bytes) -> None:
        self.nodes[node].propose(value)
        self._drain(node)

    def _drain(self, node: int) -> None:
        synod = self.nodes[node]
        while node in self.up and synod.has_ready():
            ready = synod.ready()
            self._send(ready.messages)
            persists = bool(ready.entries) or ready.hard_state is not None
            if persists and self.rng.random() < self.faults.unsynced_crash:
                self.crash(node)
                return
            disk = self.disks[node]
            if ready.hard_state is not None and ready.hard_state.term < disk.hard_state.term:
                raise InvariantViolation(f"synod node {node}: durable promise went back")
            disk.save(ready.entries, ready.hard_state)
            for entry in ready.entries:
                if entry.index == 1 and entry.term:
                    voters = self.votes.setdefault((entry.term, bytes(entry.data)), set())
                    voters.add(node)
                    if len(voters) >= len(self.node_ids) // 2 + 1:
                        if self.chosen is not None and self.chosen != bytes(entry.data):
                            raise InvariantViolation(
                                f"two values chosen: {self.chosen!r}, {entry.data!r}")
                        self.chosen = bytes(entry.data)
            self._send(ready.messages_after_persist)
            for entry in ready.committed_entries:
                if self.chosen != bytes(entry.data):
                    raise InvariantViolation(
                        f"node {node} learned {entry.data!r}; chosen is {self.chosen!r}")
                self.learned[node] = bytes(entry.data)
            synod.advance(ready)

    def _send(self, messages: list[Any]) -> None:
        for message in messages:
            if self.rng.random() < self.faults.loss:
                continue
            copies = 2 if self.rng.random() < self.faults.duplicate else 1
            for _ in range(copies):
                self._schedule(self.rng.randint(1, self.faults.max_delay), _DELIVER, message)

    def run_until(self, done: Callable[[], bool], max_duration: int,
                  nemesis: Callable[[], None] | None = None) -> bool:
        deadline = self.now + max_duration
        next_nemesis = self.now
        while self._queue and self._queue[0][0] <= deadline:
            if done():
                return True
            when, _, kind, payload = heapq.heappop(self._queue)
            self.now = when
            if nemesis is not None and when >= next_nemesis:
                next_nemesis = when + TICK_US
                nemesis()
            if kind == _TICK:
                node, incarnation = payload
                if node in self.up and incarnation == self.incarnation[node]:
                    self.nodes[node].tick()
                    self._drain(node)
                    self._schedule(TICK_US, _TICK, payload)
            elif kind == _DELIVER:
                if payload.dst in self.up:
                    self.nodes[payload.dst].step(payload)
                    self._drain(payload.dst)
        return done()
