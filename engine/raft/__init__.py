"""Sans-IO Raft core (etcd-io/raft's design): see engine/raft/core.py "Theory of operation"."""

from engine.raft.config import RaftConfig
from engine.raft.core import RaftCore, Role, TransferInProgress
from engine.raft.progress import Progress, ProgressState

__all__ = ["RaftConfig", "RaftCore", "Role", "Progress", "ProgressState", "TransferInProgress"]
