"""Raft on the simulator: the core factory, the state machine model and the checks
(engine.testing.invariants.ClusterChecker) that engine/testing/sim.py runs for protocol="raft".

Everything here is what differs from Multi-Paxos; the network, disk, driver, clients, nemesis
and swarm live in sim.py and are shared.
"""

from __future__ import annotations

import struct
from typing import Any

from engine.limits import Limits, TimingConfig
from engine.messages import EntryKind
from engine.raft.config import RaftConfig
from engine.raft.core import RaftCore, Role
from engine.raft.membership import Membership, decode_membership
from engine.testing.invariants import ClusterChecker
from engine.testing.sim_node import Proposal, SimNode
from engine.testing.sim_node import SimulationView as Simulation
from engine.types import Ready, Snapshot


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


class RaftProtocol:
    """The Raft half of the simulator (see SimProtocol in sim.py for the hooks)."""

    name = "raft"
    install_may_discard_log = True  # Raft Figure 13 step 7: a conflicting log goes
    default_timing = TimingConfig(tick_ms=10, heartbeat_interval_ticks=3, election_timeout_ticks=15)
    default_limits = Limits()

    def __init__(self, sim: Simulation, *, pre_vote: bool, check_quorum: bool,
                 witnesses: frozenset[int]) -> None:
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.bootstrap = Membership.of(
            sim.initial_voters, witnesses=witnesses & set(sim.initial_voters),
            addresses={i: sim.address(i) for i in sim.initial_voters},
        )
        self.checker = ClusterChecker(
            sim.initial_voters, bootstrap=self.bootstrap, witnesses=witnesses
        )

    # ------------------------------------------------------------------ nodes

    def make_core(self, sim: Simulation, node: SimNode, applied: int) -> RaftCore:
        bootstrap = self.bootstrap
        joining = node.node_id not in bootstrap.voters
        config = RaftConfig(
            node.node_id,
            sim.initial_voters,
            sim.timing,
            sim.limits,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            check_invariants=sim.check_invariants,
            seed=sim.rng.getrandbits(32),
            lease_read=sim.lease_reads_enabled,
            # A spare joins as a learner and learns the configuration from the leader.
            learners=(node.node_id,) if joining else (),
            witnesses=tuple(sorted(bootstrap.witnesses | ({node.node_id} if node.witness
                                                          else set()))),
            addresses=bootstrap.addresses,
        )
        disk = node.disk
        return RaftCore(config, disk.hard_state, list(disk.entries), applied=applied,
                        snapshot=disk.snapshot, log_start=disk.log_start)

    def on_restart(self, sim: Simulation, node: SimNode) -> None:
        """Before a restart: its persisted commit prefix is committed history, and every
        committed entry is durable on a quorum."""
        disk = node.disk
        self.checker.on_restart(node.node_id, disk.hard_state.commit, disk.term, disk.last_index)
        sim.check_durable()

    def restore(self, sim: Simulation, node: SimNode, snapshot: Snapshot) -> list[Any]:
        """The state machine restored from a snapshot equals the committed history."""
        applied: list[Any] = decode_applied(snapshot.data)
        self.checker.check_state(node.node_id, snapshot.index, applied)
        return applied

    def snapshot_data(self, sim: Simulation, node: SimNode, core: Any, index: int) -> bytes:
        """The state machine's snapshot at index (the driver adds the configuration)."""
        self.checker.check_state(node.node_id, index, node.applied)
        if index > core.commit_index:
            self.checker.fail(f"node {node.node_id} snapshot {index} above its commit")
        return encode_applied(node.applied)

    def on_trim(self, sim: Simulation, node: SimNode, index: int) -> None:
        """Raft trims only below a snapshot at or below commit (checked in snapshot_data)."""

    # ------------------------------------------------------------------ the driver's steps

    def on_ready(self, sim: Simulation, node: SimNode, core: Any, ready: Ready) -> None:
        if ready.entries:
            first = ready.entries[0].index
            self.checker.on_entries_written(node.node_id, ready.entries, core.log.term(first - 1))

    def on_persisted(self, sim: Simulation, node: SimNode, ready: Ready) -> None:
        hard_state = ready.hard_state
        if hard_state is None:
            return
        self.checker.on_vote_persisted(node.node_id, hard_state.term, hard_state.vote)
        if hard_state.commit > max(node.disk.last_index, node.snapshot_index):
            self.checker.fail(
                f"node {node.node_id} persisted commit {hard_state.commit} beyond its disk"
            )

    def apply(self, sim: Simulation, node: SimNode, entry: Any) -> None:
        self.checker.on_apply(node.node_id, node.applied_index + 1, entry)
        node.applied_index = entry.index
        if entry.data:
            node.applied.append(entry.data)

    def read_floor(self, sim: Simulation) -> int:
        return self.checker.committed_index

    def on_read(self, sim: Simulation, node_id: int, index: int, floor: int) -> None:
        self.checker.on_read(node_id, index, floor)

    def on_proposed(self, sim: Simulation, first: int, term: int, commands: list[bytes]) -> None:
        """Nothing to record: Raft's checks follow the entries themselves."""

    # ------------------------------------------------------------------ after every input

    def observe(self, sim: Simulation, node: SimNode, core: Any) -> None:
        node_id, checker = node.node_id, self.checker
        commit = core.commit_index
        if commit != node.last_commit:
            old = node.last_commit
            # A snapshot install jumps commit over entries the log no longer holds; they are
            # committed history already (checked by check_state at the install).
            lo = max(old + 1, core.log.first_index)
            if lo - 1 > checker.committed_index:
                checker.fail(
                    f"node {node_id} committed through a snapshot at {lo - 1} beyond the "
                    f"committed history {checker.committed_index}"
                )
            entries = core.log.slice(lo, commit + 1) if commit >= lo else []
            checker.on_commit(node_id, old, commit, entries)
            if core.role == Role.LEADER and commit > old:
                self._check_commit_quorum(sim, node_id, core, commit)
            node.last_commit = commit
            sim.stats["entries_committed"] = checker.committed_index
            sim.stats["conf_changes_committed"] = checker.configs_committed
        if core.role == Role.LEADER:
            self._observe_leader(sim, node_id, core)
        self._count_snapshot_transfers(sim, node_id, core)

    def _observe_leader(self, sim: Simulation, node_id: int, core: Any) -> None:
        checker = self.checker
        # One membership change in flight (thesis §4.3): at most one configuration entry
        # beyond the committed history.
        committed = checker.committed_index
        pending = [i for i, _ in core.configurations()[1:] if i > committed]
        if len(pending) > 1:
            checker.fail(
                f"leader {node_id} holds {len(pending)} uncommitted configurations {pending}"
            )
        if checker.on_leader(node_id, core.term, core.log.term, core.log.first_index):
            sim.stats["leaders_elected"] += 1
            sim.on_new_leader(node_id)

    def _count_snapshot_transfers(self, sim: Simulation, node_id: int, core: Any) -> None:
        stats = core.snapshot_stats
        node_stats = sim.snapshot_counters.setdefault(node_id, {})
        for name, key in (("chunks_sent", "snapshot_chunks_sent"),
                          ("retransmits", "snapshot_retransmits")):
            seen = node_stats.get(name, 0)
            if stats[name] != seen:
                sim.stats[key] += max(stats[name] - seen, 0)
                node_stats[name] = stats[name]

    def _check_commit_quorum(self, sim: Simulation, node_id: int, core: Any,
                             commit: int) -> None:
        """A leader's commit: the entry is durable on a majority of *each* half of the
        leader's configuration (thesis §4.3; acks follow the fsync, §3.8)."""
        term = core.log.term(commit)
        for half in core.membership.halves:
            holders = [i for i in half if sim.nodes[i].disk.term(commit) in (None, term)]
            if len(holders) < len(half) // 2 + 1:
                self.checker.fail(
                    f"leader {node_id} committed {commit} held by {holders} of voters "
                    f"{sorted(half)} (configuration {core.membership})"
                )

    # ------------------------------------------------------------------ the healed phase

    def possible_members(self, sim: Simulation) -> set[int]:
        """Nodes that are members of the newest committed configuration or of a configuration
        entry on some disk beyond the committed history (it may still commit)."""
        members = set(self.checker.membership.members)
        committed = self.checker.committed_index
        for node in sim.nodes.values():
            start = node.disk.log_start[0]
            for entry in node.disk.entries[max(0, committed - start):]:
                if entry.kind == EntryKind.CONFIG:
                    members |= decode_membership(entry.data).members
        # Appends still in flight may carry a configuration no disk holds yet (the leader
        # sends before its own fsync, thesis §10.2.1).
        for message in sim.messages_in_flight():
            for entry in message.entries:
                if entry.kind == EntryKind.CONFIG:
                    members |= decode_membership(entry.data).members
        return members

    def settled(self, sim: Simulation, index: int) -> bool:
        """The newest committed configuration is not joint and all its members applied
        through index."""
        membership = self.checker.membership
        if membership.joint:
            return False
        return all(sim.nodes[i].applied_index >= index for i in membership.members)

    def removed(self, sim: Simulation, node: SimNode, core: Any) -> bool:
        """engine.Node goes quiet once it applied a configuration without it, unless it
        leads (a leader leaving manages the change until C_new commits, thesis §4.2.2)."""
        return core.role != Role.LEADER and node.node_id not in core.configuration_at(
            node.applied_index).members

    def is_committed(self, proposal: Proposal) -> bool:
        terms = self.checker.committed_terms
        return proposal.first < len(terms) and terms[proposal.first] == proposal.term

    def is_lost(self, proposal: Proposal) -> bool:
        terms = self.checker.committed_terms
        return proposal.first < len(terms) and terms[proposal.first] != proposal.term

    def final_checks(self, sim: Simulation) -> None:
        sim.check_durable()
        for node in sim.nodes.values():
            if node.up:
                self.checker.check_state(node.node_id, node.applied_index, node.applied)

    def describe(self, sim: Simulation) -> str:
        return (f"committed membership {self.checker.membership} at "
                f"{self.checker.membership_index}")


__all__ = ["RaftProtocol", "encode_applied", "decode_applied"]
