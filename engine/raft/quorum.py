"""Quorum math used by the Raft core: the seam to engine._core.quorum (Cython or Python twin).

Raft configurations always hold at least one voter, so the "empty configuration commits
everything" rule of engine._core.quorum (U64_MAX) never reaches the core. Joint
configurations (thesis §4.3) need a majority of each half: the commit index is the minimum
of the halves' (joint_committed_index) and an election is won only when both halves are won
and lost as soon as either half is lost (etcd quorum/joint.go).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from engine._core import quorum as _quorum

PENDING = _quorum.VoteResult.PENDING
WON = _quorum.VoteResult.WON
LOST = _quorum.VoteResult.LOST

committed_index = _quorum.committed_index
joint_committed_index = _quorum.joint_committed_index
Tally = _quorum.Tally


def config_committed_index(halves: tuple[frozenset[int], ...], match: Mapping[int, int]) -> int:
    """The largest index held by a majority of every half; match maps voter -> its match
    index (a voter missing from match counts as 0)."""
    first = [match.get(v, 0) for v in halves[0]]
    if len(halves) == 1:
        return int(committed_index(first))
    second = [match.get(v, 0) for v in halves[1]]
    return int(joint_committed_index(second, first))


def has_quorum(halves: tuple[frozenset[int], ...], ids: Iterable[int]) -> bool:
    """`ids` contain a majority of every half (check-quorum, thesis §6.2)."""
    present = set(ids)
    return all(len(half & present) >= len(half) // 2 + 1 for half in halves)


class JointTally:
    """Votes of one election in a (possibly joint) configuration, each voter counted once."""

    __slots__ = ("_tallies",)

    def __init__(self, halves: tuple[frozenset[int], ...]) -> None:
        self._tallies: list[Any] = [Tally(half) for half in halves]

    def record(self, voter: int, granted: bool) -> bool:
        """False for a duplicate or a node that votes in no half."""
        recorded = False
        for tally in self._tallies:
            recorded = tally.record(voter, granted) or recorded
        return recorded

    def result(self) -> int:
        results = [tally.result() for tally in self._tallies]
        if any(r == LOST for r in results):
            return int(LOST)
        if all(r == WON for r in results):
            return int(WON)
        return int(PENDING)


__all__ = [
    "PENDING", "WON", "LOST", "committed_index", "joint_committed_index", "Tally",
    "config_committed_index", "has_quorum", "JointTally",
]
