"""Quorum math used by the Raft core: the seam to engine._core.quorum.

Until engine._core.quorum (committed_index, Tally) is complete these small versions stand in;
they follow the same contract (docs/interfaces.md), so switching is a one-line change here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PENDING = 0
WON = 1
LOST = 2


def committed_index(match: Sequence[int]) -> int:
    """The largest index held by a majority: the (n//2 + 1)-th largest match (Raft §5.3)."""
    if not match:
        return 0
    ordered = sorted(match, reverse=True)
    return ordered[len(ordered) // 2]


class Tally:
    """Counts a vote once per voter (UDP duplicates and replays are ignored) (Raft §5.2)."""

    __slots__ = ("_voters", "_votes")

    def __init__(self, voters: Iterable[int]) -> None:
        self._voters = frozenset(voters)
        self._votes: dict[int, bool] = {}

    def record(self, voter: int, granted: bool) -> bool:
        """Records a vote; False for a duplicate or a non-voter (the vote is not counted)."""
        if voter not in self._voters or voter in self._votes:
            return False
        self._votes[voter] = granted
        return True

    @property
    def granted(self) -> int:
        return sum(1 for vote in self._votes.values() if vote)

    @property
    def rejected(self) -> int:
        return sum(1 for vote in self._votes.values() if not vote)

    def result(self) -> int:
        quorum = len(self._voters) // 2 + 1
        if self.granted >= quorum:
            return WON
        if self.rejected > len(self._voters) - quorum:
            return LOST
        return PENDING
