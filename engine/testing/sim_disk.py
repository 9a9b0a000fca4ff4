"""The simulator's disk: one model of what a node's storage holds, for every protocol.

It has the semantics of engine.aio.wal.WriteAheadLog plus its snapshot file:
  save      entries whose index is <= the stored last index replace that suffix (the WAL's
            truncate-on-conflict rule); entries at or below the compaction marker are covered
            by the snapshot and skipped; a gap is a driver bug.
  compact   the WAL's compaction marker (index, term): the entries after it stay iff the disk
            holds entry `index` with `term` (Raft Figure 13 steps 6-7); otherwise every stored
            entry goes. It returns what it dropped above the marker so that callers can decide
            whether that was legitimate (a Raft install may discard a conflicting log; a snapshot
            policy, or any Paxos compaction, must never forget an accepted slot above it).
  snapshot  the newest snapshot file; open() restarts the log after a snapshot that is newer
            than the log (a crash between writing the snapshot file and the WAL's marker).

A crash loses nothing here: the disk only ever holds what a completed (simulated) fsync wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import InvariantViolation
from engine.types import HardState, Snapshot


@dataclass(slots=True)
class SimDisk:
    hard_state: HardState = field(default_factory=HardState)
    # Entry i (i > log_start[0]) is entries[i - log_start[0] - 1].
    entries: list[Any] = field(default_factory=list)
    # The WAL's compaction marker: (index, term) the stored entries follow.
    log_start: tuple[int, int] = (0, 0)
    snapshot: Snapshot | None = None

    @property
    def floor(self) -> int:
        """The compaction marker's index (slots at or below it live in the snapshot)."""
        return self.log_start[0]

    @property
    def last_index(self) -> int:
        return self.log_start[0] + len(self.entries)

    def term(self, index: int) -> int | None:
        """Term of the entry at index: None if the marker covers it, 0 if absent."""
        start = self.log_start[0]
        if index <= start:
            return None
        if index > self.last_index:
            return 0
        return int(self.entries[index - start - 1].term)

    def stored_term(self, index: int) -> int | None:
        """The term stored at index, the marker's own term included; None if unknown."""
        start, start_term = self.log_start
        if index == start:
            return start_term
        if start < index <= self.last_index:
            return int(self.entries[index - start - 1].term)
        return None

    def save(self, entries: list[Any], hard_state: HardState | None = None) -> bool:
        """One fsync of entries and hard state. Returns True if a stored suffix with another
        term was replaced (a log truncation)."""
        truncated = False
        if entries:
            first = entries[0].index
            if first > self.last_index + 1:
                raise InvariantViolation(
                    f"save leaves a gap: index {first} after {self.last_index}")
            for offset, entry in enumerate(entries):
                if entry.index != first + offset:
                    raise InvariantViolation("entries to save are not contiguous")
            start = self.log_start[0]
            entries = entries[max(start + 1 - first, 0):]  # under the marker: covered
        if entries:
            first = entries[0].index
            start = self.log_start[0]
            if first <= self.last_index:
                truncated = self.entries[first - start - 1].term != entries[0].term
                del self.entries[first - start - 1:]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state
        return truncated

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """The snapshot file (written, fsynced, renamed): only a newer one replaces it."""
        if self.snapshot is None or snapshot.index > self.snapshot.index:
            self.snapshot = snapshot

    def compact(self, index: int, term: int) -> list[Any]:
        """The WAL's compact(index, term); returns the entries above index it dropped."""
        start = self.log_start[0]
        if index <= start:
            return []
        dropped: list[Any] = []
        if self.stored_term(index) == term:
            del self.entries[: index - start]
        else:
            dropped = self.entries[max(index - start, 0):]
            self.entries = []
        self.log_start = (index, term)
        return dropped

    def open(self) -> None:
        """WriteAheadLog.open: a snapshot newer than the log restarts the log after it."""
        if self.snapshot is not None and self.last_index < self.snapshot.index:
            self.compact(self.snapshot.index, self.snapshot.term)


__all__ = ["SimDisk"]
