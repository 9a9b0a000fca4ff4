"""Quorum arithmetic: commit index (majority and joint), vote tallies (pure-Python twin).

This module is the specification of `quorum_c.pyx`; both have the same names, signatures,
errors and results. The rules follow etcd-io/raft `quorum/majority.go` and `quorum/joint.go`:

* The committed index of a majority configuration is the largest index acknowledged by a
  majority: sort the match indexes and take the (n//2 + 1)-th largest (Raft §5.3, §5.4.2 is the
  caller's extra "current term" check).
* An *empty* configuration commits everything: its committed index is U64_MAX and its elections
  are won. This makes a joint configuration with one empty half behave exactly like the other
  half (etcd: "This plays well with joint quorums"). A caller must never act on U64_MAX from a
  configuration that is entirely empty.
* A joint configuration C_old,new needs a majority of each half (Raft thesis §4.3): its committed
  index is the minimum of both halves; it wins an election only if both halves win and loses as
  soon as either half loses.

Voter ids and indexes are unsigned 64-bit ints (OverflowError otherwise, as in the C twin).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import IntEnum

import numpy as np
import numpy.typing as npt

U64_MAX = (1 << 64) - 1

__all__ = [
    "U64_MAX", "VoteResult", "Tally", "JointTally", "committed_index",
    "joint_committed_index", "batched_committed_index",
]


class VoteResult(IntEnum):
    PENDING = 0  # neither outcome is decided by the votes so far
    WON = 1      # a majority granted
    LOST = 2     # so many rejected that a majority can no longer grant


def _check_u64(value: int, what: str) -> int:
    if not 0 <= value <= U64_MAX:
        raise OverflowError(f"{what} {value} does not fit in an unsigned 64-bit int")
    return value


def committed_index(match: Sequence[int]) -> int:
    """Largest index acknowledged by a majority of `match`; U64_MAX for an empty config."""
    n = len(match)
    if n == 0:
        return U64_MAX
    ordered = sorted(match)
    _check_u64(ordered[0], "match index")
    _check_u64(ordered[-1], "match index")
    # Ascending order: a majority (n//2 + 1 voters) has index >= ordered[n - (n//2 + 1)].
    return int(ordered[n - (n // 2 + 1)])


def joint_committed_index(match_old: Sequence[int], match_new: Sequence[int]) -> int:
    """Committed index of C_old,new: a majority of each half must have it (thesis §4.3)."""
    return min(committed_index(match_old), committed_index(match_new))


def batched_committed_index(match: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """committed_index of every row of a (groups, voters) uint64 array, as a (groups,) array.

    All groups have the same number of voters (a multi-raft host batches groups by shape).
    With zero voters every group's committed index is U64_MAX, as for an empty configuration.
    """
    match = _check_matrix(match)
    groups, voters = match.shape
    if voters == 0:
        return np.full(groups, U64_MAX, dtype=np.uint64)
    position = voters - (voters // 2 + 1)
    return np.partition(match, position, axis=1)[:, position].copy()


def _check_matrix(match: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    if not isinstance(match, np.ndarray) or match.dtype != np.uint64 or match.ndim != 2:
        raise TypeError("match must be a 2-D numpy array of dtype uint64 (groups x voters)")
    return np.ascontiguousarray(match)


class Tally:
    """Votes of one election (or pre-vote) over a fixed voter set; one vote per voter counts."""

    __slots__ = ("_voters", "_votes", "granted", "rejected")

    def __init__(self, voters: Iterable[int]) -> None:
        self._voters = frozenset(_check_u64(voter, "voter id") for voter in voters)
        self._votes: dict[int, bool] = {}
        self.granted = 0
        self.rejected = 0

    @property
    def voters(self) -> frozenset[int]:
        return self._voters

    def record(self, voter: int, granted: bool) -> bool:
        """Count `voter`'s vote; False (and nothing counted) for a non-voter or a repeat.

        The first answer of a voter is the one that counts: a duplicated or reordered datagram
        cannot turn a rejection into a grant (etcd's ProgressTracker.RecordVote).
        """
        if voter not in self._voters or voter in self._votes:
            return False
        granted = bool(granted)
        self._votes[voter] = granted
        if granted:
            self.granted += 1
        else:
            self.rejected += 1
        return True

    def result(self) -> VoteResult:
        """WON with a majority of grants, LOST once a majority can no longer be reached."""
        n = len(self._voters)
        if n == 0:
            return VoteResult.WON  # empty config: see the module docstring
        quorum = n // 2 + 1
        if self.granted >= quorum:
            return VoteResult.WON
        if n - self.rejected < quorum:
            return VoteResult.LOST
        return VoteResult.PENDING


class JointTally:
    """Votes under C_old,new: wins only if both halves win, loses if either loses (§4.3)."""

    __slots__ = ("_old", "_new")

    def __init__(self, old_voters: Iterable[int], new_voters: Iterable[int]) -> None:
        self._old = Tally(old_voters)
        self._new = Tally(new_voters)

    @property
    def voters(self) -> frozenset[int]:
        return self._old.voters | self._new.voters

    @property
    def granted(self) -> int:
        """Distinct voters (of either half) that granted."""
        return self._union_count(True)

    @property
    def rejected(self) -> int:
        """Distinct voters (of either half) that rejected."""
        return self._union_count(False)

    def _union_count(self, granted: bool) -> int:
        votes = {voter for voter, vote in self._old._votes.items() if vote == granted}
        votes.update(voter for voter, vote in self._new._votes.items() if vote == granted)
        return len(votes)

    def record(self, voter: int, granted: bool) -> bool:
        """Count the vote in each half `voter` belongs to; False if it counted in none."""
        in_old = self._old.record(voter, granted)
        in_new = self._new.record(voter, granted)
        return in_old or in_new

    def result(self) -> VoteResult:
        old = self._old.result()
        new = self._new.result()
        if old == VoteResult.LOST or new == VoteResult.LOST:
            return VoteResult.LOST
        if old == VoteResult.WON and new == VoteResult.WON:
            return VoteResult.WON
        return VoteResult.PENDING
