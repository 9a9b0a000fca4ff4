"""engine: a consensus engine for Python (Raft, Multi-Paxos over UDP, Cython core).

    import engine
    node = engine.Node(engine.NodeConfig(...), state_machine=engine.KVStore())

The runtime classes (Node, LocalCluster, Client, SyncClient, KV, KVStore) are imported on first
use so that `import engine` stays cheap for code that only needs the sans-IO cores or the
errors. `engine.StateMachine` is the protocol a replicated state machine implements.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from engine._core import IMPLEMENTATION
from engine.config import Limits, NodeConfig, TimingConfig
from engine.errors import (
    ClockOffsetError,
    Compacted,
    ConfChangeInProgress,
    ConfigError,
    DecodeError,
    EngineError,
    EntryTooLarge,
    EpochMismatch,
    FencingTokenStale,
    HistoryCompacted,
    InvalidShardChange,
    InvariantViolation,
    LeaseNotFound,
    LockKindMismatch,
    LogIndexError,
    MembershipError,
    NotElectionLeader,
    NotLeader,
    OutcomeUnknown,
    Overloaded,
    Rejected,
    SnapshotCorrupt,
    StateMachineError,
    Stopped,
    StoppedOutcomeUnknown,
    StorageError,
    Superseded,
    Timeout,
    TransactionConflict,
    WatchOverflow,
    WrongShard,
)
from engine.types import StateMachine

if TYPE_CHECKING:
    from engine.aio.client import Client
    from engine.aio.kv import KV
    from engine.aio.local_cluster import LocalCluster
    from engine.aio.node import Node
    from engine.aio.register import WriteOnceRegister
    from engine.aio.sync_client import SyncClient
    from engine.fs import FileSystem
    from engine.kv import KeyValue, KVStore, ScanPage, WriteResult

try:
    __version__ = version("engine")   # the one version: pyproject.toml's, as installed
except PackageNotFoundError:   # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "Node": "engine.aio.node",
    "LocalCluster": "engine.aio.local_cluster",
    "Client": "engine.aio.client",
    "SyncClient": "engine.aio.sync_client",
    "KV": "engine.aio.kv",
    "KVStore": "engine.kv",
    "WriteResult": "engine.kv",
    "KeyValue": "engine.kv",
    "ScanPage": "engine.kv",
    "WriteOnceRegister": "engine.aio.register",
    "FileSystem": "engine.fs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "IMPLEMENTATION", "__version__", "Node", "NodeConfig", "LocalCluster", "Client", "KVStore",
    "SyncClient", "KV", "StateMachine", "WriteOnceRegister", "WriteResult", "KeyValue",
    "ScanPage", "Limits",
    "TimingConfig",
    "ConfigError", "DecodeError", "EngineError", "EntryTooLarge", "InvariantViolation",
    "LogIndexError", "MembershipError", "ConfChangeInProgress", "ClockOffsetError",
    "HistoryCompacted",
    "NotLeader", "Overloaded", "Rejected", "SnapshotCorrupt", "StateMachineError",
    "StorageError", "Superseded",
    "Stopped", "Timeout", "OutcomeUnknown", "StoppedOutcomeUnknown",
    "WrongShard", "EpochMismatch", "InvalidShardChange", "TransactionConflict", "FileSystem",
    "Compacted", "FencingTokenStale", "LeaseNotFound", "LockKindMismatch", "NotElectionLeader",
    "WatchOverflow",
]
