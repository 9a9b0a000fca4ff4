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
  Linearizable reads    a read index is >= everything committed anywhere when the read began
                        (ReadIndex and lease reads alike).
  Snapshots             a snapshot is taken at or below the node's commit and installed only
                        beyond its applied index; the state a node holds (after applying,
                        snapshotting or restoring) equals the state rebuilt from the committed
                        history through its applied index (check_state).

A violation raises engine.errors.InvariantViolation naming the node and index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from engine.errors import InvariantViolation


class ClusterChecker:
    """The global history of one simulated cluster and the invariants over it."""

    def __init__(self, voters: Sequence[int]) -> None:
        self.voters = tuple(voters)
        self.quorum = len(self.voters) // 2 + 1
        self.leaders_by_term: dict[int, int] = {}
        # Committed history: committed_terms[i] / committed_data[i] for index i (index 0 unused).
        self.committed_terms: list[int] = [0]
        self.committed_data: list[bytes] = [b""]
        # Every (index, term) ever written to a disk: (data, kind, previous entry's term).
        self.entries_seen: dict[tuple[int, int], tuple[bytes, int, int]] = {}
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
        for entry in entries:
            key = (entry.index, entry.term)
            record = (entry.data, entry.kind, previous_term)
            known = seen.get(key)
            if known is None:
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
        for entry in entries:
            index = entry.index
            if index < len(terms):
                if terms[index] != entry.term or data[index] != entry.data:
                    self.fail(
                        f"state machine safety: node {node_id} committed index {index} term "
                        f"{entry.term}, already committed with term {terms[index]}"
                    )
            elif index == len(terms):
                terms.append(entry.term)
                data.append(entry.data)
            else:
                self.fail(f"node {node_id} committed index {index} past a gap at {len(terms)}")

    def on_apply(self, node_id: int, expected_index: int, entry: Any) -> None:
        if entry.index != expected_index:
            self.fail(f"node {node_id} applied index {entry.index}, expected {expected_index}")
        if entry.index >= len(self.committed_terms):
            self.fail(f"node {node_id} applied index {entry.index} that no node has committed")
        if (self.committed_terms[entry.index], self.committed_data[entry.index]) != (
            entry.term,
            entry.data,
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

    def check_state(self, node_id: int, index: int, applied: Sequence[bytes]) -> None:
        """A node's state machine through `index` (its applied commands, no-ops excluded)
        equals the state rebuilt from the committed history."""
        if index > self.committed_index:
            self.fail(f"node {node_id} holds state through {index} > committed "
                      f"{self.committed_index}")
        expected = [data for data in self.committed_data[1 : index + 1] if data]
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
