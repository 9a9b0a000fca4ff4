"""Sans-IO Raft core (etcd-io/raft's design): see engine/raft/core.py "Theory of operation"."""

from engine.raft.config import RaftConfig
from engine.raft.core import RaftCore, Role, TransferInProgress
from engine.raft.membership import (
    ConfChangeOp,
    ConfChangeType,
    Membership,
    add_learner,
    decode_membership,
    demote,
    encode_membership,
    promote,
    remove,
)
from engine.raft.progress import Progress, ProgressState

__all__ = [
    "RaftConfig", "RaftCore", "Role", "Progress", "ProgressState", "TransferInProgress",
    "Membership", "ConfChangeOp", "ConfChangeType", "add_learner", "promote", "demote",
    "remove", "encode_membership", "decode_membership",
]
