"""Paxos test helpers on the shared simulator (engine/testing/sim.py, protocol="paxos").

The Multi-Paxos simulator itself - network, disk, driver, nemesis, swarm - is
engine.testing.sim (one model for Raft and Paxos); its Paxos invariants are
engine.testing.paxos_invariants.PaxosChecker. What stays here:
  - PaxosSim / Faults / Disk: the older scenario vocabulary (sim.cores, sim.applied,
    sim.disks, propose(node, count)) as a thin view over engine.testing.sim.Simulation, for
    tests/paxos/test_paxos_snapshot.py;
  - SynodSim: single-decree Paxos (the write-once register) with duelling proposers on a
    small network of its own (its core has no log, no Ready.snapshot and no commit index, so
    it does not fit the log-replication driver).
"""

from __future__ import annotations

import heapq
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.config import Limits, TimingConfig
from engine.errors import InvariantViolation
from engine.paxos.synod import Synod, SynodConfig
from engine.testing.paxos_invariants import decode_values, encode_values
from engine.testing.sim import FaultConfig, SimNode, Simulation, SimulationFailure
from engine.testing.sim_disk import SimDisk

TICK_US = 10
_TICK, _DELIVER = range(2)

__all__ = ["Faults", "Disk", "PaxosSim", "SynodSim", "SimulationFailure", "seeds_from_env",
           "decode_values", "encode_values"]


def seeds_from_env(default: range) -> list[int]:
    """ENGINE_SIM_SEED=<n> replays one seed; otherwise the default range."""
    one = os.environ.get("ENGINE_SIM_SEED")
    return [int(one)] if one else list(default)


@dataclass
class Faults:
    """Fault rates in the older vocabulary (max_delay: delays are uniform in [1, max_delay])."""

    loss: float = 0.0
    duplicate: float = 0.0
    max_delay: int = 5
    unsynced_crash: float = 0.0
    crash_rate: float = 0.0          # per nemesis step
    partition_rate: float = 0.0      # per nemesis step

    def config(self) -> FaultConfig:
        """The shared simulator's FaultConfig (fsync completes at once, as before)."""
        nemesis = self.crash_rate or self.partition_rate
        return FaultConfig(
            loss=self.loss, duplicate=self.duplicate, delay_min_ms=1,
            delay_max_ms=max(1, self.max_delay), fsync_min_ms=0, fsync_max_ms=0,
            crash=self.crash_rate, restart=0.5 if nemesis else 0.0,
            partition=self.partition_rate, heal=0.3 if nemesis else 0.0,
            unsynced_crash=self.unsynced_crash,
        )


class Disk(SimDisk):
    """SimDisk with the Paxos rule built in: a compaction that would forget an accepted slot
    above its marker raises (for hand-driven tests; the simulator checks it itself)."""

    def compact(self, index: int, term: int) -> list[Any]:
        dropped = super().compact(index, term)
        forgotten = [entry.index for entry in dropped if entry.term]
        if forgotten:
            raise InvariantViolation(
                f"WAL compaction at ({index}, {term}) forgets accepted slots {forgotten} above it")
        return dropped


class PaxosSim:
    """engine.testing.sim.Simulation(protocol="paxos") under the older scenario names."""

    def __init__(
        self, n: int = 3, seed: int = 0, faults: Faults | None = None, *,
        phase1_quorum: int | None = None, phase2_quorum: int | None = None,
        timing: TimingConfig | None = None, limits: Limits | None = None,
        snapshot_entries: int | None = None, snapshot_trailing: int = 0,
    ) -> None:
        self.sim = Simulation(
            n, seed, protocol="paxos", faults=(faults or Faults()).config(), timing=timing,
            limits=limits, snapshot_entries=snapshot_entries or 0,
            snapshot_trailing=snapshot_trailing, phase1_quorum=phase1_quorum,
            phase2_quorum=phase2_quorum,
        )

    def __getattr__(self, name: str) -> Any:
        # run_until, run_for, leader, crash, restart, partition, heal, stats, node_ids, ...
        return getattr(self.sim, name)

    @property
    def nodes(self) -> dict[int, SimNode]:
        return self.sim.nodes

    @property
    def cores(self) -> dict[int, Any]:
        return {i: node.core for i, node in self.sim.nodes.items() if node.core is not None}

    @property
    def disks(self) -> dict[int, SimDisk]:
        return {i: node.disk for i, node in self.sim.nodes.items()}

    @property
    def applied(self) -> dict[int, list[Any]]:
        return {i: node.applied for i, node in self.sim.nodes.items()}

    def propose(self, node: int, count: int = 1) -> list[bytes]:
        """Proposes `count` fresh commands at node; [] if it is not leader or overloaded."""
        return self.sim.propose_many(node, count)


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
        self.disks = {i: SimDisk() for i in self.node_ids}
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
