"""Global safety invariants of a Raft cluster, checked by the simulator after every event.

Each check is incremental (it sees what changed) so that it can run after every event of
thousands of simulated runs. The properties are those of Raft Figure 3 plus durability:

  Election Safety       at most one leader per term.
  Log Matching          two logs holding an entry with the same index and term hold the same
                        command there and agree on everything before it (checked on every entry
                        that reaches any disk: same (index, term) => same data and same
                        previous term, which by induction is the whole prefix).
  Leader Completeness   a new leader's log holds every entry committed so far.
  State Machine Safety  no two nodes apply different commands at one index; every node applies
                        1, 2, 3, ... with no gap.
  Durability            a committed entry is never lost: every restart finds its persisted
                        commit prefix equal to the committed history, and every committed entry
                        is on a majority of disks.
  Commit monotonicity   a node's commit index never decreases, except across a restart where it
                        restarts from its persisted commit.
  Membership            (thesis ch. 4) election safety holds per term whatever the (joint)
                        configurations; a leader never holds more than one configuration
                        change beyond the committed history; no witness leads; every committed
                        entry is on a majority of the voters of the newest committed
                        configuration (C_new of a joint one), and its command is on a full
                        (non-witness) copy among them - the Jepsen "lost updates during a
                        membership change" class. Witnesses store metadata only: their entries
                        are checked on (index, term, kind, previous term), not on payload.
  Linearizable reads    a read index is >= everything committed anywhere when the read began
                        (ReadIndex and lease reads alike).
  Snapshots             a snapshot is taken at or below the node's commit and installed only
                        beyond its applied index; the state a node holds (after applying,
                        snapshotting or restoring) equals the state rebuilt from the committed
                        history through its applied index (check_state).

A violation raises engine.errors.InvariantViolation naming the node and index.

Protocol-independent, for any harness (the simulator, the nemesis):

  Honest outcomes       no operation answered with a definite failure (engine.Rejected and
                        its subclasses: it never entered a log) is ever applied by any
                        state machine (check_definite_failures_not_applied).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from typing import Any

from engine.errors import InvariantViolation
from engine.messages import EntryKind
from engine.raft.membership import Membership, decode_membership


class ClusterChecker:
    """The global history of one simulated cluster and the invariants over it."""

    def __init__(
        self, voters: Sequence[int], *, bootstrap: Membership | None = None,
        witnesses: Iterable[int] = (),
    ) -> None:
        self.voters = tuple(voters)
        self.quorum = len(self.voters) // 2 + 1
        self.leaders_by_term: dict[int, int] = {}
        # Nodes that store metadata only (their payloads are empty by design).
        self.witnesses: set[int] = set(witnesses)
        # Committed history: committed_terms[i] / committed_data[i] for index i (index 0 unused).
        # committed_data[i] is None while only witnesses (no payload) have committed index i.
        self.committed_terms: list[int] = [0]
        self.committed_data: list[bytes | None] = [b""]
        # The newest committed configuration and its index (bootstrap: index 0).
        self.membership = bootstrap or Membership.of(self.voters)
        self.membership_index = 0
        self.configs_committed = 0
        # Every (index, term) ever written to a disk: (data, kind, previous entry's term).
        self.entries_seen: dict[tuple[int, int], tuple[bytes | None, int, int]] = {}
        self.applied_terms: dict[int, int] = {}
        self.votes: dict[tuple[int, int], int] = {}

    @property
    def committed_index(self) -> int:
        return len(self.committed_terms) - 1

    @staticmethod
    def fail(what: str) -> None:
        raise InvariantViolation(what)

    def on_leader(self, node_id: int, term: int, term_at: Any, first_index: int = 1) -> bool:
        """A node is leader at term; returns True the first time (a new leader)."""
        if node_id in self.witnesses:
            self.fail(f"witness {node_id} leads term {term}")
        known = self.leaders_by_term.get(term)
        if known is not None:
            if known != node_id:
                self.fail(f"election safety: nodes {known} and {node_id} both lead term {term}")
            return False
        self.leaders_by_term[term] = node_id
        # Leader Completeness (Raft §5.4.1); entries below first_index are in the leader's
        # snapshot, whose state check_state verified against the committed history.
        for index in range(max(1, first_index), len(self.committed_terms)):
            if term_at(index) != self.committed_terms[index]:
                self.fail(
                    f"leader completeness: leader {node_id} of term {term} has term "
                    f"{term_at(index)} at committed index {index} (committed term "
                    f"{self.committed_terms[index]})"
                )
        return True

    def on_entries_written(self, node_id: int, entries: Iterable[Any], previous_term: int) -> None:
        """Log Matching on every entry handed to a disk (previous_term: term before the first)."""
        seen = self.entries_seen
        witness = node_id in self.witnesses
        for entry in entries:
            key = (entry.index, entry.term)
            record = (entry.data, entry.kind, previous_term)
            known = seen.get(key)
            if witness and entry.kind != EntryKind.CONFIG:
                if entry.data:
                    self.fail(f"witness {node_id} stored a payload at index {entry.index}")
                if known is not None and known[1:] != record[1:]:
                    self.fail(
                        f"log matching: witness {node_id} wrote index {entry.index} term "
                        f"{entry.term} as {record!r}, earlier seen as {known!r}"
                    )
                previous_term = entry.term
                continue
            if known is None or (known[0] is None and known[1:] == record[1:]):
                seen[key] = record
            elif known != record:
                self.fail(
                    f"log matching: node {node_id} wrote index {entry.index} term {entry.term} "
                    f"as {record!r}, earlier seen as {known!r}"
                )
            previous_term = entry.term

    def on_commit(
        self, node_id: int, old_commit: int, new_commit: int, entries: Sequence[Any]
    ) -> None:
        """A node's commit index moved from old_commit to new_commit (entries: that range)."""
        if new_commit < old_commit:
            self.fail(f"commit of node {node_id} went back from {old_commit} to {new_commit}")
        terms, data = self.committed_terms, self.committed_data
        # A witness's NORMAL entries carry no payload: only their terms are compared.
        metadata_only = node_id in self.witnesses
        for entry in entries:
            index = entry.index
            payload = (
                None if metadata_only and entry.kind != EntryKind.CONFIG else bytes(entry.data)
            )
            if index < len(terms):
                if terms[index] != entry.term or (
                    payload is not None and data[index] is not None and data[index] != payload
                ):
                    self.fail(
                        f"state machine safety: node {node_id} committed index {index} term "
                        f"{entry.term}, already committed with term {terms[index]}"
                    )
                if data[index] is None:
                    data[index] = payload
            elif index == len(terms):
                terms.append(entry.term)
                data.append(payload)
            else:
                self.fail(f"node {node_id} committed index {index} past a gap at {len(terms)}")
            if entry.kind == EntryKind.CONFIG:
                # Configurations are committed in log order: the newest committed one wins.
                if index > self.membership_index:
                    self.membership = decode_membership(entry.data)
                    self.membership_index = index
                    self.configs_committed += 1

    def on_apply(self, node_id: int, expected_index: int, entry: Any) -> None:
        if entry.index != expected_index:
            self.fail(f"node {node_id} applied index {entry.index}, expected {expected_index}")
        if entry.index >= len(self.committed_terms):
            self.fail(f"node {node_id} applied index {entry.index} that no node has committed")
        committed = self.committed_data[entry.index]
        metadata_only = node_id in self.witnesses and entry.kind != EntryKind.CONFIG
        if self.committed_terms[entry.index] != entry.term or (
            not metadata_only and committed is not None and committed != entry.data
        ):
            self.fail(
                f"state machine safety: node {node_id} applied a different entry at {entry.index}"
            )
        self.applied_terms[entry.index] = entry.term

    def on_vote_persisted(self, node_id: int, term: int, vote: int) -> None:
        """Raft §5.2: one vote per term, durable across restarts."""
        if vote == 0:
            return
        known = self.votes.setdefault((node_id, term), vote)
        if known != vote:
            self.fail(f"node {node_id} voted for {known} and {vote} in term {term}")

    def on_restart(
        self, node_id: int, commit: int, disk_term: Callable[[int], int | None], last_index: int
    ) -> None:
        """A node restarts from disk: its persisted commit prefix is committed history.
        disk_term(i) is the term on disk at i, None if a snapshot covers i, 0 if absent."""
        if commit > self.committed_index:
            self.fail(
                f"node {node_id} persisted commit {commit} > committed {self.committed_index}"
            )
        terms = self.committed_terms
        for index in range(1, commit + 1):
            term = disk_term(index)
            if term is None:
                continue
            if term == 0:
                self.fail(f"node {node_id} persisted commit {commit} beyond its disk ({index})")
            if term != terms[index]:
                self.fail(f"durability: node {node_id} restarted with a different entry at {index}")

    def check_durable_majority(self, disks: Sequence[Callable[[int], int | None]]) -> None:
        """Every committed entry is on a majority of disks, as an entry or inside a durable
        snapshot (acks wait for fsync, §3.8). disks: each node's disk_term(index)."""
        terms = self.committed_terms
        for index in range(1, len(terms)):
            holders = 0
            for disk_term in disks:
                term = disk_term(index)
                if term is None or term == terms[index]:
                    holders += 1
            if holders < self.quorum:
                self.fail(
                    f"durability: committed index {index} on {holders} disks, quorum {self.quorum}"
                )

    def check_durable_membership(
        self, disks: Mapping[int, Callable[[int], int | None]], full_copies: Iterable[int] = (),
    ) -> None:
        """The membership-aware durability check: every committed entry is on a majority of
        the voters of the newest committed configuration (C_new of a joint one; joint
        consensus guarantees it, thesis §4.3) and, with its command, on at least one full
        (non-witness) disk among them (witness rule W1). disks: node -> disk_term(index);
        full_copies: nodes whose disks hold payloads."""
        voters = self.membership.voters
        full = set(full_copies)
        majority = len(voters) // 2 + 1
        terms = self.committed_terms
        for index in range(1, len(terms)):
            holders = full_holders = 0
            for node in voters:
                disk_term = disks.get(node)
                term = disk_term(index) if disk_term is not None else 0
                if term is None or term == terms[index]:
                    holders += 1
                    full_holders += node in full
            if holders < majority:
                self.fail(
                    f"durability: committed index {index} on {holders} disks of voters "
                    f"{sorted(voters)} (configuration at {self.membership_index}), "
                    f"majority {majority}"
                )
            if not full_holders:
                self.fail(
                    f"durability: committed index {index} has no full copy among voters "
                    f"{sorted(voters)} (witnesses {sorted(self.membership.witnesses)})"
                )

    def check_state(self, node_id: int, index: int, applied: Sequence[bytes]) -> None:
        """A node's state machine through `index` (its applied commands, no-ops excluded)
        equals the state rebuilt from the committed history."""
        if index > self.committed_index:
            self.fail(f"node {node_id} holds state through {index} > committed "
                      f"{self.committed_index}")
        if node_id in self.witnesses:
            return  # a witness has no state machine
        history = self.committed_data[1 : index + 1]
        if None in history:
            self.fail(
                f"node {node_id} holds state through {index} but no full node committed index "
                f"{history.index(None) + 1}"
            )
        expected = [data for data in history if data]
        if list(applied) != expected:
            first_diff = next(
                (i for i, (a, b) in enumerate(zip(applied, expected, strict=False)) if a != b),
                min(len(applied), len(expected)),
            )
            self.fail(
                f"state of node {node_id} through {index} differs from the committed history "
                f"at command {first_diff} ({len(applied)} vs {len(expected)} commands)"
            )

    def on_read(self, node_id: int, index: int, floor: int) -> None:
        if index < floor:
            self.fail(
                f"linearizability: node {node_id} read index {index} < committed {floor} at start"
            )


def check_definite_failures_not_applied(
    failed_ops: Mapping[Any, str] | Collection[Hashable], applied_ops: Iterable[Hashable],
) -> None:
    """Honest outcomes (engine.errors): raise InvariantViolation if an operation answered
    with a definite failure was applied anywhere.

    `failed_ops`: the operations whose caller got engine.Rejected or a subclass, by an id
    unique per operation (the command itself when commands are unique; the KV workloads'
    unique values), optionally mapped to the error text. `applied_ops`: ids of operations
    some node's state machine applied (or whose effect a read observed). Either may be
    checked incrementally: one new failure against everything applied so far, or one new
    apply against every failure so far (the lookup is in `failed_ops`)."""
    offenders = [op for op in applied_ops if op in failed_ops]
    if not offenders:
        return
    reasons = failed_ops if isinstance(failed_ops, Mapping) else {}
    shown = "; ".join(f"{op!r}: {reasons.get(op, 'Rejected')}" for op in offenders[:5])
    raise InvariantViolation(
        f"{len(offenders)} operation(s) answered with a definite failure were applied: "
        f"{shown}")
