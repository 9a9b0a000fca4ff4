"""Multi-Paxos on the simulator: the core factory, the state machine model and the checks
(engine.testing.paxos_invariants.PaxosChecker) that engine/testing/sim.py runs for
protocol="paxos". The network, disk, driver, clients, nemesis and swarm are shared with Raft.

The state machine is the list of applied values ((kind, identity ballot + command), one per
slot, no-op fills included), with a digest chain over it so that every replica's state after
slot s can be compared with every other's at every apply, snapshot install and restart.
"""

from __future__ import annotations

from typing import Any

from engine.limits import Limits, TimingConfig
from engine.messages import EntryKind
from engine.paxos.config import PaxosConfig
from engine.paxos.core import IDENTITY_BYTES, PaxosCore, Role
from engine.testing.paxos_invariants import (
    PaxosChecker,
    decode_values,
    digest_of,
    encode_values,
    next_digest,
)
from engine.testing.sim_node import Proposal, SimNode
from engine.testing.sim_node import SimulationView as Simulation
from engine.types import Ready, Snapshot


class PaxosProtocol:
    """The Multi-Paxos half of the simulator (see SimProtocol in sim.py for the hooks)."""

    name = "paxos"
    # A Paxos compaction must never forget an accepted slot above its marker, installs too.
    install_may_discard_log = False
    default_timing = TimingConfig(tick_ms=10, heartbeat_interval_ticks=2, election_timeout_ticks=10)
    default_limits = Limits(max_inflight_messages=8, max_entries_per_message=64,
                            max_append_bytes=256, max_snapshot_chunk_bytes=512,
                            max_snapshot_inflight_chunks=4)

    def __init__(self, sim: Simulation, *, phase1_quorum: int | None = None,
                 phase2_quorum: int | None = None) -> None:
        self.phase1_quorum, self.phase2_quorum = phase1_quorum, phase2_quorum
        q2 = self._config(sim, sim.initial_voters[0], 0).q2
        self.checker = PaxosChecker(q2)
        # The highest slot any replica ever knew committed: a read that starts now must see it.
        self.commit_floor = 0

    def _config(self, sim: Simulation, node_id: int, seed: int) -> PaxosConfig:
        return PaxosConfig(node_id, sim.initial_voters, sim.timing, sim.limits,
                           check_invariants=sim.check_invariants, seed=seed,
                           phase1_quorum=self.phase1_quorum, phase2_quorum=self.phase2_quorum)

    # ------------------------------------------------------------------ nodes

    def make_core(self, sim: Simulation, node: SimNode, applied: int) -> PaxosCore:
        disk = node.disk
        if disk.snapshot is None:
            node.digest = b""
        return PaxosCore(self._config(sim, node.node_id, sim.rng.getrandbits(32)),
                         disk.hard_state, list(disk.entries), applied=applied,
                         snapshot=disk.snapshot, log_start=disk.log_start)

    def on_restart(self, sim: Simulation, node: SimNode) -> None:
        """Paxos durability is checked on the votes themselves (PaxosChecker.on_persist)."""

    def restore(self, sim: Simulation, node: SimNode, snapshot: Snapshot) -> list[Any]:
        values: list[Any] = decode_values(snapshot.data)
        if len(values) != snapshot.index:
            self.checker.fail_node(node.node_id,
                                   f"snapshot at {snapshot.index} holds {len(values)} values")
        node.digest = digest_of(values)
        self.checker.on_state(node.node_id, snapshot.index, node.digest)
        return values

    def snapshot_data(self, sim: Simulation, node: SimNode, core: Any, index: int) -> bytes:
        """The state machine's snapshot at index: one value per slot."""
        values = node.applied
        if len(values) != index:
            self.checker.fail_node(node.node_id, f"applied {len(values)} != core {index}")
        return encode_values(values)

    def on_trim(self, sim: Simulation, node: SimNode, index: int) -> None:
        self.checker.on_trim(node.node_id, index)

    # ------------------------------------------------------------------ the driver's steps

    def on_ready(self, sim: Simulation, node: SimNode, core: Any, ready: Ready) -> None:
        """Acceptances count only once durable (on_persisted)."""

    def on_persisted(self, sim: Simulation, node: SimNode, ready: Ready) -> None:
        self.checker.on_persist(node.node_id, node.disk.hard_state.term, ready.entries)

    def apply(self, sim: Simulation, node: SimNode, entry: Any) -> None:
        value = self.checker.on_apply(node.node_id, node.applied, entry)
        node.applied.append(value)
        node.digest = next_digest(node.digest, value)
        self.checker.on_state(node.node_id, entry.index, node.digest)
        node.applied_index = entry.index

    def read_floor(self, sim: Simulation) -> int:
        return self.commit_floor

    def on_read(self, sim: Simulation, node_id: int, index: int, floor: int) -> None:
        if index < floor:
            self.checker.fail_node(
                node_id, f"linearizability: read index {index} < committed {floor} at start")

    def on_proposed(self, sim: Simulation, first: int, term: int, commands: list[bytes]) -> None:
        self.checker.on_proposed(first, term, commands)

    # ------------------------------------------------------------------ after every input

    def observe(self, sim: Simulation, node: SimNode, core: Any) -> None:
        commit = core.commit_index
        if commit != node.last_commit:
            # A replica knows committed only chosen slots (snapshot installs included).
            if commit > self.checker.chosen_through():
                self.checker.fail_node(
                    node.node_id, f"commit {commit} beyond the chosen prefix "
                    f"{self.checker.chosen_through()}")
            node.last_commit = commit
            self.commit_floor = max(self.commit_floor, commit)
            sim.stats["entries_committed"] = self.commit_floor
        if core.role == Role.LEADER and node.led_ballot != core.ballot:
            node.led_ballot = core.ballot
            sim.stats["leaders_elected"] += 1
            sim.on_new_leader(node.node_id)

    # ------------------------------------------------------------------ the healed phase

    def possible_members(self, sim: Simulation) -> set[int]:
        return set(sim.initial_voters)

    def settled(self, sim: Simulation, index: int) -> bool:
        return all(sim.nodes[i].applied_index >= index for i in sim.initial_voters)

    def removed(self, sim: Simulation, node: SimNode, core: Any) -> bool:
        """No membership changes in Multi-Paxos here: nobody is ever removed."""
        return False

    def _marker(self, proposal: Proposal) -> tuple[int, bytes]:
        return (EntryKind.NORMAL,
                proposal.term.to_bytes(IDENTITY_BYTES, "little") + proposal.command)

    def is_committed(self, proposal: Proposal) -> bool:
        return self.checker.chosen.get(proposal.first) == self._marker(proposal)

    def is_lost(self, proposal: Proposal) -> bool:
        # Definitely lost once its slot is chosen with another value (a new leader filled
        # or re-proposed it); the client then retries.
        chosen = self.checker.chosen.get(proposal.first)
        return chosen is not None and chosen != self._marker(proposal)

    def final_checks(self, sim: Simulation) -> None:
        # Replicas apply the same sequence (each is a prefix of the longest).
        longest = max((node.applied for node in sim.nodes.values()), key=len)
        for node in sim.nodes.values():
            if node.applied != longest[: len(node.applied)]:
                self.checker.fail_node(node.node_id, "applied a different sequence")

    def describe(self, sim: Simulation) -> str:
        return f"chosen through {self.checker.chosen_through()}"


__all__ = ["PaxosProtocol"]
