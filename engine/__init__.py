"""engine: a consensus engine for Python (Raft, Multi-Paxos, 2PC over UDP, Cython core)."""

from engine._core import IMPLEMENTATION
from engine.errors import (
    ConfigError,
    DecodeError,
    EngineError,
    EntryTooLarge,
    InvariantViolation,
    LogIndexError,
    NotLeader,
    Overloaded,
    Rejected,
    StorageError,
    Stopped,
    Timeout,
)

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION", "__version__",
    "ConfigError", "DecodeError", "EngineError", "EntryTooLarge", "InvariantViolation",
    "LogIndexError", "NotLeader", "Overloaded", "Rejected", "StorageError", "Stopped", "Timeout",
]
