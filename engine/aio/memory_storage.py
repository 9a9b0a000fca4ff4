"""In-memory storage with the WriteAheadLog surface, for data_dir=None nodes.

It keeps exactly what the driver saved, so LocalCluster can "restart" an in-memory node with
the state it had persisted (as a disk would), while nothing survives the process. Snapshots
and compaction follow the WAL's semantics (engine.aio.wal): save_snapshot keeps the newest
snapshot, compact(index, term) drops the entries through index (all of them if the log does
not hold (index, term)), open() returns the snapshot and the log after the compaction floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.types import HardState, Snapshot


@dataclass
class RecoveredMemoryState:
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Any] = field(default_factory=list)
    first_index: int = 1
    snapshot_index: int = 0   # the compaction floor: entries start after it
    snapshot_term: int = 0
    snapshot: Snapshot | None = None


class MemoryStorage:
    """save() replaces the suffix from the first saved index (Raft truncate-on-conflict)."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Any] = []
        self.first_index = 1
        self.floor_term = 0
        self.snapshot: Snapshot | None = None
        self.saves = 0

    def open(self) -> RecoveredMemoryState:
        snapshot = self.snapshot
        if snapshot is not None and self.first_index - 1 + len(self.entries) < snapshot.index:
            self.compact(snapshot.index, snapshot.term)
        return RecoveredMemoryState(
            self.hard_state, list(self.entries), self.first_index, self.first_index - 1,
            self.floor_term, snapshot,
        )

    def save(self, entries: list[Any], hard_state: HardState | None, *,
             sync: bool = True) -> None:
        if entries:
            skip = max(self.first_index - entries[0].index, 0)  # under the compaction floor
            entries = entries[skip:]
        if entries:
            keep = entries[0].index - self.first_index
            if keep < len(self.entries):
                del self.entries[max(keep, 0):]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state
        self.saves += 1

    def save_snapshot(self, snapshot: Snapshot, envelope: bytes = b"") -> None:
        if self.snapshot is None or snapshot.index > self.snapshot.index:
            self.snapshot = snapshot

    def load_snapshot(self) -> Snapshot | None:
        return self.snapshot

    def compact(self, index: int, term: int) -> None:
        floor = self.first_index - 1
        if index <= floor:
            return
        offset = index - self.first_index
        if offset < len(self.entries) and self.entries[offset].term == term:
            del self.entries[: offset + 1]
        else:
            self.entries = []
        self.first_index = index + 1
        self.floor_term = term

    def close(self) -> None:
        pass
