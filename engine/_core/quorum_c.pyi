# The compiled twin has the same public surface as quorum_py (DESIGN.md §6).
from engine._core.quorum_py import U64_MAX as U64_MAX
from engine._core.quorum_py import JointTally as JointTally
from engine._core.quorum_py import Tally as Tally
from engine._core.quorum_py import VoteResult as VoteResult
from engine._core.quorum_py import batched_committed_index as batched_committed_index
from engine._core.quorum_py import committed_index as committed_index
from engine._core.quorum_py import joint_committed_index as joint_committed_index
