"""In-memory storage with the WriteAheadLog surface, for data_dir=None nodes.

It keeps exactly what the driver saved, so LocalCluster can "restart" an in-memory node with
the state it had persisted (as a disk would), while nothing survives the process. Snapshots
and compaction follow the WAL's semantics (engine.aio.wal): save_snapshot keeps the newest
snapshot, compact(index, term) drops the entries through index (all of them if the log does
not hold (index, term)), open() returns the snapshot and the log after the compaction floor.

Like the WAL it holds many consensus groups: save_many([(group, entries, hard_state), ...]),
compact(..., group=), save_snapshot(..., group=), open_groups(); the single-group calls are
group 0's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.types import HardState, Snapshot

MAX_GROUP = (1 << 32) - 1   # the WAL's group id range (engine.aio.wal.MAX_GROUP)


@dataclass
class RecoveredMemoryState:
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Any] = field(default_factory=list)
    first_index: int = 1
    snapshot_index: int = 0   # the compaction floor: entries start after it
    snapshot_term: int = 0
    snapshot: Snapshot | None = None

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.entries) - 1


class _MemoryGroup:
    """One group's persisted state: save() replaces the suffix from the first saved index
    (Raft truncate-on-conflict)."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Any] = []
        self.first_index = 1
        self.floor_term = 0
        self.snapshot: Snapshot | None = None

    def open(self) -> RecoveredMemoryState:
        snapshot = self.snapshot
        if snapshot is not None and self.first_index - 1 + len(self.entries) < snapshot.index:
            self.compact(snapshot.index, snapshot.term)
        return RecoveredMemoryState(
            self.hard_state, list(self.entries), self.first_index, self.first_index - 1,
            self.floor_term, snapshot,
        )

    def save(self, entries: list[Any], hard_state: HardState | None) -> None:
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

    def save_snapshot(self, snapshot: Snapshot) -> None:
        if self.snapshot is None or snapshot.index > self.snapshot.index:
            self.snapshot = snapshot

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


def _check_group(group: int) -> None:
    if not 0 <= group <= MAX_GROUP:
        raise ValueError(f"group id {group} is outside 0..{MAX_GROUP}")


class MemoryStorage:
    """The WAL's surface in memory; the attributes hard_state, entries, first_index,
    floor_term and snapshot are group 0's."""

    def __init__(self) -> None:
        self._group0 = _MemoryGroup()
        self._groups: dict[int, _MemoryGroup] = {0: self._group0}
        self.saves = 0

    # group 0's state, as the single-group storage exposed it
    @property
    def hard_state(self) -> HardState:
        return self._group0.hard_state

    @property
    def entries(self) -> list[Any]:
        return self._group0.entries

    @property
    def first_index(self) -> int:
        return self._group0.first_index

    @property
    def floor_term(self) -> int:
        return self._group0.floor_term

    @property
    def snapshot(self) -> Snapshot | None:
        return self._group0.snapshot

    @property
    def groups(self) -> list[int]:
        return sorted(self._groups)

    def _group(self, group: int) -> _MemoryGroup:
        state = self._groups.get(group)
        if state is None:
            _check_group(group)
            state = self._groups[group] = _MemoryGroup()
        return state

    def open(self) -> RecoveredMemoryState:
        return self._group0.open()

    def open_groups(self) -> dict[int, RecoveredMemoryState]:
        return {group: state.open() for group, state in sorted(self._groups.items())}

    def save(self, entries: list[Any], hard_state: HardState | None, *,
             sync: bool = True) -> None:
        self._group0.save(entries, hard_state)
        self.saves += 1

    def save_many(self, saves: Iterable[tuple[int, list[Any], HardState | None]], *,
                  sync: bool = True) -> None:
        """Every group's save at once (the WAL writes them as one record, one fsync)."""
        batch = list(saves)
        groups = [group for group, _, _ in batch]
        if len(set(groups)) != len(groups):
            raise ValueError("a group appears twice in one save_many")
        for group in groups:
            _check_group(group)
        for group, entries, hard_state in batch:
            if entries or hard_state is not None:
                self._group(group).save(entries, hard_state)
        self.saves += 1

    def save_snapshot(self, snapshot: Snapshot, envelope: bytes = b"", *,
                      group: int = 0) -> None:
        self._group(group).save_snapshot(snapshot)

    def load_snapshot(self, group: int = 0) -> Snapshot | None:
        state = self._groups.get(group)
        return state.snapshot if state is not None else None

    def compact(self, index: int, term: int, *, group: int = 0) -> None:
        self._group(group).compact(index, term)

    def close(self) -> None:
        pass
