"""In-memory storage with the WriteAheadLog surface, for data_dir=None nodes.

It keeps exactly what the driver saved, so LocalCluster can "restart" an in-memory node with
the state it had persisted (as a disk would), while nothing survives the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.types import HardState


@dataclass
class RecoveredMemoryState:
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Any] = field(default_factory=list)
    first_index: int = 1


class MemoryStorage:
    """save() replaces the suffix from the first saved index (Raft truncate-on-conflict)."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.entries: list[Any] = []
        self.first_index = 1
        self.saves = 0

    def open(self) -> RecoveredMemoryState:
        return RecoveredMemoryState(self.hard_state, list(self.entries), self.first_index)

    def save(self, entries: list[Any], hard_state: HardState | None) -> None:
        if entries:
            keep = entries[0].index - self.first_index
            if keep < len(self.entries):
                del self.entries[max(keep, 0):]
            self.entries.extend(entries)
        if hard_state is not None:
            self.hard_state = hard_state
        self.saves += 1

    def close(self) -> None:
        pass
