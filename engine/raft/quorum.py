"""Quorum math used by the Raft core: the seam to engine._core.quorum (Cython or Python twin).

Raft configurations always hold at least this node, so the "empty configuration commits
everything" rule of engine._core.quorum (U64_MAX) never reaches the core.
"""

from __future__ import annotations

from engine._core import quorum as _quorum

PENDING = _quorum.VoteResult.PENDING
WON = _quorum.VoteResult.WON
LOST = _quorum.VoteResult.LOST

committed_index = _quorum.committed_index
joint_committed_index = _quorum.joint_committed_index
Tally = _quorum.Tally

__all__ = ["PENDING", "WON", "LOST", "committed_index", "joint_committed_index", "Tally"]
